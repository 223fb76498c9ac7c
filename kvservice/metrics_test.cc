#include "kvservice/metrics.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <map>
#include <string>
#include <utility>

#include "absl/strings/str_split.h"
#include "gtest/gtest.h"

namespace freekv {
namespace {

// The whole response to GET /metrics on 127.0.0.1:port, over a plain socket.
// HTTP/1.0, so the server closes the connection after the body.
std::string HttpGetMetrics(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return "socket failed";
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string response;
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
    const std::string request = "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    if (write(fd, request.data(), request.size()) ==
        static_cast<ssize_t>(request.size())) {
      char buffer[4096];
      ssize_t n;
      while ((n = read(fd, buffer, sizeof(buffer))) > 0) response.append(buffer, n);
    }
  }
  close(fd);
  return response;
}

// One sample line of the text format: name, labels, value.
struct Sample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0;
};

// Parses `name{k="v",...} value` lines; comments are kept apart.
struct Page {
  std::vector<Sample> samples;
  std::vector<std::string> comments;

  explicit Page(const std::string& body) {
    for (absl::string_view line : absl::StrSplit(body, '\n', absl::SkipEmpty())) {
      if (line[0] == '#') {
        comments.emplace_back(line);
        continue;
      }
      Sample s;
      const size_t space = line.rfind(' ');
      s.value = std::strtod(std::string(line.substr(space + 1)).c_str(), nullptr);
      absl::string_view series = line.substr(0, space);
      const size_t brace = series.find('{');
      s.name = std::string(series.substr(0, brace));
      if (brace != absl::string_view::npos) {
        absl::string_view labels = series.substr(brace + 1, series.size() - brace - 2);
        for (absl::string_view pair : absl::StrSplit(labels, ',', absl::SkipEmpty())) {
          std::pair<std::string, std::string> kv = absl::StrSplit(pair, '=');
          s.labels[kv.first] = kv.second.substr(1, kv.second.size() - 2);  // unquote
        }
      }
      samples.push_back(std::move(s));
    }
  }

  // The value of the one sample with this name and exactly these labels; NaN if none.
  double Value(const std::string& name,
               const std::map<std::string, std::string>& labels = {}) const {
    for (const Sample& s : samples) {
      if (s.name == name && s.labels == labels) return s.value;
    }
    return std::nan("");
  }

  // A histogram bucket, matched on the numeric value of `le`.
  double Bucket(const std::string& name, double le) const {
    for (const Sample& s : samples) {
      if (s.name != name + "_bucket") continue;
      const double bound = std::strtod(s.labels.at("le").c_str(), nullptr);
      const bool close = std::isfinite(le) && std::fabs(bound - le) <= 1e-12 * le;
      if (bound == le || close) return s.value;
    }
    return std::nan("");
  }

  bool HasType(const std::string& name, const std::string& type) const {
    const std::string want = "# TYPE " + name + " " + type;
    for (const std::string& c : comments) {
      if (c == want) return true;
    }
    return false;
  }
};

std::unique_ptr<ServiceMetrics> StartOnAnyPort() {
  ServiceMetrics::Options options;
  options.version = "test-1.2.3";
  options.address = "127.0.0.1:0";
  auto metrics = ServiceMetrics::Create(options);
  EXPECT_TRUE(metrics.ok()) << metrics.status();
  return metrics.ok() ? *std::move(metrics) : nullptr;
}

Page Scrape(const ServiceMetrics& metrics) {
  const std::vector<int> ports = metrics.ListeningPorts();
  EXPECT_EQ(ports.size(), 1u);
  EXPECT_GT(ports.at(0), 0);
  const std::string response = HttpGetMetrics(ports.at(0));
  EXPECT_EQ(response.rfind("HTTP/1.", 0), 0u) << response;
  EXPECT_NE(response.find(" 200 "), std::string::npos) << response;
  const size_t body = response.find("\r\n\r\n");
  return Page(body == std::string::npos ? "" : response.substr(body + 4));
}

