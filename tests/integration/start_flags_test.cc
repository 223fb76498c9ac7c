// The kvservice binary checks its flags before it serves: a value out of range ends it
// at start-up with exit status 2 (its usage error), and a value in range serves.
#include <sys/wait.h>

#include <string>

#include "gtest/gtest.h"
#include "tests/integration/kvservice_process.h"

namespace freekv::testing {
namespace {

TEST(StartFlags, OutOfRangeValuesStopTheServiceAtStartUp) {
  for (const char* flag :
       {"--max_sessions=0", "--default_lease_ms=-5", "--cuda_direct_share=1.5",
        "--cuda_direct_share=-0.25", "--cuda_direct_share=nan", "--cuda_gather_prefetch_kib=-1",
        "--cuda_gather_prefetch_kib=1025", "--cuda_gather_threads=-2",
        "--cuda_gather_piece_kib=32", "--cuda_gather_piece_kib=8193",
        "--cuda_gather_threads=100000", "--cuda_copy_method=scatter",
        "--cuda_urgent_copy_method=fast", "--cuda_copy_method=off",
        "--cuda_direct_max_blocks=-1"}) {
    absl::StatusOr<std::unique_ptr<KvServiceProcess>> service =
        KvServiceProcess::Start({flag});
    ASSERT_FALSE(service.ok()) << flag << " was accepted";
    // 2 << 8: exited (not killed) with status 2.
    EXPECT_NE(service.status().message().find("exited during start-up with status 512"),
              std::string::npos)
        << flag << ": " << service.status();
  }
}

TEST(StartFlags, ValuesInRangeServe) {
  absl::StatusOr<std::unique_ptr<KvServiceProcess>> service =
      KvServiceProcess::Start({"--cuda_direct_share=0", "--max_sessions=1",
                                "--cuda_gather_prefetch_kib=0", "--cuda_gather_piece_kib=64",
                                "--cuda_urgent_copy_method=off", "--cuda_copy_method=auto",
                                "--cuda_direct_max_blocks=0"});
  ASSERT_TRUE(service.ok()) << service.status();
  absl::StatusOr<int> status = (*service)->Stop();
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_TRUE(WIFEXITED(*status));
  EXPECT_EQ(WEXITSTATUS(*status), 0);
}

}  // namespace
}  // namespace freekv::testing
