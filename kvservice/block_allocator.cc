#include "kvservice/block_allocator.h"

#include <algorithm>
#include <cstdint>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"

namespace freekv {

namespace {
constexpr size_t kNotAvailable = std::numeric_limits<size_t>::max();
}  // namespace

// One chunk and the state of its slots. A spare chunk has block_bytes 0 and belongs to
// no size class; AddChunkToClass re-carves it for a block size.
struct BlockAllocator::Chunk {
  HostChunk memory;
  uint32_t id = 0;
  size_t block_bytes = 0;
  uint32_t slots = 0;  // whole blocks that fit
  uint32_t bump = 0;   // slots [bump, slots) have not been handed out since carving
  uint32_t live = 0;
  std::vector<uint32_t> free_slots;      // freed slots below bump, reused newest first
  std::vector<bool> in_use;              // catches double and foreign frees
  size_t available_pos = kNotAvailable;  // index in its class's `available`
};

absl::StatusOr<std::unique_ptr<BlockAllocator>> BlockAllocator::Create(
    const Options& options, std::unique_ptr<ChunkAllocator> chunks) {
  const size_t page = HostChunk::PageSize();
  if (options.chunk_bytes == 0 || options.chunk_bytes % page != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("chunk_bytes ", options.chunk_bytes,
                     " must be a positive multiple of the page size ", page));
  }
  if (options.capacity_bytes < options.chunk_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "capacity_bytes ", options.capacity_bytes,
        " is smaller than one chunk (chunk_bytes ", options.chunk_bytes, ")"));
  }
  if (chunks == nullptr) chunks = std::make_unique<HostChunkAllocator>();
  return std::unique_ptr<BlockAllocator>(new BlockAllocator(options, std::move(chunks)));
}

BlockAllocator::BlockAllocator(const Options& options,
                               std::unique_ptr<ChunkAllocator> chunks)
    : options_(options), chunk_allocator_(std::move(chunks)) {}

BlockAllocator::~BlockAllocator() = default;

absl::StatusOr<std::vector<Block>> BlockAllocator::AllocateBlocks(size_t block_bytes,
                                                                  size_t count) {
  const size_t chunk_bytes = options_.chunk_bytes;
  if (block_bytes == 0 || block_bytes > chunk_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "block_bytes ", block_bytes, " must be in [1, chunk_bytes ", chunk_bytes, "]"));
  }
  if (chunk_bytes / block_bytes > std::numeric_limits<uint32_t>::max()) {
    return absl::InvalidArgumentError(
        absl::StrCat("block_bytes ", block_bytes, " is too small for chunk_bytes ",
                     chunk_bytes, " (more than 2^32 blocks per chunk)"));
  }
  if (count > std::numeric_limits<size_t>::max() / block_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("count ", count, " of block_bytes ", block_bytes, " overflows"));
  }
  if (count == 0) return std::vector<Block>();

  // Declared before the lock so that chunks prepared but not used (only possible when
  // a ChunkAllocator returns more than asked) are released after it is dropped.
  std::vector<HostChunk> fresh;
  absl::MutexLock lock(&mu_);
  const size_t new_chunks = NewChunksNeeded(block_bytes, count);
  if (absl::Status fits = CheckRequest(block_bytes, count, new_chunks); !fits.ok()) {
    return fits;
  }
  const size_t from_spares = std::min(new_chunks, spares_.size());
  if (absl::Status made = PrepareChunks(new_chunks - from_spares, fresh); !made.ok()) {
    return made;
  }

  // From here nothing can fail.
  SizeClass& cls = classes_[block_bytes];
  std::vector<Block> out;
  out.reserve(count);
  while (out.size() < count) {
    if (cls.available.empty()) AddChunkToClass(block_bytes, cls, fresh);
    TakeSlots(*chunks_[cls.available.back()], cls, count - out.size(), out);
  }
  bytes_used_ += count * block_bytes;
  blocks_ += count;
  return out;
}

