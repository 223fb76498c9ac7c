#include "worker/model/model_config.h"

#include <cmath>

#include "absl/strings/str_cat.h"

namespace freekv {
namespace {

// Generous bounds: they exist to reject garbage headers, not to limit real models.
constexpr int kMaxWidth = 1 << 20;
constexpr int kMaxVocab = 1 << 22;

absl::Status CheckPositive(const char* field, int value, int max) {
  if (value <= 0 || value > max) {
    return absl::InvalidArgumentError(absl::StrCat("model config ", field, " is ", value,
                                                   "; it must be in [1, ", max, "]"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateModelConfig(const ModelConfig& c) {
  const struct {
    const char* field;
    int value;
    int max;
  } fields[] = {
      {"dim", c.dim, kMaxWidth},           {"hidden_dim", c.hidden_dim, kMaxWidth},
      {"num_layers", c.num_layers, 4096},  {"num_heads", c.num_heads, 4096},
      {"num_kv_heads", c.num_kv_heads, 4096}, {"head_dim", c.head_dim, 4096},
      {"vocab_size", c.vocab_size, kMaxVocab}, {"max_seq_len", c.max_seq_len, kMaxWidth},
  };
  for (const auto& f : fields) {
    if (auto s = CheckPositive(f.field, f.value, f.max); !s.ok()) return s;
  }
  if (c.num_heads % c.num_kv_heads != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("model config num_heads ", c.num_heads,
                     " is not a multiple of num_kv_heads ", c.num_kv_heads));
  }
  // RoPE rotates channel pairs.
  if (c.head_dim % 2 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("model config head_dim ", c.head_dim, " is odd; RoPE needs pairs"));
  }
  if (!(c.rope_theta > 1.0f) || !std::isfinite(c.rope_theta)) {
    return absl::InvalidArgumentError(
        absl::StrCat("model config rope_theta is ", c.rope_theta, "; it must be > 1"));
  }
  if (!(c.norm_eps > 0.0f) || !std::isfinite(c.norm_eps)) {
    return absl::InvalidArgumentError(
        absl::StrCat("model config norm_eps is ", c.norm_eps, "; it must be > 0"));
  }
  const RopeScaling& r = c.rope_scaling;
  if (r.factor > 1.0f && !(r.high_freq_factor > r.low_freq_factor &&
                           r.low_freq_factor > 0.0f && r.original_max_positions > 0)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "model config rope_scaling needs high_freq_factor (", r.high_freq_factor,
        ") > low_freq_factor (", r.low_freq_factor, ") > 0 and original_max_positions (",
        r.original_max_positions, ") > 0"));
  }
  return absl::OkStatus();
}

ModelConfig Llama31_8BConfig() {
  ModelConfig c;
  c.dim = 4096;
  c.hidden_dim = 14336;
  c.num_layers = 32;
  c.num_heads = 32;
  c.num_kv_heads = 8;
  c.head_dim = 128;
  c.vocab_size = 128256;
  c.max_seq_len = 131072;
  c.rope_theta = 500000.0f;
  c.norm_eps = 1e-5f;
  c.rope_scaling.factor = 8.0f;
  c.rope_scaling.low_freq_factor = 1.0f;
  c.rope_scaling.high_freq_factor = 4.0f;
  c.rope_scaling.original_max_positions = 8192;
  return c;
}

Geometry KvGeometry(const ModelConfig& config, uint32_t page_tokens, DType dtype) {
  Geometry g;
  g.num_layers = static_cast<uint32_t>(config.num_layers);
  g.num_kv_heads = static_cast<uint32_t>(config.num_kv_heads);
  g.head_dim = static_cast<uint32_t>(config.head_dim);
  g.page_tokens = page_tokens;
  g.dtype = dtype;
  return g;
}

}  // namespace freekv
