// The UCX data plane over real UCX in one process: a worker's UcxRegions and the
// service's UcxTransportFactory, each with its own context and worker, as over two
// processes (ucx_transport_process_test.cc does that). Store memory is a HostChunk
// from the factory's wrapped allocator, so it is registered with UCX as in the service.
#include "kvservice/ucx_transport.h"

#include <atomic>
#include <cstring>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "client/ucx_regions.h"
#include "client/ucx_regions_child.h"
#include "gtest/gtest.h"
#include "kvservice/ucx_test_util.h"

namespace freekv {
namespace {

constexpr size_t kRegionBytes = 8 << 20;
constexpr size_t kStoreBytes = 16 << 20;

std::vector<CopyRun> RandomRuns(std::byte* store, size_t count, uint32_t seed) {
  return freekv::RandomRuns(store, kStoreBytes, kRegionBytes, 64 << 10, count, seed);
}

class UcxTransportTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    auto regions = UcxRegions::Create(kRegionBytes, kRegionBytes, {GetParam()});
    ASSERT_TRUE(regions.ok()) << regions.status();
    regions_ = *std::move(regions);
    auto factory = UcxTransportFactory::Create({GetParam()});
    ASSERT_TRUE(factory.ok()) << factory.status();
    factory_ = *std::move(factory);
    chunks_ = factory_->WrapChunkAllocator(std::make_unique<HostChunkAllocator>());
    auto chunk = chunks_->Allocate(kStoreBytes);
    ASSERT_TRUE(chunk.ok()) << chunk.status();
    store_ = *std::move(chunk);
    ASSERT_EQ(factory_->registered_regions(), 1u);
    FillPseudoRandom(regions_->staging(), 1);
    FillPseudoRandom(regions_->offload(), 2);
    FillPseudoRandom(absl::MakeSpan(store_.data(), store_.size()), 3);
    auto transport = factory_->Connect(Peer());
    ASSERT_TRUE(transport.ok()) << transport.status();
    transport_ = *std::move(transport);
  }

  void TearDown() override {
    transport_.reset();
    store_ = HostChunk();
    if (factory_ != nullptr) {
      EXPECT_EQ(factory_->registered_regions(), 0u);
    }
  }

  SessionPeer Peer() const { return UcxPeerOf(*regions_); }

  std::unique_ptr<UcxRegions> regions_;
  std::unique_ptr<UcxTransportFactory> factory_;
  std::unique_ptr<ChunkAllocator> chunks_;
  HostChunk store_;
  std::unique_ptr<SessionTransport> transport_;
};

TEST_P(UcxTransportTest, PullCopiesOffloadBytesIntoTheStore) {
  const std::vector<CopyRun> runs = RandomRuns(store_.data(), 100, 10);
  ASSERT_TRUE(transport_->Pull(runs).ok());
  for (const CopyRun& run : runs) {
    ASSERT_EQ(
        std::memcmp(run.local, regions_->offload().data() + run.remote_offset, run.bytes),
        0)
        << "run of " << run.bytes << " bytes from offset " << run.remote_offset;
  }
}

TEST_P(UcxTransportTest, PushCopiesStoreBytesIntoStagingAndNothingElse) {
  std::vector<std::byte> expected(regions_->staging().begin(), regions_->staging().end());
  const std::vector<CopyRun> runs = RandomRuns(store_.data(), 120, 11);
  for (const CopyRun& run : runs) {
    std::memcpy(expected.data() + run.remote_offset, run.local, run.bytes);
  }
  ASSERT_TRUE(PushAndWait(*transport_, runs).ok());
  EXPECT_EQ(std::memcmp(regions_->staging().data(), expected.data(), expected.size()), 0);
}

