#include "kvservice/metrics.h"

#include <cmath>
#include <exception>
#include <utility>

#include "absl/strings/str_cat.h"
#include "prometheus/counter.h"
#include "prometheus/exposer.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "prometheus/text_serializer.h"

namespace freekv {

namespace {

using prometheus::Counter;
using prometheus::Gauge;
using prometheus::Histogram;
using prometheus::Registry;

// The contract's buckets, as written there, so that the `le` labels read well.
const Histogram::BucketBoundaries& LatencyBuckets() {
  static const Histogram::BucketBoundaries buckets = {
      25e-6,   62.5e-6, 156e-6, 390e-6, 977e-6, 2.44e-3, 6.1e-3,
      15.3e-3, 38e-3,   95e-3,  0.24,   0.6,    1.5,     2.5};
  return buckets;
}

// 16 KiB (one head slice of the design's geometry) to 1 GiB, powers of 4.
const Histogram::BucketBoundaries& RequestBytesBuckets() {
  static const Histogram::BucketBoundaries buckets = [] {
    Histogram::BucketBoundaries b;
    for (double bytes = 16 << 10; bytes <= double{1 << 30}; bytes *= 4)
      b.push_back(bytes);
    return b;
  }();
  return buckets;
}

Counter& AddCounter(Registry& registry, const std::string& name,
                    const std::string& help) {
  return prometheus::BuildCounter().Name(name).Help(help).Register(registry).Add({});
}

Gauge& AddGauge(Registry& registry, const std::string& name, const std::string& help) {
  return prometheus::BuildGauge().Name(name).Help(help).Register(registry).Add({});
}

absl::Status CheckSeconds(const char* field, double seconds) {
  if (std::isfinite(seconds) && seconds >= 0) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(field, " must be finite and non-negative, got ", seconds));
}

absl::Status CheckPart(const char* part, uint64_t part_value, const char* whole,
                       uint64_t whole_value) {
  if (part_value <= whole_value) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(part, " ", part_value, " exceeds ", whole, " ", whole_value));
}

}  // namespace

const char* RpcMethodName(RpcMethod method) {
  switch (method) {
    case RpcMethod::kOpenSession:
      return "OpenSession";
    case RpcMethod::kHeartbeat:
      return "Heartbeat";
    case RpcMethod::kOffload:
      return "Offload";
    case RpcMethod::kRecall:
      return "Recall";
    case RpcMethod::kFreeSequence:
      return "FreeSequence";
    case RpcMethod::kCloseSession:
      return "CloseSession";
    case RpcMethod::kReportWorkerStats:
      return "ReportWorkerStats";
    case RpcMethod::kGetStats:
      return "GetStats";
  }
  return "unknown";
}

