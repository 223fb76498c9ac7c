// Full (dense) causal attention over one sequence's contiguous K and V: the baseline
// every sparse figure is compared with. Covers prefill, chunked prefill and, with one
// query token, full decode over a contiguous cache.
//
// Shapes (row-major, token-major "NHD"):
//   q, out: [num_q][num_q_heads][head_dim]
//   k, v:   [num_kv][num_kv_heads][head_dim], num_kv >= num_q
// Query token i sits at position num_kv - num_q + i and attends keys 0..that position
// (causal); softmax(scale * q.k) with the running-max formulation, accumulated in
// float32. GQA: query head h reads KV head h / (num_q_heads / num_kv_heads).
// lse (optional, may be empty): [num_q][num_q_heads], natural-log sum of exp of the
// scaled logits. Dtypes: float32, and bf16 storage for q, k, v and out.
//
// Paged full decode over a batch is PagedDecodeAttention (decode_attention.h) with a
// shared page table.
//
// Thread safety: stateless; concurrent calls on disjoint outputs are safe.
#ifndef FREEKV_KERNELS_ATTENTION_H_
#define FREEKV_KERNELS_ATTENTION_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "kernels/bf16.h"
#include "kernels/cuda_fwd.h"

namespace freekv {
namespace kernels {

struct AttentionDims {
  int32_t num_q_heads = 0;
  int32_t num_kv_heads = 0;
  int32_t head_dim = 0;
  float scale = 0.0f;  // usually 1 / sqrt(head_dim)
};

// CPU reference.
template <typename T>
absl::Status CausalAttentionRef(absl::Span<const T> q, absl::Span<const T> k,
                                absl::Span<const T> v, const AttentionDims& dims,
                                absl::Span<T> out, absl::Span<float> lse = {});

// CUDA (attention.cu): device spans, asynchronous on `stream`; head_dim <= 256 and a
// multiple of 8 (16-byte rows of bf16).
template <typename T>
absl::Status CausalAttentionCuda(absl::Span<const T> q, absl::Span<const T> k,
                                 absl::Span<const T> v, const AttentionDims& dims,
                                 absl::Span<T> out, absl::Span<float> lse,
                                 cudaStream_t stream);

}  // namespace kernels
}  // namespace freekv

#endif  // FREEKV_KERNELS_ATTENTION_H_
