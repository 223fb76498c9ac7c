#include "kvservice/pinned_chunk_allocator.h"

#include <utility>

#include "common/log.h"
#include "kvservice/cuda_handles.cuh"

namespace freekv {

absl::StatusOr<std::unique_ptr<PinnedChunkAllocator>> PinnedChunkAllocator::Create(
    std::unique_ptr<ChunkAllocator> inner, size_t probe_bytes) {
  int devices = 0;
  const cudaError_t err = cudaGetDeviceCount(&devices);
  if (err != cudaSuccess || devices == 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "pinning the store needs a GPU and this process sees none (cudaGetDeviceCount: ",
        cudaGetErrorName(err), ", ", devices, " devices)"));
  }
  std::unique_ptr<PinnedChunkAllocator> pinned(new PinnedChunkAllocator(std::move(inner)));
  if (probe_bytes > 0) {
    absl::StatusOr<HostChunk> probe = pinned->Allocate(probe_bytes);
    if (!probe.ok()) {
      return absl::Status(probe.status().code(),
                          absl::StrCat("pinning a probe chunk of ", probe_bytes,
                                       " bytes failed: ", probe.status().message()));
    }
  }  // the probe is unpinned and unmapped here
  return pinned;
}

absl::StatusOr<HostChunk> PinnedChunkAllocator::Allocate(size_t bytes) {
  absl::StatusOr<HostChunk> chunk = inner_->Allocate(bytes);
  if (!chunk.ok()) return chunk;
  void* const base = chunk->data();
  const cudaError_t err =
      cudaHostRegister(base, chunk->size(), cudaHostRegisterPortable);
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear it: a failed pin must not poison later CUDA calls
    return absl::ResourceExhaustedError(absl::StrCat(
        "cudaHostRegister of a store chunk of ", chunk->size(), " bytes failed: ",
        cudaGetErrorName(err), " (", cudaGetErrorString(err), ")"));
  }  // `chunk` is unmapped on the way out of an error return.
  chunk->AddReleaseAction([base] {
    if (const cudaError_t e = cudaHostUnregister(base); e != cudaSuccess) {
      Log(LogLevel::kError, "cudaHostUnregister of a store chunk failed: %s",
          cudaGetErrorName(e));
    }
  });
  return chunk;
}

absl::StatusOr<bool> IsPinnedHostMemory(const void* address) {
  cudaPointerAttributes attributes;
  const cudaError_t err = cudaPointerGetAttributes(&attributes, address);
  if (err != cudaSuccess) {
    cudaGetLastError();
    return gpu::CudaStatus(err, "cudaPointerGetAttributes");
  }
  return attributes.type == cudaMemoryTypeHost;
}

}  // namespace freekv
