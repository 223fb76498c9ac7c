// Many sessions at once against the real kvservice; a worker killed mid-session is
// reclaimed when its lease lapses; the metrics page follows what happened; a worker
// started before its kvservice connects as soon as the service is up.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include "client/kv_client.h"
#include "gtest/gtest.h"
#include "tests/integration/kvservice_process.h"

namespace freekv {
namespace {

using testing::HttpGet;
using testing::KvServiceProcess;
using testing::MetricValue;

// One worker: offloads pages of its own geometry, recalls random selections for a
// number of steps and checks every byte. Returns a description of the first failure.
std::string RunWorker(const std::string& target, int index) {
  KvClientOptions options;
  options.target = target;
  options.geometry.num_layers = 2 + index % 3;
  options.geometry.num_kv_heads = 1 + index % 4;
  options.geometry.head_dim = 64 * (1 + index % 2);
  options.geometry.page_tokens = 8 << (index % 3);
  options.geometry.dtype = index % 2 ? DType::kFloat32 : DType::kBFloat16;
  options.slot_slices = 32;
  options.offload_blocks = 16;
  absl::StatusOr<std::unique_ptr<KvClient>> opened = KvClient::Open(options);
  if (!opened.ok()) return opened.status().ToString();
  KvClient& client = **opened;
  const Geometry& g = client.geometry();
  const size_t block = g.block_bytes(), slice = g.head_slice_bytes();
  std::mt19937 rng(index);
  std::vector<OffloadPageRef> refs;
  for (uint32_t layer = 0; layer < g.num_layers; ++layer) {
    for (uint32_t page = 0; page < 16 / g.num_layers; ++page) {
      refs.push_back({uint64_t(index), layer, page, refs.size() * block});
    }
  }
  for (size_t i = 0; i < refs.size() * block; ++i) {
    client.offload_region()[i] = std::byte(rng());
  }
  const std::vector<std::byte> original(client.offload_region().begin(),
                                        client.offload_region().begin() + refs.size() * block);
  if (auto tags = client.Offload(refs); !tags.ok()) return tags.status().ToString();
  for (uint64_t step = 0; step < 20; ++step) {
    const uint32_t layer = step % g.num_layers;
    std::vector<RecallSliceRef> slices;
    std::vector<size_t> sources;
    for (size_t i = 0; i < refs.size(); ++i) {
      if (refs[i].layer != layer || rng() % 2) continue;
      const uint32_t head = rng() % g.num_kv_heads;
      slices.push_back({uint64_t(index), head, refs[i].page, slices.size() * slice});
      sources.push_back(i * block + head * slice);
    }
    if (slices.empty()) continue;
    absl::StatusOr<RecallTicket> ticket = client.Recall(step, layer, slices);
    if (!ticket.ok()) return ticket.status().ToString();
    if (auto s = client.Wait(*ticket, absl::Now() + absl::Seconds(20)); !s.ok()) {
      return s.ToString();
    }
    absl::Span<std::byte> slot = client.staging_slot(layer, ticket->slot);
    for (size_t i = 0; i < slices.size(); ++i) {
      if (std::memcmp(slot.data() + slices[i].slot_offset, original.data() + sources[i],
                      slice) != 0) {
        return absl::StrCat("worker ", index, " step ", step, " slice ", i, " differs");
      }
    }
    if (auto s = client.Release(*ticket); !s.ok()) return s.ToString();
  }
  if (auto s = client.Close(); !s.ok()) return s.ToString();
  return "";
}

TEST(SessionsTest, ManyWorkersWithDifferentGeometriesAtOnce) {
  absl::StatusOr<std::unique_ptr<KvServiceProcess>> service =
      KvServiceProcess::Start({"--capacity=512M", "--chunk_bytes=8M"});
  ASSERT_TRUE(service.ok()) << service.status();
  constexpr int kWorkers = 8;
  std::vector<std::string> failures(kWorkers);
  std::vector<std::thread> threads;
  for (int i = 0; i < kWorkers; ++i) {
    threads.emplace_back([&, i] { failures[i] = RunWorker((*service)->target(), i); });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < kWorkers; ++i) EXPECT_EQ(failures[i], "") << "worker " << i;

  absl::StatusOr<std::string> metrics = HttpGet((*service)->metrics_port(), "/metrics");
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  EXPECT_EQ(*MetricValue(*metrics, "freekv_sessions_opened_total"), kWorkers);
  EXPECT_EQ(*MetricValue(*metrics, "freekv_sessions_open"), 0);
  EXPECT_EQ(*MetricValue(*metrics, "freekv_store_bytes_used"), 0);
  EXPECT_GT(*MetricValue(*metrics, "freekv_recall_bytes_total"), 0);
  EXPECT_EQ(*MetricValue(*metrics, "freekv_sessions_closed_total{reason=\"client\"}"),
            kWorkers);
}

// The client keeps trying while the socket is missing, and does not sit out a growing
// reconnect backoff (with gRPC's own, 1 s then 1.6 s, its next try would come 1 to 3 s
// after the service is up here).
TEST(SessionsTest, AWorkerStartedBeforeItsServiceConnectsOnceTheServiceIsUp) {
  std::string dir = "/tmp/freekv-test-XXXXXX";
  ASSERT_NE(mkdtemp(dir.data()), nullptr);
  KvClientOptions options;
  options.target = "unix:" + KvServiceProcess::SocketIn(dir);
  options.client_name = "early";
  options.geometry = {2, 2, 64, 16, DType::kBFloat16};
  options.slot_slices = 8;
  options.offload_blocks = 4;
  options.rpc_timeout = absl::Seconds(30);
  absl::StatusOr<std::unique_ptr<KvClient>> opened;
  absl::Time connected;
  std::thread worker([&] {
    opened = KvClient::Open(options);
    connected = absl::Now();
  });
  absl::SleepFor(absl::Seconds(3));  // the client's first tries fail meanwhile
  absl::StatusOr<std::unique_ptr<KvServiceProcess>> service =
      KvServiceProcess::StartIn(dir, {"--capacity=64M"});
  const absl::Time serving = absl::Now();
  worker.join();
  ASSERT_TRUE(service.ok()) << service.status();
  ASSERT_TRUE(opened.ok()) << opened.status();
  EXPECT_LT(connected - serving, absl::Seconds(1))
      << "the session opened " << absl::FormatDuration(connected - serving)
      << " after the service was serving";
  EXPECT_TRUE((*opened)->Close().ok());
}

TEST(SessionsTest, KilledWorkerIsReclaimedWhenItsLeaseLapses) {
  absl::StatusOr<std::unique_ptr<KvServiceProcess>> service = KvServiceProcess::Start(
      {"--capacity=256M", "--reap_interval_ms=100", "--default_lease_ms=800"});
  ASSERT_TRUE(service.ok()) << service.status();
  // A surviving worker whose pages must be untouched by the reclaim.
  KvClientOptions options;
  options.target = (*service)->target();
  options.geometry = {2, 2, 64, 16, DType::kBFloat16};
  options.lease = absl::Milliseconds(800);
  absl::StatusOr<std::unique_ptr<KvClient>> survivor = KvClient::Open(options);
  ASSERT_TRUE(survivor.ok()) << survivor.status();
  const size_t block = (*survivor)->geometry().block_bytes();
  for (size_t i = 0; i < block; ++i) (*survivor)->offload_region()[i] = std::byte(i * 7);
  ASSERT_TRUE((*survivor)->Offload({{{1, 0, 0, 0}}}).ok());

  // The demo worker holds its session open; we kill it without a word.
  const std::string demo = testing::RunfilePath("client/demo");
  const std::string socket = "--socket=" + (*service)->socket();
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    execl(demo.c_str(), demo.c_str(), socket.c_str(), "--hold_ms=60000", "--lease_ms=800", "--pages=4",
          "--steps=1", static_cast<char*>(nullptr));
    _exit(127);
  }
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  absl::StatusOr<v1::GetStatsResponse> stats;
  do {
    absl::SleepFor(absl::Milliseconds(50));
    stats = (*survivor)->ServiceStats();
    ASSERT_TRUE(stats.ok());
  } while (stats->sessions_open() < 2 && absl::Now() < deadline);
  // Wait for the demo to be done offloading (its pages are in the store).
  do {
    absl::SleepFor(absl::Milliseconds(50));
    stats = (*survivor)->ServiceStats();
  } while (stats->store_pages() < 1 + 2 * 4 * 4 && absl::Now() < deadline);
  ASSERT_EQ(stats->sessions_open(), 2u);
  ASSERT_GT(stats->store_pages(), 1u);
  kill(pid, SIGKILL);
  waitpid(pid, nullptr, 0);

