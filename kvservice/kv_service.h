// The gRPC edge of the kvservice: validates each request, calls the domain (registry,
// sessions, store), maps absl::Status to gRPC status and records metrics. It holds no
// logic of its own beyond that translation.
//
// Owns nothing but its counters; the registry, store, transport factory and metrics
// are owned by main and outlive it. Called from gRPC's handler threads, concurrently.
#ifndef FREEKV_KVSERVICE_KV_SERVICE_H_
#define FREEKV_KVSERVICE_KV_SERVICE_H_

#include <atomic>
#include <cstdint>

#include "absl/time/time.h"
#include "kvservice/block_allocator.h"
#include "kvservice/metrics.h"
#include "kvservice/session_registry.h"
#include "kvservice/transport.h"
#include "proto/freekv/v1/kvservice.grpc.pb.h"

namespace freekv {

struct KvServiceOptions {
  absl::Duration default_lease = absl::Seconds(10);
  absl::Duration max_lease = absl::Minutes(10);
  uint32_t max_request_blocks = 65536;
};

// Totals since start, for GetStats.
struct ServiceTotals {
  std::atomic<uint64_t> pages_offloaded{0};
  std::atomic<uint64_t> blocks_recalled{0};
  std::atomic<uint64_t> recall_bytes{0};
  std::atomic<uint64_t> sessions_reclaimed{0};
};

class KvServiceImpl final : public v1::KvService::Service {
 public:
  KvServiceImpl(KvServiceOptions options, SessionRegistry* registry,
                BlockAllocator* store, TransportFactory* transports,
                ServiceMetrics* metrics);

  grpc::Status OpenSession(grpc::ServerContext* context,
                           const v1::OpenSessionRequest* request,
                           v1::OpenSessionResponse* response) override;
  grpc::Status Heartbeat(grpc::ServerContext* context,
                         const v1::HeartbeatRequest* request,
                         v1::HeartbeatResponse* response) override;
  grpc::Status Offload(grpc::ServerContext* context, const v1::OffloadRequest* request,
                       v1::OffloadResponse* response) override;
  grpc::Status Recall(
      grpc::ServerContext* context,
      grpc::ServerReaderWriter<v1::RecallReply, v1::RecallRequest>* stream) override;
  grpc::Status FreeSequence(grpc::ServerContext* context,
                            const v1::FreeSequenceRequest* request,
                            v1::FreeSequenceResponse* response) override;
  grpc::Status CloseSession(grpc::ServerContext* context,
                            const v1::CloseSessionRequest* request,
                            v1::CloseSessionResponse* response) override;
  grpc::Status ReportWorkerStats(grpc::ServerContext* context,
                                 const v1::ReportWorkerStatsRequest* request,
                                 v1::ReportWorkerStatsResponse* response) override;
  grpc::Status GetStats(grpc::ServerContext* context, const v1::GetStatsRequest* request,
                        v1::GetStatsResponse* response) override;

  // Closes sessions whose lease lapsed (called by the reaper); returns how many.
  size_t ReapExpiredSessions(absl::Time now);

  // Publishes the store's occupancy to the metrics.
  void UpdateStoreMetrics();

 private:
  // Records an error against `method` and converts it for gRPC.
  grpc::Status Fail(RpcMethod method, const absl::Status& status);
  // Finds the session and renews its lease.
  absl::StatusOr<std::shared_ptr<Session>> Touch(uint64_t session_id);

  const KvServiceOptions options_;
  SessionRegistry* const registry_;
  BlockAllocator* const store_;
  TransportFactory* const transports_;
  ServiceMetrics* const metrics_;
  ServiceTotals totals_;
};

}  // namespace freekv

#endif  // FREEKV_KVSERVICE_KV_SERVICE_H_