absl::Status ValidateWorkerStats(const WorkerStatsDelta& d) {
  for (absl::Status s :
       {CheckSeconds("stall_seconds", d.stall_seconds),
        CheckSeconds("decode_seconds", d.decode_seconds),
        CheckPart("corrections", d.corrections, "correction_checks", d.correction_checks),
        CheckPart("speculation_hit_blocks", d.speculation_hit_blocks,
                  "speculation_needed_blocks", d.speculation_needed_blocks)}) {
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

namespace {

// The contract's series, grouped by what they watch; all owned by the registry.
struct SessionSeries {
  explicit SessionSeries(Registry& r)
      : open(AddGauge(r, "freekv_sessions_open", "Sessions open now.")),
        opened(AddCounter(r, "freekv_sessions_opened_total", "Sessions opened.")),
        closed(prometheus::BuildCounter()
                   .Name("freekv_sessions_closed_total")
                   .Help("Sessions ended, by reason (client: closed by the worker; "
                         "lease_expired: reclaimed without heartbeat).")
                   .Register(r)),
        // Both reasons exist from the start, so rate() sees a zero, not a gap.
        closed_client(closed.Add({{"reason", "client"}})),
        closed_lease_expired(closed.Add({{"reason", "lease_expired"}})) {}
  Gauge& open;
  Counter& opened;
  prometheus::Family<Counter>& closed;
  Counter& closed_client;
  Counter& closed_lease_expired;
};

struct StoreSeries {
  explicit StoreSeries(Registry& r)
      : bytes_used(AddGauge(r, "freekv_store_bytes_used",
                            "Bytes of store blocks holding pages.")),
        bytes_capacity(AddGauge(r, "freekv_store_bytes_capacity",
                                "Configured store capacity in bytes.")),
        pages(
            AddGauge(r, "freekv_store_pages", "Blocks (sequence, layer, page) stored.")),
        chunks(AddGauge(r, "freekv_store_chunks", "Host-memory chunks allocated.")),
        chunk_failures(AddCounter(r, "freekv_store_chunk_allocation_failures_total",
                                  "Chunk allocations (or pins) that failed.")),
        offload_pages(AddCounter(r, "freekv_offload_pages_total",
                                 "Pages (blocks) stored by Offload.")),
        offload_bytes(
            AddCounter(r, "freekv_offload_bytes_total", "Bytes stored by Offload.")),
        integrity_failures(AddCounter(r, "freekv_integrity_failures_total",
                                      "Blocks whose integrity tag did not match at "
                                      "recall.")) {}
  Gauge& bytes_used;
  Gauge& bytes_capacity;
  Gauge& pages;
  Gauge& chunks;
  Counter& chunk_failures;
  Counter& offload_pages;
  Counter& offload_bytes;
  Counter& integrity_failures;
};

struct RecallSeries {
  explicit RecallSeries(Registry& r)
      : requests(AddCounter(r, "freekv_recall_requests_total",
                            "Recall requests completed OK.")),
        blocks(AddCounter(r, "freekv_recall_blocks_total",
                          "(sequence, head, page) slices pushed by recall.")),
        bytes(AddCounter(r, "freekv_recall_bytes_total", "Bytes pushed by recall.")),
        transfers(AddCounter(r, "freekv_recall_transfers_total",
                             "Transport operations after merging adjacent runs.")),
        latency(prometheus::BuildHistogram()
                    .Name("freekv_recall_latency_seconds")
                    .Help("Recall request received to last byte flushed.")
                    .Register(r)
                    .Add({}, LatencyBuckets())),
        urgent_latency(prometheus::BuildHistogram()
                           .Name("freekv_recall_urgent_latency_seconds")
                           .Help("As freekv_recall_latency_seconds, for the urgent "
                                 "requests only (corrections the decode waits for).")
                           .Register(r)
                           .Add({}, LatencyBuckets())),
        request_bytes(prometheus::BuildHistogram()
                          .Name("freekv_recall_request_bytes")
                          .Help("Bytes per recall request.")
                          .Register(r)
                          .Add({}, RequestBytesBuckets())),
        push_family(prometheus::BuildHistogram()
                        .Name("freekv_recall_push_seconds")
                        .Help("Where each CUDA IPC push spent its time, by lane (bulk: "
                              "speculation; urgent: corrections) and stage: queued "
                              "behind earlier pushes, issuing (packing and enqueueing "
                              "its copies), landing (its copies, after any wait for the "
                              "worker's slot).")
                        .Register(r)),
        pushes_family(prometheus::BuildCounter()
                          .Name("freekv_recall_pushes_total")
                          .Help("CUDA IPC pushes that landed, by lane and by how their "
                                "copies went: packed on the host into bounce buffers, "
                                "or direct from the store (--cuda_copy_method).")
                          .Register(r)),
        link_ceiling(AddGauge(r, "freekv_recall_link_ceiling_bytes_per_second",
                              "The link's measured ceiling in bytes/s (0: unknown).")),
        errors(prometheus::BuildCounter()
                   .Name("freekv_request_errors_total")
                   .Help("Requests answered with an error, by method and code.")
                   .Register(r)) {
    // Every (lane, stage) series up front, so that dashboards see zeros, not gaps.
    for (int urgent : {0, 1}) {
      const char* lane = urgent ? "urgent" : "bulk";
      for (int stage = 0; stage < kPushStages; ++stage) {
        push[urgent][stage] = &push_family.Add(
            {{"lane", lane}, {"stage", kPushStageNames[stage]}}, LatencyBuckets());
      }
      for (int packed : {0, 1}) {
        pushes[urgent][packed] =
            &pushes_family.Add({{"lane", lane}, {"copy", packed ? "packed" : "direct"}});
      }
    }
  }
  static constexpr int kPushStages = 3;
  static constexpr const char* kPushStageNames[kPushStages] = {"queued", "issuing",
                                                               "landing"};
  Histogram* push[2][kPushStages] = {};  // [urgent][stage], in push_family
  Counter* pushes[2][2] = {};            // [urgent][packed], in pushes_family
  Counter& requests;
  Counter& blocks;
  Counter& bytes;
  Counter& transfers;
  Histogram& latency;
  Histogram& urgent_latency;
  Histogram& request_bytes;
  prometheus::Family<Histogram>& push_family;
  prometheus::Family<Counter>& pushes_family;
  Gauge& link_ceiling;
  // Series appear with the first error of each (method, code).
  prometheus::Family<Counter>& errors;
};

struct WorkerSeries {
  explicit WorkerSeries(Registry& r)
      : decode_steps(AddCounter(r, "freekv_worker_decode_steps_total",
                                "Decode steps the workers reported.")),
        correction_checks(AddCounter(r, "freekv_worker_correction_checks_total",
                                     "(layer, KV head group) correction decisions.")),
        corrections(AddCounter(r, "freekv_worker_corrections_total",
                               "Correction decisions that flagged a re-selection.")),
        needed_blocks(AddCounter(r, "freekv_worker_speculation_needed_blocks_total",
                                 "Blocks needed at a step.")),
        hit_blocks(AddCounter(r, "freekv_worker_speculation_hit_blocks_total",
                              "Needed blocks already brought by the speculative "
                              "recall.")),
        stall_seconds(AddCounter(r, "freekv_worker_stall_seconds_total",
                                 "Time workers waited for recall.")),
        decode_seconds(AddCounter(r, "freekv_worker_decode_seconds_total",
                                  "Time workers spent decoding.")) {}
  Counter& decode_steps;
  Counter& correction_checks;
  Counter& corrections;
  Counter& needed_blocks;
  Counter& hit_blocks;
  Counter& stall_seconds;
  Counter& decode_seconds;
};

}  // namespace

struct ServiceMetrics::Series {
  explicit Series(Registry& r) : session(r), store(r), recall(r), worker(r) {}
  SessionSeries session;
  StoreSeries store;
  RecallSeries recall;
  WorkerSeries worker;
};

absl::StatusOr<std::unique_ptr<ServiceMetrics>> ServiceMetrics::Create(
    const Options& options) {
  std::unique_ptr<ServiceMetrics> metrics(new ServiceMetrics(options));
  if (options.address.empty()) return metrics;
  try {
    // civetweb reports a bind failure by throwing from the constructor.
    metrics->exposer_ =
        std::make_unique<prometheus::Exposer>(options.address, options.exposer_threads);
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("metrics_address ", options.address,
                                               ": cannot serve metrics: ", e.what()));
  }
  metrics->exposer_->RegisterCollectable(metrics->registry_);
  return metrics;
}

ServiceMetrics::ServiceMetrics(const Options& options)
    : registry_(std::make_shared<Registry>()),
      series_(std::make_unique<Series>(*registry_)) {
  prometheus::BuildGauge()
      .Name("freekv_build_info")
      .Help("Build identity; always 1.")
      .Register(*registry_)
      .Add({{"version", options.version}})
      .Set(1);
  series_->recall.link_ceiling.Set(options.link_ceiling_bytes_per_second);
}

ServiceMetrics::~ServiceMetrics() { exposer_.reset(); }

void ServiceMetrics::OnSessionOpened() {
  series_->session.opened.Increment();
  series_->session.open.Increment();
}

void ServiceMetrics::OnSessionClosed(CloseReason reason) {
  (reason == CloseReason::kClient ? series_->session.closed_client
                                  : series_->session.closed_lease_expired)
      .Increment();
  series_->session.open.Decrement();
}

void ServiceMetrics::SetStore(const BlockAllocator::Stats& stats) {
  series_->store.bytes_used.Set(static_cast<double>(stats.bytes_used));
  series_->store.bytes_capacity.Set(static_cast<double>(stats.capacity));
  series_->store.pages.Set(static_cast<double>(stats.blocks));
  series_->store.chunks.Set(static_cast<double>(stats.chunks));
  absl::MutexLock lock(&store_mu_);
  if (stats.chunk_allocation_failures > chunk_failures_seen_) {
    series_->store.chunk_failures.Increment(
        static_cast<double>(stats.chunk_allocation_failures - chunk_failures_seen_));
    chunk_failures_seen_ = stats.chunk_allocation_failures;
  }
}

void ServiceMetrics::OnOffload(uint64_t pages, uint64_t bytes) {
  series_->store.offload_pages.Increment(static_cast<double>(pages));
  series_->store.offload_bytes.Increment(static_cast<double>(bytes));
}

void ServiceMetrics::OnPushLanded(const PushStages& stages) {
  Histogram* const* lane = series_->recall.push[stages.urgent ? 1 : 0];
  const absl::Duration times[RecallSeries::kPushStages] = {stages.queued, stages.issuing,
                                                           stages.landing};
  for (int stage = 0; stage < RecallSeries::kPushStages; ++stage) {
    lane[stage]->Observe(absl::ToDoubleSeconds(times[stage]));
  }
  series_->recall.pushes[stages.urgent ? 1 : 0][stages.packed ? 1 : 0]->Increment();
}

void ServiceMetrics::OnRecall(uint64_t blocks, uint64_t bytes, uint64_t transfers,
                              absl::Duration latency, bool urgent) {
  if (urgent) series_->recall.urgent_latency.Observe(absl::ToDoubleSeconds(latency));
  series_->recall.requests.Increment();
  series_->recall.blocks.Increment(static_cast<double>(blocks));
  series_->recall.bytes.Increment(static_cast<double>(bytes));
  series_->recall.transfers.Increment(static_cast<double>(transfers));
  series_->recall.latency.Observe(absl::ToDoubleSeconds(latency));
  series_->recall.request_bytes.Observe(static_cast<double>(bytes));
}

void ServiceMetrics::OnIntegrityFailures(uint64_t blocks) {
  series_->store.integrity_failures.Increment(static_cast<double>(blocks));
}

void ServiceMetrics::OnRequestError(RpcMethod method, absl::StatusCode code) {
  if (code == absl::StatusCode::kOk) return;
  // Add returns the existing series for labels already seen.
  series_->recall.errors
      .Add({{"method", RpcMethodName(method)}, {"code", absl::StatusCodeToString(code)}})
      .Increment();
}

absl::Status ServiceMetrics::OnWorkerStats(const WorkerStatsDelta& delta) {
  if (absl::Status valid = ValidateWorkerStats(delta); !valid.ok()) return valid;
  series_->worker.decode_steps.Increment(static_cast<double>(delta.decode_steps));
  series_->worker.correction_checks.Increment(
      static_cast<double>(delta.correction_checks));
  series_->worker.corrections.Increment(static_cast<double>(delta.corrections));
  series_->worker.needed_blocks.Increment(
      static_cast<double>(delta.speculation_needed_blocks));
  series_->worker.hit_blocks.Increment(static_cast<double>(delta.speculation_hit_blocks));
  series_->worker.stall_seconds.Increment(delta.stall_seconds);
  series_->worker.decode_seconds.Increment(delta.decode_seconds);
  return absl::OkStatus();
}

void ServiceMetrics::SetLinkCeiling(double bytes_per_second) {
  series_->recall.link_ceiling.Set(bytes_per_second);
}

std::vector<int> ServiceMetrics::ListeningPorts() const {
  return exposer_ ? exposer_->GetListeningPorts() : std::vector<int>();
}

std::string ServiceMetrics::Text() const {
  return prometheus::TextSerializer().Serialize(registry_->Collect());
}

}  // namespace freekv
