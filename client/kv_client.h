// KvClient: a worker's session with the kvservice.
//
// Owns the session (closed on destruction), the worker's UCX-registered regions (an
// offload region and 2 staging slots per layer), the gRPC channel, one Recall stream
// with its reader thread, and a heartbeat thread that keeps the lease alive. With
// KvClientOptions::cuda_ipc set, the regions are device memory the caller owns
// (client/cuda_kv_client.h) and the session uses TRANSPORT_CUDA_IPC instead.
//
// Recall is asynchronous: Recall() claims a free staging slot of the layer, sends the
// request and returns a ticket at once; Wait() blocks until the kvservice reports that
// every byte landed; Release() hands the slot back once the caller has read it. A slot
// is never reused before it is released (SlotTracker).
//
// Thread-safe: any thread may call any method. Typical use is one decode thread.
#ifndef FREEKV_CLIENT_KV_CLIENT_H_
#define FREEKV_CLIENT_KV_CLIENT_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "client/cuda_ipc_handles.h"
#include "client/slot_tracker.h"
#include "client/ucx_regions.h"
#include "common/geometry.h"
#include "grpcpp/grpcpp.h"
#include "proto/freekv/v1/kvservice.grpc.pb.h"

namespace freekv {

struct KvClientOptions {
  // gRPC target: "unix:/run/freekv/kvservice.sock" or "HOST:PORT".
  std::string target;
  Geometry geometry;
  // Bytes of one staging slot; 0 picks room for `slot_slices` slices.
  uint64_t slot_bytes = 0;
  uint32_t slot_slices = 512;
  // Bytes of the offload region; 0 picks room for `offload_blocks` blocks.
  uint64_t offload_bytes = 0;
  uint32_t offload_blocks = 64;
  absl::Duration lease = absl::Seconds(10);
  // Heartbeats every lease / 3. False leaves the lease to other calls (tests).
  bool heartbeat = true;
  std::string client_name;
  // Deadline of each unary call and of connecting.
  absl::Duration rpc_timeout = absl::Seconds(10);
  // Set: open a TRANSPORT_CUDA_IPC session over these device regions (made by
  // CudaRegions, which must outlive the client) instead of making UCX regions;
  // their staging region must hold 2 slots of slot_bytes per layer.
  std::optional<CudaIpcHandles> cuda_ipc;
};

// A full page waiting in the offload region, to be stored as (sequence, layer, page).
struct OffloadPageRef {
  uint64_t sequence_id = 0;
  uint32_t layer = 0;
  uint32_t page = 0;
  uint64_t offload_offset = 0;
};

// A (sequence, kv_head, page) slice to recall to `slot_offset` within the slot.
struct RecallSliceRef {
  uint64_t sequence_id = 0;
  uint32_t kv_head = 0;
  uint32_t page = 0;
  uint64_t slot_offset = 0;
};

// How the kvservice treats one recall.
struct RecallOptions {
  // Check each source block against its integrity tag before sending it.
  bool verify_integrity = false;
  // The caller waits for this recall now (a correction): the kvservice may serve it
  // beside the recalls already queued, so it may complete before them.
  bool urgent = false;
  // CUDA IPC sessions whose regions hold signal words (CudaRegions): once the bytes
  // landed, the kvservice writes the word at `offset` of the signals region on the GPU,
  // before it replies; the value is `value_for_slot[s]` for the staging slot s the
  // recall claims (the caller's kernels learn the slot from the word).
  struct Signal {
    uint64_t offset = 0;
    std::array<uint32_t, 2> value_for_slot = {0, 0};
  };
  std::optional<Signal> signal;

  static RecallOptions Verified() {
    RecallOptions o;
    o.verify_integrity = true;
    return o;
  }
  static RecallOptions Urgent() {
    RecallOptions o;
    o.urgent = true;
    return o;
  }
};

// Decode statistics since the last report (see ReportWorkerStatsRequest).
struct DecodeStatsDelta {
  uint64_t decode_steps = 0;
  uint64_t correction_checks = 0;
  uint64_t corrections = 0;
  uint64_t speculation_needed_blocks = 0;
  uint64_t speculation_hit_blocks = 0;
  double stall_seconds = 0;
  double decode_seconds = 0;
};

class KvClient {
 public:
  // Connects, registers the regions with UCX and opens the session.
  static absl::StatusOr<std::unique_ptr<KvClient>> Open(const KvClientOptions& options);
  ~KvClient();

