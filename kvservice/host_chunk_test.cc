#include "kvservice/host_chunk.h"

#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace freekv {
namespace {

TEST(HostChunkTest, MapsAPageAlignedWritableRoundedSize) {
  const size_t page = HostChunk::PageSize();
  auto chunk = HostChunk::Map(3 * page + 1);
  ASSERT_TRUE(chunk.ok()) << chunk.status();
  EXPECT_EQ(chunk->size(), 4 * page);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(chunk->data()) % page, 0u);
  // Every byte is usable: write random bytes over all of it and read them back.
  std::mt19937 rng(5);
  std::vector<std::byte> pattern(chunk->size());
  for (auto& b : pattern) b = static_cast<std::byte>(rng());
  std::memcpy(chunk->data(), pattern.data(), pattern.size());
  EXPECT_EQ(std::memcmp(chunk->data(), pattern.data(), pattern.size()), 0);
}

TEST(HostChunkTest, ZeroBytesIsInvalid) {
  auto chunk = HostChunk::Map(0);
  EXPECT_EQ(chunk.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(chunk.status().message().find("bytes"), absl::string_view::npos);
}

TEST(HostChunkTest, MoveTransfersOwnership) {
  auto mapped = HostChunk::Map(HostChunk::PageSize());
  ASSERT_TRUE(mapped.ok());
  std::byte* const data = mapped->data();
  int released = 0;
  mapped->AddReleaseAction([&] { ++released; });
  HostChunk owner = *std::move(mapped);
  EXPECT_EQ(owner.data(), data);
  HostChunk other;
  other = std::move(owner);
  EXPECT_EQ(owner.data(),
            nullptr);  // NOLINT(bugprone-use-after-move): checked on purpose
  EXPECT_EQ(owner.size(), 0u);
  EXPECT_EQ(released, 0);
  other = HostChunk();  // assigning over it releases the old memory
  EXPECT_EQ(released, 1);
}

// Release actions undo registrations (UCX, CUDA pinning) and must see the memory still
// mapped, newest first.
TEST(HostChunkTest, ReleaseActionsRunNewestFirstWhileMemoryIsMapped) {
  std::vector<int> order;
  std::vector<uint8_t> seen;
  {
    auto chunk = HostChunk::Map(HostChunk::PageSize());
    ASSERT_TRUE(chunk.ok());
    std::byte* const data = chunk->data();
    data[0] = std::byte{0x5A};
    chunk->AddReleaseAction([&order] { order.push_back(1); });
    chunk->AddReleaseAction([&order, &seen, data] {
      order.push_back(2);
      seen.push_back(static_cast<uint8_t>(data[0]));
    });
  }
  EXPECT_EQ(order, (std::vector<int>{2, 1}));
  EXPECT_EQ(seen, (std::vector<uint8_t>{0x5A}));
}

}  // namespace
}  // namespace freekv
