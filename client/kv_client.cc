#include "client/kv_client.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/geometry_proto.h"
#include "common/grpc_status.h"
#include "common/log.h"
#include "common/thread_name.h"

namespace freekv {
namespace {

// A channel to `target`, connected within `timeout`, or null. A channel whose
// connection failed (no socket yet, the service restarting) waits out gRPC's reconnect
// backoff, 1 s and growing 1.6 times, before it tries again: a worker started just
// before its node's kvservice would connect seconds after the service was up, or give
// up while it already was. So a channel that failed is replaced by a fresh one, which
// tries at once.
std::shared_ptr<grpc::Channel> ConnectWithin(const std::string& target,
                                             const grpc::ChannelArguments& args,
                                             absl::Duration timeout) {
  constexpr absl::Duration kPoll = absl::Milliseconds(50);
  const absl::Time deadline = absl::Now() + timeout;
  std::shared_ptr<grpc::Channel> channel =
      grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
  for (;;) {
    if (channel->WaitForConnected(absl::ToChronoTime(std::min(deadline, absl::Now() + kPoll)))) {
      return channel;
    }
    if (absl::Now() >= deadline) return nullptr;
    if (channel->GetState(/*try_to_connect=*/false) == GRPC_CHANNEL_TRANSIENT_FAILURE) {
      channel = grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
    }
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<KvClient>> KvClient::Open(const KvClientOptions& options) {
  // The kvservice is the one place that validates a geometry (its error names the
  // field); the client only sizes its regions, at least one page each, so that even a
  // bad geometry reaches the service and gets its answer.
  constexpr uint64_t kMinRegionBytes = 4096;
  const Geometry& g = options.geometry;
  const uint64_t slot_bytes = std::max(
      kMinRegionBytes, options.slot_bytes != 0
                           ? options.slot_bytes
                           : uint64_t{options.slot_slices} * g.head_slice_bytes());
  const uint64_t offload_bytes = std::max(
      kMinRegionBytes, options.offload_bytes != 0
                           ? options.offload_bytes
                           : uint64_t{options.offload_blocks} * g.block_bytes());
  if (g.num_layers > kMaxLayers) {
    return absl::InvalidArgumentError(absl::StrCat(
        "geometry.num_layers is ", g.num_layers, "; it must be in [1, ", kMaxLayers, "]"));
  }
  std::unique_ptr<UcxRegions> ucx_regions;
  if (options.cuda_ipc.has_value()) {
    if (options.cuda_ipc->staging_bytes < 2 * uint64_t{g.num_layers} * slot_bytes) {
      return absl::InvalidArgumentError(absl::StrCat(
          "cuda_ipc.staging_bytes is ", options.cuda_ipc->staging_bytes, "; 2 slots x ",
          g.num_layers, " layers x slot_bytes ", slot_bytes, " do not fit"));
    }
  } else {
    absl::StatusOr<std::unique_ptr<UcxRegions>> regions =
        UcxRegions::Create(
            2 * std::max<uint64_t>(1, g.num_layers) * slot_bytes, offload_bytes);
    if (!regions.ok()) return regions.status();
    ucx_regions = *std::move(regions);
  }

  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  std::shared_ptr<grpc::Channel> channel = ConnectWithin(options.target, args, options.rpc_timeout);
  if (channel == nullptr) {
    return absl::UnavailableError(absl::StrCat(
        "could not connect to the kvservice at ", options.target, " within ",
        absl::FormatDuration(options.rpc_timeout), "; is it running?"));
  }
  std::unique_ptr<KvClient> client(
      new KvClient(options, std::move(ucx_regions), std::move(channel)));
  client->slot_bytes_ = slot_bytes;
  if (absl::Status s = client->OpenSession(); !s.ok()) return s;
  return client;
}

KvClient::KvClient(KvClientOptions options, std::unique_ptr<UcxRegions> regions,
                   std::shared_ptr<grpc::Channel> channel)
    : options_(std::move(options)),
      regions_(std::move(regions)),
      channel_(std::move(channel)),
      stub_(v1::KvService::NewStub(channel_)),
      lease_(options_.lease),
      tracker_(options_.geometry.num_layers) {}

std::unique_ptr<grpc::ClientContext> KvClient::NewContext() const {
  auto context = std::make_unique<grpc::ClientContext>();
  context->set_deadline(absl::ToChronoTime(absl::Now() + options_.rpc_timeout));
  return context;
}

void KvClient::DescribeRegions(v1::OpenSessionRequest* request) const {
  v1::MemoryRegion* staging = request->mutable_staging();
  v1::MemoryRegion* offload = request->mutable_offload();
  if (options_.cuda_ipc.has_value()) {
    const CudaIpcHandles& ipc = *options_.cuda_ipc;
    request->set_transport(v1::TRANSPORT_CUDA_IPC);
    staging->set_length(ipc.staging_bytes);
    staging->set_cuda_ipc_handle(ipc.staging_handle);
    offload->set_length(ipc.offload_bytes);
    offload->set_cuda_ipc_handle(ipc.offload_handle);
    v1::CudaIpcPeer* peer = request->mutable_cuda_ipc();
    peer->set_pci_bus_id(ipc.pci_bus_id);
    for (const std::string& e : ipc.slot_ready_events) peer->add_slot_ready_events(e);
    for (const std::string& e : ipc.slot_free_events) peer->add_slot_free_events(e);
    peer->set_offload_written_event(ipc.offload_written_event);
    if (ipc.signals_bytes > 0) {
      peer->mutable_signals()->set_length(ipc.signals_bytes);
      peer->mutable_signals()->set_cuda_ipc_handle(ipc.signals_handle);
    }
    return;
  }
  request->set_transport(v1::TRANSPORT_UCX);
  request->set_ucx_worker_address(regions_->worker_address());
  staging->set_address(reinterpret_cast<uint64_t>(regions_->staging().data()));
  staging->set_length(regions_->staging().size());
  staging->set_ucx_rkey(regions_->staging_rkey());
  offload->set_address(reinterpret_cast<uint64_t>(regions_->offload().data()));
  offload->set_length(regions_->offload().size());
  offload->set_ucx_rkey(regions_->offload_rkey());
}

absl::Status KvClient::OpenSession() {
  v1::OpenSessionRequest request;
  *request.mutable_geometry() = GeometryToProto(options_.geometry);
  DescribeRegions(&request);
  request.set_slot_bytes(slot_bytes_);
  request.set_lease_ms(static_cast<uint32_t>(absl::ToInt64Milliseconds(options_.lease)));
  request.set_client_name(options_.client_name);
  v1::OpenSessionResponse response;
  grpc::Status status = stub_->OpenSession(NewContext().get(), request, &response);
  if (!status.ok()) return FromGrpcStatus(status);
  session_id_ = response.session_id();
  lease_ = absl::Milliseconds(response.lease_ms());

  stream_ = stub_->Recall(&stream_context_);
  reader_ = std::thread([this] { ReadReplies(); });
  if (options_.heartbeat) heartbeat_ = std::thread([this] { HeartbeatLoop(); });
  return absl::OkStatus();
}

KvClient::~KvClient() {
  if (!closed_.load()) Close().IgnoreError();
  StopThreads();
}

void KvClient::StopThreads() {
  if (!stop_heartbeat_.HasBeenNotified()) stop_heartbeat_.Notify();
  if (heartbeat_.joinable()) heartbeat_.join();
  {
    absl::MutexLock lock(&write_mu_);
    if (stream_ != nullptr && !stream_closed_) {
      stream_->WritesDone();
      stream_closed_ = true;
    }
  }
  if (reader_.joinable()) reader_.join();
}

void KvClient::ReadReplies() {
  NameThisThread("kv-replies");
  v1::RecallReply reply;
  while (stream_->Read(&reply)) {
    absl::Status status(static_cast<absl::StatusCode>(reply.code()), reply.message());
    tracker_.Complete(reply.request_id(), std::move(status),
                      absl::Nanoseconds(reply.service_latency_ns()));
  }
  grpc::Status end = stream_->Finish();
  stream_ended_.store(true);
  tracker_.FailAll(absl::UnavailableError(absl::StrCat(
      "the recall stream of session ", session_id_, " to the kvservice at ",
      options_.target, " ended (", end.ok() ? "closed by the kvservice" : end.error_message(),
      "); open a new session")));
}

void KvClient::HeartbeatLoop() {
  NameThisThread("kv-heartbeat");
  const absl::Duration interval = lease_ / 3;
  while (!stop_heartbeat_.WaitForNotificationWithTimeout(interval)) {
    if (absl::Status s = Heartbeat(); !s.ok()) {
      Log(LogLevel::kWarning, "heartbeat of session %d failed: %s", session_id_,
          s.ToString());
    }
  }
}

absl::Span<std::byte> KvClient::offload_region() {
  if (regions_ == nullptr) return {};
  return regions_->offload();
}

absl::Span<std::byte> KvClient::staging_slot(uint32_t layer, uint32_t slot) {
  if (regions_ == nullptr || layer >= options_.geometry.num_layers ||
      slot >= SlotTracker::kSlotsPerLayer) {
    return {};
  }
  return regions_->staging().subspan((2 * uint64_t{layer} + slot) * slot_bytes_,
                                     slot_bytes_);
}

absl::StatusOr<std::vector<uint64_t>> KvClient::Offload(
    absl::Span<const OffloadPageRef> pages) {
  v1::OffloadRequest request;
  request.set_session_id(session_id_);
  for (const OffloadPageRef& page : pages) {
    v1::OffloadPage* out = request.add_pages();
    out->set_sequence_id(page.sequence_id);
    out->set_layer(page.layer);
    out->set_page(page.page);
    out->set_offload_offset(page.offload_offset);
  }
  v1::OffloadResponse response;
  grpc::Status status = stub_->Offload(NewContext().get(), request, &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return std::vector<uint64_t>(response.integrity_tags().begin(),
                               response.integrity_tags().end());
}

absl::StatusOr<RecallTicket> KvClient::Recall(uint64_t step, uint32_t layer,
                                              absl::Span<const RecallSliceRef> slices,
                                              RecallOptions options) {
  absl::StatusOr<RecallTicket> ticket = tracker_.Claim(step, layer);
  if (!ticket.ok()) return ticket.status();
  v1::RecallRequest request;
  request.set_session_id(session_id_);
  request.set_request_id(ticket->request_id);
  request.set_step(step);
  request.set_layer(layer);
  request.set_slot(ticket->slot);
  request.set_verify_integrity(options.verify_integrity);
  request.set_urgent(options.urgent);
  if (options.signal.has_value()) {
    v1::RecallSignal* signal = request.mutable_signal();
    signal->set_offset(options.signal->offset);
    signal->set_value(options.signal->value_for_slot[ticket->slot]);
  }
  for (const RecallSliceRef& slice : slices) {
    v1::RecallBlock* block = request.add_blocks();
    block->set_sequence_id(slice.sequence_id);
    block->set_kv_head(slice.kv_head);
    block->set_page(slice.page);
    block->set_slot_offset(slice.slot_offset);
  }
  absl::MutexLock lock(&write_mu_);
  if (stream_closed_ || stream_ended_.load() || !stream_->Write(request)) {
    const absl::Status broken = absl::UnavailableError(absl::StrCat(
        "the recall stream of session ", session_id_, " to the kvservice at ",
        options_.target, " is closed (the kvservice stopped or dropped the session); ",
        "open a new session"));
    tracker_.Complete(ticket->request_id, broken);
    tracker_.Release(*ticket).IgnoreError();
    return broken;
  }
  return ticket;
}

absl::Status KvClient::Wait(const RecallTicket& ticket, absl::Time deadline,
                            absl::Duration* service_latency) {
  return tracker_.Wait(ticket, deadline, service_latency);
}

absl::Status KvClient::WaitStep(uint64_t step, uint32_t layer, absl::Time deadline) {
  return tracker_.WaitStep(step, layer, deadline);
}

absl::Status KvClient::Release(const RecallTicket& ticket) {
  return tracker_.Release(ticket);
}

absl::StatusOr<uint32_t> KvClient::FreeSequence(uint64_t sequence_id) {
  v1::FreeSequenceRequest request;
  request.set_session_id(session_id_);
  request.set_sequence_id(sequence_id);
  v1::FreeSequenceResponse response;
  grpc::Status status = stub_->FreeSequence(NewContext().get(), request, &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return response.pages_freed();
}

absl::Status KvClient::ReportStats(const DecodeStatsDelta& delta) {
  v1::ReportWorkerStatsRequest request;
  request.set_session_id(session_id_);
  request.set_decode_steps(delta.decode_steps);
  request.set_correction_checks(delta.correction_checks);
  request.set_corrections(delta.corrections);
  request.set_speculation_needed_blocks(delta.speculation_needed_blocks);
  request.set_speculation_hit_blocks(delta.speculation_hit_blocks);
  request.set_stall_seconds(delta.stall_seconds);
  request.set_decode_seconds(delta.decode_seconds);
  v1::ReportWorkerStatsResponse response;
  return FromGrpcStatus(
      stub_->ReportWorkerStats(NewContext().get(), request, &response));
}

absl::StatusOr<v1::GetStatsResponse> KvClient::ServiceStats() {
  v1::GetStatsResponse response;
  grpc::Status status =
      stub_->GetStats(NewContext().get(), v1::GetStatsRequest(), &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return response;
}

absl::Status KvClient::Heartbeat() {
  v1::HeartbeatRequest request;
  request.set_session_id(session_id_);
  v1::HeartbeatResponse response;
  return FromGrpcStatus(stub_->Heartbeat(NewContext().get(), request, &response));
}

absl::Status KvClient::Close() {
  if (closed_.exchange(true)) return absl::OkStatus();
  // Half-close the stream first so that in-flight recalls finish before the session
  // goes away; the service answers each one before ending the stream.
  StopThreads();
  v1::CloseSessionRequest request;
  request.set_session_id(session_id_);
  v1::CloseSessionResponse response;
  return FromGrpcStatus(stub_->CloseSession(NewContext().get(), request, &response));
}

void KvClient::Abandon() {
  closed_.store(true);
  stream_context_.TryCancel();
  StopThreads();
}

}  // namespace freekv
