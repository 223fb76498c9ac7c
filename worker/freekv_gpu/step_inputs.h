// The per-step host-computed inputs of a GPU decode step: where each sequence's new
// token goes, which pages attention reads (kernels/paged_kv.h's PageTable), and which
// pages are candidates for selection (kernels/score.h's Candidates). Built on the
// host once per step and uploaded in one copy, so the device never waits for the
// host within a step.
//
// Each sequence has its own position. A sequence of n pages (the new token's page
// included) splits as the CPU policies split it (worker/retrieval_config.h): sinks
// [0, min(sink, n)), window [max(sink_end, n - window), n), candidates between them;
// it attends to its sinks, min(selected, candidates) selected pages and its window, so
// a sequence that fits in the budget attends to every page.
//
// Table kinds:
//   kFull      one list per sequence over a pool of full_pages_per_seq pages per
//              sequence (page p of sequence b at b * full_pages_per_seq + p);
//   kResident  one list per (sequence, KV head) over a ResidentLayout pool: sink
//              pages, the first min(selected, candidates) slots (real decoding keeps
//              slots [0, candidates) filled while candidates <= capacity(): see
//              PromotionsAt; with more than `selected` candidates and a resident
//              cache, the device writes the selection's slots over them,
//              TakeAttendSlots), the window's ring pages oldest first;
//   kSelectedOverFull  one list per (sequence, KV head) over a full pool (the real
//              oracle): sinks and window as pool pages of the sequence, and
//              min(selected, candidates) places at selected_start_at() that the device
//              fills from the step's selection (SelectedToTableCuda).
//
// A plain value; any thread.
#ifndef FREEKV_WORKER_FREEKV_GPU_STEP_INPUTS_H_
#define FREEKV_WORKER_FREEKV_GPU_STEP_INPUTS_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "worker/freekv_gpu/resident_ops.h"

namespace freekv::gpu {

enum class TableKind { kFull, kResident, kSelectedOverFull };

struct StepShape {
  int32_t num_kv_heads = 0;
  int32_t page_tokens = 0;
  std::vector<int64_t> positions;  // per sequence: the new token's (0-based)
  int32_t step = 0;                // the decode step's number (gates and graphs read it)
  TableKind kind = TableKind::kResident;
  ResidentLayout layout;           // sparse kinds
  int32_t full_pages_per_seq = 0;  // kFull, kSelectedOverFull
  // Per sequence, the token fed after this step (-1: the step's argmax); empty: -1.
  std::vector<int32_t> next_forced;

  int32_t batch() const { return static_cast<int32_t>(positions.size()); }
};

// The page split of one sequence whose new token is at `position`.
struct PageSplit {
  int64_t pages = 0;         // n, the new token's page included
  int32_t token = 0;         // the new token's place in its page
  int32_t sink_end = 0;
  int64_t window_begin = 0;
  int32_t candidates = 0;    // window_begin - sink_end
  int32_t slots = 0;         // min(selected, candidates)
};
PageSplit SplitAt(int64_t position, int32_t page_tokens, const ResidentLayout& layout);

// The pool page of logical page p of sequence b: in a ResidentLayout pool (`resident`)
// where p is a sink or window page (slots are placed apart), else in a full pool of
// full_pages_per_seq pages per sequence.
int32_t PoolPageOf(bool resident, const ResidentLayout& layout, int32_t full_pages_per_seq,
                   int32_t b, int64_t p);

// kResident keeps slot j = p - sink of candidate page p while candidates <=
// layout.capacity() (selected + cache): a page p that leaves the window at a step where
// it is candidate number p - sink < capacity() is copied from its ring page into that
// slot before the step's append overwrites the ring page (which happens at the same
// step). No recall happens meanwhile (every candidate is resident), so no selection
// places a page in those slots first. Returns the logical page each sequence promotes
// at the step whose new token is at positions[b], or -1.
std::vector<int64_t> PromotionsAt(absl::Span<const int64_t> positions, int32_t page_tokens,
                                  const ResidentLayout& layout);

// One int32 array in this order; the accessors name the parts.
class StepInputs {
 public:
  // INVALID_ARGUMENT when the shape is inconsistent: no sequence, a negative position,
  // a full pool too small, or next_forced of the wrong size.
  static absl::StatusOr<StepInputs> Build(const StepShape& shape);

  absl::Span<const int32_t> all() const { return data_; }
  int32_t num_lists() const { return lists_; }
  int32_t max_pages() const { return max_pages_; }  // the longest list
  int32_t max_candidates() const { return max_candidates_; }
  // Equal keys: the same sizes and offsets, so work captured for one replays for the
  // other with only the contents changed.
  bool SameShape(const StepInputs& other) const {
    return data_.size() == other.data_.size() && lists_ == other.lists_ &&
           max_pages_ == other.max_pages_ && max_candidates_ == other.max_candidates_;
  }

  // Offsets into all() (in elements), for views of the uploaded copy.
  size_t positions_at() const { return 0; }
  size_t append_pages_at() const { return batch_; }
  size_t append_tokens_at() const { return 2 * size_t(batch_); }
  size_t candidate_begin_at() const { return 3 * size_t(batch_); }
  size_t candidate_count_at() const { return 4 * size_t(batch_); }
  size_t next_forced_at() const { return 5 * size_t(batch_); }
  size_t step_at() const { return 6 * size_t(batch_); }
  size_t indptr_at() const { return step_at() + 1; }
  size_t last_len_at() const { return indptr_at() + lists_ + 1; }
  size_t selected_start_at() const { return last_len_at() + lists_; }
  size_t indices_at() const { return selected_start_at() + lists_; }
  size_t indices_size() const { return data_.size() - indices_at(); }

 private:
  std::vector<int32_t> data_;
  int32_t batch_ = 0, lists_ = 0, max_pages_ = 0, max_candidates_ = 0;
};

}  // namespace freekv::gpu

#endif  // FREEKV_WORKER_FREEKV_GPU_STEP_INPUTS_H_