  do {
    absl::SleepFor(absl::Milliseconds(100));
    stats = (*survivor)->ServiceStats();
    ASSERT_TRUE(stats.ok());
  } while (stats->sessions_open() > 1 && absl::Now() < deadline);
  EXPECT_EQ(stats->sessions_open(), 1u);
  EXPECT_EQ(stats->sessions_reclaimed(), 1u);
  EXPECT_EQ(stats->store_pages(), 1u);
  EXPECT_EQ(stats->store_bytes_used(), block);

  // The survivor, kept alive by its heartbeats, still recalls its page intact.
  absl::StatusOr<RecallTicket> ticket = (*survivor)->Recall(0, 0, {{{1, 1, 0, 0}}},
                                                                 RecallOptions::Verified());
  ASSERT_TRUE(ticket.ok());
  ASSERT_TRUE((*survivor)->Wait(*ticket, absl::Now() + absl::Seconds(10)).ok());
  const size_t slice = (*survivor)->geometry().head_slice_bytes();
  for (size_t i = 0; i < slice; ++i) {
    ASSERT_EQ((*survivor)->staging_slot(0, ticket->slot)[i], std::byte((slice + i) * 7));
  }
  absl::StatusOr<std::string> metrics = HttpGet((*service)->metrics_port(), "/metrics");
  ASSERT_TRUE(metrics.ok());
  EXPECT_EQ(*MetricValue(*metrics, "freekv_sessions_closed_total{reason=\"lease_expired\"}"),
            1);
}

TEST(SessionsTest, MetricsFollowOffloadAndRecall) {
  absl::StatusOr<std::unique_ptr<KvServiceProcess>> service =
      KvServiceProcess::Start({"--capacity=64M", "--link_ceiling_bytes_per_second=5.5e10"});
  ASSERT_TRUE(service.ok()) << service.status();
  KvClientOptions options;
  options.target = (*service)->target();
  options.geometry = {1, 4, 128, 32, DType::kBFloat16};
  absl::StatusOr<std::unique_ptr<KvClient>> client = KvClient::Open(options);
  ASSERT_TRUE(client.ok());
  const size_t block = (*client)->geometry().block_bytes();
  const size_t slice = (*client)->geometry().head_slice_bytes();
  ASSERT_TRUE((*client)->Offload({{{1, 0, 0, 0}, {1, 0, 1, block}}}).ok());
  // Two heads of page 0 then two of page 1, packed: adjacent in store and slot, so the
  // service merges them into runs.
  std::vector<RecallSliceRef> slices = {
      {1, 0, 0, 0}, {1, 1, 0, slice}, {1, 2, 1, 2 * slice}, {1, 3, 1, 3 * slice}};
  for (uint64_t step = 0; step < 3; ++step) {
    absl::StatusOr<RecallTicket> t = (*client)->Recall(
        step, 0, slices, step == 1 ? RecallOptions::Urgent() : RecallOptions{});
    ASSERT_TRUE(t.ok());
    ASSERT_TRUE((*client)->Wait(*t, absl::Now() + absl::Seconds(10)).ok());
    ASSERT_TRUE((*client)->Release(*t).ok());
  }
  ASSERT_TRUE((*client)->ReportStats({10, 40, 4, 100, 90, 0.25, 2.0}).ok());
  absl::StatusOr<std::string> m = HttpGet((*service)->metrics_port(), "/metrics");
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(*MetricValue(*m, "freekv_offload_pages_total"), 2);
  EXPECT_EQ(*MetricValue(*m, "freekv_offload_bytes_total"), 2 * block);
  EXPECT_EQ(*MetricValue(*m, "freekv_recall_requests_total"), 3);
  EXPECT_EQ(*MetricValue(*m, "freekv_recall_blocks_total"), 12);
  EXPECT_EQ(*MetricValue(*m, "freekv_recall_bytes_total"), 12 * slice);
  EXPECT_LE(*MetricValue(*m, "freekv_recall_transfers_total"), 6);
  EXPECT_EQ(*MetricValue(*m, "freekv_recall_latency_seconds_count"), 3);
  EXPECT_GT(*MetricValue(*m, "freekv_recall_latency_seconds_sum"), 0);
  EXPECT_EQ(*MetricValue(*m, "freekv_recall_urgent_latency_seconds_count"), 1);
  EXPECT_EQ(*MetricValue(*m, "freekv_store_pages"), 2);
  EXPECT_EQ(*MetricValue(*m, "freekv_store_bytes_used"), 2 * block);
  EXPECT_EQ(*MetricValue(*m, "freekv_sessions_open"), 1);
  EXPECT_EQ(*MetricValue(*m, "freekv_recall_link_ceiling_bytes_per_second"), 5.5e10);
  EXPECT_EQ(*MetricValue(*m, "freekv_worker_corrections_total"), 4);
  EXPECT_EQ(*MetricValue(*m, "freekv_worker_speculation_hit_blocks_total"), 90);
  EXPECT_DOUBLE_EQ(*MetricValue(*m, "freekv_worker_stall_seconds_total"), 0.25);
}

}  // namespace
}  // namespace freekv