TEST_P(UcxTransportTest, RunsOutsideTheRegionAreRefusedAndNothingMoves) {
  const std::vector<std::byte> staging_before(regions_->staging().begin(),
                                              regions_->staging().end());
  std::vector<std::byte> store_before(store_.data(), store_.data() + store_.size());
  std::byte* store = store_.data();
  const std::vector<std::vector<CopyRun>> bad = {
      {{store, kRegionBytes - 100, 101}},                   // one byte past the end
      {{store, 0, 4096}, {store + 4096, kRegionBytes, 1}},  // valid run first
      {{store, UINT64_MAX - 10, 20}},                       // offset + bytes wraps
      {{store, 0, 0}},                                      // empty run
      {{nullptr, 0, 16}},                                   // no local buffer
  };
  for (const std::vector<CopyRun>& runs : bad) {
    const absl::Status pushed = PushAndWait(*transport_, runs);
    EXPECT_EQ(pushed.code(), absl::StatusCode::kInvalidArgument) << pushed;
    const absl::Status pulled = transport_->Pull(runs);
    EXPECT_EQ(pulled.code(), absl::StatusCode::kInvalidArgument) << pulled;
  }
  EXPECT_NE(transport_->Pull(bad[0]).message().find("offload region"), std::string::npos);
  EXPECT_NE(PushAndWait(*transport_, bad[1]).message().find("runs[1]"),
            std::string::npos);
  EXPECT_EQ(std::memcmp(regions_->staging().data(), staging_before.data(),
                        staging_before.size()),
            0);
  EXPECT_EQ(std::memcmp(store_.data(), store_before.data(), store_before.size()), 0);
}

// Many pushes in flight, large and small, some refused: done comes once each, in push
// order, and only after the push's bytes are in the staging region.
TEST_P(UcxTransportTest, PushCompletionsComeInOrderAfterTheirBytes) {
  constexpr int kPushes = 120;
  const size_t area = kRegionBytes / kPushes;
  absl::Mutex mu;
  std::vector<int> order;
  std::vector<std::string> problems;
  absl::Notification all_done;
  for (int i = 0; i < kPushes; ++i) {
    const size_t bytes = i % 3 == 0 ? area : 1 + (i * 977) % 4096;
    std::vector<CopyRun> runs = {{store_.data() + i * area, i * area, bytes}};
    const bool refused = i % 10 == 7;
    if (refused) runs.push_back({store_.data(), kRegionBytes, 1});
    transport_->Push(runs, [&, i, runs, refused](absl::Status s) {
      absl::MutexLock lock(&mu);
      order.push_back(i);
      if (s.ok() == refused)
        problems.push_back("push " + std::to_string(i) + ": " + s.ToString());
      const CopyRun& run = runs[0];
      const bool landed = std::memcmp(regions_->staging().data() + run.remote_offset,
                                      run.local, run.bytes) == 0;
      if (landed == refused) problems.push_back("push " + std::to_string(i) + " bytes");
      if (order.size() == kPushes) all_done.Notify();
    });
  }
  ASSERT_TRUE(all_done.WaitForNotificationWithTimeout(absl::Seconds(60)));
  absl::MutexLock lock(&mu);
  std::vector<int> expected(kPushes);
  std::iota(expected.begin(), expected.end(), 0);
  EXPECT_EQ(order, expected);
  EXPECT_TRUE(problems.empty()) << problems.front();
}

TEST_P(UcxTransportTest, DestroyingWaitsForPushesInFlightAndReconnects) {
  std::atomic<int> done{0};
  const std::vector<CopyRun> runs = RandomRuns(store_.data(), 64, 12);
  for (int i = 0; i < 20; ++i) {
    transport_->Push(runs, [&](absl::Status s) {
      EXPECT_TRUE(s.ok()) << s;
      ++done;
    });
  }
  transport_.reset();
  EXPECT_EQ(done.load(), 20);
  // The worker's regions outlive a session: a new one reaches them again.
  auto again = factory_->Connect(Peer());
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE((*again)->Pull(runs).ok());
  EXPECT_EQ(std::memcmp(runs[5].local, regions_->offload().data() + runs[5].remote_offset,
                        runs[5].bytes),
            0);
}

