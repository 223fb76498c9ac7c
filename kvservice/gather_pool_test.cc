// GatherPool copies every range exactly, whatever the thread count and the mix of
// sizes, and can be called from several threads at once.
#include "kvservice/gather_pool.h"

#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace freekv {
namespace {

// Scattered ranges of random sizes out of `source`, packed into `packed`.
std::vector<HostCopy> RandomGather(const std::vector<uint8_t>& source,
                                   std::vector<uint8_t>& packed, std::mt19937_64& rng) {
  std::vector<HostCopy> copies;
  size_t offset = 0;
  while (true) {
    const size_t bytes = 1 + rng() % 20000;
    if (offset + bytes > packed.size()) break;
    const size_t from = rng() % (source.size() - bytes);
    copies.push_back({packed.data() + offset, source.data() + from, bytes});
    offset += bytes;
  }
  return copies;
}

void ExpectCopied(const std::vector<HostCopy>& copies) {
  for (size_t i = 0; i < copies.size(); ++i) {
    ASSERT_EQ(std::memcmp(copies[i].dst, copies[i].src, copies[i].bytes), 0) << "copy " << i;
  }
}

TEST(GatherPoolTest, CopiesEveryRangeForAnyThreadCount) {
  std::mt19937_64 rng(11);
  std::vector<uint8_t> source(8 << 20);
  for (uint8_t& b : source) b = static_cast<uint8_t>(rng());
  for (int threads : {1, 2, 3, 8}) {
    GatherPool pool(threads);
    EXPECT_EQ(pool.threads(), threads);
    for (int round = 0; round < 5; ++round) {
      std::vector<uint8_t> packed(1 << 20, 0xEE);
      const std::vector<HostCopy> copies = RandomGather(source, packed, rng);
      pool.Copy(copies);
      ExpectCopied(copies);
    }
    std::vector<uint8_t> one(100);
    pool.Copy({{HostCopy{one.data(), source.data() + 5, one.size()}}});  // fewer than threads
    EXPECT_EQ(std::memcmp(one.data(), source.data() + 5, one.size()), 0);
  }
}

TEST(GatherPoolTest, ConcurrentCallersTakeTurns) {
  std::mt19937_64 rng(12);
  std::vector<uint8_t> source(4 << 20);
  for (uint8_t& b : source) b = static_cast<uint8_t>(rng());
  GatherPool pool(4);
  std::vector<std::thread> callers;
  for (int c = 0; c < 3; ++c) {
    callers.emplace_back([&pool, &source, c] {
      std::mt19937_64 local(100 + c);
      for (int round = 0; round < 20; ++round) {
        std::vector<uint8_t> packed(256 << 10);
        const std::vector<HostCopy> copies = RandomGather(source, packed, local);
        pool.Copy(copies);
        ExpectCopied(copies);
      }
    });
  }
  for (std::thread& t : callers) t.join();
}

}  // namespace
}  // namespace freekv
