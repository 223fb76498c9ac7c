// The per-step host-computed inputs of a GPU decode step: where each sequence's new
// token goes, which pages attention reads (kernels/paged_kv.h's PageTable), and which
// pages are candidates for selection (kernels/score.h's Candidates). Built on the
// host once per step and uploaded in one copy, so the device never waits for the
// host within a step.
//
// Every sequence of the batch is at the same position (the benchmark's shape).
// Sparse tables (FreeKV's sink + selected + window over a ResidentLayout pool) have
// one list per (sequence, KV head); full tables one list per sequence over a pool of
// `full_pages_per_seq` pages per sequence (page p of sequence b at b *
// full_pages_per_seq + p).
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

struct StepShape {
  int32_t batch = 0;
  int32_t num_kv_heads = 0;
  int32_t page_tokens = 0;
  int64_t position = 0;  // of the new token (0-based): the context before it
  int32_t step = 0;      // the decode step's number (gates and graphs read it)
  bool sparse = true;
  ResidentLayout layout;           // sparse only
  int32_t full_pages_per_seq = 0;  // full only
};

// One int32 array in this order; the accessors name the parts.
class StepInputs {
 public:
  // INVALID_ARGUMENT when the shape is inconsistent: a sparse context shorter than
  // sink + window pages plus one candidate, or a full pool too small.
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
  size_t step_at() const { return 5 * size_t(batch_); }
  size_t indptr_at() const { return step_at() + 1; }
  size_t last_len_at() const { return indptr_at() + lists_ + 1; }
  size_t indices_at() const { return last_len_at() + lists_; }

 private:
  std::vector<int32_t> data_;
  int32_t batch_ = 0, lists_ = 0, max_pages_ = 0, max_candidates_ = 0;
};

}  // namespace freekv::gpu

#endif  // FREEKV_WORKER_FREEKV_GPU_STEP_INPUTS_H_
