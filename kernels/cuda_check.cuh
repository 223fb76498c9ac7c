// CUDA error handling for the .cu files of this folder: every runtime call and every
// launch becomes an absl::Status naming what failed. Internal to kernels/.
#ifndef FREEKV_KERNELS_CUDA_CHECK_CUH_
#define FREEKV_KERNELS_CUDA_CHECK_CUH_

#include <cuda_runtime.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace freekv {
namespace kernels {

inline absl::Status CudaStatus(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(
      absl::StrCat(what, ": ", cudaGetErrorName(err), " (", cudaGetErrorString(err), ")"));
}

// The status of the launch just issued (configuration errors surface here;
// faults during execution surface at the next synchronising call).
inline absl::Status LaunchStatus(const char* kernel) {
  return CudaStatus(cudaGetLastError(), kernel);
}

// Multiprocessors of the device current at the first call (launchers size grids by
// it; 132, an H100's, if the query fails). Thread-safe (static initialisation).
inline int MultiprocessorCount() {
  static const int count = [] {
    int dev = 0, sms = 0;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess) {
      cudaGetLastError();  // clear the error: the fallback is good enough to size grids
      return 132;
    }
    return sms;
  }();
  return count;
}

}  // namespace kernels
}  // namespace freekv

#define FREEKV_CUDA_RETURN_IF_ERROR(call) \
  FREEKV_RETURN_IF_ERROR(::freekv::kernels::CudaStatus((call), #call))

#endif  // FREEKV_KERNELS_CUDA_CHECK_CUH_
