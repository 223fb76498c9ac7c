// The geometry and numeric constants of a Llama-family decoder. A plain value type;
// safe to copy between threads.
#ifndef FREEKV_WORKER_MODEL_MODEL_CONFIG_H_
#define FREEKV_WORKER_MODEL_MODEL_CONFIG_H_

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "common/geometry.h"

namespace freekv {

// Llama 3.1's long-context RoPE frequency scaling ("rope_type": "llama3"); off when
// factor <= 1. Field meanings as in kernels/rope.h's RopeConfig.
struct RopeScaling {
  float factor = 1.0f;
  float low_freq_factor = 1.0f;
  float high_freq_factor = 4.0f;
  int original_max_positions = 8192;
};

struct ModelConfig {
  int dim = 0;           // residual stream width
  int hidden_dim = 0;    // SiLU-gated MLP width
  int num_layers = 0;
  int num_heads = 0;     // query heads
  int num_kv_heads = 0;  // key/value heads; num_heads must be a multiple (GQA)
  int head_dim = 0;      // per head; q width is num_heads * head_dim (may differ from dim)
  int vocab_size = 0;
  int max_seq_len = 0;   // the trained context; longer contexts are allowed, not trained
  float rope_theta = 10000.0f;
  float norm_eps = 1e-5f;
  RopeScaling rope_scaling;

  int q_width() const { return num_heads * head_dim; }
  int kv_width() const { return num_kv_heads * head_dim; }
  int group_size() const { return num_heads / num_kv_heads; }
};

// OK, or INVALID_ARGUMENT naming the first field that is out of range or inconsistent.
absl::Status ValidateModelConfig(const ModelConfig& config);

// Llama-3.1-8B's geometry (dim 4096, 32 layers, 32 heads, 8 KV heads, head_dim 128,
// hidden 14336, vocab 128256, rope_theta 500000, llama3 RoPE scaling 8x), for
// random-weight speed runs.
ModelConfig Llama31_8BConfig();

// The kvservice geometry for this model's KV cache in pages of page_tokens tokens.
Geometry KvGeometry(const ModelConfig& config, uint32_t page_tokens, DType dtype);

}  // namespace freekv

#endif  // FREEKV_WORKER_MODEL_MODEL_CONFIG_H_
