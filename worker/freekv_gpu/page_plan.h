// The page work of real GPU decoding (GpuDecoder::Impl with GpuDecoderOptions::real())
// that the host plans, as plain lists the GPU then acts on:
//   PlanPrefill   where a prompt's pages go once its prefill is done: sink and window
//                 pages into the decode pool, candidates into slots while the sequence
//                 fits the slots (the budget's and a resident cache's), and which full
//                 pages are digested and offloaded;
//   StepJobs      around decode step t: ring pages promoted into slots before the step
//                 (step_inputs.h PromotionsAt) and the pages the step fills, digested
//                 and offloaded after it.
// Pure functions of the positions and the layout, so a CPU test replays them against
// the kernels' CPU references (page_plan_test.cc). StepJobs is uploaded as one int32
// array; its *_at() accessors are the one definition of where each part lies, for the
// code that writes it and the code that reads the uploaded copy.
//
// Plain values; any thread.
#ifndef FREEKV_WORKER_FREEKV_GPU_PAGE_PLAN_H_
#define FREEKV_WORKER_FREEKV_GPU_PAGE_PLAN_H_

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "absl/types/span.h"
#include "worker/freekv_gpu/resident_ops.h"
#include "worker/freekv_gpu/step_inputs.h"

namespace freekv::gpu {

// The decode pool the pages go to.
struct PagePlanShape {
  int32_t page_tokens = 0;
  int32_t num_kv_heads = 0;
  ResidentLayout layout;
  bool sparse = true;      // a policy that selects pages (not full)
  bool over_full = false;  // sparse lists over a full pool (the real oracle)
  int32_t full_pages = 0;  // a full pool's pages per sequence

  // A ResidentLayout pool (sinks, slots, a window ring) rather than a full one.
  bool resident() const { return sparse && !over_full; }
  // Pool page of logical page p of sequence b when p is a sink or window page (or any
  // page of a full pool).
  int32_t pool_page(int32_t b, int64_t p) const;
};

struct PrefillPlan {
  // Pages of the prefill's pool (logical page = its index there) copied into the
  // decode pool.
  std::vector<int32_t> src, dst;
  // Resident entries [sequence][kv head][slot] (flat indices) the copies fill, and
  // the logical page each then holds.
  std::vector<int32_t> resident_index, resident_page;
  // Full pages past the sinks: digested and, for the recall policies, offloaded.
  std::vector<int32_t> kept;
};

// Sequence b's prompt of `tokens` tokens (> 0).
PrefillPlan PlanPrefill(const PagePlanShape& shape, int32_t b, int64_t tokens);

// The page tables of decode step `step` over this pool (step_inputs.h), with each
// sequence's new token at positions[b] (next_forced left empty).
StepShape StepShapeAt(const PagePlanShape& shape, std::vector<int64_t> positions,
                      int32_t step);

class StepJobs {
 public:
  // positions[b]: the position of sequence b's new token at this step.
  static StepJobs Plan(const PagePlanShape& shape, absl::Span<const int64_t> positions);
  // The most ints a step's jobs take.
  static size_t Capacity(int32_t batch, int32_t num_kv_heads) {
    return size_t(batch) * (5 + 2 * size_t(num_kv_heads));
  }

  int32_t promotions() const { return promotions_; }
  int32_t resident_writes() const { return resident_writes_; }
  int32_t fills() const { return fills_; }
  absl::Span<const int32_t> flat() const { return flat_; }
  // (sequence, logical page) of each fill, in the order of the fill parts.
  const std::vector<std::pair<int32_t, int64_t>>& filled() const { return filled_; }

  // Where each part lies in flat(), promotions() / resident_writes() / fills() long:
  size_t promote_src_at() const { return 0; }  // ring pool pages
  size_t promote_dst_at() const { return promotions_; }  // slot pool pages
  size_t resident_index_at() const { return 2 * size_t(promotions_); }
  size_t resident_page_at() const { return resident_index_at() + resident_writes_; }
  size_t fill_pool_at() const { return resident_page_at() + resident_writes_; }
  size_t fill_seq_at() const { return fill_pool_at() + fills_; }
  size_t fill_logical_at() const { return fill_seq_at() + fills_; }

 private:
  int32_t promotions_ = 0, resident_writes_ = 0, fills_ = 0;
  std::vector<int32_t> flat_;
  std::vector<std::pair<int32_t, int64_t>> filled_;
};

}  // namespace freekv::gpu

#endif  // FREEKV_WORKER_FREEKV_GPU_PAGE_PLAN_H_
