// BlockAllocator: the page store's memory. Hands out fixed-size blocks (one HND block
// per (sequence, layer, page)) carved from host-memory chunks, within a byte capacity.
//
// Policy, in the spirit of LevelDB's arena:
// - Chunks of `chunk_bytes` are obtained lazily from a ChunkAllocator, never one huge
//   allocation; `capacity_bytes` bounds the bytes of chunks reserved (held), whether or
//   not their blocks are in use.
// - Sessions differ in geometry, so blocks of several sizes coexist: each distinct
//   block size has a size class with its own chunks. Within a chunk, blocks are slots
//   [0, chunk_bytes / block_bytes); never-used slots are handed out in address order
//   (so consecutive allocations from a fresh chunk are adjacent, which lets the recall
//   path merge runs) and freed slots go on the chunk's free stack. Allocation and free
//   cost O(1) per block.
// - AllocateBlocks is all or nothing: it checks up front that the request fits and
//   prepares any new chunks before it changes anything, so a refused request (capacity,
//   a failed mmap, a refusing chunk observer) leaves the allocator exactly as it was.
// - Empty chunks: a chunk whose last block is freed leaves its size class and becomes a
//   spare, reusable by any size class without a new mmap or transport registration
//   (which can be slow: ucp_mem_map, cudaHostRegister). Spares beyond
//   `max_spare_chunks` are returned to the system, so that memory a closed session held
//   in one geometry serves the next session in another and the process does not sit on
//   its peak forever. Spares count as reserved bytes.
// - Unused space: the tail of a chunk that is not a whole block, and free slots of one
//   size class, are not usable by another class; capacity is chunk bytes, not block
//   bytes.
//
// Thread-safety: all methods may be called from any thread concurrently. Chunks are
// released (munmap, observer removal hooks) outside the mutex, so for that moment the
// memory held can exceed the capacity by the chunks being released.
#ifndef FREEKV_KVSERVICE_BLOCK_ALLOCATOR_H_
#define FREEKV_KVSERVICE_BLOCK_ALLOCATOR_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "kvservice/chunk_allocator.h"
#include "kvservice/host_chunk.h"

namespace freekv {

// One block of store memory, valid from AllocateBlocks until it is passed to
// FreeBlocks. A plain value; the allocator owns the memory.
struct Block {
  std::byte* data = nullptr;
  size_t bytes = 0;
  // Where the block lives, so that FreeBlocks finds it in O(1) and can tell a foreign
  // or already-freed block; callers neither read nor change these.
  uint32_t chunk = 0;
  uint32_t slot = 0;
};

class BlockAllocator {
 public:
  struct Options {
    // Bytes of chunks the allocator may hold at once; at least one chunk.
    size_t capacity_bytes = 0;
    // Bytes per chunk; a multiple of the page size. The largest block is one chunk.
    size_t chunk_bytes = size_t{64} << 20;
    // Empty chunks kept for reuse before further ones are returned to the system.
    size_t max_spare_chunks = 2;
  };

  struct Stats {
    size_t bytes_used = 0;      // bytes of live blocks
    size_t bytes_reserved = 0;  // bytes of chunks held, spares included
    size_t capacity = 0;        // Options::capacity_bytes
    size_t blocks = 0;          // live blocks
    size_t chunks = 0;          // chunks held, spares included
    size_t spare_chunks = 0;    // empty chunks held for reuse
    // Chunks the ChunkAllocator failed to provide (mmap, pinning or a chunk observer
    // refused); exported as freekv_store_chunk_allocation_failures_total. Requests
    // refused for capacity are not counted here.
    uint64_t chunk_allocation_failures = 0;
  };

  // INVALID_ARGUMENT naming the option when chunk_bytes is zero or not a multiple of
  // the page size, or capacity_bytes is smaller than one chunk. `chunks` may be null
  // for a HostChunkAllocator.
  static absl::StatusOr<std::unique_ptr<BlockAllocator>> Create(
      const Options& options, std::unique_ptr<ChunkAllocator> chunks = nullptr);

  // Releases every chunk; blocks still allocated become invalid.
  ~BlockAllocator();
  BlockAllocator(const BlockAllocator&) = delete;
  BlockAllocator& operator=(const BlockAllocator&) = delete;

  // `count` blocks of `block_bytes` each, in allocation order (count 0: none), or:
  // INVALID_ARGUMENT when block_bytes is 0 or larger than a chunk, or count*block_bytes
  // overflows; RESOURCE_EXHAUSTED naming capacity, used, reserved and requested bytes
  // when the request does not fit; the ChunkAllocator's error when a chunk cannot be
  // made. On error nothing is allocated and nothing changes but the failure count.
  absl::StatusOr<std::vector<Block>> AllocateBlocks(size_t block_bytes, size_t count);

  // Returns blocks to their size class. All or nothing: if any block is not currently
  // allocated by this allocator (foreign, already freed, listed twice, or altered),
  // FAILED_PRECONDITION naming its index, and nothing is freed. Freed slots are reused
  // last-freed first, pushed in reverse: freeing a batch from a chunk that keeps other
  // live blocks, then allocating as many of that size, returns the same blocks in the
  // same order (adjacent runs stay adjacent).
  absl::Status FreeBlocks(absl::Span<const Block> blocks);

  Stats stats() const;

 private:
  struct Chunk;
  struct SizeClass {
    std::vector<uint32_t> available;  // ids of this class's chunks with a free slot
    size_t chunks = 0;
    size_t free_blocks = 0;  // free slots over all of this class's chunks
  };

  BlockAllocator(const Options& options, std::unique_ptr<ChunkAllocator> chunks);

  absl::Status CheckRequest(size_t block_bytes, size_t count, size_t new_chunks) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  size_t NewChunksNeeded(size_t block_bytes, size_t count) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status PrepareChunks(size_t count, std::vector<HostChunk>& fresh)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void AddChunkToClass(size_t block_bytes, SizeClass& cls, std::vector<HostChunk>& fresh)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void TakeSlots(Chunk& chunk, SizeClass& cls, size_t count, std::vector<Block>& out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RemoveFromAvailable(Chunk& chunk, SizeClass& cls)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status MarkFreed(absl::Span<const Block> blocks)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ReleaseSlot(const Block& block, std::vector<HostChunk>& doomed)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RetireChunk(uint32_t id, std::vector<HostChunk>& doomed)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const Options options_;
  const std::unique_ptr<ChunkAllocator> chunk_allocator_;

  mutable absl::Mutex mu_;
  // Indexed by chunk id; null where an id is unused (its chunk was released).
  std::vector<std::unique_ptr<Chunk>> chunks_ ABSL_GUARDED_BY(mu_);
  std::vector<uint32_t> unused_ids_ ABSL_GUARDED_BY(mu_);
  std::vector<uint32_t> spares_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<size_t, SizeClass> classes_ ABSL_GUARDED_BY(mu_);
  size_t bytes_used_ ABSL_GUARDED_BY(mu_) = 0;
  size_t bytes_reserved_ ABSL_GUARDED_BY(mu_) = 0;
  size_t blocks_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t chunk_allocation_failures_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace freekv

#endif  // FREEKV_KVSERVICE_BLOCK_ALLOCATOR_H_
