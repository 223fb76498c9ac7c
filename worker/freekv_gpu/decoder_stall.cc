// GpuDecoder::Impl's bounded waits for the GPU and the report of a stalled decode
// (decoder_impl.h): a recall that never lands holds the stream at a gate for ever, and
// the host would wait for ever with it; instead the wait ends with an error that says
// where every layer's gates and stamps stand, and the GPU is let go.
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
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
  // The decode stream is the stuck one: read and open the gates on a stream of their own.
  absl::StatusOr<kernels::CudaStream> side = kernels::CudaStream::Create();
  std::vector<uint32_t> values(kGateWords * size_t(L()));
  absl::Status read = side.status();
  if (read.ok()) {
    read = kernels::CopyAsync(values.data(), gates.data(), values.size() * 4, side->get());
  }
  if (read.ok()) read = side->Synchronize();
  for (int l = 0; l < L() && read.ok(); ++l) {
    absl::StrAppend(&where, "layer ", l, ": speculation gate ", values[2 * l],
                    ", correction gate ", values[2 * l + 1], ", attended gate ",
                    values[2 * size_t(L()) + l]);
    if (driver != nullptr) {
      absl::StrAppend(&where, ", diff stamp ",
                      __atomic_load_n(layers[l].diff.stamp(), __ATOMIC_ACQUIRE),
                      " (heads flagged ",
                      __atomic_load_n(layers[l].diff.num_flagged(), __ATOMIC_ACQUIRE), ")");
    }
    absl::StrAppend(&where, "; ");
  }
  if (!read.ok()) absl::StrAppend(&where, "gates unreadable (", read.message(), "); ");
  if (driver != nullptr) absl::StrAppend(&where, driver->Describe(), "; ");
  if (generation != nullptr && generation->offloader != nullptr) {
    absl::StrAppend(&where, generation->offloader->Describe(), "; ");
  }
  for (int l = 0; l < L() && side.ok(); ++l) {
    for (uint32_t* word : {gate(l, false), gate(l, true), attended_gate(l)}) {
      SetGate(word, kGateFarPast, side->get()).IgnoreError();
    }
  }
  return absl::DeadlineExceededError(
      absl::StrCat("the decode stalled: the GPU did not reach ", what, " within ",
                   absl::FormatDuration(kStallLimit), ". ", where,
                   "every gate is now open so that the GPU drains"));
}

}  // namespace freekv::gpu
