// Paged decode attention: one new query token per sequence attends the pages its page
// table names. With a per-(sequence, KV head) table (table_heads == num_kv_heads) this
// is FreeKV's sparse attention over sink + selected + window pages; with a shared
// table (table_heads == 1) it is full-cache decode attention.
//
// Shapes:
//   q, out: [num_seqs][num_q_heads][head_dim], row-major
//   kv:     the NHD pool (paged_kv.h); table: paged_kv.h's PageTable
//   lse:    optional (may be empty), [num_seqs][num_q_heads] float32
// GQA: query head h reads KV head h / (num_q_heads / num_kv_heads). Softmax of
// scale * q.k over every token of the list, numerically stable (running max),
// accumulated in float32. Dtypes: float32, and bf16 storage for q, the pool and out.
//
// Split-K: a list of many pages is cut into chunks of pages_per_split pages; each
// chunk yields a partial state (normalised output, lse) and MergeStates combines them
// exactly. The reference honours pages_per_split (0 = one chunk) so tests can check
// that splitting does not change the result; the CUDA launcher picks its own split
// when pages_per_split is 0 (a larger one if the given split would exceed its cap)
// (its chunks follow the sort_pages order when that applies) and merges the parts in
// the CTA that finishes last, using a workspace of
// DecodeWorkspaceBytes device bytes that must be zero-filled before its first use
// (DeviceBuffer::Zero); every call leaves it zero-filled again.
//
// Thread safety: stateless; concurrent calls on disjoint outputs are safe, each with
// its own workspace (calls sharing a workspace must be ordered, e.g. one stream).
#ifndef FREEKV_KERNELS_DECODE_ATTENTION_H_
#define FREEKV_KERNELS_DECODE_ATTENTION_H_

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "kernels/bf16.h"
#include "kernels/cuda_fwd.h"
#include "kernels/paged_kv.h"

namespace freekv {
namespace kernels {

struct DecodeOptions {
  int32_t num_q_heads = 0;
  float scale = 0.0f;           // usually 1 / sqrt(head_dim)
  int32_t pages_per_split = 0;  // 0: reference does not split; CUDA chooses
  // CUDA only; the result is the same either way. true: each warp copies its K/V rows
  // into a shared-memory ring with cp.async, `stages` steps deep, so a CTA keeps
  // (stages - 1) steps of loads in flight while it computes and they hold no
  // registers; the launcher's split favours few long CTAs. false: each warp loads its
  // rows straight into registers with the earlier kernel's split (kept for
  // comparison; bench/RESULTS.md has both).
  bool pipelined = true;
  int32_t stages = 0;  // CUDA, pipelined only: 2..6, or 0 for the launcher's choice (2)
  // CUDA only: with per-head tables (table_heads > 1), max_pages <= 256 and at least
  // 4096 (list, page) pairs in the call, each CTA visits its list's full pages in
  // ascending page-id order (the partial last page stays last) and takes its split
  // from that order. On H100, with the benchmark's pool (each sequence's pages
  // contiguous), this measured 0-7% faster at batch 8-32 (most with 8-16 pages per
  // split); smaller calls are latency-bound and skip the ~1 us sort. Same result up
  // to the order of float additions.
  bool sort_pages = true;
};

// CPU reference.
template <typename T>
absl::Status PagedDecodeAttentionRef(absl::Span<const T> q, const PagedKv<const T>& kv,
                                     const PageTable& table, const DecodeOptions& options,
                                     absl::Span<T> out, absl::Span<float> lse = {});

// Combines num_parts partial attention states of the same rows:
//   o_parts: [num_parts][rows][head_dim], lse_parts: [num_parts][rows]
//   out: [rows][head_dim], lse (optional): [rows]
// out = sum_p exp(lse_p - lse) * o_p with lse = log sum_p exp(lse_p). A part whose
// lse is -inf (no tokens) contributes nothing.
absl::Status MergeStatesRef(absl::Span<const float> o_parts,
                            absl::Span<const float> lse_parts, int32_t num_parts,
                            int32_t head_dim, absl::Span<float> out,
                            absl::Span<float> lse = {});

// Device workspace the CUDA launcher needs for `num_seqs` sequences whose longest list
// has max_pages pages (an upper bound is fine).
size_t DecodeWorkspaceBytes(int32_t num_seqs, int32_t num_q_heads, int32_t head_dim,
                            int32_t max_pages);

// CUDA (decode_attention.cu): device spans and workspace, asynchronous on `stream`.
// max_pages bounds the longest list (it sizes the split); head_dim is 64, 128 or 256.
template <typename T>
absl::Status PagedDecodeAttentionCuda(absl::Span<const T> q, const PagedKv<const T>& kv,
                                      const PageTable& table,
                                      const DecodeOptions& options, int32_t max_pages,
                                      absl::Span<T> out, absl::Span<float> lse,
                                      absl::Span<uint8_t> workspace, cudaStream_t stream);

}  // namespace kernels
}  // namespace freekv

#endif  // FREEKV_KERNELS_DECODE_ATTENTION_H_