  KvClient(const KvClient&) = delete;
  KvClient& operator=(const KvClient&) = delete;

  uint64_t session_id() const { return session_id_; }
  const Geometry& geometry() const { return options_.geometry; }
  uint64_t slot_bytes() const { return slot_bytes_; }
  absl::Duration lease() const { return lease_; }

  // The offload region: the caller writes full HND blocks here, then calls Offload.
  // Empty for a CUDA IPC session (the regions are device memory: CudaRegions).
  absl::Span<std::byte> offload_region();
  // The bytes of staging slot `slot` (0 or 1) of `layer`; empty for CUDA IPC.
  absl::Span<std::byte> staging_slot(uint32_t layer, uint32_t slot);

  // Stores pages from the offload region; returns their integrity tags in order.
  absl::StatusOr<std::vector<uint64_t>> Offload(absl::Span<const OffloadPageRef> pages);

  // Claims a staging slot of `layer` for `step` and sends the request; returns at once.
  absl::StatusOr<RecallTicket> Recall(uint64_t step, uint32_t layer,
                                      absl::Span<const RecallSliceRef> slices,
                                      RecallOptions options = {});
  // Blocks until the recall completed (its bytes are in the slot) or the deadline; then
  // sets *service_latency (when non-null) to the kvservice's own time for it, from the
  // request's arrival to its last byte (RecallReply.service_latency_ns).
  absl::Status Wait(const RecallTicket& ticket, absl::Time deadline,
                    absl::Duration* service_latency = nullptr);
  // Waits for every recall claimed for (step, layer).
  absl::Status WaitStep(uint64_t step, uint32_t layer, absl::Time deadline);
  // The caller is done reading the slot.
  absl::Status Release(const RecallTicket& ticket);

  // Frees the sequence's pages in the service; returns the pages freed.
  absl::StatusOr<uint32_t> FreeSequence(uint64_t sequence_id);
  absl::Status ReportStats(const DecodeStatsDelta& delta);
  absl::StatusOr<v1::GetStatsResponse> ServiceStats();
  absl::Status Heartbeat();

  // Closes the session (idempotent). The destructor calls it.
  absl::Status Close();
  // Stops heartbeats and drops the session without closing it, as a dying worker
  // would; the service reclaims it when the lease lapses.
  void Abandon();

 private:
  KvClient(KvClientOptions options, std::unique_ptr<UcxRegions> regions,
           std::shared_ptr<grpc::Channel> channel);
  absl::Status OpenSession();
  void DescribeRegions(v1::OpenSessionRequest* request) const;
  void ReadReplies();
  void HeartbeatLoop();
  void StopThreads();
  std::unique_ptr<grpc::ClientContext> NewContext() const;

  const KvClientOptions options_;
  uint64_t slot_bytes_ = 0;
  std::unique_ptr<UcxRegions> regions_;  // null for a CUDA IPC session
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::KvService::Stub> stub_;
  uint64_t session_id_ = 0;
  absl::Duration lease_;
  SlotTracker tracker_;

  grpc::ClientContext stream_context_;
  std::unique_ptr<grpc::ClientReaderWriter<v1::RecallRequest, v1::RecallReply>> stream_;
  absl::Mutex write_mu_;  // one writer at a time on the stream
  bool stream_closed_ ABSL_GUARDED_BY(write_mu_) = false;
  // The reader saw the stream end (the kvservice went away or dropped the session).
  // Set before the in-flight recalls are failed, so that a recall claimed after that
  // is refused instead of waiting for a reply that cannot come.
  std::atomic<bool> stream_ended_{false};
  std::thread reader_;
  std::thread heartbeat_;
  absl::Notification stop_heartbeat_;
  std::atomic<bool> closed_{false};
};

}  // namespace freekv

#endif  // FREEKV_CLIENT_KV_CLIENT_H_
