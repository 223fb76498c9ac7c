#include "kvservice/kv_service.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/grpc_status.h"
#include "common/log.h"
#include "kvservice/proto_convert.h"
#include "kvservice/recall_stream.h"

namespace freekv {

KvServiceImpl::KvServiceImpl(KvServiceOptions options, SessionRegistry* registry,
                             BlockAllocator* store, TransportFactory* transports,
                             ServiceMetrics* metrics)
    : options_(options),
      registry_(registry),
      store_(store),
      transports_(transports),
      metrics_(metrics) {}

grpc::Status KvServiceImpl::Fail(RpcMethod method, const absl::Status& status) {
  metrics_->OnRequestError(method, status.code());
  return ToGrpcStatus(status);
}

absl::StatusOr<std::shared_ptr<Session>> KvServiceImpl::Touch(uint64_t session_id) {
  absl::StatusOr<std::shared_ptr<Session>> session = registry_->Find(session_id);
  if (session.ok()) (*session)->Renew(absl::Now());
  return session;
}

void KvServiceImpl::UpdateStoreMetrics() { metrics_->SetStore(store_->stats()); }

grpc::Status KvServiceImpl::OpenSession(grpc::ServerContext*,
                                        const v1::OpenSessionRequest* request,
                                        v1::OpenSessionResponse* response) {
  constexpr RpcMethod kMethod = RpcMethod::kOpenSession;
  absl::StatusOr<SessionConfig> config = SessionConfigFromProto(
      *request, options_.default_lease, options_.max_lease, options_.max_request_blocks);
  if (!config.ok()) return Fail(kMethod, config.status());
  absl::StatusOr<SessionPeer> peer = SessionPeerFromProto(*request);
  if (!peer.ok()) return Fail(kMethod, peer.status());
  absl::StatusOr<std::unique_ptr<SessionTransport>> transport =
      transports_->Connect(*peer);
  if (!transport.ok()) return Fail(kMethod, transport.status());
  const absl::Duration lease = config->lease;
  const Geometry geometry = config->geometry;
  const std::string name = config->client_name;
  absl::StatusOr<std::shared_ptr<Session>> session =
      registry_->Open(*std::move(config), *std::move(transport), absl::Now());
  if (!session.ok()) return Fail(kMethod, session.status());
  response->set_session_id((*session)->id());
  response->set_lease_ms(static_cast<uint32_t>(absl::ToInt64Milliseconds(lease)));
  response->set_block_bytes(geometry.block_bytes());
  response->set_head_slice_bytes(geometry.head_slice_bytes());
  metrics_->OnSessionOpened();
  Log(LogLevel::kInfo, "session %d opened by '%s': %d layers, %d KV heads, head_dim %d, "
      "page %d tokens, %s, lease %s",
      (*session)->id(), name, geometry.num_layers, geometry.num_kv_heads,
      geometry.head_dim, geometry.page_tokens, DTypeName(geometry.dtype),
      absl::FormatDuration(lease));
  return grpc::Status::OK;
}

grpc::Status KvServiceImpl::Heartbeat(grpc::ServerContext*,
                                      const v1::HeartbeatRequest* request,
                                      v1::HeartbeatResponse* response) {
  absl::StatusOr<std::shared_ptr<Session>> session = Touch(request->session_id());
  if (!session.ok()) return Fail(RpcMethod::kHeartbeat, session.status());
  response->set_lease_ms(
      static_cast<uint32_t>(absl::ToInt64Milliseconds((*session)->config().lease)));
  return grpc::Status::OK;
}

grpc::Status KvServiceImpl::Offload(grpc::ServerContext*,
                                    const v1::OffloadRequest* request,
                                    v1::OffloadResponse* response) {
  constexpr RpcMethod kMethod = RpcMethod::kOffload;
  absl::StatusOr<std::shared_ptr<Session>> session = Touch(request->session_id());
  if (!session.ok()) return Fail(kMethod, session.status());
  absl::StatusOr<OffloadResult> result =
      (*session)->Offload(OffloadItemsFromProto(*request));
  UpdateStoreMetrics();
  if (!result.ok()) return Fail(kMethod, result.status());
  response->set_pages_stored(static_cast<uint32_t>(result->integrity_tags.size()));
  response->set_bytes(result->bytes);
  for (uint64_t tag : result->integrity_tags) response->add_integrity_tags(tag);
  totals_.pages_offloaded += result->integrity_tags.size();
  metrics_->OnOffload(result->integrity_tags.size(), result->bytes);
  return grpc::Status::OK;
}

grpc::Status KvServiceImpl::Recall(
    grpc::ServerContext*,
    grpc::ServerReaderWriter<v1::RecallReply, v1::RecallRequest>* stream) {
  RecallStream::Hooks hooks;
  hooks.touch_session = [this](uint64_t id) { return Touch(id); };
  hooks.on_error = [this](const absl::Status& status) {
    metrics_->OnRequestError(RpcMethod::kRecall, status.code());
    if (status.code() == absl::StatusCode::kDataLoss) metrics_->OnIntegrityFailures(1);
  };
  hooks.on_recalled = [this](const RecallResult& result, absl::Duration latency) {
    totals_.blocks_recalled += result.blocks;
    totals_.recall_bytes += result.bytes;
    metrics_->OnRecall(result.blocks, result.bytes, result.transfers, latency,
                       result.urgent);
  };
  return RecallStream(stream, std::move(hooks)).Run();
}

grpc::Status KvServiceImpl::FreeSequence(grpc::ServerContext*,
                                         const v1::FreeSequenceRequest* request,
                                         v1::FreeSequenceResponse* response) {
  absl::StatusOr<std::shared_ptr<Session>> session = Touch(request->session_id());
  if (!session.ok()) return Fail(RpcMethod::kFreeSequence, session.status());
  const FreeResult freed = (*session)->FreeSequence(request->sequence_id());
  UpdateStoreMetrics();
  response->set_pages_freed(freed.pages);
  response->set_bytes_freed(freed.bytes);
  return grpc::Status::OK;
}

grpc::Status KvServiceImpl::CloseSession(grpc::ServerContext*,
                                         const v1::CloseSessionRequest* request,
                                         v1::CloseSessionResponse* response) {
  absl::StatusOr<FreeResult> freed = registry_->Close(request->session_id());
  if (!freed.ok()) return Fail(RpcMethod::kCloseSession, freed.status());
  UpdateStoreMetrics();
  metrics_->OnSessionClosed(CloseReason::kClient);
  response->set_pages_freed(freed->pages);
  response->set_bytes_freed(freed->bytes);
  Log(LogLevel::kInfo, "session %d closed by its client: %d pages freed",
      request->session_id(), freed->pages);
  return grpc::Status::OK;
}

grpc::Status KvServiceImpl::ReportWorkerStats(
    grpc::ServerContext*, const v1::ReportWorkerStatsRequest* request,
    v1::ReportWorkerStatsResponse*) {
  constexpr RpcMethod kMethod = RpcMethod::kReportWorkerStats;
  absl::StatusOr<std::shared_ptr<Session>> session = Touch(request->session_id());
  if (!session.ok()) return Fail(kMethod, session.status());
  WorkerStatsDelta delta;
  delta.decode_steps = request->decode_steps();
  delta.correction_checks = request->correction_checks();
  delta.corrections = request->corrections();
  delta.speculation_needed_blocks = request->speculation_needed_blocks();
  delta.speculation_hit_blocks = request->speculation_hit_blocks();
  delta.stall_seconds = request->stall_seconds();
  delta.decode_seconds = request->decode_seconds();
  if (absl::Status s = metrics_->OnWorkerStats(delta); !s.ok()) return Fail(kMethod, s);
  return grpc::Status::OK;
}

grpc::Status KvServiceImpl::GetStats(grpc::ServerContext*, const v1::GetStatsRequest*,
                                     v1::GetStatsResponse* response) {
  const BlockAllocator::Stats store = store_->stats();
  response->set_sessions_open(static_cast<uint32_t>(registry_->size()));
  response->set_store_bytes_used(store.bytes_used);
  response->set_store_bytes_capacity(store.capacity);
  response->set_store_pages(store.blocks);
  response->set_pages_offloaded(totals_.pages_offloaded.load());
  response->set_blocks_recalled(totals_.blocks_recalled.load());
  response->set_recall_bytes(totals_.recall_bytes.load());
  response->set_sessions_reclaimed(totals_.sessions_reclaimed.load());
  return grpc::Status::OK;
}

size_t KvServiceImpl::ReapExpiredSessions(absl::Time now) {
  const std::vector<uint64_t> reaped = registry_->ReapExpired(now);
  for (uint64_t id : reaped) {
    metrics_->OnSessionClosed(CloseReason::kLeaseExpired);
    Log(LogLevel::kWarning,
        "session %d reclaimed: its lease lapsed without a heartbeat", id);
  }
  if (!reaped.empty()) UpdateStoreMetrics();
  totals_.sessions_reclaimed += reaped.size();
  return reaped.size();
}

}  // namespace freekv
