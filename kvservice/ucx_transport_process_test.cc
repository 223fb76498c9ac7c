// The UCX data plane across two processes: a child owns the worker's regions
// (client/ucx_regions_child.h), this process runs the service's UcxTransportFactory.
// The child's regions hold known pseudo-random bytes; the parent pulls from offload
// and compares, pushes into staging and has the child send staging back to compare;
// the child's exit code is checked. Each test runs with UCX's default transports
// (shared memory on this machine) and with tcp only (RMA emulated over active
// messages, served by the child's progress thread).
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "client/ucx_regions_child.h"
#include "gtest/gtest.h"
#include "kvservice/ucx_session_transport.h"
#include "kvservice/ucx_test_util.h"
#include "kvservice/ucx_transport.h"
#include "transport/ucx_blob_checks.h"

namespace freekv {
namespace {

constexpr uint64_t kRegionBytes = 4 << 20;
constexpr uint64_t kSeed = 100;

std::vector<CopyRun> RandomRuns(std::byte* store, size_t store_bytes, size_t count,
                                uint32_t seed) {
  return freekv::RandomRuns(store, store_bytes, kRegionBytes, 16 << 10, count, seed);
}

class UcxAcrossProcessesTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    UcxRegionsChildOptions options;
    options.staging_bytes = kRegionBytes;
    options.offload_bytes = kRegionBytes;
    options.seed = kSeed;
    options.transports = GetParam();
    auto child = UcxRegionsChild::Spawn(options);
    ASSERT_TRUE(child.ok()) << child.status();
    child_ = *std::move(child);
    auto factory = UcxTransportFactory::Create({GetParam()});
    ASSERT_TRUE(factory.ok()) << factory.status();
    factory_ = *std::move(factory);
    store_.resize(2 * kRegionBytes);
    FillPseudoRandom(absl::MakeSpan(store_), 7);
    ASSERT_TRUE(factory_->RegisterLocalMemory(store_.data(), store_.size()).ok());
    auto transport = factory_->Connect(UcxPeerOf(child_->descriptor()));
    ASSERT_TRUE(transport.ok()) << transport.status();
    transport_ = *std::move(transport);
  }

  void TearDown() override {
    transport_.reset();
    if (factory_ != nullptr) {
      EXPECT_TRUE(factory_->UnregisterLocalMemory(store_.data()).ok());
    }
  }

  std::unique_ptr<UcxRegionsChild> child_;
  std::unique_ptr<UcxTransportFactory> factory_;
  std::vector<std::byte> store_;
  std::unique_ptr<SessionTransport> transport_;
};

TEST_P(UcxAcrossProcessesTest, PullAndPushMoveExactBytes) {
  std::vector<std::byte> offload(kRegionBytes);
  FillPseudoRandom(absl::MakeSpan(offload), kSeed + 1);
  const std::vector<CopyRun> pulls = RandomRuns(store_.data(), store_.size(), 150, 1);
  ASSERT_TRUE(transport_->Pull(pulls).ok());
  for (const CopyRun& run : pulls) {
    ASSERT_EQ(std::memcmp(run.local, offload.data() + run.remote_offset, run.bytes), 0)
        << run.bytes << " bytes from offload offset " << run.remote_offset;
  }

  std::vector<std::byte> expected(kRegionBytes);
  FillPseudoRandom(absl::MakeSpan(expected), kSeed);
  for (uint32_t round = 0; round < 3; ++round) {
    FillPseudoRandom(absl::MakeSpan(store_), 20 + round);  // new bytes each round
    const std::vector<CopyRun> pushes =
        RandomRuns(store_.data(), store_.size(), 200, 2 + round);
    for (const CopyRun& run : pushes) {
      std::memcpy(expected.data() + run.remote_offset, run.local, run.bytes);
    }
    ASSERT_TRUE(PushAndWait(*transport_, pushes).ok());
    absl::StatusOr<std::vector<std::byte>> staging = child_->ReadStaging();
    ASSERT_TRUE(staging.ok()) << staging.status();
    ASSERT_EQ(staging->size(), expected.size());
    EXPECT_EQ(std::memcmp(staging->data(), expected.data(), expected.size()), 0)
        << "round " << round;
  }
  absl::StatusOr<absl::Duration> cpu = child_->ProgressCpuTime();
  ASSERT_TRUE(cpu.ok());
  std::cerr << "transports " << (GetParam().empty() ? "(default)" : GetParam())
            << ": child progress thread CPU " << *cpu << "\n"
            << dynamic_cast<UcxSessionTransport&>(*transport_).Describe();
  transport_.reset();
  absl::StatusOr<int> exit_code = child_->Quit();
  ASSERT_TRUE(exit_code.ok()) << exit_code.status();
  EXPECT_EQ(*exit_code, 0);
}

