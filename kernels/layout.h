// Layout conversion between the GPU's NHD pool (paged_kv.h) and the CPU store's HND
// blocks (common/geometry.h), both byte-exact permutations (no arithmetic).
//
// NhdToHnd (before offload): pool page pool_pages[i] -> blocks[i], one block per page
//   blocks: [n][num_kv_heads][K|V][page_tokens][head_dim]
// so each (page, KV head) slice of K and V is contiguous (16 KiB at Llama geometry).
//
// HndToNhd (after recall): staging slices, one (page, KV head) each,
//   slices: [n][K|V][page_tokens][head_dim]
// slice i is written to KV head dst_heads[i] of pool page dst_pages[i] (FreeKV keeps
// resident copies per head, paged_kv.h).
//
// The CUDA kernels move 16-byte vectors, so head_dim * sizeof(T) must be a multiple of
// 16 and the buffers 16-byte aligned. Dtypes: float32 and bf16.
//
// Thread safety: stateless; concurrent calls on disjoint outputs are safe.
#ifndef FREEKV_KERNELS_LAYOUT_H_
#define FREEKV_KERNELS_LAYOUT_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "kernels/bf16.h"
#include "kernels/cuda_fwd.h"
#include "kernels/paged_kv.h"

namespace freekv {
namespace kernels {

// CPU references.
template <typename T>
absl::Status NhdToHndRef(const PagedKv<const T>& pool,
                         absl::Span<const int32_t> pool_pages, absl::Span<T> blocks);
template <typename T>
absl::Status HndToNhdRef(absl::Span<const T> slices, absl::Span<const int32_t> dst_pages,
                         absl::Span<const int32_t> dst_heads, const PagedKv<T>& pool);

// CUDA (layout.cu): device memory, asynchronous on `stream`.
template <typename T>
absl::Status NhdToHndCuda(const PagedKv<const T>& pool,
                          absl::Span<const int32_t> pool_pages, absl::Span<T> blocks,
                          cudaStream_t stream);
template <typename T>
absl::Status HndToNhdCuda(absl::Span<const T> slices,
                          absl::Span<const int32_t> dst_pages,
                          absl::Span<const int32_t> dst_heads, const PagedKv<T>& pool,
                          cudaStream_t stream);

}  // namespace kernels
}  // namespace freekv

#endif  // FREEKV_KERNELS_LAYOUT_H_
