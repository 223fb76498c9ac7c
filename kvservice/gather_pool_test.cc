// GatherPool copies every range exactly, whatever the thread count, the store kind, the
// prefetch distance (none, a few KiB, more than a grain) and the mix of sizes and
// alignments; runs `meanwhile` once on the caller while it copies; can be called from
// several threads at once; and its workers run at a lower priority than the caller.
#include "kvservice/gather_pool.h"

#include <dirent.h>

#include <chrono>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace freekv {
namespace {

std::vector<uint8_t> RandomSource(size_t bytes, std::mt19937_64& rng) {
  std::vector<uint8_t> source(bytes);
  for (uint8_t& b : source) b = static_cast<uint8_t>(rng());
  return source;
}

// Scattered ranges of random sizes and alignments out of `source`, packed into `packed`.
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

// 16 KiB blocks at random 16 KiB-aligned places of `source`, packed in order (the
// recall's shape: both ends aligned, so streaming stores do the work), plus one range
// larger than a grain.
std::vector<HostCopy> BlockGather(const std::vector<uint8_t>& source,
                                  std::vector<uint8_t>& packed, std::mt19937_64& rng) {
  constexpr size_t kBlock = 16 << 10;
  std::vector<HostCopy> copies;
  const size_t big = 300 << 10;
  copies.push_back({packed.data(), source.data() + kBlock, big});
  for (size_t offset = big; offset + kBlock <= packed.size(); offset += kBlock) {
    const size_t from = rng() % (source.size() / kBlock) * kBlock;
    copies.push_back({packed.data() + offset, source.data() + from, kBlock});
  }
  return copies;
}

void ExpectCopied(const std::vector<HostCopy>& copies) {
  for (size_t i = 0; i < copies.size(); ++i) {
    ASSERT_EQ(std::memcmp(copies[i].dst, copies[i].src, copies[i].bytes), 0) << "copy " << i;
  }
}

TEST(GatherPoolTest, CopiesEveryRangeForAnyThreadCountStoreKindAndPrefetch) {
  std::mt19937_64 rng(11);
  const std::vector<uint8_t> source = RandomSource(8 << 20, rng);
  for (bool streaming : {false, true}) {
    for (int threads : {1, 2, 3, 8}) {
      // One distance per thread count: none, a few KiB, more than a grain.
      const size_t prefetch = threads == 2 ? 0 : threads == 3 ? size_t{1} << 20 : 8 << 10;
      GatherPool pool({threads, absl::Microseconds(500), streaming, prefetch});
      EXPECT_EQ(pool.threads(), threads);
      EXPECT_EQ(pool.streaming_stores(), streaming);
      EXPECT_EQ(pool.prefetch_bytes(), prefetch);
      for (int round = 0; round < 5; ++round) {
        // Fresh random contents (never a constant) so a skipped range shows.
        std::vector<uint8_t> packed = RandomSource(1 << 20, rng);
        const std::vector<HostCopy> copies = RandomGather(source, packed, rng);
        pool.Copy(copies);
        ExpectCopied(copies);
        std::vector<uint8_t> blocks = RandomSource(4 << 20, rng);
        const std::vector<HostCopy> aligned = BlockGather(source, blocks, rng);
        pool.Copy(aligned);
        ExpectCopied(aligned);
      }
      std::vector<uint8_t> one(100);
      pool.Copy({{HostCopy{one.data(), source.data() + 5, one.size()}}});  // < threads
      EXPECT_EQ(std::memcmp(one.data(), source.data() + 5, one.size()), 0);
    }
  }
}

TEST(GatherPoolTest, MeanwhileRunsOnceOnTheCallerEvenWithNothingToCopy) {
  std::mt19937_64 rng(13);
  const std::vector<uint8_t> source = RandomSource(4 << 20, rng);
  GatherPool pool({4, absl::Microseconds(500), true});
  std::vector<uint8_t> packed = RandomSource(2 << 20, rng);
  const std::vector<HostCopy> copies = BlockGather(source, packed, rng);
  int runs = 0;
  std::thread::id ran_on;
  pool.Copy(copies, [&] {
    ++runs;
    ran_on = std::this_thread::get_id();
  });
  EXPECT_EQ(runs, 1);
  EXPECT_EQ(ran_on, std::this_thread::get_id());
  ExpectCopied(copies);
  pool.Copy({}, [&] { ++runs; });
  EXPECT_EQ(runs, 2);
}

TEST(GatherPoolTest, ConcurrentCallersTakeTurns) {
  std::mt19937_64 rng(12);
  const std::vector<uint8_t> source = RandomSource(4 << 20, rng);
  GatherPool pool({4, absl::Microseconds(500), true});
  std::vector<std::thread> callers;
  for (int c = 0; c < 3; ++c) {
    callers.emplace_back([&pool, &source, c] {
      std::mt19937_64 local(100 + c);
      for (int round = 0; round < 20; ++round) {
        std::vector<uint8_t> packed = RandomSource(256 << 10, local);
        const std::vector<HostCopy> copies = RandomGather(source, packed, local);
        pool.Copy(copies);
        ExpectCopied(copies);
      }
    });
  }
  for (std::thread& t : callers) t.join();
}

TEST(GatherPoolTest, ParkedWorkersWakeForTheNextJob) {
  std::mt19937_64 rng(14);
  const std::vector<uint8_t> source = RandomSource(4 << 20, rng);
  GatherPool pool({4, absl::Microseconds(1), true});  // park almost at once
  for (int round = 0; round < 3; ++round) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    std::vector<uint8_t> packed = RandomSource(2 << 20, rng);
    const std::vector<HostCopy> copies = BlockGather(source, packed, rng);
    pool.Copy(copies);
    ExpectCopied(copies);
  }
}

// The nice value (field 19) of a /proc/.../stat file; -100 when it cannot be read.
int NiceIn(const std::string& stat_path) {
  std::ifstream stat(stat_path);
  const std::string text((std::istreambuf_iterator<char>(stat)),
                         std::istreambuf_iterator<char>());
  // The command name (field 2) may hold spaces; the fields after it are plain.
  const size_t paren = text.rfind(')');
  if (paren == std::string::npos || paren + 2 > text.size()) return -100;
  std::istringstream fields(text.substr(paren + 2));
  std::string field;
  for (int i = 3; i <= 19; ++i) {
    if (!(fields >> field)) return -100;
  }
  return std::stoi(field);
}

// Threads of this process at nice value `nice`.
int ThreadsAtNice(int nice) {
  int count = 0;
  DIR* tasks = opendir("/proc/self/task");
  if (tasks == nullptr) return -1;
  while (dirent* entry = readdir(tasks)) {
    if (entry->d_name[0] == '.') continue;
    if (NiceIn(std::string("/proc/self/task/") + entry->d_name + "/stat") == nice) ++count;
  }
  closedir(tasks);
  return count;
}

TEST(GatherPoolTest, WorkersRunAtNiceFiveTheCallerUnchanged) {
  const int caller = NiceIn("/proc/thread-self/stat");
  ASSERT_NE(caller, -100);
  if (caller > 5) GTEST_SKIP() << "this test runs at nice " << caller << ", above the pool's";
  const int before = ThreadsAtNice(5);
  ASSERT_GE(before, 0);
  GatherPool pool({4, absl::Microseconds(500), true});
  // The workers lower their own priority as they start: wait for all three.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (ThreadsAtNice(5) < before + 3 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  EXPECT_EQ(ThreadsAtNice(5), before + 3);
  EXPECT_EQ(NiceIn("/proc/thread-self/stat"), caller) << "the caller's priority changed";
}

}  // namespace
}  // namespace freekv
