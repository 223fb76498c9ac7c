#include "kvservice/chunk_allocator.h"

#include <cstdint>
#include <vector>

#include "gtest/gtest.h"

namespace freekv {
namespace {

TEST(HostChunkAllocatorTest, GivesAtLeastTheBytesAsked) {
  HostChunkAllocator allocator;
  auto chunk = allocator.Allocate(1 << 20);
  ASSERT_TRUE(chunk.ok()) << chunk.status();
  EXPECT_GE(chunk->size(), size_t{1} << 20);
  chunk->data()[chunk->size() - 1] = std::byte{1};  // the last byte is ours
}

TEST(ObservedChunkAllocatorTest, ReportsAddAndRemoveOfTheSameRange) {
  std::vector<std::pair<std::byte*, size_t>> added, removed;
  ChunkObserver observer;
  observer.on_chunk_added = [&](std::byte* base, size_t bytes) {
    added.emplace_back(base, bytes);
    return absl::OkStatus();
  };
  observer.on_chunk_removed = [&](std::byte* base, size_t bytes) {
    removed.emplace_back(base, bytes);
  };
  ObservedChunkAllocator allocator(std::make_unique<HostChunkAllocator>(), observer);
  {
    auto chunk = allocator.Allocate(64 << 10);
    ASSERT_TRUE(chunk.ok());
    ASSERT_EQ(added.size(), 1u);
    EXPECT_EQ(added[0].first, chunk->data());
    EXPECT_EQ(added[0].second, chunk->size());
    EXPECT_TRUE(removed.empty());
  }
  EXPECT_EQ(removed, added);
}

TEST(ObservedChunkAllocatorTest, RefusalFailsTheAllocationWithoutARemoval) {
  int removed = 0;
  ChunkObserver observer;
  observer.on_chunk_added = [](std::byte*, size_t) {
    return absl::ResourceExhaustedError("registration limit");
  };
  observer.on_chunk_removed = [&](std::byte*, size_t) { ++removed; };
  ObservedChunkAllocator allocator(std::make_unique<HostChunkAllocator>(), observer);
  auto chunk = allocator.Allocate(64 << 10);
  EXPECT_EQ(chunk.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(chunk.status().message().find("registration limit"), absl::string_view::npos);
  EXPECT_EQ(removed, 0);
}

}  // namespace
}  // namespace freekv
