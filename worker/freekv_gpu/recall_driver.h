// RecallDriver: the host side of a GPU worker's recalls, off the decode thread. The
// decode thread enqueues a layer's selection and a copy of its diff to pinned memory,
// records an event, and pushes an item; it never waits for the GPU. Two threads here
// turn items into recalls and applied pages:
//   issuer:    waits until the item's stamp shows its step (layer_state.h DiffSet),
//              reads the diff (and the flags, for an item of some heads), sends the recall
//              request (KvClient::Recall, no wait);
//   completer: waits for each recall's reply in order, then on its own stream waits
//              for the item's apply_after gate (if any) and the slot's ready event,
//              applies the slot (ApplyRecallCuda), marks the slot free, releases it,
//              and opens the item's gate (SetGate).
// The decode stream waits on the gate (WaitGate) right before attention needs the
// pages, so the host is never on the GPU's path unless a recall is late.
//
// An item with nothing to recall opens its gate at once (on the completer's stream,
// in order); a correction item whose layer flagged no head is dropped (the decode
// stream opened its gate itself, PublishCorrectionCuda). On any error the driver keeps
// opening gates (far past their value) so the GPU drains, and Finish reports the first
// error.
//
// Thread safety: Push and Finish from one thread (the decode thread); the driver's
// own threads do the rest. Items must be pushed after their copies were enqueued.
#ifndef FREEKV_WORKER_FREEKV_GPU_RECALL_DRIVER_H_
#define FREEKV_WORKER_FREEKV_GPU_RECALL_DRIVER_H_

#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "client/cuda_kv_client.h"
#include "kernels/cuda_util.h"
#include "worker/freekv_gpu/resident_ops.h"

namespace freekv::gpu {

// What the driver needs of one layer's resident set (device memory).
struct LayerResidency {
  kernels::PagedKv<BFloat16> pool;
  absl::Span<int32_t> resident;
};

// One selection's diff to recall: in pinned host memory that the selection kernels
// wrote and that both the driver (building the request) and the apply kernel read.
struct RecallItem {
  uint64_t step = 0;  // the step the recalled pages serve
  uint32_t layer = 0;
  // The diff's stamp (pinned): it reads `stamp_value` once the diff is complete.
  const int32_t* stamp = nullptr;
  int32_t stamp_value = 0;
  RecallDiff diff;
  // The heads whose part of the diff this item recalls and applies (the flags are
  // read once the stamp shows the step). freekv's correction takes the flagged heads
  // and sets num_flagged: nothing is sent when *num_flagged reads 0. Its speculation
  // takes the unflagged heads of the same diff.
  HeadMask heads;
  const int32_t* num_flagged = nullptr;
  uint32_t* gate = nullptr;
  uint32_t gate_value = 0;
  // When set, the recalled pages are applied only once this gate reaches
  // `apply_after_value` (the driver's stream waits for it): freekv's speculation
  // replaces pages that the attention of the step it was made in may still read.
  const uint32_t* apply_after = nullptr;
  uint32_t apply_after_value = 0;
};

struct RecallDriverStats {
  uint64_t recalls = 0;
  uint64_t slices = 0;
  uint64_t corrections = 0;   // correction items that sent a recall
  uint64_t flagged_heads = 0;  // (sequence, KV head) pairs corrections flagged
  double host_work_seconds = 0;  // building and sending requests, enqueueing applies
  double reply_seconds = 0;      // summed over recalls: request sent -> reply read
};

class RecallDriver {
 public:
  // `layers` and `sequence_ids` (one per batch row) must outlive the driver; so must
  // `kv`. Starts the threads.
  RecallDriver(CudaKvClient& kv, std::vector<LayerResidency> layers,
               std::vector<uint64_t> sequence_ids, int32_t num_kv_heads,
               ResidentLayout layout, kernels::CudaStream stream);
  ~RecallDriver();
  RecallDriver(const RecallDriver&) = delete;
  RecallDriver& operator=(const RecallDriver&) = delete;

  void Push(const RecallItem& item);
  // Where the driver stands, for a stall report: items pushed and done, the item being
  // issued (with what its diff's stamp reads) and the one awaiting its reply.
  std::string Describe() const;
  // Waits until every pushed item is done and the driver's stream has drained; the
  // first error since the last Finish, if any.
  absl::Status Finish();
  RecallDriverStats stats() const;

 private:
  struct Sent {
    RecallItem item;
    std::optional<RecallTicket> ticket;  // none: just open the gate
    absl::Time sent_at;
    bool failed = false;
  };
  void IssueLoop();
  void CompleteLoop();
  absl::Status Issue(const RecallItem& item, std::vector<RecallSliceRef>& slices,
                     std::optional<RecallTicket>* ticket, absl::Time* sent_at, bool* skip);
  absl::Status Complete(const Sent& sent);
  void Fail(const absl::Status& status);

  CudaKvClient& kv_;
  const std::vector<LayerResidency> layers_;
  const std::vector<uint64_t> sequence_ids_;
  const int32_t num_kv_heads_;
  const ResidentLayout layout_;
  const kernels::CudaStream stream_;

  mutable absl::Mutex mu_;
  std::deque<RecallItem> to_issue_ ABSL_GUARDED_BY(mu_);
  std::deque<Sent> to_complete_ ABSL_GUARDED_BY(mu_);
  uint64_t pushed_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t done_ ABSL_GUARDED_BY(mu_) = 0;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status first_error_ ABSL_GUARDED_BY(mu_);
  RecallDriverStats stats_ ABSL_GUARDED_BY(mu_);
  // The items the two threads are working on, if any (Describe).
  std::optional<RecallItem> issuing_ ABSL_GUARDED_BY(mu_);
  std::optional<RecallItem> completing_ ABSL_GUARDED_BY(mu_);
  std::thread issuer_;
  std::thread completer_;
};

}  // namespace freekv::gpu

#endif  // FREEKV_WORKER_FREEKV_GPU_RECALL_DRIVER_H_
