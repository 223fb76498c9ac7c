// Group-consistent page selection and the diff with the resident set.
//
// 1. GroupSoftmax: per query head, softmax of its scores over the sequence's
//    candidates; per KV head, the mean of those probabilities over the group's query
//    heads -> group_scores [num_seqs][num_kv_heads][max_candidates] (float32; entries
//    j >= count[b] are set to 0).
// 2. TopKPages: per (sequence, KV head), the k candidates with the highest group
//    score, as logical page ids (begin[b] + j) in ascending order, in
//    selected [num_seqs][num_kv_heads][k]; ties go to the lower page; when a sequence
//    has fewer than k candidates all are selected and the rest of the row is -1.
// 3. ResidentDiff: resident [num_seqs][num_kv_heads][capacity] (capacity >= k) holds
//    the logical page in each resident slot, or -1 for an empty slot. Pages selected
//    but not resident must be recalled; each goes into a victim slot: empty slots
//    first (lowest slot first), then slots whose page was not selected, lowest
//    current group score first (a page outside the candidates scores -inf), ties to
//    the lower slot. Output per (sequence, KV head): num_recall, and recall_pages /
//    recall_slots [.][.][k] (missing pages ascending, their slots; the rest -1).
//    The caller commits resident[slot] = page once the recall has landed.
//    Optionally attend_slots [num_seqs][num_kv_heads][k]: the slot each selected page
//    holds once the diff is applied (its resident slot, or the victim slot its recall
//    goes to), in the order of `selected`, -1 where `selected` is -1: what the page
//    table attends when capacity > k.
//    Optionally `copy`: the same recall_pages, recall_slots and num_recall once more,
//    in one block in that order, written alongside them (for the worker, whose host
//    threads read the diff from pinned memory and whose kernels read this device copy:
//    a kernel's read of pinned memory crosses PCIe).
// head_mask (optional, [num_seqs][num_kv_heads]): when given, only KV heads with a
// non-zero byte are processed and the other heads' outputs are left untouched, so
// correction re-selects flagged heads with no host round trip.
//
// Thread safety: stateless; concurrent calls on disjoint outputs are safe.
#ifndef FREEKV_KERNELS_SELECT_H_
#define FREEKV_KERNELS_SELECT_H_

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "kernels/cuda_fwd.h"
#include "kernels/score.h"

namespace freekv {
namespace kernels {

struct ResidentDiff {
  absl::Span<int32_t> recall_pages;  // [num_seqs][num_kv_heads][k]
  absl::Span<int32_t> recall_slots;  // [num_seqs][num_kv_heads][k]
  absl::Span<int32_t> num_recall;    // [num_seqs][num_kv_heads]
  absl::Span<int32_t> attend_slots;  // optional (empty: not written): [.][.][k]
  absl::Span<int32_t> copy;          // optional (empty: not written): [2 * rows * k + rows]
};
// The size `copy` must have when given.
inline size_t DiffCopyInts(size_t rows, int32_t k) { return 2 * rows * size_t(k) + rows; }
// The parts of a block laid out as `copy` is (the worker's pinned diff block begins the
// same way): recall_pages [rows * k], then recall_slots [rows * k], then num_recall
// [rows].
template <typename T>
struct DiffBlockParts {
  absl::Span<T> pages, slots, counts;
};
template <typename T>
DiffBlockParts<T> SplitDiffBlock(absl::Span<T> block, size_t rows, int32_t k) {
  const size_t entries = rows * size_t(k);
  return {block.subspan(0, entries), block.subspan(entries, entries),
          block.subspan(2 * entries, rows)};
}

// CPU references.
absl::Status GroupSoftmaxRef(absl::Span<const float> scores, int32_t num_q_heads,
                             int32_t num_kv_heads, const Candidates& candidates,
                             absl::Span<const uint8_t> head_mask,
                             absl::Span<float> group_scores);

absl::Status TopKPagesRef(absl::Span<const float> group_scores, int32_t num_kv_heads,
                          const Candidates& candidates, int32_t k,
                          absl::Span<const uint8_t> head_mask,
                          absl::Span<int32_t> selected);

absl::Status ResidentDiffRef(absl::Span<const int32_t> selected,
                             absl::Span<const int32_t> resident, int32_t capacity,
                             absl::Span<const float> group_scores, int32_t num_kv_heads,
                             const Candidates& candidates, int32_t k,
                             absl::Span<const uint8_t> head_mask,
                             const ResidentDiff& diff);

// CUDA (select.cu): the three steps fused in one launch (one block per sequence and
// KV head), device memory, asynchronous on `stream`. max_candidates <= 16384,
// k <= 1024, capacity <= 1024. With an empty `resident` the diff is skipped (and
// `capacity` and `diff` are ignored).
absl::Status GroupSelectCuda(absl::Span<const float> scores, int32_t num_q_heads,
                             int32_t num_kv_heads, const Candidates& candidates,
                             int32_t k, absl::Span<const int32_t> resident,
                             int32_t capacity, absl::Span<const uint8_t> head_mask,
                             absl::Span<float> group_scores,
                             absl::Span<int32_t> selected, const ResidentDiff& diff,
                             cudaStream_t stream);

}  // namespace kernels
}  // namespace freekv

#endif  // FREEKV_KERNELS_SELECT_H_
