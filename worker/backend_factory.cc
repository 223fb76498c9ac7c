#include "worker/backend_factory.h"

#include "worker/cpu_backend.h"
#include "worker/gpu_backend.h"

namespace freekv {

absl::Status PrepareDevice(Device device) {
  return device == Device::kGpu ? PrepareGpuProcess() : absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<DecodeBackend>> MakeBackend(
    Device device, const ModelWeights& weights, const BackendOptions& options) {
  if (device == Device::kGpu) return MakeGpuBackend(weights, options);
  absl::StatusOr<std::unique_ptr<CpuBackend>> cpu = CpuBackend::Create(weights, options);
  if (!cpu.ok()) return cpu.status();
  return std::unique_ptr<DecodeBackend>(*std::move(cpu));
}

}  // namespace freekv