// Copied from notes/metrics_contract.md: every name, with its type.
const std::pair<const char*, const char*> kContract[] = {
    {"freekv_build_info", "gauge"},
    {"freekv_sessions_open", "gauge"},
    {"freekv_sessions_opened_total", "counter"},
    {"freekv_sessions_closed_total", "counter"},
    {"freekv_store_bytes_used", "gauge"},
    {"freekv_store_bytes_capacity", "gauge"},
    {"freekv_store_pages", "gauge"},
    {"freekv_store_chunks", "gauge"},
    {"freekv_store_chunk_allocation_failures_total", "counter"},
    {"freekv_offload_pages_total", "counter"},
    {"freekv_offload_bytes_total", "counter"},
    {"freekv_recall_requests_total", "counter"},
    {"freekv_recall_blocks_total", "counter"},
    {"freekv_recall_bytes_total", "counter"},
    {"freekv_recall_transfers_total", "counter"},
    {"freekv_recall_latency_seconds", "histogram"},
    {"freekv_recall_request_bytes", "histogram"},
    {"freekv_recall_link_ceiling_bytes_per_second", "gauge"},
    {"freekv_integrity_failures_total", "counter"},
    {"freekv_request_errors_total", "counter"},
    {"freekv_worker_decode_steps_total", "counter"},
    {"freekv_worker_correction_checks_total", "counter"},
    {"freekv_worker_corrections_total", "counter"},
    {"freekv_worker_speculation_needed_blocks_total", "counter"},
    {"freekv_worker_speculation_hit_blocks_total", "counter"},
    {"freekv_worker_stall_seconds_total", "counter"},
    {"freekv_worker_decode_seconds_total", "counter"},
};

TEST(ServiceMetricsTest, EveryContractNameIsServedWithItsType) {
  auto metrics = StartOnAnyPort();
  ASSERT_NE(metrics, nullptr);
  metrics->OnRequestError(RpcMethod::kGetStats, absl::StatusCode::kInternal);
  const Page page = Scrape(*metrics);
  for (const auto& [name, type] : kContract) {
    EXPECT_TRUE(page.HasType(name, type)) << name << " " << type;
  }
  EXPECT_EQ(page.Value("freekv_build_info", {{"version", "test-1.2.3"}}), 1);
}

TEST(ServiceMetricsTest, SessionsAndStoreFollowEvents) {
  auto metrics = StartOnAnyPort();
  ASSERT_NE(metrics, nullptr);
  for (int i = 0; i < 3; ++i) metrics->OnSessionOpened();
  metrics->OnSessionClosed(CloseReason::kClient);
  metrics->OnSessionClosed(CloseReason::kLeaseExpired);
  metrics->OnSessionOpened();
  BlockAllocator::Stats stats;
  stats.bytes_used = 3 * 131072;
  stats.capacity = size_t{4} << 30;
  stats.blocks = 3;
  stats.chunks = 2;
  stats.chunk_allocation_failures = 2;
  metrics->SetStore(stats);
  stats.chunk_allocation_failures = 5;
  metrics->SetStore(stats);
  metrics->SetStore(stats);  // no new failures: the counter stays
  metrics->SetLinkCeiling(55.2e9);

  const Page page = Scrape(*metrics);
  EXPECT_EQ(page.Value("freekv_sessions_open"), 2);
  EXPECT_EQ(page.Value("freekv_sessions_opened_total"), 4);
  EXPECT_EQ(page.Value("freekv_sessions_closed_total", {{"reason", "client"}}), 1);
  EXPECT_EQ(page.Value("freekv_sessions_closed_total", {{"reason", "lease_expired"}}), 1);
  EXPECT_EQ(page.Value("freekv_store_bytes_used"), 3 * 131072);
  EXPECT_EQ(page.Value("freekv_store_bytes_capacity"), 4294967296.0);
  EXPECT_EQ(page.Value("freekv_store_pages"), 3);
  EXPECT_EQ(page.Value("freekv_store_chunks"), 2);
  EXPECT_EQ(page.Value("freekv_store_chunk_allocation_failures_total"), 5);
  EXPECT_EQ(page.Value("freekv_recall_link_ceiling_bytes_per_second"), 55.2e9);
}

