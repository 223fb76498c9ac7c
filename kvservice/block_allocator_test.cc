#include "kvservice/block_allocator.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <random>
#include <set>
#include <thread>
#include <utility>

#include "absl/synchronization/mutex.h"
#include "gtest/gtest.h"

namespace freekv {
namespace {

constexpr size_t kKiB = 1024;
constexpr size_t kChunk = 64 * kKiB;  // small chunks so tests cross chunk boundaries

std::unique_ptr<BlockAllocator> MakeAllocator(
    size_t capacity_chunks, size_t max_spare_chunks = 2,
    std::unique_ptr<ChunkAllocator> chunks = nullptr) {
  BlockAllocator::Options options;
  options.capacity_bytes = capacity_chunks * kChunk;
  options.chunk_bytes = kChunk;
  options.max_spare_chunks = max_spare_chunks;
  auto allocator = BlockAllocator::Create(options, std::move(chunks));
  EXPECT_TRUE(allocator.ok()) << allocator.status();
  return *std::move(allocator);
}

// Writes a pattern determined by `seed` over the whole block.
void Fill(const Block& block, uint64_t seed) {
  std::mt19937_64 rng(seed);
  for (size_t i = 0; i < block.bytes; i += 8) {
    const uint64_t word = rng();
    std::memcpy(block.data + i, &word, std::min<size_t>(8, block.bytes - i));
  }
}

bool Holds(const Block& block, uint64_t seed) {
  std::mt19937_64 rng(seed);
  for (size_t i = 0; i < block.bytes; i += 8) {
    const uint64_t word = rng();
    if (std::memcmp(block.data + i, &word, std::min<size_t>(8, block.bytes - i)) != 0) {
      return false;
    }
  }
  return true;
}

void ExpectSameStats(const BlockAllocator::Stats& a, const BlockAllocator::Stats& b) {
  EXPECT_EQ(a.bytes_used, b.bytes_used);
  EXPECT_EQ(a.bytes_reserved, b.bytes_reserved);
  EXPECT_EQ(a.capacity, b.capacity);
  EXPECT_EQ(a.blocks, b.blocks);
  EXPECT_EQ(a.chunks, b.chunks);
  EXPECT_EQ(a.spare_chunks, b.spare_chunks);
  EXPECT_EQ(a.chunk_allocation_failures, b.chunk_allocation_failures);
}

// Counts observer calls; refuses to add chunks once `allowed_adds` have been added.
struct CountingObserver {
  std::atomic<int> added{0};
  std::atomic<int> removed{0};
  std::atomic<int> allowed_adds{1 << 30};
  std::vector<std::byte*> removed_bases;  // touched by one thread in these tests

