// ServiceMetrics: the kvservice's Prometheus metrics (names and meanings are the
// contract in notes/metrics_contract.md) and, optionally, the HTTP exposer that serves
// them at /metrics.
//
// Owns a prometheus::Registry with every family and series of the contract, and the
// prometheus::Exposer when an address is given. Methods are named for the events the
// service sees; the service calls them and never touches prometheus-cpp itself.
//
// Thread-safety: every method may be called from any thread concurrently (the
// prometheus-cpp metrics are atomic; SetStore has its own lock).
#ifndef FREEKV_KVSERVICE_METRICS_H_
#define FREEKV_KVSERVICE_METRICS_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "kvservice/block_allocator.h"
#include "kvservice/transport.h"

namespace prometheus {
class Exposer;
class Registry;
}  // namespace prometheus

namespace freekv {

// Why a session ended: label reason="client" or "lease_expired".
enum class CloseReason { kClient, kLeaseExpired };

// The RPC that answered with an error: label method="OpenSession", ...
enum class RpcMethod {
  kOpenSession,
  kHeartbeat,
  kOffload,
  kRecall,
  kFreeSequence,
  kCloseSession,
  kReportWorkerStats,
  kGetStats,
};
const char* RpcMethodName(RpcMethod method);

// One ReportWorkerStats request: deltas since the worker's previous report.
struct WorkerStatsDelta {
  uint64_t decode_steps = 0;
  uint64_t correction_checks = 0;
  uint64_t corrections = 0;  // of correction_checks
  uint64_t speculation_needed_blocks = 0;
  uint64_t speculation_hit_blocks = 0;  // of speculation_needed_blocks
  double stall_seconds = 0;
  double decode_seconds = 0;
};

// OK, or INVALID_ARGUMENT naming the field: seconds negative or not finite, or a
// part larger than its whole (corrections > correction_checks, hits > needed).
absl::Status ValidateWorkerStats(const WorkerStatsDelta& delta);

class ServiceMetrics {
 public:
  struct Options {
    // The freekv_build_info{version} label.
    std::string version = "dev";
    // HOST:PORT for the exposer (port 0 picks a free port); empty: no exposer, the
    // metrics are still kept and Text() renders them.
    std::string address;
    // Threads serving HTTP; scrapes are rare and cheap.
    size_t exposer_threads = 2;
    // Value of freekv_recall_link_ceiling_bytes_per_second until SetLinkCeiling.
    double link_ceiling_bytes_per_second = 0;
  };

  // UNAVAILABLE naming the address when the exposer cannot listen there.
  static absl::StatusOr<std::unique_ptr<ServiceMetrics>> Create(const Options& options);

  ~ServiceMetrics();  // stops the exposer before the metrics go away
  ServiceMetrics(const ServiceMetrics&) = delete;
  ServiceMetrics& operator=(const ServiceMetrics&) = delete;

  void OnSessionOpened();
  void OnSessionClosed(CloseReason reason);

  // Store gauges from the allocator's stats: bytes used, capacity, pages (live blocks),
  // chunks; and advances freekv_store_chunk_allocation_failures_total to the
  // allocator's cumulative count (so the allocator is the one source of that count).
  void SetStore(const BlockAllocator::Stats& stats);

  void OnOffload(uint64_t pages, uint64_t bytes);
  // One recall request completed OK: `latency` from request received to last byte
  // flushed; `transfers` counts transport operations after merging adjacent runs;
  // `urgent`: the request asked for it (also observed in the urgent histogram).
  void OnRecall(uint64_t blocks, uint64_t bytes, uint64_t transfers,
                absl::Duration latency, bool urgent = false);
  // A push landed in a transport with lanes (CUDA IPC): its three stages go to
  // freekv_recall_push_seconds{lane, stage}, and it counts in
  // freekv_recall_pushes_total{lane, copy}. Any thread.
  void OnPushLanded(const PushStages& stages);
  void OnIntegrityFailures(uint64_t blocks);
  // A request answered with `code`; OK is not an error and is not counted.
  void OnRequestError(RpcMethod method, absl::StatusCode code);
  // Adds the deltas; an invalid report (ValidateWorkerStats) changes nothing and its
  // error is returned for the service to answer with.
  absl::Status OnWorkerStats(const WorkerStatsDelta& delta);
  void SetLinkCeiling(double bytes_per_second);

  // Ports the exposer listens on (the real port when the address asked for 0); empty
  // without an exposer.
  std::vector<int> ListeningPorts() const;

  // The metrics in the Prometheus text format, as /metrics serves them.
  std::string Text() const;

 private:
  struct Series;
  explicit ServiceMetrics(const Options& options);

  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<Series> series_;  // references into registry_
  absl::Mutex store_mu_;
  uint64_t chunk_failures_seen_ ABSL_GUARDED_BY(store_mu_) = 0;
  // Last, so that it is destroyed first: no scrape runs while the rest is torn down.
  std::unique_ptr<prometheus::Exposer> exposer_;
};

}  // namespace freekv

#endif  // FREEKV_KVSERVICE_METRICS_H_