TEST(ServiceMetricsTest, OffloadRecallAndHistograms) {
  auto metrics = StartOnAnyPort();
  ASSERT_NE(metrics, nullptr);
  metrics->OnOffload(4, 4 * 131072);
  metrics->OnOffload(1, 131072);
  metrics->OnRecall(1, 16384, 1, absl::Microseconds(100));
  metrics->OnRecall(64, 1 << 20, 3, absl::Milliseconds(3), /*urgent=*/true);
  metrics->OnRecall(131072, size_t{2} << 30, 7, absl::Seconds(3));
  metrics->OnIntegrityFailures(2);

  const Page page = Scrape(*metrics);
  EXPECT_EQ(page.Value("freekv_offload_pages_total"), 5);
  EXPECT_EQ(page.Value("freekv_offload_bytes_total"), 5 * 131072);
  EXPECT_EQ(page.Value("freekv_recall_requests_total"), 3);
  EXPECT_EQ(page.Value("freekv_recall_blocks_total"), 131072 + 65);
  EXPECT_EQ(page.Value("freekv_recall_bytes_total"), 16384.0 + (1 << 20) + 2147483648.0);
  EXPECT_EQ(page.Value("freekv_recall_transfers_total"), 11);
  EXPECT_EQ(page.Value("freekv_integrity_failures_total"), 2);

  const std::string latency = "freekv_recall_latency_seconds";
  EXPECT_EQ(page.Value(latency + "_count"), 3);
  EXPECT_NEAR(page.Value(latency + "_sum"), 3.0031, 1e-9);
  EXPECT_EQ(page.Bucket(latency, 25e-6), 0);
  EXPECT_EQ(page.Bucket(latency, 156e-6), 1);  // 100 us
  EXPECT_EQ(page.Bucket(latency, 2.44e-3), 1);
  EXPECT_EQ(page.Bucket(latency, 6.1e-3), 2);  // 3 ms
  EXPECT_EQ(page.Bucket(latency, 2.5), 2);
  EXPECT_EQ(page.Bucket(latency, INFINITY), 3);  // 3 s is above the last bound

  // The urgent request is in both histograms; the others only in the first.
  const std::string urgent = "freekv_recall_urgent_latency_seconds";
  EXPECT_EQ(page.Value(urgent + "_count"), 1);
  EXPECT_NEAR(page.Value(urgent + "_sum"), 0.003, 1e-9);
  EXPECT_EQ(page.Bucket(urgent, 2.44e-3), 0);
  EXPECT_EQ(page.Bucket(urgent, 6.1e-3), 1);

  const std::string bytes = "freekv_recall_request_bytes";
  EXPECT_EQ(page.Value(bytes + "_count"), 3);
  EXPECT_EQ(page.Value(bytes + "_sum"), 16384.0 + (1 << 20) + 2147483648.0);
  EXPECT_EQ(page.Bucket(bytes, 16384), 1);  // the bound is inclusive
  EXPECT_EQ(page.Bucket(bytes, 262144), 1);
  EXPECT_EQ(page.Bucket(bytes, 1 << 20), 2);
  EXPECT_EQ(page.Bucket(bytes, 1 << 30), 2);
  EXPECT_EQ(page.Bucket(bytes, INFINITY), 3);
}

TEST(ServiceMetricsTest, PushesCountByLaneAndCopyWayAndTimeByStage) {
  auto metrics = StartOnAnyPort();
  ASSERT_NE(metrics, nullptr);
  const std::string name = "freekv_recall_push_seconds";
  auto series = [](const char* lane, const char* stage) {
    return std::map<std::string, std::string>{{"lane", lane}, {"stage", stage}};
  };
  // Before any push every series is there, at zero.
  {
    const Page page = Scrape(*metrics);
    for (const char* lane : {"bulk", "urgent"}) {
      for (const char* stage : {"queued", "issuing", "landing"}) {
        EXPECT_EQ(page.Value(name + "_count", series(lane, stage)), 0) << lane << " " << stage;
      }
      for (const char* copy : {"packed", "direct"}) {
        EXPECT_EQ(page.Value("freekv_recall_pushes_total", {{"lane", lane}, {"copy", copy}}), 0)
            << lane << " " << copy;
      }
    }
  }
  metrics->OnPushLanded({false, true, absl::Microseconds(900), absl::Microseconds(300),
                         absl::Microseconds(150)});
  metrics->OnPushLanded({false, false, absl::Microseconds(100), absl::Microseconds(200),
                         absl::Milliseconds(2)});
  metrics->OnPushLanded({true, true, absl::Microseconds(5), absl::Microseconds(40),
                         absl::Microseconds(60)});

  const Page page = Scrape(*metrics);
  EXPECT_EQ(page.Value(name + "_count", series("bulk", "queued")), 2);
  EXPECT_NEAR(page.Value(name + "_sum", series("bulk", "queued")), 1e-3, 1e-12);
  EXPECT_NEAR(page.Value(name + "_sum", series("bulk", "issuing")), 500e-6, 1e-12);
  EXPECT_NEAR(page.Value(name + "_sum", series("bulk", "landing")), 2.15e-3, 1e-12);
  EXPECT_EQ(page.Value(name + "_count", series("urgent", "landing")), 1);
  EXPECT_NEAR(page.Value(name + "_sum", series("urgent", "queued")), 5e-6, 1e-12);
  EXPECT_NEAR(page.Value(name + "_sum", series("urgent", "issuing")), 40e-6, 1e-12);
  EXPECT_NEAR(page.Value(name + "_sum", series("urgent", "landing")), 60e-6, 1e-12);
  // The 2 ms landing is above the 977 us bound and within the 2.44 ms one.
  auto bucket = [&](const char* le) {
    auto labels = series("bulk", "landing");
    labels["le"] = le;
    return page.Value(name + "_bucket", labels);
  };
  EXPECT_EQ(bucket("0.000977"), 1);
  EXPECT_EQ(bucket("0.00244"), 2);
  // Each push counts once, in its lane and under the way its copies went.
  auto pushes = [&](const char* lane, const char* copy) {
    return page.Value("freekv_recall_pushes_total", {{"lane", lane}, {"copy", copy}});
  };
  EXPECT_EQ(pushes("bulk", "packed"), 1);
  EXPECT_EQ(pushes("bulk", "direct"), 1);
  EXPECT_EQ(pushes("urgent", "packed"), 1);
  EXPECT_EQ(pushes("urgent", "direct"), 0);
}

