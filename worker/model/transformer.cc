#include "worker/model/transformer.h"

#include <algorithm>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "kernels/matmul.h"
#include "kernels/mlp.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope.h"
#include "worker/model/rope_config.h"

namespace freekv {
namespace {

// out = x * w^T for x [rows][in] and w [out][in]; out is resized to fit.
absl::Status Linear(absl::Span<const float> x, const std::vector<float>& w, int in, int out_width,
                    std::vector<float>& out) {
  out.resize(x.size() / in * out_width);
  return kernels::MatmulRef(x, w, in, out_width, absl::MakeSpan(out));
}

absl::Status Residual(std::vector<float>& x, const std::vector<float>& delta) {
  return kernels::AddRef<float>(x, delta, absl::MakeSpan(x));
}

}  // namespace

absl::StatusOr<Transformer> Transformer::Create(const ModelWeights& weights) {
  if (auto s = ValidateModelWeights(weights); !s.ok()) return s;
  const ModelConfig& c = weights.config;
  absl::StatusOr<std::vector<float>> inv_freq = kernels::RopeInvFreq(RopeConfigOf(c));
  if (!inv_freq.ok()) return inv_freq.status();
  return Transformer(weights, std::move(*inv_freq));
}

absl::Status Transformer::Embed(absl::Span<const BatchEntry> batch) {
  const ModelConfig& c = config();
  positions_.clear();
  x_.clear();
  for (const BatchEntry& e : batch) {
    if (e.tokens.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("batch entry of sequence ", e.sequence,
                                                     " has no tokens"));
    }
    for (size_t i = 0; i < e.tokens.size(); ++i) {
      const int32_t token = e.tokens[i];
      if (token < 0 || token >= c.vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat("token ", token, " of sequence ",
                                                       e.sequence, " is outside [0, ",
                                                       c.vocab_size, ")"));
      }
      const float* row = weights_->embedding.data() + static_cast<size_t>(token) * c.dim;
      x_.insert(x_.end(), row, row + c.dim);
      positions_.push_back(e.start_pos + static_cast<int32_t>(i));
    }
  }
  return absl::OkStatus();
}

absl::Status Transformer::AttentionBlock(int layer, absl::Span<const BatchEntry> batch,
                                         AttentionPolicy& policy) {
  const ModelConfig& c = config();
  const LayerWeights& w = *weights_->layers[layer];
  xb_.resize(x_.size());
  if (auto s = kernels::RmsNormRef<float>(x_, w.attn_norm, c.norm_eps, absl::MakeSpan(xb_));
      !s.ok()) {
    return s;
  }
  for (auto [weight, width, out] : {std::make_tuple(&w.wq, c.q_width(), &q_),
                                    std::make_tuple(&w.wk, c.kv_width(), &k_),
                                    std::make_tuple(&w.wv, c.kv_width(), &v_)}) {
    if (auto s = Linear(xb_, *weight, c.dim, width, *out); !s.ok()) return s;
  }
  const auto style = kernels::RopeStyle::kInterleaved;
  if (auto s = kernels::ApplyRopeRef<float>(absl::MakeSpan(q_), positions_, inv_freq_,
                                            c.num_heads, style);
      !s.ok()) {
    return s;
  }
  if (auto s = kernels::ApplyRopeRef<float>(absl::MakeSpan(k_), positions_, inv_freq_,
                                            c.num_kv_heads, style);
      !s.ok()) {
    return s;
  }
  att_.resize(q_.size());
  if (auto s = policy.Attend(layer, batch, q_, k_, v_, absl::MakeSpan(att_)); !s.ok()) {
    return s;
  }
  if (auto s = Linear(att_, w.wo, c.q_width(), c.dim, xb_); !s.ok()) return s;
  return Residual(x_, xb_);
}

absl::Status Transformer::MlpBlock(int layer) {
  const ModelConfig& c = config();
  const LayerWeights& w = *weights_->layers[layer];
  if (auto s = kernels::RmsNormRef<float>(x_, w.ffn_norm, c.norm_eps, absl::MakeSpan(xb_));
      !s.ok()) {
    return s;
  }
  if (auto s = Linear(xb_, w.w1, c.dim, c.hidden_dim, gate_); !s.ok()) return s;
  if (auto s = Linear(xb_, w.w3, c.dim, c.hidden_dim, up_); !s.ok()) return s;
  if (auto s = kernels::SiluMulRef<float>(gate_, up_, absl::MakeSpan(gate_)); !s.ok()) {
    return s;
  }
  if (auto s = Linear(gate_, w.w2, c.hidden_dim, c.dim, xb_); !s.ok()) return s;
  return Residual(x_, xb_);
}

absl::Status Transformer::Classify(absl::Span<const BatchEntry> batch, LogitsFor which,
                                   std::vector<float>& logits) {
  const ModelConfig& c = config();
  // Only the rows whose logits are wanted go through the final norm and classifier.
  xb_.clear();
  size_t row = 0;
  for (const BatchEntry& e : batch) {
    const size_t first = which == LogitsFor::kEveryToken ? row : row + e.tokens.size() - 1;
    row += e.tokens.size();
    xb_.insert(xb_.end(), x_.begin() + first * c.dim, x_.begin() + row * c.dim);
  }
  if (auto s = kernels::RmsNormRef<float>(xb_, weights_->final_norm, c.norm_eps,
                                          absl::MakeSpan(xb_));
      !s.ok()) {
    return s;
  }
  logits.resize(xb_.size() / c.dim * c.vocab_size);
  const size_t table = static_cast<size_t>(c.vocab_size) * c.dim;
  return kernels::MatmulRef(xb_, absl::MakeConstSpan(weights_->classifier_data(), table),
                            c.dim, c.vocab_size, absl::MakeSpan(logits));
}

absl::Status Transformer::Forward(absl::Span<const BatchEntry> batch, AttentionPolicy& policy,
                                  LogitsFor which, std::vector<float>& logits) {
  if (auto s = Embed(batch); !s.ok()) return s;
  if (auto s = policy.BeginForward(batch); !s.ok()) return s;
  for (int l = 0; l < config().num_layers; ++l) {
    if (auto s = AttentionBlock(l, batch, policy); !s.ok()) return s;
    if (auto s = MlpBlock(l); !s.ok()) return s;
  }
  if (auto s = policy.EndForward(); !s.ok()) return s;
  return Classify(batch, which, logits);
}

int32_t Argmax(absl::Span<const float> logits) {
  return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
}

absl::StatusOr<std::vector<int32_t>> GreedyDecode(Transformer& model, AttentionPolicy& policy,
                                                  int64_t sequence,
                                                  absl::Span<const int32_t> prompt, int steps) {
  std::vector<int32_t> generated;
  std::vector<float> logits;
  BatchEntry entry{sequence, 0, prompt};
  if (auto s = model.Forward({entry}, policy, LogitsFor::kLastToken, logits); !s.ok()) {
    return s;
  }
  int32_t token = 0;
  for (int step = 0; step < steps; ++step) {
    token = Argmax(logits);
    generated.push_back(token);
    if (step + 1 == steps) break;  // the last token's logits are not needed
    entry.start_pos += static_cast<int32_t>(entry.tokens.size());
    entry.tokens = absl::MakeConstSpan(&token, 1);
    if (auto s = model.Forward({entry}, policy, LogitsFor::kLastToken, logits); !s.ok()) {
      return s;
    }
  }
  return generated;
}

}  // namespace freekv
