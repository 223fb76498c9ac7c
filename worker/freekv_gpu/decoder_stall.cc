// GpuDecoder::Impl's bounded waits for the GPU and the report of a stalled decode
// (decoder_impl.h): a recall that never lands holds the stream at a gate for ever, and
// the host would wait for ever with it; instead the wait ends with an error that says
// where every layer's gates and stamps stand, and the GPU is let go.
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "worker/freekv_gpu/decoder_impl.h"

namespace freekv::gpu {
absl::Status GpuDecoder::Impl::WaitForEvent(const kernels::CudaEvent& event,
                                            absl::string_view what) {
  const absl::Status waited = event.WaitFor(kStallLimit);
  return absl::IsDeadlineExceeded(waited) ? Stalled(what) : waited;
}

absl::Status GpuDecoder::Impl::WaitForStream(absl::string_view what) {
  FREEKV_RETURN_IF_ERROR(drained[0].Record(stream));
  return WaitForEvent(drained[0], what);
}

absl::Status GpuDecoder::Impl::Stalled(absl::string_view what) {
  std::string where;
  // How far the stream got: the last step whose end it has run.
  int32_t finished = 0;
  while (finished < steps_enqueued && step_end[finished].WaitFor(absl::ZeroDuration()).ok()) {
    ++finished;
  }
  absl::StrAppend(&where, "the stream ran ", finished, " of the ", steps_enqueued,
                  " steps enqueued; ");
  if (signals != nullptr) {
    absl::StrAppend(&where, "(host words of the gates below; the kvservice opens most "
                            "through signal words, not shown) ");
  }
  // The gates are pinned: the host reads them directly (their value and the slot they
  // name, resident_ops.h GateWord). Their signal words are device memory, and a copy
  // to read them could queue behind the held stream: the report says so instead.
  auto gate_text = [](const uint32_t* word) {
    const uint32_t w = __atomic_load_n(word, __ATOMIC_ACQUIRE);
    return absl::StrCat(GateValue(w), GateSlot(w) >= 0 ? absl::StrCat(" (slot ", GateSlot(w), ")")
                                                       : std::string());
  };
  for (int l = 0; l < L(); ++l) {
    absl::StrAppend(&where, "layer ", l, ": speculation gate ", gate_text(gate(l, false)),
                    ", correction gate ", gate_text(gate(l, true)));
    if (driver != nullptr) {
      absl::StrAppend(&where, ", diff stamps ",
                      __atomic_load_n(layers[l].diff.stamp(), __ATOMIC_ACQUIRE), " and ",
                      __atomic_load_n(layers[l].diff.spec_stamp(), __ATOMIC_ACQUIRE),
                      " (speculation)",
                      " (heads flagged ",
                      __atomic_load_n(layers[l].diff.num_flagged(), __ATOMIC_ACQUIRE), ")");
    }
    absl::StrAppend(&where, "; ");
  }
  if (driver != nullptr) absl::StrAppend(&where, driver->Describe(), "; ");
  if (generation != nullptr && generation->offloader != nullptr) {
    absl::StrAppend(&where, generation->offloader->Describe(), "; ");
  }
  // Every hold passes from now on.
  __atomic_store_n(abort_word(), 1u, __ATOMIC_RELEASE);
  absl::Status report = absl::DeadlineExceededError(
      absl::StrCat("the decode stalled: the GPU did not reach ", what, " within ",
                   absl::FormatDuration(kStallLimit), ". ", where,
                   "every hold now passes so that the GPU drains"));
  // Logged as well as returned: if the GPU does not drain, the caller never returns it.
  Log(LogLevel::kError, "%s", report.message());
  return report;
}

}  // namespace freekv::gpu
