#include "worker/freekv_gpu/recall_driver.h"

#include <algorithm>
#include <cstdlib>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/log.h"
#include "common/thread_name.h"

namespace freekv::gpu {
namespace {

// FREEKV_TRACE_RECALLS=1 logs every item's progress (a hung GPU run shows where).
const bool kTrace = std::getenv("FREEKV_TRACE_RECALLS") != nullptr;

// A reply later than this means the kvservice is gone or stuck.
constexpr absl::Duration kReplyDeadline = absl::Seconds(30);

// Spins (the issuer has a core to itself; a sleeping wait would add its wake-up to
// every recall) until the stream's copy of the diff has landed.
absl::Status AwaitStamp(const RecallItem& item) {
  const absl::Time deadline = absl::Now() + kReplyDeadline;
  for (uint32_t spins = 0;; ++spins) {
    if (__atomic_load_n(item.stamp, __ATOMIC_ACQUIRE) == item.stamp_value) {
      return absl::OkStatus();
    }
    if (spins % 4096 == 0 && absl::Now() > deadline) {
      return absl::DeadlineExceededError(absl::StrCat(
          "the diff of step ", item.stamp_value, " layer ", item.layer,
          " never reached the host (the GPU stopped?)"));
    }
  }
}

}  // namespace

RecallDriver::RecallDriver(CudaKvClient& kv, std::vector<uint64_t> sequence_ids,
                           int32_t num_kv_heads, ResidentLayout layout)
    : kv_(kv),
      sequence_ids_(std::move(sequence_ids)),
      num_kv_heads_(num_kv_heads),
      layout_(layout) {
  issuer_ = std::thread([this] { IssueLoop(); });
  for (Lane lane : {kBulk, kUrgent}) {
    completers_[lane] = std::thread([this, lane] { CompleteLoop(lane); });
  }
}

RecallDriver::~RecallDriver() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  issuer_.join();
  for (std::thread& completer : completers_) completer.join();
  ReleaseAll();
}

void RecallDriver::Push(const RecallItem& item) {
  absl::MutexLock lock(&mu_);
  to_issue_.push_back(item);
  ++pushed_;
}

absl::Status RecallDriver::Finish() {
  absl::MutexLock lock(&mu_);
  mu_.Await(absl::Condition(
      +[](RecallDriver* d) ABSL_EXCLUSIVE_LOCKS_REQUIRED(d->mu_) {
        return d->done_ == d->pushed_;
      },
      this));
  return std::exchange(first_error_, absl::OkStatus());
}

void RecallDriver::ReleaseAll() {
  absl::MutexLock lock(&mu_);
  for (auto& layer : held_) {
    for (const Held& h : layer) kv_.client().Release(h.ticket).IgnoreError();
    layer.clear();
  }
}

void RecallDriver::ReleaseRead(uint32_t layer, int32_t stamp) {
  absl::MutexLock lock(&mu_);
  if (layer >= held_.size()) return;
  for (Held& h : held_[layer]) {
    if (h.stamp < stamp) h.read = true;
  }
  HandBackDone(layer);
}

void RecallDriver::HandBackDone(uint32_t layer) {
  std::vector<Held>& held = held_[layer];
  auto done = [](const Held& h) { return h.read && h.replied; };
  for (const Held& h : held) {
    if (done(h)) kv_.client().Release(h.ticket).IgnoreError();
  }
  held.erase(std::remove_if(held.begin(), held.end(), done), held.end());
}

void RecallDriver::AwaitReadSlotsBack(uint32_t layer) {
  absl::MutexLock lock(&mu_);
  auto back = [this, layer]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (stop_ || layer >= held_.size()) return true;
    return std::none_of(held_[layer].begin(), held_[layer].end(),
                        [](const Held& h) { return h.read; });
  };
  mu_.Await(absl::Condition(&back));
}

RecallDriverStats RecallDriver::stats() const {
  absl::MutexLock lock(&mu_);
  return stats_;
}

void RecallDriver::Fail(const absl::Status& status) {
  absl::MutexLock lock(&mu_);
  if (first_error_.ok()) first_error_ = status;
}