// A worker that dies must cost the service neither a hang nor a crash: pushes still
// complete (into the orphaned segment, or with an error) and the session disconnects.
TEST_P(UcxAcrossProcessesTest, WorkerDeathNeitherHangsNorCrashesTheService) {
  const std::vector<CopyRun> runs = RandomRuns(store_.data(), store_.size(), 16, 3);
  ASSERT_TRUE(PushAndWait(*transport_, runs).ok());
  child_->Kill();
  const absl::Status after = PushAndWait(*transport_, runs);
  EXPECT_NE(after.code(), absl::StatusCode::kDeadlineExceeded) << after;
  std::cerr << "push after the worker died: " << after << "\n";
  const absl::Time start = absl::Now();
  transport_.reset();
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  // The service still connects and moves bytes for a new worker.
  UcxRegionsChildOptions options;
  options.transports = GetParam();
  auto next = UcxRegionsChild::Spawn(options);
  ASSERT_TRUE(next.ok()) << next.status();
  auto transport = factory_->Connect(UcxPeerOf((*next)->descriptor()));
  ASSERT_TRUE(transport.ok()) << transport.status();
  std::vector<CopyRun> small = {{store_.data(), 0, 4096}};
  EXPECT_TRUE(PushAndWait(**transport, small).ok());
  transport->reset();
  EXPECT_EQ(*(*next)->Quit(), 0);
}

// A worker that dies between sending OpenSession and the service connecting: its
// shared-memory segment is gone by then (UCX 1.13 would crash attaching it).
TEST_P(UcxAcrossProcessesTest, ConnectingToAWorkerThatDiedFailsCleanly) {
  UcxRegionsChildOptions options;
  options.transports = GetParam();
  auto dead = UcxRegionsChild::Spawn(options);
  ASSERT_TRUE(dead.ok()) << dead.status();
  const SessionPeer peer = UcxPeerOf((*dead)->descriptor());
  (*dead)->Kill();
  auto transport = factory_->Connect(peer);
  if (GetParam().empty()) {
    // The default rkeys name a sysv segment: refused at Connect.
    EXPECT_EQ(transport.status().code(), absl::StatusCode::kUnavailable)
        << transport.status();
  } else if (transport.ok()) {
    // tcp connects lazily: the first push finds the worker gone.
    std::vector<CopyRun> small = {{store_.data(), 0, 4096}};
    EXPECT_FALSE(PushAndWait(**transport, small, absl::Seconds(20)).ok());
  }
  // The live session is untouched.
  std::vector<CopyRun> small = {{store_.data(), 0, 4096}};
  EXPECT_TRUE(PushAndWait(*transport_, small).ok());
}

// UCX's second choice for the worker's regions is posix shared memory (named by
// /proc/<pid>/fd/<fd>); the service must reach it too, and refuse it cleanly once its
// owner is gone (UCX 1.13 would crash attaching it).
TEST(UcxPosixRegionsTest, PosixBackedRegionsWorkAndAreRefusedOnceGone) {
  UcxRegionsChildOptions options;
  options.staging_bytes = kRegionBytes;
  options.seed = kSeed;
  options.environment = {"UCX_ALLOC_PRIO=md:posix,mmap,heap"};
  auto child = UcxRegionsChild::Spawn(options);
  ASSERT_TRUE(child.ok()) << child.status();
  const SessionPeer peer = UcxPeerOf((*child)->descriptor());
  absl::StatusOr<std::vector<RkeyDomain>> domains = ParsePackedRkey(peer.staging.rkey);
  ASSERT_TRUE(domains.ok()) << domains.status();
  bool posix = false;
  for (const RkeyDomain& d : *domains) {
    posix |= d.bytes.size() == 24 || d.bytes.size() == 32;  // 32: with a PID namespace
  }
  ASSERT_TRUE(posix) << "the child's regions are not posix shared memory";

  auto factory = UcxTransportFactory::Create();
  ASSERT_TRUE(factory.ok()) << factory.status();
  std::vector<std::byte> store(kRegionBytes);
  FillPseudoRandom(absl::MakeSpan(store), 5);
  {
    auto transport = (*factory)->Connect(peer);
    ASSERT_TRUE(transport.ok()) << transport.status();
    std::vector<std::byte> expected(kRegionBytes);
    FillPseudoRandom(absl::MakeSpan(expected), kSeed);
    const std::vector<CopyRun> runs = RandomRuns(store.data(), store.size(), 100, 6);
    for (const CopyRun& run : runs) {
      std::memcpy(expected.data() + run.remote_offset, run.local, run.bytes);
    }
    ASSERT_TRUE(PushAndWait(**transport, runs).ok());
    absl::StatusOr<std::vector<std::byte>> staging = (*child)->ReadStaging();
    ASSERT_TRUE(staging.ok()) << staging.status();
    EXPECT_EQ(std::memcmp(staging->data(), expected.data(), expected.size()), 0);
  }
  (*child)->Kill();
  const absl::Status gone =
      CheckRkeyReachable(peer.staging.rkey, peer.staging.address, peer.staging.length);
  EXPECT_EQ(gone.code(), absl::StatusCode::kUnavailable) << gone;
  EXPECT_FALSE((*factory)->Connect(peer).ok());
}

INSTANTIATE_TEST_SUITE_P(Transports, UcxAcrossProcessesTest, ::testing::Values("", "tcp"),
                         [](const auto& info) {
                           return info.param.empty() ? std::string("Default")
                                                     : info.param;
                         });

}  // namespace
}  // namespace freekv

int main(int argc, char** argv) {
  freekv::RunUcxRegionsChildIfAsked(argc, argv);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
