#include "worker/freekv_gpu/page_plan.h"

#include <utility>

#include "worker/freekv_gpu/step_inputs.h"

namespace freekv::gpu {

int32_t PagePlanShape::pool_page(int32_t b, int64_t p) const {
  return PoolPageOf(resident(), layout, full_pages, b, p);
}

PrefillPlan PlanPrefill(const PagePlanShape& shape, int32_t b, int64_t tokens) {
  const ResidentLayout& lay = shape.layout;
  // The split as the last prompt token left it: the prompt's pages, the last one
  // maybe partial.
  const PageSplit split = SplitAt(tokens - 1, shape.page_tokens, lay);
  const bool fits = split.candidates <= lay.capacity();
  PrefillPlan plan;
  for (int64_t p = 0; p < split.pages; ++p) {
    int32_t to = -1;
    if (!shape.resident() || p < split.sink_end || p >= split.window_begin) {
      to = shape.pool_page(b, p);
    } else if (fits) {  // a candidate the slots (cache included) all hold: slot p - sink
      const int32_t slot = static_cast<int32_t>(p - lay.sink);
      to = lay.selected_page(b, slot);
      for (int32_t h = 0; h < shape.num_kv_heads; ++h) {
        plan.resident_index.push_back((b * shape.num_kv_heads + h) * lay.capacity() + slot);
        plan.resident_page.push_back(static_cast<int32_t>(p));
      }
    }
    if (to < 0) continue;  // a candidate left to recall
    plan.src.push_back(static_cast<int32_t>(p));
    plan.dst.push_back(to);
  }
  // Full pages past the sinks are candidates sooner or later.
  for (int64_t p = lay.sink; shape.sparse && p < tokens / shape.page_tokens; ++p) {
    plan.kept.push_back(static_cast<int32_t>(p));
  }
  return plan;
}

StepShape StepShapeAt(const PagePlanShape& shape, std::vector<int64_t> positions,
                      int32_t step) {
  StepShape s;
  s.num_kv_heads = shape.num_kv_heads;
  s.page_tokens = shape.page_tokens;
  s.positions = std::move(positions);
  s.step = step;
  s.kind = !shape.sparse      ? TableKind::kFull
           : shape.over_full ? TableKind::kSelectedOverFull
                             : TableKind::kResident;
  s.layout = shape.layout;
  s.full_pages_per_seq = shape.full_pages;
  return s;
}

StepJobs StepJobs::Plan(const PagePlanShape& shape, absl::Span<const int64_t> positions) {
  const int32_t P = shape.page_tokens, kvh = shape.num_kv_heads;
  const ResidentLayout& lay = shape.layout;
  const int32_t batch = static_cast<int32_t>(positions.size());
  std::vector<int32_t> src, dst, index, page, pool, seq, logical;
  if (shape.resident()) {
    const std::vector<int64_t> promoted = PromotionsAt(positions, P, lay);
    for (int32_t b = 0; b < batch; ++b) {
      if (promoted[b] < 0) continue;
      const int32_t slot = static_cast<int32_t>(promoted[b] - lay.sink);
      src.push_back(lay.window_page(b, promoted[b]));
      dst.push_back(lay.selected_page(b, slot));
      for (int32_t h = 0; h < kvh; ++h) {
        index.push_back((b * kvh + h) * lay.capacity() + slot);
        page.push_back(static_cast<int32_t>(promoted[b]));
      }
    }
  }
  StepJobs j;
  for (int32_t b = 0; b < batch && shape.sparse; ++b) {
    // The step's token completes its page: a candidate once it leaves the window.
    const int64_t p = positions[b] / P;
    if (positions[b] % P != P - 1 || p < lay.sink) continue;
    pool.push_back(shape.pool_page(b, p));
    seq.push_back(b);
    logical.push_back(static_cast<int32_t>(p));
    j.filled_.emplace_back(b, p);
  }
  j.promotions_ = static_cast<int32_t>(src.size());
  j.resident_writes_ = static_cast<int32_t>(index.size());
  j.fills_ = static_cast<int32_t>(pool.size());
  // In the order of the *_at() accessors.
  for (const auto* part : {&src, &dst, &index, &page, &pool, &seq, &logical}) {
    j.flat_.insert(j.flat_.end(), part->begin(), part->end());
  }
  return j;
}

}  // namespace freekv::gpu