void RecallDriver::IssueLoop() {
  NameThisThread("recall-issue");
  std::vector<RecallSliceRef> slices;
  for (;;) {
    RecallItem item;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](RecallDriver* d) ABSL_EXCLUSIVE_LOCKS_REQUIRED(d->mu_) {
            return d->stop_ || !d->to_issue_.empty();
          },
          this));
      if (to_issue_.empty()) return;
      item = to_issue_.front();
      to_issue_.pop_front();
      issuing_ = item;
    }
    Sent sent{item, std::nullopt, absl::Time(), false};
    bool skip = false;
    const absl::Status status = Issue(item, slices, &sent.ticket, &sent.sent_at, &skip);
    if (kTrace) {
      Log(LogLevel::kInfo, "recall step %d layer %d gate %d: %s, %d slices, slot %d%s",
          item.step, item.layer, item.gate_value, status.ToString(), slices.size(),
          sent.ticket ? int(sent.ticket->slot) : -1, skip ? " (skipped)" : "");
    }
    if (!status.ok()) {
      Fail(status);
      sent.failed = true;
    }
    absl::MutexLock lock(&mu_);
    issuing_.reset();
    if (skip) {
      ++done_;
    } else {
      to_complete_[LaneOf(item)].push_back(std::move(sent));
    }
  }
}

absl::Status RecallDriver::Issue(const RecallItem& item,
                                 std::vector<RecallSliceRef>& slices,
                                 std::optional<RecallTicket>* ticket, absl::Time* sent_at,
                                 bool* skip) {
  FREEKV_RETURN_IF_ERROR(AwaitStamp(item));
  // The stream has selected this layer again: it applied every earlier item's slot.
  ReleaseRead(item.layer, item.stamp_value);
  const absl::Time start = absl::Now();
  if (item.num_flagged != nullptr) {
    absl::MutexLock lock(&mu_);
    stats_.flagged_heads += *item.num_flagged;
  }
  if (item.num_flagged != nullptr && *item.num_flagged == 0) {
    *skip = true;  // the decode stream opened the gate itself
    return absl::OkStatus();
  }
  const int32_t k = layout_.selected;
  const uint64_t slice_bytes = kv_.client().geometry().head_slice_bytes();
  slices.clear();
  const int32_t lists = static_cast<int32_t>(sequence_ids_.size()) * num_kv_heads_;
  for (int32_t list = 0; list < lists; ++list) {
    if (!item.heads.covers(list)) continue;
    const int32_t count = std::min(item.diff.counts[list], k);
    for (int32_t j = 0; j < count; ++j) {
      slices.push_back({sequence_ids_[list / num_kv_heads_],
                        static_cast<uint32_t>(list % num_kv_heads_),
                        static_cast<uint32_t>(item.diff.pages[size_t(list) * k + j]),
                        (uint64_t(list) * k + j) * slice_bytes});
    }
  }
  if (!slices.empty()) {
    AwaitReadSlotsBack(item.layer);
    *sent_at = absl::Now();
    RecallOptions options;
    options.urgent = LaneOf(item) == kUrgent;
    if (item.signal != nullptr) {
      const uint32_t* words = kv_.regions().signals().data();
      options.signal = RecallOptions::Signal{
          uint64_t(item.signal - words) * sizeof(uint32_t),
          {GateWord(item.gate_value, 0), GateWord(item.gate_value, 1)}};
    }
    absl::StatusOr<RecallTicket> t =
        kv_.client().Recall(item.step, item.layer, slices, options);
    if (!t.ok()) return t.status();
    *ticket = *t;
  }
  absl::MutexLock lock(&mu_);
  if (ticket->has_value()) {
    // Held from now: with a signal the stream may read the slot, select the layer again
    // and let the issuer mark it read before the completer has the reply.
    if (held_.size() <= item.layer) held_.resize(item.layer + 1);
    held_[item.layer].push_back(Held{item.stamp_value, **ticket});
  }
  stats_.slices += slices.size();
  stats_.recalls += slices.empty() ? 0 : 1;
  stats_.corrections += item.num_flagged != nullptr && !slices.empty();
  stats_.host_work_seconds += absl::ToDoubleSeconds(absl::Now() - start);
  return absl::OkStatus();
}