size_t BlockAllocator::NewChunksNeeded(size_t block_bytes, size_t count) const {
  const auto it = classes_.find(block_bytes);
  const size_t free_blocks = it == classes_.end() ? 0 : it->second.free_blocks;
  if (count <= free_blocks) return 0;
  // Chunks are at least chunk_bytes, so this may overestimate, never underestimate.
  const size_t per_chunk = options_.chunk_bytes / block_bytes;
  return (count - free_blocks + per_chunk - 1) / per_chunk;
}

absl::Status BlockAllocator::CheckRequest(size_t block_bytes, size_t count,
                                          size_t new_chunks) const {
  const size_t unreserved = options_.capacity_bytes > bytes_reserved_
                                ? options_.capacity_bytes - bytes_reserved_
                                : 0;
  const size_t obtainable = spares_.size() + unreserved / options_.chunk_bytes;
  if (new_chunks <= obtainable) return absl::OkStatus();
  return absl::ResourceExhaustedError(
      absl::StrCat("page store capacity exhausted: capacity ", options_.capacity_bytes,
                   " bytes, used ", bytes_used_, " bytes (reserved ", bytes_reserved_,
                   "), requested ", count * block_bytes, " bytes (", count, " blocks of ",
                   block_bytes, "), needing ", new_chunks, " more chunks of ",
                   options_.chunk_bytes, " bytes where ", obtainable, " can be had"));
}

absl::Status BlockAllocator::PrepareChunks(size_t count, std::vector<HostChunk>& fresh) {
  fresh.reserve(count);
  for (size_t i = 0; i < count; ++i) {
    absl::StatusOr<HostChunk> chunk = chunk_allocator_->Allocate(options_.chunk_bytes);
    if (!chunk.ok()) {
      ++chunk_allocation_failures_;
      return chunk.status();  // The caller's `fresh` releases what was made.
    }
    fresh.push_back(*std::move(chunk));
  }
  return absl::OkStatus();
}

void BlockAllocator::AddChunkToClass(size_t block_bytes, SizeClass& cls,
                                     std::vector<HostChunk>& fresh) {
  uint32_t id;
  if (!spares_.empty()) {
    id = spares_.back();
    spares_.pop_back();
  } else {
    // PrepareChunks made enough chunks for every one not taken from the spares.
    auto chunk = std::make_unique<Chunk>();
    chunk->memory = std::move(fresh.back());
    fresh.pop_back();
    bytes_reserved_ += chunk->memory.size();
    if (unused_ids_.empty()) {
      id = static_cast<uint32_t>(chunks_.size());
      chunks_.emplace_back();
    } else {
      id = unused_ids_.back();
      unused_ids_.pop_back();
    }
    chunk->id = id;
    chunks_[id] = std::move(chunk);
  }
  Chunk& chunk = *chunks_[id];
  chunk.block_bytes = block_bytes;
  chunk.slots = static_cast<uint32_t>(chunk.memory.size() / block_bytes);
  chunk.bump = 0;
  chunk.live = 0;
  chunk.free_slots.clear();
  chunk.free_slots.reserve(chunk.slots);  // so that FreeBlocks never allocates
  chunk.in_use.assign(chunk.slots, false);
  chunk.available_pos = cls.available.size();
  cls.available.push_back(id);
  ++cls.chunks;
  cls.free_blocks += chunk.slots;
}

void BlockAllocator::TakeSlots(Chunk& chunk, SizeClass& cls, size_t count,
                               std::vector<Block>& out) {
  const size_t take = std::min<size_t>(count, chunk.slots - chunk.live);
  for (size_t i = 0; i < take; ++i) {
    uint32_t slot;
    if (!chunk.free_slots.empty()) {
      slot = chunk.free_slots.back();
      chunk.free_slots.pop_back();
    } else {
      slot = chunk.bump++;
    }
    chunk.in_use[slot] = true;
    out.push_back(Block{chunk.memory.data() + size_t{slot} * chunk.block_bytes,
                        chunk.block_bytes, chunk.id, slot});
  }
  chunk.live += static_cast<uint32_t>(take);
  cls.free_blocks -= take;
  if (chunk.live == chunk.slots) RemoveFromAvailable(chunk, cls);
}

