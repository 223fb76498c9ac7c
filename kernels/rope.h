// Rotary position embedding (RoPE), applied in place to queries or keys.
//
// Shapes and layout: x is [num_tokens][num_heads][head_dim] (row-major), positions is
// [num_tokens]; head_dim is even. Pair j (0 <= j < head_dim/2) of a head is rotated by
// the angle positions[t] * inv_freq[j]:
//   kInterleaved: the pair is (x[2j], x[2j+1])        (llama2.c, Meta checkpoints)
//   kHalf:        the pair is (x[j], x[j + head_dim/2]) (Hugging Face checkpoints)
//   (a, b) -> (a cos - b sin, a sin + b cos)
// inv_freq comes from RopeInvFreq, so the CPU and the GPU use bit-identical
// frequencies; the angle is formed in float32 and rotated in float32.
// Dtypes: float32 and bf16 storage (loaded to float32, rounded once on store).
//
// Thread safety: stateless functions; concurrent calls on disjoint buffers are safe.
#ifndef FREEKV_KERNELS_ROPE_H_
#define FREEKV_KERNELS_ROPE_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kernels/bf16.h"
#include "kernels/cuda_fwd.h"

namespace freekv {
namespace kernels {

enum class RopeStyle { kInterleaved, kHalf };

struct RopeConfig {
  int32_t head_dim = 0;
  float theta = 10000.0f;
  RopeStyle style = RopeStyle::kInterleaved;
  // Llama-3.1 frequency scaling ("rope_type": "llama3"); off when factor <= 1.
  float llama3_factor = 1.0f;
  float llama3_low_freq_factor = 1.0f;
  float llama3_high_freq_factor = 4.0f;
  int32_t llama3_original_max_positions = 8192;
};

// inv_freq[j] = theta^(-2j/head_dim), j < head_dim/2, with Llama-3.1 scaling applied
// when configured. INVALID_ARGUMENT for an odd or non-positive head_dim.
absl::StatusOr<std::vector<float>> RopeInvFreq(const RopeConfig& config);

// CPU reference. x: [num_tokens][num_heads][head_dim]; positions: [num_tokens];
// inv_freq: [head_dim/2].
template <typename T>
absl::Status ApplyRopeRef(absl::Span<T> x, absl::Span<const int32_t> positions,
                          absl::Span<const float> inv_freq, int32_t num_heads,
                          RopeStyle style);

// CUDA (rope.cu; link //kernels:kernels_cuda). Every span is device memory; the
// launch is asynchronous on `stream` and a launch error is returned.
template <typename T>
absl::Status ApplyRopeCuda(absl::Span<T> x, absl::Span<const int32_t> positions,
                           absl::Span<const float> inv_freq, int32_t num_heads,
                           RopeStyle style, cudaStream_t stream);

}  // namespace kernels
}  // namespace freekv

#endif  // FREEKV_KERNELS_ROPE_H_