  std::unique_ptr<ChunkAllocator> Wrap() {
    ChunkObserver observer;
    observer.on_chunk_added = [this](std::byte*, size_t) {
      if (added.load() >= allowed_adds.load()) {
        return absl::UnavailableError("ucp_mem_map failed (test refusal)");
      }
      ++added;
      return absl::OkStatus();
    };
    observer.on_chunk_removed = [this](std::byte* base, size_t) {
      ++removed;
      removed_bases.push_back(base);
    };
    return std::make_unique<ObservedChunkAllocator>(
        std::make_unique<HostChunkAllocator>(), std::move(observer));
  }
};

TEST(BlockAllocatorTest, ConsecutiveBlocksFromAFreshChunkAreAdjacent) {
  auto allocator = MakeAllocator(4);
  auto first = allocator->AllocateBlocks(16 * kKiB, 2);
  auto second = allocator->AllocateBlocks(16 * kKiB, 2);
  ASSERT_TRUE(first.ok() && second.ok());
  std::vector<Block> all = *first;
  all.insert(all.end(), second->begin(), second->end());
  EXPECT_EQ(reinterpret_cast<uintptr_t>(all[0].data) % HostChunk::PageSize(), 0u);
  for (size_t i = 1; i < all.size(); ++i) {
    EXPECT_EQ(all[i].data, all[i - 1].data + 16 * kKiB) << "block " << i;
    EXPECT_EQ(all[i].bytes, 16 * kKiB);
  }
}

TEST(BlockAllocatorTest, FreedBlockIsReusedWithoutGrowing) {
  auto allocator = MakeAllocator(4);
  auto blocks = allocator->AllocateBlocks(16 * kKiB, 4);  // exactly one chunk
  ASSERT_TRUE(blocks.ok());
  const BlockAllocator::Stats before = allocator->stats();
  EXPECT_EQ(before.chunks, 1u);
  ASSERT_TRUE(allocator->FreeBlocks({(*blocks)[2]}).ok());
  auto again = allocator->AllocateBlocks(16 * kKiB, 1);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ((*again)[0].data, (*blocks)[2].data);
  ExpectSameStats(allocator->stats(), before);
}

TEST(BlockAllocatorTest, FreedBatchComesBackInTheSameOrder) {
  auto allocator = MakeAllocator(4);
  auto keep = allocator->AllocateBlocks(8 * kKiB, 1);  // keeps the chunk from retiring
  auto batch = allocator->AllocateBlocks(8 * kKiB, 5);
  ASSERT_TRUE(keep.ok() && batch.ok());
  ASSERT_TRUE(allocator->FreeBlocks(*batch).ok());
  auto again = allocator->AllocateBlocks(8 * kKiB, 5);
  ASSERT_TRUE(again.ok());
  for (size_t i = 0; i < batch->size(); ++i) {
    EXPECT_EQ((*again)[i].data, (*batch)[i].data) << "block " << i;
  }
}

TEST(BlockAllocatorTest, ExhaustionChangesNothing) {
  auto allocator = MakeAllocator(2);  // 8 blocks of 16 KiB at most
  auto held = allocator->AllocateBlocks(16 * kKiB, 6);
  ASSERT_TRUE(held.ok());
  for (size_t i = 0; i < held->size(); ++i) Fill((*held)[i], 100 + i);
  const BlockAllocator::Stats before = allocator->stats();

  auto refused = allocator->AllocateBlocks(16 * kKiB, 3);
  ASSERT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted);
  const std::string message(refused.status().message());
  EXPECT_NE(message.find("capacity 131072"), std::string::npos) << message;
  EXPECT_NE(message.find("used 98304"), std::string::npos) << message;
  EXPECT_NE(message.find("requested 49152"), std::string::npos) << message;
  ExpectSameStats(allocator->stats(), before);
  for (size_t i = 0; i < held->size(); ++i) EXPECT_TRUE(Holds((*held)[i], 100 + i));

