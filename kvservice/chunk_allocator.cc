#include "kvservice/chunk_allocator.h"

#include <sys/mman.h>

#include <utility>

#include "absl/strings/str_cat.h"

namespace freekv {

absl::StatusOr<HostChunk> HostChunkAllocator::Allocate(size_t bytes) {
  absl::StatusOr<HostChunk> chunk = HostChunk::Map(bytes);
  if (chunk.ok()) {
    // A hint only: kernels without THP, or with it disabled, refuse it harmlessly.
    madvise(chunk->data(), chunk->size(), MADV_HUGEPAGE);
  }
  return chunk;
}

ObservedChunkAllocator::ObservedChunkAllocator(std::unique_ptr<ChunkAllocator> inner,
                                               ChunkObserver observer)
    : inner_(std::move(inner)), observer_(std::move(observer)) {}

absl::StatusOr<HostChunk> ObservedChunkAllocator::Allocate(size_t bytes) {
  absl::StatusOr<HostChunk> chunk = inner_->Allocate(bytes);
  if (!chunk.ok()) return chunk;
  if (observer_.on_chunk_added) {
    absl::Status added = observer_.on_chunk_added(chunk->data(), chunk->size());
    if (!added.ok()) {  // `chunk` is unmapped on the way out.
      return absl::Status(
          added.code(), absl::StrCat("chunk observer refused a chunk of ", chunk->size(),
                                     " bytes: ", added.message()));
    }
  }
  if (observer_.on_chunk_removed) {
    std::byte* const base = chunk->data();
    const size_t size = chunk->size();
    chunk->AddReleaseAction(
        [removed = observer_.on_chunk_removed, base, size] { removed(base, size); });
  }
  return chunk;
}

}  // namespace freekv