void RecallDriver::CompleteLoop(Lane lane) {
  NameThisThread(lane == kBulk ? "recall-bulk" : "recall-urgent");
  std::deque<Sent>& queue = to_complete_[lane];
  auto ready = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return !queue.empty() || (stop_ && done_ == pushed_);
  };
  for (;;) {
    Sent sent;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(&ready));
      if (queue.empty()) return;
      sent = std::move(queue.front());
      queue.pop_front();
      completing_[lane] = sent.item;
    }
    absl::Status status = sent.failed ? absl::OkStatus() : Complete(sent);
    if (!status.ok()) Fail(status);
    if (kTrace) {
      Log(LogLevel::kInfo, "published step %d layer %d, gate %d opened: %s", sent.item.step,
          sent.item.layer, sent.item.gate_value, status.ToString());
    }
    if (sent.failed || !status.ok()) {
      // Let the decode stream drain, applying nothing; Finish reports the error.
      OpenGate(sent.item.gate, sent.item.gate_value + kGateFarPast);
    }
    absl::MutexLock lock(&mu_);
    completing_[lane].reset();
    ++done_;
  }
}

std::string RecallDriver::Describe() const {
  absl::MutexLock lock(&mu_);
  size_t held = 0;
  for (const auto& layer : held_) held += layer.size();
  std::string out = absl::StrCat(
      "recall driver: ", pushed_, " items pushed, ", done_, " done, ", to_issue_.size(),
      " queued, ", to_complete_[kBulk].size() + to_complete_[kUrgent].size(),
      " awaiting replies (", to_complete_[kUrgent].size(), " urgent), ", held,
      " slots held");
  if (issuing_.has_value()) {
    absl::StrAppend(&out, "; issuing step ", issuing_->step, " layer ", issuing_->layer,
                    " (its diff's stamp reads ",
                    __atomic_load_n(issuing_->stamp, __ATOMIC_ACQUIRE), ", waiting for ",
                    issuing_->stamp_value, ")");
  }
  for (const std::optional<RecallItem>& c : completing_) {
    if (!c.has_value()) continue;
    absl::StrAppend(&out, "; completing step ", c->step, " layer ", c->layer,
                    c->num_flagged != nullptr ? " (a correction, opens" : " (opens", " its gate to ",
                    c->gate_value, ")");
  }
  return out;
}

absl::Status RecallDriver::Complete(const Sent& sent) {
  const RecallItem& item = sent.item;
  int32_t slot = -1;
  if (sent.ticket.has_value()) {
    const RecallTicket& t = *sent.ticket;
    // The kvservice replies once the bytes are in the slot (and its signal written).
    absl::Duration service = absl::ZeroDuration();
    const absl::Status replied =
        kv_.client().Wait(t, absl::Now() + kReplyDeadline, &service);
    const absl::Time start = absl::Now();
    absl::MutexLock lock(&mu_);
    for (Held& h : held_[item.layer]) {
      if (h.ticket.request_id == t.request_id) h.replied = true;
    }
    HandBackDone(item.layer);
    FREEKV_RETURN_IF_ERROR(replied);
    stats_.reply_seconds += absl::ToDoubleSeconds(start - sent.sent_at);
    if (LaneOf(item) == kUrgent) {
      stats_.correction_reply_seconds += absl::ToDoubleSeconds(start - sent.sent_at);
      stats_.correction_service_seconds += absl::ToDoubleSeconds(service);
    }
    slot = static_cast<int32_t>(t.slot);
    stats_.host_work_seconds += absl::ToDoubleSeconds(absl::Now() - start);
    // The kvservice opened the gate (the signal word) before it replied.
    if (item.signal != nullptr) return absl::OkStatus();
  }
  OpenGate(item.gate, item.gate_value, slot);
  return absl::OkStatus();
}

}  // namespace freekv::gpu
