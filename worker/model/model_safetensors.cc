#include "worker/model/model_safetensors.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"
#include "worker/model/safetensors.h"

namespace freekv {
namespace {

namespace fs = std::filesystem;

// One per-layer tensor: its Hugging Face suffix, where it lives in LayerWeights, its
// shape, and for q/k the number of heads whose rows follow the RoPE convention.
struct LayerTensorSpec {
  const char* suffix;
  std::vector<float> LayerWeights::*field;
  std::vector<int64_t> shape;
  int rope_heads;  // 0: not a RoPE projection
};

std::vector<LayerTensorSpec> LayerTensorSpecs(const ModelConfig& c) {
  const int64_t dim = c.dim, q = c.q_width(), kv = c.kv_width(), hidden = c.hidden_dim;
  return {
      {"input_layernorm.weight", &LayerWeights::attn_norm, {dim}, 0},
      {"self_attn.q_proj.weight", &LayerWeights::wq, {q, dim}, c.num_heads},
      {"self_attn.k_proj.weight", &LayerWeights::wk, {kv, dim}, c.num_kv_heads},
      {"self_attn.v_proj.weight", &LayerWeights::wv, {kv, dim}, 0},
      {"self_attn.o_proj.weight", &LayerWeights::wo, {dim, q}, 0},
      {"post_attention_layernorm.weight", &LayerWeights::ffn_norm, {dim}, 0},
      {"mlp.gate_proj.weight", &LayerWeights::w1, {hidden, dim}, 0},
      {"mlp.down_proj.weight", &LayerWeights::w2, {dim, hidden}, 0},
      {"mlp.up_proj.weight", &LayerWeights::w3, {hidden, dim}, 0},
  };
}

std::string LayerTensorName(int layer, const char* suffix) {
  return absl::StrCat("model.layers.", layer, ".", suffix);
}

// Reorders the rows of a [heads * head_dim][cols] projection between llama2.c's
// interleaved RoPE pairs (2i, 2i+1) and Hugging Face's halves (i, i + head_dim/2).
std::vector<float> PermuteRopeRows(const std::vector<float>& w, int heads, int head_dim,
                                   bool to_halves) {
  const size_t cols = w.size() / (static_cast<size_t>(heads) * head_dim);
  const int half = head_dim / 2;
  std::vector<float> out(w.size());
  for (int h = 0; h < heads; ++h) {
    for (int i = 0; i < half; ++i) {
      for (int part = 0; part < 2; ++part) {
        const size_t interleaved = static_cast<size_t>(h) * head_dim + 2 * i + part;
        const size_t halves = static_cast<size_t>(h) * head_dim + part * half + i;
        const size_t from = to_halves ? interleaved : halves;
        const size_t to = to_halves ? halves : interleaved;
        std::copy_n(w.begin() + from * cols, cols, out.begin() + to * cols);
      }
    }
  }
  return out;
}

// ---- Config: Hugging Face keys, from __metadata__ strings or config.json numbers ----

using ConfigValues = std::map<std::string, double>;

std::map<std::string, std::string> ConfigAsMetadata(const ModelConfig& c) {
  return {{"hidden_size", absl::StrCat(c.dim)},
          {"intermediate_size", absl::StrCat(c.hidden_dim)},
          {"num_hidden_layers", absl::StrCat(c.num_layers)},
          {"num_attention_heads", absl::StrCat(c.num_heads)},
          {"num_key_value_heads", absl::StrCat(c.num_kv_heads)},
          {"head_dim", absl::StrCat(c.head_dim)},
          {"vocab_size", absl::StrCat(c.vocab_size)},
          {"max_position_embeddings", absl::StrCat(c.max_seq_len)},
          // %.9g round-trips every float exactly.
          {"rope_theta", absl::StrFormat("%.9g", c.rope_theta)},
          {"rms_norm_eps", absl::StrFormat("%.9g", c.norm_eps)},
          // config.json's nested rope_scaling object, flattened.
          {"rope_scaling.factor", absl::StrFormat("%.9g", c.rope_scaling.factor)},
          {"rope_scaling.low_freq_factor",
           absl::StrFormat("%.9g", c.rope_scaling.low_freq_factor)},
          {"rope_scaling.high_freq_factor",
           absl::StrFormat("%.9g", c.rope_scaling.high_freq_factor)},
          {"rope_scaling.original_max_position_embeddings",
           absl::StrCat(c.rope_scaling.original_max_positions)}};
}

absl::StatusOr<ConfigValues> ConfigFromMetadata(
    const std::map<std::string, std::string>& metadata) {
  ConfigValues values;
  for (const auto& [key, _] : ConfigAsMetadata(ModelConfig())) {
    const auto it = metadata.find(key);
    if (it == metadata.end()) continue;
    double v;
    if (!absl::SimpleAtod(it->second, &v)) {
      return absl::InvalidArgumentError(absl::StrCat("safetensors metadata ", key, " is '",
                                                     it->second, "', not a number"));
    }
    values[key] = v;
  }
  return values;
}

// Flattens config.json's rope_scaling into "rope_scaling.<key>" values. Only Llama 3's
// scheme is modelled; any other is UNIMPLEMENTED rather than silently wrong.
absl::Status AddRopeScaling(const google::protobuf::Struct& json, const std::string& path,
                            ConfigValues& values) {
  const auto it = json.fields().find("rope_scaling");
  if (it == json.fields().end() ||
      it->second.kind_case() == google::protobuf::Value::kNullValue) {
    return absl::OkStatus();
  }
  const auto& fields = it->second.struct_value().fields();
  std::string type;
  for (const char* key : {"rope_type", "type"}) {
    if (fields.count(key)) type = fields.at(key).string_value();
  }
  if (type != "llama3") {
    return absl::UnimplementedError(absl::StrCat(
        path, " sets rope_scaling of type '", type, "'; only 'llama3' is modelled"));
  }
  for (const auto& [key, value] : fields) {
    if (value.kind_case() == google::protobuf::Value::kNumberValue) {
      values["rope_scaling." + key] = value.number_value();
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<ConfigValues> ConfigFromJsonFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read model config ", path));
  std::stringstream text;
  text << in.rdbuf();
  google::protobuf::Struct json;
  const auto parsed = google::protobuf::util::JsonStringToMessage(text.str(), &json);
  if (!parsed.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(path, " is not JSON: ", parsed.ToString()));
  }
  ConfigValues values;
  for (const auto& [key, value] : json.fields()) {
    if (value.kind_case() == google::protobuf::Value::kNumberValue) {
      values[key] = value.number_value();
    }
  }
  if (absl::Status s = AddRopeScaling(json, path, values); !s.ok()) return s;
  return values;
}

absl::StatusOr<int> IntField(const ConfigValues& v, const std::string& key,
                             std::optional<int> fallback) {
  const auto it = v.find(key);
  if (it == v.end()) {
    if (fallback) return *fallback;
    return absl::InvalidArgumentError(absl::StrCat("model config lacks ", key));
  }
  if (it->second != std::floor(it->second) || std::abs(it->second) > (1 << 30)) {
    return absl::InvalidArgumentError(
        absl::StrCat("model config ", key, " is ", it->second, ", not an integer"));
  }
  return static_cast<int>(it->second);
}

absl::StatusOr<ModelConfig> ToModelConfig(const ConfigValues& v) {
  ModelConfig c;
  const struct {
    const char* key;
    int* field;
    std::optional<int> fallback;
  } ints[] = {
      {"hidden_size", &c.dim, std::nullopt},
      {"intermediate_size", &c.hidden_dim, std::nullopt},
      {"num_hidden_layers", &c.num_layers, std::nullopt},
      {"num_attention_heads", &c.num_heads, std::nullopt},
      {"vocab_size", &c.vocab_size, std::nullopt},
      {"max_position_embeddings", &c.max_seq_len, 2048},
  };
  for (const auto& f : ints) {
    absl::StatusOr<int> value = IntField(v, f.key, f.fallback);
    if (!value.ok()) return value.status();
    *f.field = *value;
  }
  // Hugging Face's defaults: MHA, and head_dim = hidden_size / num_attention_heads.
  absl::StatusOr<int> kv = IntField(v, "num_key_value_heads", c.num_heads);
  absl::StatusOr<int> hd = IntField(v, "head_dim", c.num_heads > 0 ? c.dim / c.num_heads : 0);
  if (!kv.ok()) return kv.status();
  if (!hd.ok()) return hd.status();
  c.num_kv_heads = *kv;
  c.head_dim = *hd;
  const auto number = [&](const char* key, double fallback) {
    const auto it = v.find(key);
    return static_cast<float>(it == v.end() ? fallback : it->second);
  };
  c.rope_theta = number("rope_theta", 10000.0);
  c.norm_eps = number("rms_norm_eps", 1e-6);
  const RopeScaling off;
  c.rope_scaling.factor = number("rope_scaling.factor", off.factor);
  c.rope_scaling.low_freq_factor = number("rope_scaling.low_freq_factor", off.low_freq_factor);
  c.rope_scaling.high_freq_factor =
      number("rope_scaling.high_freq_factor", off.high_freq_factor);
  absl::StatusOr<int> original = IntField(v, "rope_scaling.original_max_position_embeddings",
                                          off.original_max_positions);
  if (!original.ok()) return original.status();
  c.rope_scaling.original_max_positions = *original;
  if (auto s = ValidateModelConfig(c); !s.ok()) return s;
  return c;
}

// ---- The shards of one model ----

class ShardSet {
 public:
  static absl::StatusOr<ShardSet> Open(const std::string& path) {
    ShardSet set;
    std::vector<std::string> files;
    if (fs::is_directory(path)) {
      for (const auto& entry : fs::directory_iterator(path)) {
        if (entry.path().extension() == ".safetensors") files.push_back(entry.path());
      }
      std::sort(files.begin(), files.end());
      if (files.empty()) {
        return absl::NotFoundError(absl::StrCat("no .safetensors files in ", path));
      }
      set.config_json_ = (fs::path(path) / "config.json").string();
    } else {
      files.push_back(path);
      set.config_json_ = (fs::path(path).parent_path() / "config.json").string();
    }
    for (const std::string& file : files) {
      absl::StatusOr<SafetensorsReader> reader = SafetensorsReader::Open(file);
      if (!reader.ok()) return reader.status();
      set.shards_.push_back(std::move(*reader));
    }
    return set;
  }

  bool Has(const std::string& name) const { return Find(name) != nullptr; }

  absl::StatusOr<std::vector<float>> Read(const std::string& name,
                                          absl::Span<const int64_t> shape) const {
    const SafetensorsReader* shard = Find(name);
    if (shard == nullptr) {
      return absl::NotFoundError(absl::StrCat("model has no tensor '", name, "'"));
    }
    return shard->ReadFloat32(name, shape);
  }

  // The config in the first shard's metadata if it has one, else config.json.
  absl::StatusOr<ConfigValues> Config() const {
    absl::StatusOr<ConfigValues> values = ConfigFromMetadata(shards_[0].metadata());
    if (!values.ok() || values->count("hidden_size")) return values;
    return ConfigFromJsonFile(config_json_);
  }

 private:
  const SafetensorsReader* Find(const std::string& name) const {
    for (const SafetensorsReader& shard : shards_) {
      if (shard.tensors().count(name)) return &shard;
    }
    return nullptr;
  }

  std::vector<SafetensorsReader> shards_;
  std::string config_json_;
};

absl::Status ReadLayers(const ShardSet& shards, ModelWeights& w) {
  const ModelConfig& c = w.config;
  const std::vector<LayerTensorSpec> specs = LayerTensorSpecs(c);
  for (int l = 0; l < c.num_layers; ++l) {
    auto layer = std::make_shared<LayerWeights>();
    for (const LayerTensorSpec& spec : specs) {
      absl::StatusOr<std::vector<float>> t =
          shards.Read(LayerTensorName(l, spec.suffix), spec.shape);
      if (!t.ok()) return t.status();
      (*layer).*spec.field =
          spec.rope_heads == 0 ? std::move(*t)
                               : PermuteRopeRows(*t, spec.rope_heads, c.head_dim, false);
    }
    w.layers.push_back(std::move(layer));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status SaveModelSafetensors(const ModelWeights& w, const std::string& path,
                                  DType dtype) {
  if (auto s = ValidateModelWeights(w); !s.ok()) return s;
  const ModelConfig& c = w.config;
  const int64_t vocab = c.vocab_size, dim = c.dim;
  SafetensorsWriter writer;
  writer.SetMetadata("format", "pt");
  for (auto& [key, value] : ConfigAsMetadata(c)) writer.SetMetadata(key, value);
  // Permuted q/k copies must outlive writer.Write(), which reads them.
  std::vector<std::vector<float>> permuted;
  permuted.reserve(2 * c.num_layers);
  absl::Status s = writer.Add("model.embed_tokens.weight", dtype, {vocab, dim}, w.embedding);
  for (int l = 0; l < c.num_layers && s.ok(); ++l) {
    for (const LayerTensorSpec& spec : LayerTensorSpecs(c)) {
      const std::vector<float>* t = &((*w.layers[l]).*spec.field);
      if (spec.rope_heads != 0) {
        permuted.push_back(PermuteRopeRows(*t, spec.rope_heads, c.head_dim, true));
        t = &permuted.back();
      }
      s.Update(writer.Add(LayerTensorName(l, spec.suffix), dtype, spec.shape, *t));
    }
  }
  s.Update(writer.Add("model.norm.weight", dtype, {dim}, w.final_norm));
  if (!w.tied_classifier()) {
    s.Update(writer.Add("lm_head.weight", dtype, {vocab, dim}, w.classifier));
  }
  if (!s.ok()) return s;
  return writer.Write(path);
}

absl::StatusOr<ModelWeights> LoadModelSafetensors(const std::string& path) {
  absl::StatusOr<ShardSet> shards = ShardSet::Open(path);
  if (!shards.ok()) return shards.status();
  absl::StatusOr<ConfigValues> values = shards->Config();
  if (!values.ok()) return values.status();
  absl::StatusOr<ModelConfig> config = ToModelConfig(*values);
  if (!config.ok()) return config.status();
  ModelWeights w;
  w.config = *config;
  const int64_t vocab = w.config.vocab_size, dim = w.config.dim;
  absl::StatusOr<std::vector<float>> embedding =
      shards->Read("model.embed_tokens.weight", {vocab, dim});
  if (!embedding.ok()) return embedding.status();
  w.embedding = std::move(*embedding);
  if (auto s = ReadLayers(*shards, w); !s.ok()) return s;
  absl::StatusOr<std::vector<float>> norm = shards->Read("model.norm.weight", {dim});
  if (!norm.ok()) return norm.status();
  w.final_norm = std::move(*norm);
  if (shards->Has("lm_head.weight")) {
    absl::StatusOr<std::vector<float>> head = shards->Read("lm_head.weight", {vocab, dim});
    if (!head.ok()) return head.status();
    w.classifier = std::move(*head);
  }
  if (auto s = ValidateModelWeights(w); !s.ok()) return s;
  return w;
}

}  // namespace freekv