TEST_P(UcxTransportTest, DoneCallbackMayPushButNotPullAndMayDropTheTransport) {
  const std::vector<CopyRun> runs = RandomRuns(store_.data(), 4, 13);
  absl::Notification second_done;
  absl::Status pull_in_callback;
  transport_->Push(runs, [&](absl::Status s) {
    EXPECT_TRUE(s.ok()) << s;
    pull_in_callback = transport_->Pull(runs);
    transport_->Push(runs, [&](absl::Status s2) {
      EXPECT_TRUE(s2.ok()) << s2;
      transport_.reset();  // destroyed on the engine thread, from its own callback
      second_done.Notify();
    });
  });
  ASSERT_TRUE(second_done.WaitForNotificationWithTimeout(absl::Seconds(30)));
  EXPECT_EQ(pull_in_callback.code(), absl::StatusCode::kFailedPrecondition);
}

INSTANTIATE_TEST_SUITE_P(Transports, UcxTransportTest, ::testing::Values("", "tcp"),
                         [](const auto& info) {
                           return info.param.empty() ? std::string("Default")
                                                     : info.param;
                         });

TEST(UcxTransportFactoryTest, ConnectRefusesBadPeersNamingTheField) {
  auto regions = UcxRegions::Create(1 << 20, 1 << 20);
  auto factory = UcxTransportFactory::Create();
  ASSERT_TRUE(regions.ok() && factory.ok());
  const SessionPeer good = UcxPeerOf(**regions);
  struct Case {
    void (*spoil)(SessionPeer&);
    const char* field;
  };
  const Case cases[] = {
      {[](SessionPeer& p) { p.worker_address.clear(); }, "worker_address"},
      {[](SessionPeer& p) { p.worker_address = "x"; }, "worker_address"},
      {[](SessionPeer& p) { p.staging.length = 0; }, "staging.length"},
      {[](SessionPeer& p) { p.offload.address = 0; }, "offload.address"},
      {[](SessionPeer& p) { p.staging.address = UINT64_MAX - 5; }, "staging.address"},
      {[](SessionPeer& p) { p.offload.rkey.clear(); }, "offload.rkey"},
      {[](SessionPeer& p) { p.staging.rkey = "k"; }, "staging.rkey"},
      {[](SessionPeer& p) { p.offload.rkey.pop_back(); }, "offload.rkey"},
      {[](SessionPeer& p) { p.transport = PeerTransport::kCudaIpc; }, "transport"},
  };
  for (const Case& c : cases) {
    SessionPeer peer = good;
    c.spoil(peer);
    auto transport = (*factory)->Connect(peer);
    EXPECT_EQ(transport.status().code(), absl::StatusCode::kInvalidArgument) << c.field;
    EXPECT_NE(transport.status().message().find(c.field), absl::string_view::npos)
        << transport.status();
  }
  EXPECT_TRUE((*factory)->Connect(good).ok());
}

TEST(UcxTransportFactoryTest, RegistersAndUnregistersStoreMemory) {
  auto factory = UcxTransportFactory::Create();
  ASSERT_TRUE(factory.ok());
  std::vector<std::byte> memory(1 << 20);
  EXPECT_TRUE((*factory)->RegisterLocalMemory(memory.data(), memory.size()).ok());
  EXPECT_EQ((*factory)->RegisterLocalMemory(memory.data(), memory.size()).code(),
            absl::StatusCode::kAlreadyExists);
  EXPECT_EQ((*factory)->registered_regions(), 1u);
  EXPECT_EQ((*factory)->UnregisterLocalMemory(memory.data() + 1).code(),
            absl::StatusCode::kNotFound);
  EXPECT_TRUE((*factory)->UnregisterLocalMemory(memory.data()).ok());
  EXPECT_EQ((*factory)->registered_regions(), 0u);
  EXPECT_EQ((*factory)->RegisterLocalMemory(nullptr, 10).code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace freekv
