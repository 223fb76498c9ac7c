// GpuDecoder::Impl's page work around a real decode step (page_plan.h StepJobs):
// promotions into slots before the step, the next tokens and the filled pages after.
#include <algorithm>

#include "absl/strings/str_cat.h"
#include "worker/freekv_gpu/decoder_impl.h"
#include "worker/freekv_gpu/generate_ops.h"
#include "worker/freekv_gpu/generation.h"

namespace freekv::gpu {
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
  if (jobs.promotions() == 0) return absl::OkStatus();
  const size_t n = jobs.promotions(), r = jobs.resident_writes();
  for (LayerState& l : layers) {
    FREEKV_RETURN_IF_ERROR(CopyPagesCuda(ConstView(l.view), dev.subspan(jobs.promote_src_at(), n),
                                         l.view, dev.subspan(jobs.promote_dst_at(), n), stream));
    FREEKV_RETURN_IF_ERROR(ScatterWordsCuda(l.resident.span<int32_t>(),
                                            dev.subspan(jobs.resident_index_at(), r),
                                            dev.subspan(jobs.resident_page_at(), r), stream));
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
  if (jobs.fills() == 0) return absl::OkStatus();
  const size_t f = jobs.fills();
  std::vector<const kernels::PagedKv<BFloat16>*> views;
  for (const LayerState& l : layers) views.push_back(&l.view);
  return KeepPages(views, dev.subspan(jobs.fill_pool_at(), f), dev.subspan(jobs.fill_seq_at(), f),
                   dev.subspan(jobs.fill_logical_at(), f), jobs.filled());
}

absl::Status GpuDecoder::Impl::WriteSelectedPages(const StepInputs& in) {
  const int32_t lists = in.num_lists();
  const absl::Span<int32_t> dev = inputs.span<int32_t>();
  return SelectedToTableCuda(
      selected.span<const int32_t>().subspan(0, size_t(lists) * options.layout.selected),
      options.layout.selected, model->config().num_kv_heads, SeqPages::Full(shape.full_pages),
      dev.subspan(in.selected_start_at(), lists),
      dev.subspan(in.indices_at(), in.indices_size()), stream);
}

}  // namespace freekv::gpu
