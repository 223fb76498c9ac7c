#include "kvservice/copy_runs.h"

#include <random>

#include "gtest/gtest.h"

namespace freekv {
namespace {

TEST(CopyRunsTest, MergesRunsContiguousOnBothSidesOnly) {
  std::byte store[1024];
  std::vector<CopyRun> runs = {
      {store + 256, 1256, 256},  // continues the run below in both spaces
      {store + 0, 1000, 256},
      {store + 768, 1512, 256},  // remote continues, local does not
      {store + 512, 2000, 256},  // neither
  };
  std::vector<CopyRun> merged = MergeAdjacentRuns(runs);
  ASSERT_EQ(merged.size(), 3u);
  EXPECT_EQ(merged[0].local, store);
  EXPECT_EQ(merged[0].remote_offset, 1000u);
  EXPECT_EQ(merged[0].bytes, 512u);
  EXPECT_EQ(merged[1].remote_offset, 1512u);
  EXPECT_EQ(merged[2].remote_offset, 2000u);
}

TEST(CopyRunsTest, MergingKeepsEveryByteOnRandomRuns) {
  std::mt19937 rng(3);
  std::vector<std::byte> store(1 << 16);
  for (int trial = 0; trial < 50; ++trial) {
    // Slices of 64 bytes from random store positions to consecutive remote offsets.
    std::vector<CopyRun> runs;
    size_t total = 0;
    for (int i = 0; i < 40; ++i) {
      const size_t slot = rng() % 2 ? (runs.empty() ? 0 : (runs.back().local - store.data()) / 64 + 1)
                                    : rng() % 1000;
      runs.push_back({store.data() + slot * 64, uint64_t(i) * 64, 64});
      total += 64;
    }
    std::vector<CopyRun> merged = MergeAdjacentRuns(runs);
    EXPECT_LE(merged.size(), runs.size());
    size_t bytes = 0;
    for (const CopyRun& run : merged) bytes += run.bytes;
    EXPECT_EQ(bytes, total);
    // Each original byte maps to the same remote offset after merging.
    for (const CopyRun& original : runs) {
      bool covered = false;
      for (const CopyRun& run : merged) {
        if (original.remote_offset >= run.remote_offset &&
            original.remote_offset < run.remote_offset + run.bytes) {
          covered = run.local + (original.remote_offset - run.remote_offset) == original.local;
        }
      }
      EXPECT_TRUE(covered);
    }
    EXPECT_TRUE(CheckNoRemoteOverlap(merged).ok());
  }
}

TEST(CopyRunsTest, OverlappingDestinationsAreRefused) {
  std::byte store[512];
  std::vector<CopyRun> runs =
      MergeAdjacentRuns({{store, 0, 128}, {store + 256, 64, 128}});
  absl::Status s = CheckNoRemoteOverlap(runs);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("overlap"), std::string::npos);
}

}  // namespace
}  // namespace freekv
