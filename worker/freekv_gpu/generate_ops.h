// Small device operations the GPU generator (gpu_generator.h) runs between model
// passes, so that decode steps follow one another with no host round trip:
//   PickTokens        the next token of each sequence (argmax of its logits, or the
//                     teacher-forced token), optionally written to pinned host memory;
//   CopyPages         whole pages (K and V) from one paged pool to another;
//   ScatterWords      dst[indices[i]] = values[i] (resident-slot entries);
//   SelectedToTable   an oracle's top-k selection (kernels/select.h) turned into the
//                     selected part of a page table over a full pool.
// Each has a CPU reference (generate_ops_ref.cc; host memory, checks contents too) and
// a CUDA launcher (generate_ops.cu; device memory, checks sizes only, asynchronous on
// `stream`, no allocation, no synchronisation, so it can be captured in a CUDA graph).
// Both share the Check*Shapes functions below, which return INVALID_ARGUMENT naming
// the field. Launch errors come back as INTERNAL naming the kernel. An empty batch
// (no rows, pages or entries) is a no-op.
//
// Thread safety: stateless; concurrent calls on disjoint outputs are safe.
#ifndef FREEKV_WORKER_FREEKV_GPU_GENERATE_OPS_H_
#define FREEKV_WORKER_FREEKV_GPU_GENERATE_OPS_H_

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "kernels/bf16.h"
#include "kernels/cuda_fwd.h"
#include "kernels/paged_kv.h"

namespace freekv::gpu {

using kernels::BFloat16;

// PickTokens: rows = tokens.size(); logits is [rows][vocab] fp32. tokens[b] is
// forced[b] when `forced` is non-empty and forced[b] >= 0 (copied as given: the
// caller checks it against the vocabulary), else the argmax of row b: the first index
// of the row's maximum, as std::max_element picks it (-0 and +0 tie). NaN entries
// never win; a row of NaN only gives 0. `forced` is empty or has rows entries;
// `host_out` is empty (skipped) or has rows entries and receives each row's argmax
// even where a token is forced (what the model chose, as DecodeBatch reports it): the
// CUDA kernel writes it directly, so it may be pinned host memory (visible to the host
// once the stream's work has completed). One block per row.
absl::Status PickTokensRef(absl::Span<const float> logits, int32_t vocab,
                           absl::Span<const int32_t> forced, absl::Span<int32_t> tokens,
                           absl::Span<int32_t> host_out);
absl::Status PickTokensCuda(absl::Span<const float> logits, int32_t vocab,
                            absl::Span<const int32_t> forced, absl::Span<int32_t> tokens,
                            absl::Span<int32_t> host_out, cudaStream_t stream);

// CopyPages: for each i, page src_pages[i] of `src` (K and V: page_elems() elements
// each, every token and head) is copied into page dst_pages[i] of `dst`. The pools
// need equal page_tokens, num_kv_heads and head_dim, and may each interleave K and V
// or not. Destination pages must be distinct and, when the pools share memory, not
// among the source pages (the CUDA copies run concurrently). The reference refuses
// page ids out of range; the CUDA kernel skips them (it cannot see them before it
// runs). 16-byte vector copies when every page and pointer is 16-byte aligned.
absl::Status CopyPagesRef(const kernels::PagedKv<const BFloat16>& src,
                          absl::Span<const int32_t> src_pages,
                          const kernels::PagedKv<BFloat16>& dst,
                          absl::Span<const int32_t> dst_pages);
absl::Status CopyPagesCuda(const kernels::PagedKv<const BFloat16>& src,
                           absl::Span<const int32_t> src_pages,
                           const kernels::PagedKv<BFloat16>& dst,
                           absl::Span<const int32_t> dst_pages, cudaStream_t stream);

// ScatterWords: dst[indices[i]] = values[i]. Indices must be distinct (with duplicates
// the reference keeps the last value, the kernel any one). The reference refuses
// indices outside dst; the kernel skips them.
absl::Status ScatterWordsRef(absl::Span<int32_t> dst, absl::Span<const int32_t> indices,
                             absl::Span<const int32_t> values);
absl::Status ScatterWordsCuda(absl::Span<int32_t> dst, absl::Span<const int32_t> indices,
                              absl::Span<const int32_t> values, cudaStream_t stream);

// Where a sequence's selectable pages lie in a pool: value s (0 <= s < count) of
// sequence b names pool page b * pages_per_seq + first + s. A full pool's logical
// pages are Full(pages); a ResidentLayout pool's slots are {pages_per_seq(), sink,
// capacity()} (resident_ops.h).
struct SeqPages {
  int32_t pages_per_seq = 0;
  int32_t first = 0;
  int32_t count = 0;

  static SeqPages Full(int32_t pages) { return {pages, 0, pages}; }
};

// SelectedToTable: lists = starts.size() = num_seqs * num_kv_heads; selected is
// [lists][k] values, -1 (any negative) for none: TopKPages' logical pages (over a full
// pool) or ResidentDiff's attend_slots (over a ResidentLayout pool).
// For list i and j < k with s = selected[i * k + j] >= 0:
//   indices[starts[i] + j] = (i / num_kv_heads) * pages.pages_per_seq + pages.first + s,
// the pool page `pages` places value s of sequence i / num_kv_heads at. Entries of
// none write nothing. The reference refuses s >= pages.count and destinations outside
// `indices`; the kernel skips them.
absl::Status SelectedToTableRef(absl::Span<const int32_t> selected, int32_t k,
                                int32_t num_kv_heads, const SeqPages& pages,
                                absl::Span<const int32_t> starts,
                                absl::Span<int32_t> indices);
absl::Status SelectedToTableCuda(absl::Span<const int32_t> selected, int32_t k,
                                 int32_t num_kv_heads, const SeqPages& pages,
                                 absl::Span<const int32_t> starts,
                                 absl::Span<int32_t> indices, cudaStream_t stream);

// The size checks the references and the launchers share (sizes only: the spans may
// be device memory).
absl::Status CheckPickTokensShapes(size_t logits_size, int32_t vocab, size_t forced_size,
                                   size_t tokens_size, size_t host_out_size);
absl::Status CheckCopyPagesShapes(const kernels::PagedKv<const BFloat16>& src,
                                  size_t src_pages_size,
                                  const kernels::PagedKv<BFloat16>& dst,
                                  size_t dst_pages_size);
absl::Status CheckScatterWordsShapes(size_t indices_size, size_t values_size);
absl::Status CheckSelectedToTableShapes(size_t selected_size, int32_t k,
                                        int32_t num_kv_heads, const SeqPages& pages,
                                        size_t starts_size);

}  // namespace freekv::gpu

#endif  // FREEKV_WORKER_FREEKV_GPU_GENERATE_OPS_H_