  // Exactly what remains still fits, and then nothing does.
  auto rest = allocator->AllocateBlocks(16 * kKiB, 2);
  ASSERT_TRUE(rest.ok()) << rest.status();
  EXPECT_EQ(allocator->AllocateBlocks(16 * kKiB, 1).status().code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(allocator->stats().bytes_used, 2 * kChunk);
}

TEST(BlockAllocatorTest, MixedSizesKeepSeparateChunksAndNeverOverlap) {
  auto allocator = MakeAllocator(8);
  const size_t sizes[] = {16 * kKiB, 24 * kKiB, 64 * kKiB, 16 * kKiB, 24 * kKiB};
  std::vector<Block> all;
  for (size_t round = 0; round < 2; ++round) {
    for (size_t size : sizes) {
      auto blocks = allocator->AllocateBlocks(size, 1);
      ASSERT_TRUE(blocks.ok()) << blocks.status();
      all.push_back((*blocks)[0]);
    }
  }
  for (size_t i = 0; i < all.size(); ++i) Fill(all[i], 7 * i + 1);
  for (size_t i = 0; i < all.size(); ++i) EXPECT_TRUE(Holds(all[i], 7 * i + 1)) << i;

  std::vector<Block> sorted = all;
  std::sort(sorted.begin(), sorted.end(),
            [](const Block& a, const Block& b) { return a.data < b.data; });
  for (size_t i = 1; i < sorted.size(); ++i) {
    EXPECT_LE(sorted[i - 1].data + sorted[i - 1].bytes, sorted[i].data);
  }
  // 16 KiB: 4 blocks in 1 chunk; 24 KiB: 4 blocks at 2 per chunk; 64 KiB: 2 chunks.
  const BlockAllocator::Stats stats = allocator->stats();
  EXPECT_EQ(stats.chunks, 5u);
  EXPECT_EQ(stats.blocks, 10u);
  EXPECT_EQ(stats.bytes_used, 2 * (2 * 16 + 2 * 24 + 64) * kKiB);
  EXPECT_EQ(stats.bytes_reserved, 5 * kChunk);
}

TEST(BlockAllocatorTest, EmptyChunkServesAnotherSizeWithoutNewRegistration) {
  CountingObserver observer;
  auto allocator = MakeAllocator(1, /*max_spare_chunks=*/1, observer.Wrap());
  auto small = allocator->AllocateBlocks(16 * kKiB, 4);
  ASSERT_TRUE(small.ok());
  // The only chunk belongs to 16 KiB blocks; 32 KiB blocks have no room.
  EXPECT_EQ(allocator->AllocateBlocks(32 * kKiB, 1).status().code(),
            absl::StatusCode::kResourceExhausted);
  ASSERT_TRUE(allocator->FreeBlocks(*small).ok());
  EXPECT_EQ(allocator->stats().spare_chunks, 1u);
  EXPECT_EQ(allocator->stats().bytes_used, 0u);

  auto large = allocator->AllocateBlocks(32 * kKiB, 2);
  ASSERT_TRUE(large.ok()) << large.status();
  EXPECT_EQ((*large)[0].data, (*small)[0].data);  // the same memory, re-carved
  EXPECT_EQ(observer.added.load(), 1);
  EXPECT_EQ(observer.removed.load(), 0);
  EXPECT_EQ(allocator->stats().spare_chunks, 0u);
}

TEST(BlockAllocatorTest, EmptyChunkBeyondSparesIsReturnedToTheSystem) {
  CountingObserver observer;
  auto allocator = MakeAllocator(4, /*max_spare_chunks=*/0, observer.Wrap());
  auto blocks = allocator->AllocateBlocks(16 * kKiB, 3);
  ASSERT_TRUE(blocks.ok());
  ASSERT_TRUE(allocator->FreeBlocks(*blocks).ok());
  EXPECT_EQ(observer.removed.load(), 1);
  ASSERT_EQ(observer.removed_bases.size(), 1u);
  EXPECT_EQ(observer.removed_bases[0], (*blocks)[0].data);
  const BlockAllocator::Stats stats = allocator->stats();
  EXPECT_EQ(stats.chunks, 0u);
  EXPECT_EQ(stats.bytes_reserved, 0u);
}

TEST(BlockAllocatorTest, RefusingObserverFailsTheRequestAndChangesNothing) {
  CountingObserver observer;
  observer.allowed_adds = 2;
  {
    auto allocator = MakeAllocator(4, 2, observer.Wrap());
    auto first = allocator->AllocateBlocks(16 * kKiB, 4);  // chunk 1, accepted
    ASSERT_TRUE(first.ok());
    BlockAllocator::Stats expected = allocator->stats();

    // Needs two new chunks: the first is accepted, the second refused, so the first
    // must be released again.
    auto refused = allocator->AllocateBlocks(16 * kKiB, 8);
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnavailable);
    EXPECT_NE(refused.status().message().find("ucp_mem_map failed"), std::string::npos);
    expected.chunk_allocation_failures = 1;
    ExpectSameStats(allocator->stats(), expected);
    EXPECT_EQ(observer.added.load(), 2);
    EXPECT_EQ(observer.removed.load(), 1);

    EXPECT_FALSE(allocator->AllocateBlocks(16 * kKiB, 1).ok());
    EXPECT_EQ(allocator->stats().chunk_allocation_failures, 2u);
  }
  // Every chunk that was added was removed before its memory went away.
  EXPECT_EQ(observer.removed.load(), observer.added.load());
}

TEST(BlockAllocatorTest, FreeRejectsForeignRepeatedAndDuplicateBlocks) {
  auto allocator = MakeAllocator(4);
  auto blocks = allocator->AllocateBlocks(16 * kKiB, 2);
  ASSERT_TRUE(blocks.ok());
  const Block a = (*blocks)[0];
  const Block b = (*blocks)[1];

  EXPECT_EQ(allocator->FreeBlocks({a, a}).code(), absl::StatusCode::kFailedPrecondition);
  Block foreign = b;
  foreign.data += 8;
  const absl::Status rejected = allocator->FreeBlocks({b, foreign});
  EXPECT_EQ(rejected.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(rejected.message().find("block 1"), std::string::npos) << rejected;
  EXPECT_EQ(allocator->stats().blocks, 2u);  // neither call freed anything

  ASSERT_TRUE(allocator->FreeBlocks({a}).ok());
  EXPECT_EQ(allocator->FreeBlocks({a}).code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(allocator->FreeBlocks({b}).ok());
  EXPECT_EQ(allocator->stats().blocks, 0u);
}

TEST(BlockAllocatorTest, InvalidRequestsNameTheField) {
  auto allocator = MakeAllocator(2);
  auto zero = allocator->AllocateBlocks(0, 1);
  EXPECT_EQ(zero.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(zero.status().message().find("block_bytes"), std::string::npos);
  EXPECT_EQ(allocator->AllocateBlocks(kChunk + 1, 1).status().code(),
            absl::StatusCode::kInvalidArgument);
  auto none = allocator->AllocateBlocks(16 * kKiB, 0);
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->empty());

  BlockAllocator::Options options;
  options.capacity_bytes = kChunk;
  options.chunk_bytes = 1000;
  auto bad_chunk = BlockAllocator::Create(options);
  EXPECT_EQ(bad_chunk.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad_chunk.status().message().find("chunk_bytes"), std::string::npos);
  options.chunk_bytes = kChunk;
  options.capacity_bytes = kChunk - 1;
  auto bad_capacity = BlockAllocator::Create(options);
  EXPECT_NE(bad_capacity.status().message().find("capacity_bytes"), std::string::npos);
}

// Several threads allocate and free blocks of three sizes. Every live block carries a
// pattern of its own; a block handed out twice would be overwritten by the other owner.
TEST(BlockAllocatorTest, ConcurrentThreadsNeverShareABlock) {
  auto allocator = MakeAllocator(32, /*max_spare_chunks=*/1);
  absl::Mutex mu;
  std::set<std::byte*> live;  // guarded by mu
  std::atomic<int> failures{0};

  auto worker = [&](int thread) {
    std::mt19937_64 rng(thread + 1);
    std::vector<std::pair<Block, uint64_t>> held;
    const size_t sizes[] = {4 * kKiB, 12 * kKiB, 16 * kKiB};
    for (int step = 0; step < 3000; ++step) {
      if (held.size() < 24 && rng() % 2 == 0) {
        auto blocks = allocator->AllocateBlocks(sizes[rng() % 3], 1 + rng() % 4);
        if (!blocks.ok()) continue;  // capacity: the other threads hold it
        for (const Block& block : *blocks) {
          {
            absl::MutexLock lock(&mu);
            if (!live.insert(block.data).second) ++failures;
          }
          const uint64_t seed = rng();
          Fill(block, seed);
          held.emplace_back(block, seed);
        }
      } else if (!held.empty()) {
        const size_t n = 1 + rng() % std::min<size_t>(held.size(), 4);
        std::vector<Block> batch;
        for (size_t i = 0; i < n; ++i) {
          const size_t pick = rng() % held.size();
          if (!Holds(held[pick].first, held[pick].second)) ++failures;
          batch.push_back(held[pick].first);
          held[pick] = held.back();
          held.pop_back();
        }
        {
          absl::MutexLock lock(&mu);
          for (const Block& block : batch) live.erase(block.data);
        }
        if (!allocator->FreeBlocks(batch).ok()) ++failures;
      }
    }
    for (const auto& [block, seed] : held) {
      if (!Holds(block, seed)) ++failures;
      absl::MutexLock lock(&mu);
      live.erase(block.data);
    }
    std::vector<Block> rest;
    for (const auto& entry : held) rest.push_back(entry.first);
    if (!allocator->FreeBlocks(rest).ok()) ++failures;
  };

  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) threads.emplace_back(worker, t);
  for (std::thread& t : threads) t.join();

  EXPECT_EQ(failures.load(), 0);
  const BlockAllocator::Stats stats = allocator->stats();
  EXPECT_EQ(stats.blocks, 0u);
  EXPECT_EQ(stats.bytes_used, 0u);
  EXPECT_LE(stats.chunks, 1u);  // at most one spare remains
  EXPECT_LE(stats.bytes_reserved, stats.capacity);
}

}  // namespace
}  // namespace freekv
