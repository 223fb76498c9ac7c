// Query similarity and correction flags (FreeKV's fine-grained correction).
//   similarity[b][g] = mean over the query heads h of group g of
//                      cos(q[b][h], q_prev[b][h])   (0 when either norm is 0)
//   flags[b][g]      = similarity[b][g] < tau ? 1 : 0
//   num_flagged[0]   = number of set flags
// The flags are the head_mask of score.h and select.h: flagged heads are re-scored
// and re-selected on the device in the same stream, so no host synchronisation is
// needed per layer; num_flagged lets the host read one integer (when it issues the
// urgent recall) instead of the whole mask.
//
// Shapes: q, q_prev [num_seqs][num_q_heads][head_dim]; similarity float32 and flags
// uint8 [num_seqs][num_kv_heads]; num_flagged [1]. Accumulates in float32.
// Dtypes: q float32 or bf16.
//
// Thread safety: stateless; concurrent calls on disjoint outputs are safe.
#ifndef FREEKV_KERNELS_SIMILARITY_H_
#define FREEKV_KERNELS_SIMILARITY_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "kernels/bf16.h"
#include "kernels/cuda_fwd.h"

namespace freekv {
namespace kernels {

struct SimilarityOutputs {
  absl::Span<float> similarity;    // [num_seqs][num_kv_heads]
  absl::Span<uint8_t> flags;       // [num_seqs][num_kv_heads]
  absl::Span<int32_t> num_flagged;  // [1]
};

// Query heads per KV head at most (the CUDA kernel keeps a chunk of whole rows' head
// cosines in shared memory).
constexpr int32_t kMaxSimilarityGroup = 2048;

// Shape checks shared by the reference and the launcher.
absl::Status CheckSimilarityShapes(size_t q_size, size_t q_prev_size, int32_t num_q_heads,
                                   int32_t num_kv_heads, int32_t head_dim,
                                   const SimilarityOutputs& outputs);

// CPU reference.
template <typename T>
absl::Status QuerySimilarityRef(absl::Span<const T> q, absl::Span<const T> q_prev,
                                int32_t num_q_heads, int32_t num_kv_heads,
                                int32_t head_dim, float tau,
                                const SimilarityOutputs& outputs);

// CUDA (similarity.cu): device memory, asynchronous on `stream`.
template <typename T>
absl::Status QuerySimilarityCuda(absl::Span<const T> q, absl::Span<const T> q_prev,
                                 int32_t num_q_heads, int32_t num_kv_heads,
                                 int32_t head_dim, float tau,
                                 const SimilarityOutputs& outputs, cudaStream_t stream);

}  // namespace kernels
}  // namespace freekv

#endif  // FREEKV_KERNELS_SIMILARITY_H_
