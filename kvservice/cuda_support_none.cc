// cuda_support.h for builds without CUDA.
#include "kvservice/cuda_support.h"

namespace freekv {

bool BuiltWithCuda() { return false; }

int VisibleGpuCount() { return 0; }

absl::StatusOr<std::unique_ptr<ChunkAllocator>> MakePinnedChunkAllocator(
    std::unique_ptr<ChunkAllocator>, size_t) {
  return absl::UnimplementedError(
      "this kvservice was built without CUDA (build with --config=cuda to pin the store)");
}

absl::StatusOr<std::unique_ptr<TransportFactory>> MakeCudaIpcTransportFactory(
    const CudaSupportOptions&) {
  return absl::UnimplementedError("this kvservice was built without CUDA");
}

}  // namespace freekv
