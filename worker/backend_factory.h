// Picks the decode backend of a device (decode_backend.h): CpuBackend (cpu_backend.h)
// or the GPU backend (gpu_backend.h). Thread-safe; the backends follow their headers.
#ifndef FREEKV_WORKER_BACKEND_FACTORY_H_
#define FREEKV_WORKER_BACKEND_FACTORY_H_

#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "worker/decode_backend.h"
#include "worker/model/model_weights.h"

namespace freekv {

// Call first thing in main, before any CUDA call: for the GPU, PrepareGpuProcess
// (FAILED_PRECONDITION in a build without CUDA); nothing for the CPU.
absl::Status PrepareDevice(Device device);

// The CPU borrows the weights (they must outlive the backend); the GPU copies them.
absl::StatusOr<std::unique_ptr<DecodeBackend>> MakeBackend(Device device,
                                                           const ModelWeights& weights,
                                                           const BackendOptions& options);

}  // namespace freekv

#endif  // FREEKV_WORKER_BACKEND_FACTORY_H_
