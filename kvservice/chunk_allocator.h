// ChunkAllocator: where the page store gets its host-memory chunks.
//
// The seam between the store's allocation policy (BlockAllocator) and how memory is
// obtained and prepared: HostChunkAllocator maps plain anonymous memory; a CUDA node
// adds an allocator that pins it (cudaHostRegister) by wrapping this one; a transport
// that must register every chunk (UCX: ucp_mem_map) wraps either with
// ObservedChunkAllocator. Each layer that prepares a chunk adds a release action to it
// (HostChunk::AddReleaseAction), so destroying the chunk undoes the layers in reverse.
//
// Thread-safety: implementations must be callable from any thread; BlockAllocator calls
// Allocate with its own mutex held, so calls from one store never overlap.
#ifndef FREEKV_KVSERVICE_CHUNK_ALLOCATOR_H_
#define FREEKV_KVSERVICE_CHUNK_ALLOCATOR_H_

#include <cstddef>
#include <functional>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kvservice/host_chunk.h"

namespace freekv {

class ChunkAllocator {
 public:
  virtual ~ChunkAllocator() = default;
  // A chunk of at least `bytes` bytes, ready for use, or the reason it could not be
  // made. A failed call leaves nothing allocated.
  virtual absl::StatusOr<HostChunk> Allocate(size_t bytes) = 0;
};

// Anonymous mmap'd memory, with a transparent-huge-page hint: chunks are large and
// recall streams through them, so fewer TLB misses is worth the (best-effort) hint.
class HostChunkAllocator : public ChunkAllocator {
 public:
  absl::StatusOr<HostChunk> Allocate(size_t bytes) override;
};

// Called for every chunk as it is created and as it is released, e.g. by a transport
// that registers store memory with UCX. Either may be empty.
//   on_chunk_added: runs after the chunk is mapped; a non-OK status fails the
//     allocation (the chunk is unmapped, on_chunk_removed is not called for it).
//   on_chunk_removed: runs just before the chunk is unmapped, on whichever thread
//     releases it (a FreeBlocks caller or the store's destructor), for every chunk whose
//     on_chunk_added succeeded. Whatever the hooks capture must outlive every chunk.
struct ChunkObserver {
  std::function<absl::Status(std::byte* base, size_t bytes)> on_chunk_added;
  std::function<void(std::byte* base, size_t bytes)> on_chunk_removed;
};

// Wraps another allocator and reports each chunk to an observer.
class ObservedChunkAllocator : public ChunkAllocator {
 public:
  ObservedChunkAllocator(std::unique_ptr<ChunkAllocator> inner, ChunkObserver observer);
  absl::StatusOr<HostChunk> Allocate(size_t bytes) override;

 private:
  const std::unique_ptr<ChunkAllocator> inner_;
  const ChunkObserver observer_;
};

}  // namespace freekv

#endif  // FREEKV_KVSERVICE_CHUNK_ALLOCATOR_H_
