// Double-buffered staging slots: which recall owns which slot of which layer.
//
// Each layer has two staging slots. A recall claims a free slot of its layer for a
// (step, layer); the slot stays claimed while the kvservice may write it (in flight)
// and while the caller reads it (ready), until the caller releases it. A slot is never
// handed to a second recall before then, so a recall can never overwrite bytes that
// attention of the current step may still read.
//
// Thread-safe: any thread may call any method; Wait blocks only its caller.
#ifndef FREEKV_CLIENT_SLOT_TRACKER_H_
#define FREEKV_CLIENT_SLOT_TRACKER_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace freekv {

// Names one claimed slot. Returned by Claim; passed back to Wait and Release.
struct RecallTicket {
  uint64_t request_id = 0;
  uint64_t step = 0;
  uint32_t layer = 0;
  uint32_t slot = 0;
};

class SlotTracker {
 public:
  static constexpr uint32_t kSlotsPerLayer = 2;

  explicit SlotTracker(uint32_t num_layers);

  // Claims a free slot of `layer` for `step` (the lowest free index). INVALID_ARGUMENT
  // for a layer out of range; FAILED_PRECONDITION when both slots are still in flight
  // or not yet released. The ticket's request_id is unique for this tracker.
  absl::StatusOr<RecallTicket> Claim(uint64_t step, uint32_t layer);

  // Records the kvservice's verdict for a claimed slot: OK means every byte is there;
  // `service_latency` is the kvservice's own time for it (RecallReply). Unknown or
  // stale request ids are ignored (returns false).
  bool Complete(uint64_t request_id, absl::Status status,
                absl::Duration service_latency = absl::ZeroDuration());

  // Blocks until the ticket's recall completes or `deadline` passes. Returns the
  // recall's status, DEADLINE_EXCEEDED, or NOT_FOUND for a ticket not claimed. Once it
  // completed, sets *service_latency (when non-null) to what Complete recorded.
  absl::Status Wait(const RecallTicket& ticket, absl::Time deadline,
                    absl::Duration* service_latency = nullptr);

  // Waits for every recall claimed for (step, layer); the first error wins.
  absl::Status WaitStep(uint64_t step, uint32_t layer, absl::Time deadline);

  // The caller is done with the slot. FAILED_PRECONDITION while it is in flight (the
  // service may still write it); NOT_FOUND for a ticket not claimed.
  absl::Status Release(const RecallTicket& ticket);

  // Fails every in-flight recall with `status` (e.g. the stream broke).
  void FailAll(const absl::Status& status);

  // Number of slots currently claimed (in flight or ready).
  int claimed() const;

 private:
  enum class State { kFree, kInFlight, kDone };
  struct Slot {
    State state = State::kFree;
    uint64_t request_id = 0;
    uint64_t step = 0;
    absl::Status status;
    absl::Duration service_latency;
  };

  Slot* FindLocked(const RecallTicket& ticket) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const uint32_t num_layers_;
  mutable absl::Mutex mu_;
  uint64_t next_request_id_ ABSL_GUARDED_BY(mu_) = 1;
  std::vector<Slot> slots_ ABSL_GUARDED_BY(mu_);  // [layer * 2 + slot]
};

}  // namespace freekv

#endif  // FREEKV_CLIENT_SLOT_TRACKER_H_
