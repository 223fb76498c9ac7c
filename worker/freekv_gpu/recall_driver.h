// RecallDriver: the host side of a GPU worker's recalls, off the decode thread. The
// decode thread enqueues a layer's selection (its diff lands in pinned memory, then a
// stamp) and pushes an item; it never waits for the GPU. Two threads here turn items
// into recalls:
//   issuer:    waits until the item's stamp shows its step (layer_state.h DiffSet),
//              hands back the layer's slots the stream has read since, reads the diff
//              (and the flags, for an item of some heads), sends the recall request
//              (KvClient::Recall, no wait);
//   completers: wait for each recall's reply (the kvservice replies once the bytes are
//              in the slot), then open the item's gate from the host, naming the slot
//              (OpenGate), unless the item has a signal word: then the kvservice opened
//              the gate itself, writing the word behind the bytes on its copy stream,
//              and the reply only settles the slot's bookkeeping. Two of them, each taking its items in order: one for
//              freekv's corrections, which the decode stream waits for at once and
//              which are sent urgent (the kvservice serves them beside the
//              speculations already queued, so their replies may come first), and one
//              for the rest.
// The decode stream (or, for freekv's speculation, the stream it forks at each step's
// start) holds at the gate and applies the slot itself (ApplyPublishedCuda), so no GPU
// work of this driver ever sits between a stream and its gate (resident_ops.h says why
// that deadlocked).
//
// A slot goes back to the client (KvClient::Release) only once the stream has read it:
// the stream applies a layer's recalls before it selects that layer again, so a layer's
// stamp at step s means every item of that layer pushed before step s was applied.
// With signal words the stream may read a slot before its reply arrives; the slot then
// goes back with the reply, and the issuer waits for that before it claims the layer's
// next slot (rare: a reply comes well within a step).
// Finish does not hand slots back; ReleaseAll, once the stream has drained for good,
// does (the destructor too).
//
// An item with nothing to recall opens its gate at once, naming no slot; a correction
// item whose layer flagged no head is dropped (the decode stream opened its gate
// itself, PublishCorrectionCuda). On any error the driver keeps opening gates (far past
// their value, naming no slot) so the GPU drains, and Finish reports the first error.
//
// Thread safety: Push, Finish and ReleaseAll from one thread (the decode thread); the
// driver's own threads do the rest. Items must be pushed after their selection was
// enqueued.
#ifndef FREEKV_WORKER_FREEKV_GPU_RECALL_DRIVER_H_
#define FREEKV_WORKER_FREEKV_GPU_RECALL_DRIVER_H_

#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "client/cuda_kv_client.h"
#include "kernels/cuda_util.h"
#include "worker/freekv_gpu/resident_ops.h"

namespace freekv::gpu {

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
  uint32_t* gate = nullptr;  // pinned: the decode stream polls it
  uint32_t gate_value = 0;
  // Device memory in the client's signals region (CudaRegions::signals), or null: the
  // word the kvservice writes, GateWord(gate_value, slot), once the bytes landed; the
  // decode stream polls it beside `gate`.
  const uint32_t* signal = nullptr;
};

struct RecallDriverStats {
  uint64_t recalls = 0;
  uint64_t slices = 0;
  uint64_t corrections = 0;   // correction items that sent a recall
  uint64_t flagged_heads = 0;  // (sequence, KV head) pairs corrections flagged
  double host_work_seconds = 0;  // building and sending requests, opening gates
  double reply_seconds = 0;      // summed over recalls: request sent -> reply read
  double correction_reply_seconds = 0;  // of which the corrections' (urgent)
  // The kvservice's own part of the corrections' reply time (from a request's arrival
  // to its last byte): the rest is the way there and back.
  double correction_service_seconds = 0;
};

class RecallDriver {
 public:
  // `sequence_ids` (one per batch row) name the rows' sequences; `kv` must outlive the
  // driver. Starts the threads.
  RecallDriver(CudaKvClient& kv, std::vector<uint64_t> sequence_ids, int32_t num_kv_heads,
               ResidentLayout layout);
  // Stops the threads and hands back every slot still held: destroy the driver only
  // once the decode stream has drained.
  ~RecallDriver();
  RecallDriver(const RecallDriver&) = delete;
  RecallDriver& operator=(const RecallDriver&) = delete;

  void Push(const RecallItem& item);
  // Where the driver stands, for a stall report: items pushed and done, slots held,
  // the item being issued (with what its diff's stamp reads) and the one awaiting its
  // reply.
  std::string Describe() const;
  // Waits until every pushed item is done (its gate opened, or dropped); the first
  // error since the last Finish, if any.
  absl::Status Finish();
  // Hands back every slot still held. Only once the stream has run everything it was
  // given and will be given no further step: a slot published for a step not yet run
  // would be overwritten under it.
  void ReleaseAll();
  RecallDriverStats stats() const;

 private:
  struct Sent {
    RecallItem item;
    std::optional<RecallTicket> ticket;  // none: just open the gate
    absl::Time sent_at;
    bool failed = false;
  };
  // The completers' queues: the corrections (urgent), and the rest.
  enum Lane { kBulk = 0, kUrgent = 1, kLanes = 2 };
  static Lane LaneOf(const RecallItem& item) {
    return item.num_flagged != nullptr ? kUrgent : kBulk;
  }
  void IssueLoop();
  void CompleteLoop(Lane lane);
  absl::Status Issue(const RecallItem& item, std::vector<RecallSliceRef>& slices,
                     std::optional<RecallTicket>* ticket, absl::Time* sent_at, bool* skip);
  absl::Status Complete(const Sent& sent);
  // Hands back the slots of `layer` that items pushed before step `stamp` hold, once
  // replied; marks the others read, for their completer to hand back.
  void ReleaseRead(uint32_t layer, int32_t stamp);
  // Hands back the slots of `layer` that the stream has read and whose reply came.
  void HandBackDone(uint32_t layer) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Waits until no slot of `layer` is read and still awaiting its reply.
  void AwaitReadSlotsBack(uint32_t layer);
  void Fail(const absl::Status& status);

  CudaKvClient& kv_;
  const std::vector<uint64_t> sequence_ids_;
  const int32_t num_kv_heads_;
  const ResidentLayout layout_;

  mutable absl::Mutex mu_;
  std::deque<RecallItem> to_issue_ ABSL_GUARDED_BY(mu_);
  std::deque<Sent> to_complete_[kLanes] ABSL_GUARDED_BY(mu_);
  uint64_t pushed_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t done_ ABSL_GUARDED_BY(mu_) = 0;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status first_error_ ABSL_GUARDED_BY(mu_);
  RecallDriverStats stats_ ABSL_GUARDED_BY(mu_);
  // Slots claimed and not yet handed back, per layer.
  struct Held {
    int32_t stamp = 0;  // the item's stamp value
    RecallTicket ticket;
    bool replied = false;  // the completer has the reply
    bool read = false;     // the stream has read the slot (ReleaseRead)
  };
  std::vector<std::vector<Held>> held_ ABSL_GUARDED_BY(mu_);
  // The items the threads are working on, if any (Describe).
  std::optional<RecallItem> issuing_ ABSL_GUARDED_BY(mu_);
  std::optional<RecallItem> completing_[kLanes] ABSL_GUARDED_BY(mu_);
  std::thread issuer_;
  std::thread completers_[kLanes];
};

}  // namespace freekv::gpu

#endif  // FREEKV_WORKER_FREEKV_GPU_RECALL_DRIVER_H_
