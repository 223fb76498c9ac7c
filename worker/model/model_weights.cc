#include "worker/model/model_weights.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <string>

#include "absl/strings/str_cat.h"

namespace freekv {
namespace {

absl::Status CheckSize(const std::string& name, const std::vector<float>& tensor,
                       size_t expected) {
  if (tensor.size() != expected) {
    return absl::InvalidArgumentError(absl::StrCat("weight ", name, " has ",
                                                   tensor.size(), " elements; the config implies ",
                                                   expected));
  }
  return absl::OkStatus();
}

absl::Status ValidateLayer(const LayerWeights& w, const LayerShapes& s, int index) {
  const std::string p = absl::StrCat("layers[", index, "].");
  const struct {
    const char* name;
    const std::vector<float>& tensor;
    size_t size;
  } tensors[] = {
      {"attn_norm", w.attn_norm, s.norm}, {"wq", w.wq, s.wq},   {"wk", w.wk, s.wkv},
      {"wv", w.wv, s.wkv},                {"wo", w.wo, s.wo},   {"ffn_norm", w.ffn_norm, s.norm},
      {"w1", w.w1, s.w_up},               {"w2", w.w2, s.w_down}, {"w3", w.w3, s.w_up},
  };
  for (const auto& t : tensors) {
    if (auto st = CheckSize(p + t.name, t.tensor, t.size); !st.ok()) return st;
  }
  return absl::OkStatus();
}

// Fills `n` values uniform in [center - half_width, center + half_width].
std::vector<float> Uniform(std::mt19937_64& rng, size_t n, float center, float half_width) {
  std::uniform_real_distribution<float> dist(center - half_width, center + half_width);
  std::vector<float> out(n);
  for (float& x : out) x = dist(rng);
  return out;
}

// Half-width of a uniform distribution with variance 1/fan_in.
float UnitVarianceHalfWidth(int fan_in) { return std::sqrt(3.0f / fan_in); }

std::shared_ptr<const LayerWeights> RandomLayer(const ModelConfig& c, std::mt19937_64& rng) {
  const LayerShapes s = LayerShapesOf(c);
  auto w = std::make_shared<LayerWeights>();
  const float a_in = UnitVarianceHalfWidth(c.dim);
  w->attn_norm = Uniform(rng, s.norm, 1.0f, 0.2f);
  w->wq = Uniform(rng, s.wq, 0.0f, a_in);
  w->wk = Uniform(rng, s.wkv, 0.0f, a_in);
  w->wv = Uniform(rng, s.wkv, 0.0f, a_in);
  w->wo = Uniform(rng, s.wo, 0.0f, UnitVarianceHalfWidth(c.q_width()));
  w->ffn_norm = Uniform(rng, s.norm, 1.0f, 0.2f);
  w->w1 = Uniform(rng, s.w_up, 0.0f, a_in);
  w->w2 = Uniform(rng, s.w_down, 0.0f, UnitVarianceHalfWidth(c.hidden_dim));
  w->w3 = Uniform(rng, s.w_up, 0.0f, a_in);
  return w;
}

}  // namespace

LayerShapes LayerShapesOf(const ModelConfig& c) {
  const size_t dim = c.dim;
  LayerShapes s;
  s.norm = dim;
  s.wq = static_cast<size_t>(c.q_width()) * dim;
  s.wkv = static_cast<size_t>(c.kv_width()) * dim;
  s.wo = dim * c.q_width();
  s.w_up = static_cast<size_t>(c.hidden_dim) * dim;
  s.w_down = dim * c.hidden_dim;
  return s;
}

absl::Status ValidateModelWeights(const ModelWeights& w) {
  const ModelConfig& c = w.config;
  if (auto s = ValidateModelConfig(c); !s.ok()) return s;
  const size_t table = static_cast<size_t>(c.vocab_size) * c.dim;
  if (auto s = CheckSize("embedding", w.embedding, table); !s.ok()) return s;
  if (auto s = CheckSize("final_norm", w.final_norm, c.dim); !s.ok()) return s;
  if (!w.tied_classifier()) {
    if (auto s = CheckSize("classifier", w.classifier, table); !s.ok()) return s;
  }
  if (w.layers.size() != static_cast<size_t>(c.num_layers)) {
    return absl::InvalidArgumentError(absl::StrCat("weights hold ", w.layers.size(),
                                                   " layers; config.num_layers is ",
                                                   c.num_layers));
  }
  const LayerShapes shapes = LayerShapesOf(c);
  for (int l = 0; l < c.num_layers; ++l) {
    if (w.layers[l] == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("weights layers[", l, "] is missing"));
    }
    if (auto s = ValidateLayer(*w.layers[l], shapes, l); !s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::StatusOr<ModelWeights> RandomModelWeights(const ModelConfig& config,
                                                const RandomWeightsOptions& options) {
  if (auto s = ValidateModelConfig(config); !s.ok()) return s;
  if (options.distinct_layers < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "random weights distinct_layers is ", options.distinct_layers, "; it must be >= 0"));
  }
  std::mt19937_64 rng(options.seed);
  ModelWeights w;
  w.config = config;
  const size_t table = static_cast<size_t>(config.vocab_size) * config.dim;
  w.embedding = Uniform(rng, table, 0.0f, 1.0f);
  w.final_norm = Uniform(rng, config.dim, 1.0f, 0.2f);
  // Untied, like Llama 3; logits then do not simply echo the input token.
  w.classifier = Uniform(rng, table, 0.0f, UnitVarianceHalfWidth(config.dim));
  const int distinct = options.distinct_layers == 0
                           ? config.num_layers
                           : std::min(options.distinct_layers, config.num_layers);
  for (int l = 0; l < config.num_layers; ++l) {
    w.layers.push_back(l < distinct ? RandomLayer(config, rng) : w.layers[l % distinct]);
  }
  return w;
}

}  // namespace freekv
