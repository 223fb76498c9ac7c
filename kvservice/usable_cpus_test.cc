// UsableCpus follows the calling thread's affinity (as taskset or a pinned pod sets
// it), and cpu.max's quota is read as the CPUs it allows, rounded up.
#include "kvservice/usable_cpus.h"

#include <sched.h>

#include <thread>

#include "gtest/gtest.h"

namespace freekv {
namespace {

TEST(UsableCpusTest, FollowsTheThreadsAffinity) {
  const int all = UsableCpus();
  EXPECT_GE(all, 1);
  EXPECT_LE(all, static_cast<int>(std::thread::hardware_concurrency()));
  cpu_set_t saved;
  ASSERT_EQ(sched_getaffinity(0, sizeof(saved), &saved), 0);
  int first = 0;
  while (!CPU_ISSET(first, &saved)) ++first;
  cpu_set_t one;
  CPU_ZERO(&one);
  CPU_SET(first, &one);
  ASSERT_EQ(sched_setaffinity(0, sizeof(one), &one), 0);
  EXPECT_EQ(UsableCpus(), 1);
  ASSERT_EQ(sched_setaffinity(0, sizeof(saved), &saved), 0);
  EXPECT_EQ(UsableCpus(), all);
}

TEST(UsableCpusTest, ReadsCgroupQuotasRoundedUp) {
  EXPECT_EQ(CpusFromCgroupCpuMax("400000 100000\n"), 4);
  EXPECT_EQ(CpusFromCgroupCpuMax("150000 100000"), 2);
  EXPECT_EQ(CpusFromCgroupCpuMax("50000 100000"), 1);
  EXPECT_EQ(CpusFromCgroupCpuMax("max 100000\n"), std::nullopt);
  EXPECT_EQ(CpusFromCgroupCpuMax(""), std::nullopt);
  EXPECT_EQ(CpusFromCgroupCpuMax("-1 100000"), std::nullopt);
  EXPECT_EQ(CpusFromCgroupCpuMax("400000"), std::nullopt);
  EXPECT_EQ(CpusFromCgroupCpuMax("four 100000"), std::nullopt);
}

}  // namespace
}  // namespace freekv
