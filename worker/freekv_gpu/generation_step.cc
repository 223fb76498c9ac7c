// GpuDecoder::Impl's page work around a real decode step (decoder_impl.h StepJobs):
// promotions into slots before the step, the next tokens and the filled pages after.
#include <algorithm>

#include "absl/strings/str_cat.h"
#include "worker/freekv_gpu/decoder_impl.h"
#include "worker/freekv_gpu/generate_ops.h"
#include "worker/freekv_gpu/generation.h"

namespace freekv::gpu {
GpuDecoder::Impl::StepJobs GpuDecoder::Impl::PlanStepJobs(int32_t t) const {
  const int32_t P = shape.page_tokens, kvh = model->config().num_kv_heads;
  const ResidentLayout& lay = options.layout;
  const bool resident = shape.sparse && !shape.over_full;
  std::vector<int64_t> positions;
  for (int64_t len : options.prompt_lengths) positions.push_back(len + t);
  StepJobs j;
  std::vector<int32_t> src, dst, at, page, pool, seq, logical;
  if (resident) {
    const std::vector<int64_t> promoted = PromotionsAt(positions, P, lay);
    for (int32_t b = 0; b < options.batch; ++b) {
      if (promoted[b] < 0) continue;
      const int32_t slot = static_cast<int32_t>(promoted[b] - lay.sink);
      src.push_back(lay.window_page(b, promoted[b]));
      dst.push_back(lay.selected_page(b, slot));
      for (int32_t h = 0; h < kvh; ++h) {
        at.push_back((b * kvh + h) * lay.selected + slot);
        page.push_back(static_cast<int32_t>(promoted[b]));
      }
    }
  }
  for (int32_t b = 0; b < options.batch && shape.sparse; ++b) {
    // The step's token completes its page: a candidate once it leaves the window.
    const int64_t p = positions[b] / P;
    if (positions[b] % P != P - 1 || p < lay.sink) continue;
    pool.push_back(resident ? lay.window_page(b, p)
                            : static_cast<int32_t>(b * shape.full_pages + p));
    seq.push_back(b);
    logical.push_back(static_cast<int32_t>(p));
    j.filled.emplace_back(b, p);
  }
  j.promotions = static_cast<int32_t>(src.size());
  j.resident_writes = static_cast<int32_t>(at.size());
  j.fills = static_cast<int32_t>(pool.size());
  for (const auto* part : {&src, &dst, &at, &page, &pool, &seq, &logical}) {
    j.flat.insert(j.flat.end(), part->begin(), part->end());
  }
  return j;
}

absl::Status GpuDecoder::Impl::BeforeRealStep(int32_t t, const StepJobs& jobs,
                                              absl::Span<const int32_t> dev) {
  Generation& g = *generation;
  const int32_t P = shape.page_tokens;
  const ResidentLayout& lay = options.layout;
  if (g.offloader != nullptr) {
    // A page leaving the window may be selected at this step: it must be stored.
    for (int32_t b = 0; b < options.batch; ++b) {
      const int64_t pos = options.prompt_lengths[b] + t;
      const int64_t leaving = pos / P - lay.window;
      if (pos % P != 0 || leaving < lay.sink) continue;
      const int64_t job = g.offload_job[b][leaving];
      if (job < 0) {
        return absl::InternalError(absl::StrCat("sequence ", b, " page ", leaving,
                                                " leaves the window but was never offloaded"));
      }
      FREEKV_RETURN_IF_ERROR(g.offloader->WaitDone(job));
    }
  }
  if (jobs.promotions == 0) return absl::OkStatus();
  const size_t n = jobs.promotions, r = jobs.resident_writes;
  for (LayerState& l : layers) {
    FREEKV_RETURN_IF_ERROR(CopyPagesCuda(ConstView(l.view), dev.subspan(0, n), l.view,
                                         dev.subspan(n, n), stream));
    FREEKV_RETURN_IF_ERROR(ScatterWordsCuda(l.resident.span<int32_t>(), dev.subspan(2 * n, r),
                                            dev.subspan(2 * n + r, r), stream));
  }
  return absl::OkStatus();
}

absl::Status GpuDecoder::Impl::AfterRealStep(int32_t t, const StepInputs& in,
                                             const StepJobs& jobs,
                                             absl::Span<const int32_t> dev) {
  const ModelConfig& c = model->config();
  const int32_t B = options.batch;
  FREEKV_RETURN_IF_ERROR(model->Classify(B, stream));
  FREEKV_RETURN_IF_ERROR(PickTokensCuda(
      model->logits().subspan(0, size_t(B) * c.vocab_size), c.vocab_size,
      inputs.span<const int32_t>().subspan(in.next_forced_at(), B),
      model->tokens().subspan(0, B),
      generation->picked.span<int32_t>().subspan(size_t(t + 1) * B, B), stream));
  if (jobs.fills == 0) return absl::OkStatus();
  const size_t f = jobs.fills, at = 2 * size_t(jobs.promotions) + jobs.resident_writes;
  std::vector<const kernels::PagedKv<BFloat16>*> views;
  for (const LayerState& l : layers) views.push_back(&l.view);
  return KeepPages(views, dev.subspan(at, f), dev.subspan(at + f, f),
                   dev.subspan(at + 2 * f, f), jobs.filled);
}

absl::Status GpuDecoder::Impl::WriteSelectedPages(const StepInputs& in) {
  const int32_t lists = in.num_lists();
  const absl::Span<int32_t> dev = inputs.span<int32_t>();
  return SelectedToTableCuda(
      selected.span<const int32_t>().subspan(0, size_t(lists) * options.layout.selected),
      options.layout.selected, model->config().num_kv_heads, shape.full_pages,
      dev.subspan(in.selected_start_at(), lists),
      dev.subspan(in.indices_at(), in.indices_size()), stream);
}

}  // namespace freekv::gpu
