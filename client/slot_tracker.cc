#include "client/slot_tracker.h"

#include "absl/strings/str_cat.h"

namespace freekv {

SlotTracker::SlotTracker(uint32_t num_layers)
    : num_layers_(num_layers), slots_(size_t{num_layers} * kSlotsPerLayer) {}

absl::StatusOr<RecallTicket> SlotTracker::Claim(uint64_t step, uint32_t layer) {
  if (layer >= num_layers_) {
    return absl::InvalidArgumentError(
        absl::StrCat("layer ", layer, " is out of range [0, ", num_layers_, ")"));
  }
  absl::MutexLock lock(&mu_);
  for (uint32_t s = 0; s < kSlotsPerLayer; ++s) {
    Slot& slot = slots_[size_t{layer} * kSlotsPerLayer + s];
    if (slot.state != State::kFree) continue;
    slot.state = State::kInFlight;
    slot.request_id = next_request_id_++;
    slot.step = step;
    slot.status = absl::OkStatus();
    return RecallTicket{slot.request_id, step, layer, s};
  }
  const Slot& a = slots_[size_t{layer} * kSlotsPerLayer];
  const Slot& b = slots_[size_t{layer} * kSlotsPerLayer + 1];
  return absl::FailedPreconditionError(absl::StrCat(
      "both staging slots of layer ", layer, " are busy (steps ", a.step, " and ",
      b.step, "); wait for and release a recall before claiming another for step ",
      step));
}

bool SlotTracker::Complete(uint64_t request_id, absl::Status status,
                           absl::Duration service_latency) {
  absl::MutexLock lock(&mu_);
  for (Slot& slot : slots_) {
    if (slot.state == State::kInFlight && slot.request_id == request_id) {
      slot.state = State::kDone;
      slot.status = std::move(status);
      slot.service_latency = service_latency;
      return true;
    }
  }
  return false;
}

SlotTracker::Slot* SlotTracker::FindLocked(const RecallTicket& ticket) {
  if (ticket.layer >= num_layers_ || ticket.slot >= kSlotsPerLayer) return nullptr;
  Slot& slot = slots_[size_t{ticket.layer} * kSlotsPerLayer + ticket.slot];
  if (slot.state == State::kFree || slot.request_id != ticket.request_id) {
    return nullptr;
  }
  return &slot;
}

absl::Status SlotTracker::Wait(const RecallTicket& ticket, absl::Time deadline,
                               absl::Duration* service_latency) {
  absl::MutexLock lock(&mu_);
  Slot* slot = FindLocked(ticket);
  if (slot == nullptr) {
    return absl::NotFoundError(absl::StrCat("no recall ", ticket.request_id,
                                            " is claimed for layer ", ticket.layer));
  }
  auto done = [slot]() { return slot->state != State::kInFlight; };
  if (!mu_.AwaitWithDeadline(absl::Condition(&done), deadline)) {
    return absl::DeadlineExceededError(
        absl::StrCat("recall for step ", ticket.step, " layer ", ticket.layer,
                     " did not complete before the deadline"));
  }
  if (service_latency != nullptr) *service_latency = slot->service_latency;
  return slot->status;
}

absl::Status SlotTracker::WaitStep(uint64_t step, uint32_t layer, absl::Time deadline) {
  if (layer >= num_layers_) {
    return absl::InvalidArgumentError(
        absl::StrCat("layer ", layer, " is out of range [0, ", num_layers_, ")"));
  }
  absl::MutexLock lock(&mu_);
  Slot* first = &slots_[size_t{layer} * kSlotsPerLayer];
  auto done = [first, step]() {
    for (uint32_t s = 0; s < kSlotsPerLayer; ++s) {
      if (first[s].state == State::kInFlight && first[s].step == step) return false;
    }
    return true;
  };
  if (!mu_.AwaitWithDeadline(absl::Condition(&done), deadline)) {
    return absl::DeadlineExceededError(absl::StrCat(
        "recall for step ", step, " layer ", layer, " did not complete in time"));
  }
  bool any = false;
  for (uint32_t s = 0; s < kSlotsPerLayer; ++s) {
    if (first[s].state != State::kDone || first[s].step != step) continue;
    any = true;
    if (!first[s].status.ok()) return first[s].status;
  }
  if (!any) {
    return absl::NotFoundError(
        absl::StrCat("no recall is claimed for step ", step, " layer ", layer));
  }
  return absl::OkStatus();
}

absl::Status SlotTracker::Release(const RecallTicket& ticket) {
  absl::MutexLock lock(&mu_);
  Slot* slot = FindLocked(ticket);
  if (slot == nullptr) {
    return absl::NotFoundError(absl::StrCat("no recall ", ticket.request_id,
                                            " is claimed for layer ", ticket.layer));
  }
  if (slot->state == State::kInFlight) {
    return absl::FailedPreconditionError(
        absl::StrCat("recall for step ", ticket.step, " layer ", ticket.layer,
                     " is still in flight; the service may still write its slot"));
  }
  slot->state = State::kFree;
  return absl::OkStatus();
}

void SlotTracker::FailAll(const absl::Status& status) {
  absl::MutexLock lock(&mu_);
  for (Slot& slot : slots_) {
    if (slot.state != State::kInFlight) continue;
    slot.state = State::kDone;
    slot.status = status;
  }
}

int SlotTracker::claimed() const {
  absl::MutexLock lock(&mu_);
  int n = 0;
  for (const Slot& slot : slots_) n += slot.state != State::kFree;
  return n;
}

}  // namespace freekv
