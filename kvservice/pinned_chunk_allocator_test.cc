// PinnedChunkAllocator on a GPU: chunks come back pinned and are unpinned before they
// are unmapped; a chunk that cannot be pinned fails its allocation (never pageable
// memory) and the store counts the failure.
#include "kvservice/pinned_chunk_allocator.h"

#include <cstring>
#include <random>

#include "gtest/gtest.h"
#include "kvservice/block_allocator.h"

namespace freekv {
namespace {

constexpr size_t kChunk = size_t{4} << 20;

std::unique_ptr<ChunkAllocator> Pinned(std::unique_ptr<ChunkAllocator> inner) {
  absl::StatusOr<std::unique_ptr<PinnedChunkAllocator>> pinned =
      PinnedChunkAllocator::Create(std::move(inner), kChunk);
  EXPECT_TRUE(pinned.ok()) << pinned.status();
  return pinned.ok() ? *std::move(pinned) : nullptr;
}

TEST(PinnedChunkAllocatorTest, ChunksArePinnedAndUsable) {
  std::unique_ptr<ChunkAllocator> allocator =
      Pinned(std::make_unique<HostChunkAllocator>());
  ASSERT_NE(allocator, nullptr);
  absl::StatusOr<HostChunk> chunk = allocator->Allocate(kChunk);
  ASSERT_TRUE(chunk.ok()) << chunk.status();
  ASSERT_GE(chunk->size(), kChunk);
  for (size_t offset : {size_t{0}, chunk->size() / 2, chunk->size() - 1}) {
    absl::StatusOr<bool> pinned = IsPinnedHostMemory(chunk->data() + offset);
    ASSERT_TRUE(pinned.ok()) << pinned.status();
    EXPECT_TRUE(*pinned) << "byte " << offset << " of the chunk is not pinned";
  }
  // The memory stays ordinary host memory: random bytes written read back.
  std::mt19937_64 rng(7);
  std::vector<uint64_t> words(chunk->size() / 8);
  for (uint64_t& w : words) w = rng();
  std::memcpy(chunk->data(), words.data(), chunk->size());
  EXPECT_EQ(std::memcmp(chunk->data(), words.data(), chunk->size()), 0);
}

TEST(PinnedChunkAllocatorTest, PlainChunksAreNotPinned) {
  // The control for the test above: IsPinnedHostMemory can say no.
  HostChunkAllocator plain;
  absl::StatusOr<HostChunk> chunk = plain.Allocate(kChunk);
  ASSERT_TRUE(chunk.ok()) << chunk.status();
  absl::StatusOr<bool> pinned = IsPinnedHostMemory(chunk->data());
  ASSERT_TRUE(pinned.ok()) << pinned.status();
  EXPECT_FALSE(*pinned);
}

TEST(PinnedChunkAllocatorTest, ReleaseUnpinsBeforeUnmapping) {
  std::unique_ptr<ChunkAllocator> allocator =
      Pinned(std::make_unique<HostChunkAllocator>());
  ASSERT_NE(allocator, nullptr);
  // Many chunks in turn: a release that did not unregister would leave stale
  // registrations that a new chunk at the same address collides with.
  for (int i = 0; i < 16; ++i) {
    absl::StatusOr<HostChunk> chunk = allocator->Allocate(kChunk);
    ASSERT_TRUE(chunk.ok()) << "round " << i << ": " << chunk.status();
  }
}

TEST(PinnedChunkAllocatorTest, AFailedPinFailsTheAllocationAndIsCounted) {
  // The inner allocator pins each chunk already, so the outer pin is refused
  // (cudaErrorHostMemoryAlreadyRegistered): a real cudaHostRegister failure.
  absl::StatusOr<std::unique_ptr<PinnedChunkAllocator>> inner =
      PinnedChunkAllocator::Create(std::make_unique<HostChunkAllocator>(), 0);
  ASSERT_TRUE(inner.ok()) << inner.status();
  absl::StatusOr<std::unique_ptr<PinnedChunkAllocator>> outer =
      PinnedChunkAllocator::Create(*std::move(inner), 0);
  ASSERT_TRUE(outer.ok()) << outer.status();
  BlockAllocator::Options options;
  options.capacity_bytes = 4 * kChunk;
  options.chunk_bytes = kChunk;
  absl::StatusOr<std::unique_ptr<BlockAllocator>> store =
      BlockAllocator::Create(options, *std::move(outer));
  ASSERT_TRUE(store.ok()) << store.status();
  absl::StatusOr<std::vector<Block>> blocks = (*store)->AllocateBlocks(65536, 4);
  ASSERT_FALSE(blocks.ok());
  EXPECT_NE(blocks.status().message().find("cudaHostRegister"), absl::string_view::npos)
      << blocks.status();
  EXPECT_EQ((*store)->stats().chunk_allocation_failures, 1u);
  EXPECT_EQ((*store)->stats().chunks, 0u);
}

TEST(PinnedChunkAllocatorTest, ProbeFailureFailsCreate) {
  absl::StatusOr<std::unique_ptr<PinnedChunkAllocator>> inner =
      PinnedChunkAllocator::Create(std::make_unique<HostChunkAllocator>(), 0);
  ASSERT_TRUE(inner.ok()) << inner.status();
  absl::StatusOr<std::unique_ptr<PinnedChunkAllocator>> outer =
      PinnedChunkAllocator::Create(*std::move(inner), kChunk);
  ASSERT_FALSE(outer.ok());
  EXPECT_NE(outer.status().message().find("probe"), absl::string_view::npos)
      << outer.status();
}

}  // namespace
}  // namespace freekv
