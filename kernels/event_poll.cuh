// Waiting for a CUDA event from the host without blocking inside the driver
// (cudaEventSynchronize spins in the driver, or sleeps there with blocking sync, and
// cannot give up at a deadline). Shared by the worker's events (cuda_util.h
// CudaEvent::WaitFor) and the kvservice's (kvservice/cuda_ipc_transport.cu). Any thread.
#ifndef FREEKV_KERNELS_EVENT_POLL_CUH_
#define FREEKV_KERNELS_EVENT_POLL_CUH_

#include <cuda_runtime.h>

#include <thread>

#include "absl/status/statusor.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "kernels/cuda_check.cuh"

namespace freekv {
namespace kernels {

// Polls `event` until the work before its last record has run (true) or `deadline`
// passes (false); between queries it sleeps `pause`, or only yields the CPU when
// `pause` is zero. A CUDA error is returned naming `what`.
inline absl::StatusOr<bool> PollEvent(cudaEvent_t event, absl::Time deadline,
                                      absl::Duration pause, const char* what) {
  for (;;) {
    const cudaError_t state = cudaEventQuery(event);
    if (state == cudaSuccess) return true;
    if (state != cudaErrorNotReady) return CudaStatus(state, what);
    if (absl::Now() > deadline) return false;
    if (pause > absl::ZeroDuration()) {
      absl::SleepFor(pause);
    } else {
      std::this_thread::yield();
    }
  }
}

}  // namespace kernels
}  // namespace freekv

#endif  // FREEKV_KERNELS_EVENT_POLL_CUH_