void BlockAllocator::RemoveFromAvailable(Chunk& chunk, SizeClass& cls) {
  const size_t pos = chunk.available_pos;
  const uint32_t moved = cls.available.back();
  cls.available[pos] = moved;
  chunks_[moved]->available_pos = pos;
  cls.available.pop_back();
  chunk.available_pos = kNotAvailable;
}

absl::Status BlockAllocator::FreeBlocks(absl::Span<const Block> blocks) {
  std::vector<HostChunk> doomed;  // released after the lock is dropped
  absl::MutexLock lock(&mu_);
  if (absl::Status marked = MarkFreed(blocks); !marked.ok()) return marked;
  // In reverse, so that the free stacks hand the blocks out again in this order.
  for (size_t i = blocks.size(); i-- > 0;) ReleaseSlot(blocks[i], doomed);
  return absl::OkStatus();
}

absl::Status BlockAllocator::MarkFreed(absl::Span<const Block> blocks) {
  for (size_t i = 0; i < blocks.size(); ++i) {
    const Block& b = blocks[i];
    Chunk* chunk = b.chunk < chunks_.size() ? chunks_[b.chunk].get() : nullptr;
    const bool live = chunk != nullptr && b.bytes != 0 && chunk->block_bytes == b.bytes &&
                      b.slot < chunk->slots &&
                      b.data == chunk->memory.data() + size_t{b.slot} * b.bytes &&
                      chunk->in_use[b.slot];
    if (!live) {
      for (size_t j = 0; j < i; ++j)
        chunks_[blocks[j].chunk]->in_use[blocks[j].slot] = true;
      return absl::FailedPreconditionError(absl::StrCat(
          "FreeBlocks: block ", i, " (data 0x",
          absl::Hex(reinterpret_cast<uintptr_t>(b.data)), ", bytes ", b.bytes,
          ") is not allocated here: foreign, already freed, listed twice or "
          "altered; nothing was freed"));
    }
    chunk->in_use[b.slot] = false;
  }
  return absl::OkStatus();
}

void BlockAllocator::ReleaseSlot(const Block& block, std::vector<HostChunk>& doomed) {
  Chunk& chunk = *chunks_[block.chunk];
  SizeClass& cls = classes_.find(block.bytes)->second;
  chunk.free_slots.push_back(block.slot);
  --chunk.live;
  ++cls.free_blocks;
  bytes_used_ -= block.bytes;
  --blocks_;
  if (chunk.available_pos == kNotAvailable) {
    chunk.available_pos = cls.available.size();
    cls.available.push_back(chunk.id);
  }
  if (chunk.live == 0) RetireChunk(chunk.id, doomed);
}

void BlockAllocator::RetireChunk(uint32_t id, std::vector<HostChunk>& doomed) {
  Chunk& chunk = *chunks_[id];
  const auto cls = classes_.find(chunk.block_bytes);
  RemoveFromAvailable(chunk, cls->second);
  cls->second.free_blocks -= chunk.slots;
  if (--cls->second.chunks == 0) classes_.erase(cls);
  chunk.block_bytes = 0;
  if (spares_.size() < options_.max_spare_chunks) {
    spares_.push_back(id);
    return;
  }
  bytes_reserved_ -= chunk.memory.size();
  doomed.push_back(std::move(chunk.memory));
  chunks_[id].reset();
  unused_ids_.push_back(id);
}

BlockAllocator::Stats BlockAllocator::stats() const {
  absl::MutexLock lock(&mu_);
  Stats stats;
  stats.bytes_used = bytes_used_;
  stats.bytes_reserved = bytes_reserved_;
  stats.capacity = options_.capacity_bytes;
  stats.blocks = blocks_;
  stats.chunks = chunks_.size() - unused_ids_.size();
  stats.spare_chunks = spares_.size();
  stats.chunk_allocation_failures = chunk_allocation_failures_;
  return stats;
}

}  // namespace freekv