TEST(ServiceMetricsTest, RequestErrorsAreLabelledByMethodAndCanonicalCode) {
  auto metrics = StartOnAnyPort();
  ASSERT_NE(metrics, nullptr);
  metrics->OnRequestError(RpcMethod::kOffload, absl::StatusCode::kInvalidArgument);
  metrics->OnRequestError(RpcMethod::kOffload, absl::StatusCode::kInvalidArgument);
  metrics->OnRequestError(RpcMethod::kRecall, absl::StatusCode::kNotFound);
  metrics->OnRequestError(RpcMethod::kOpenSession, absl::StatusCode::kResourceExhausted);
  metrics->OnRequestError(RpcMethod::kHeartbeat, absl::StatusCode::kOk);  // not an error

  const Page page = Scrape(*metrics);
  const std::string name = "freekv_request_errors_total";
  EXPECT_EQ(page.Value(name, {{"method", "Offload"}, {"code", "INVALID_ARGUMENT"}}), 2);
  EXPECT_EQ(page.Value(name, {{"method", "Recall"}, {"code", "NOT_FOUND"}}), 1);
  EXPECT_EQ(page.Value(name, {{"method", "OpenSession"}, {"code", "RESOURCE_EXHAUSTED"}}),
            1);
  int series = 0;
  for (const Sample& s : page.samples) series += s.name == name;
  EXPECT_EQ(series, 3);
}

TEST(ServiceMetricsTest, WorkerStatsAddUpAndInvalidReportsChangeNothing) {
  auto metrics = StartOnAnyPort();
  ASSERT_NE(metrics, nullptr);
  WorkerStatsDelta delta;
  delta.decode_steps = 10;
  delta.correction_checks = 40;
  delta.corrections = 5;
  delta.speculation_needed_blocks = 100;
  delta.speculation_hit_blocks = 90;
  delta.stall_seconds = 0.25;
  delta.decode_seconds = 2.0;
  ASSERT_TRUE(metrics->OnWorkerStats(delta).ok());
  ASSERT_TRUE(metrics->OnWorkerStats(delta).ok());

  WorkerStatsDelta negative = delta;
  negative.stall_seconds = -1;
  const absl::Status refused = metrics->OnWorkerStats(negative);
  EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(refused.message().find("stall_seconds"), std::string::npos) << refused;
  WorkerStatsDelta too_many = delta;
  too_many.corrections = 41;
  EXPECT_NE(metrics->OnWorkerStats(too_many).message().find("corrections"),
            std::string::npos);
  WorkerStatsDelta not_finite = delta;
  not_finite.decode_seconds = NAN;
  EXPECT_EQ(metrics->OnWorkerStats(not_finite).code(),
            absl::StatusCode::kInvalidArgument);

  const Page page = Scrape(*metrics);
  EXPECT_EQ(page.Value("freekv_worker_decode_steps_total"), 20);
  EXPECT_EQ(page.Value("freekv_worker_correction_checks_total"), 80);
  EXPECT_EQ(page.Value("freekv_worker_corrections_total"), 10);
  EXPECT_EQ(page.Value("freekv_worker_speculation_needed_blocks_total"), 200);
  EXPECT_EQ(page.Value("freekv_worker_speculation_hit_blocks_total"), 180);
  EXPECT_EQ(page.Value("freekv_worker_stall_seconds_total"), 0.5);
  EXPECT_EQ(page.Value("freekv_worker_decode_seconds_total"), 4.0);
}

TEST(ServiceMetricsTest, BusyAddressIsUnavailableAndNamed) {
  auto first = StartOnAnyPort();
  ASSERT_NE(first, nullptr);
  ServiceMetrics::Options options;
  options.address = "127.0.0.1:" + std::to_string(first->ListeningPorts().at(0));
  auto second = ServiceMetrics::Create(options);
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(second.status().message().find(options.address), std::string::npos);
}

TEST(ServiceMetricsTest, WithoutAnAddressTextStillRenders) {
  auto metrics = ServiceMetrics::Create(ServiceMetrics::Options());
  ASSERT_TRUE(metrics.ok());
  EXPECT_TRUE((*metrics)->ListeningPorts().empty());
  (*metrics)->OnSessionOpened();
  const Page page((*metrics)->Text());
  EXPECT_EQ(page.Value("freekv_sessions_open"), 1);
  EXPECT_EQ(page.Value("freekv_build_info", {{"version", "dev"}}), 1);
}

}  // namespace
}  // namespace freekv
