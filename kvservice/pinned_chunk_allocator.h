// PinnedChunkAllocator: page-store chunks pinned for DMA, so that recall copies from
// the store run at the PCIe ceiling (pageable memory goes through a staging copy).
//
// Wraps another ChunkAllocator (normally HostChunkAllocator): each chunk it returns is
// registered with cudaHostRegister(cudaHostRegisterPortable), usable by every device of
// this process, and gets a release action that unregisters it before it is unmapped.
// A failed pin fails that allocation with the CUDA error named -- never a silent
// fallback to pageable memory -- and BlockAllocator counts it
// (freekv_store_chunk_allocation_failures_total). Create pins and unpins one probe
// chunk so that a node that cannot pin fails at start-up, not at the first offload.
//
// Thread-safe: Allocate may be called from any thread (cudaHostRegister is).
#ifndef FREEKV_KVSERVICE_PINNED_CHUNK_ALLOCATOR_H_
#define FREEKV_KVSERVICE_PINNED_CHUNK_ALLOCATOR_H_

#include <cstddef>
#include <memory>

#include "absl/status/statusor.h"
#include "kvservice/chunk_allocator.h"

namespace freekv {

class PinnedChunkAllocator : public ChunkAllocator {
 public:
  // FAILED_PRECONDITION when this process sees no GPU; the probe's error when pinning
  // `probe_bytes` fails (0 skips the probe).
  static absl::StatusOr<std::unique_ptr<PinnedChunkAllocator>> Create(
      std::unique_ptr<ChunkAllocator> inner, size_t probe_bytes);

  absl::StatusOr<HostChunk> Allocate(size_t bytes) override;

 private:
  explicit PinnedChunkAllocator(std::unique_ptr<ChunkAllocator> inner)
      : inner_(std::move(inner)) {}
  const std::unique_ptr<ChunkAllocator> inner_;
};

// Whether `address` lies in host memory pinned with CUDA (registered or allocated by
// it); an error when the CUDA runtime cannot be asked. For tests and checks.
absl::StatusOr<bool> IsPinnedHostMemory(const void* address);

}  // namespace freekv

#endif  // FREEKV_KVSERVICE_PINNED_CHUNK_ALLOCATOR_H_
