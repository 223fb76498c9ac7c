// The GPU backend of a build without CUDA: it refuses, and says how to get one.
#include "worker/gpu_backend.h"

namespace freekv {
namespace {

absl::Status NoCuda() {
  return absl::FailedPreconditionError(
      "this worker was built without CUDA; build with --config=cuda (see README: "
      "./freekv gpu)");
}

}  // namespace

absl::Status PrepareGpuProcess() { return NoCuda(); }

absl::StatusOr<std::unique_ptr<DecodeBackend>> MakeGpuBackend(const ModelWeights&,
                                                              const BackendOptions&) {
  return NoCuda();
}

}  // namespace freekv
