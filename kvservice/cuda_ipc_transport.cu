#include "kvservice/cuda_ipc_transport.h"

#include <cuda.h>
#include <cudaTypedefs.h>

#include <algorithm>
#include <atomic>
#include <deque>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/log.h"
#include "common/thread_name.h"
#include "kernels/event_poll.cuh"
#include "kvservice/cuda_handles.cuh"

namespace freekv {
namespace {

// OK when every run lies inside a region of `region_bytes`; else names the run.
absl::Status CheckRunsInside(absl::Span<const CopyRun> runs, uint64_t region_bytes,
                             const char* region) {
  for (size_t i = 0; i < runs.size(); ++i) {
    const CopyRun& run = runs[i];
    if (run.local == nullptr || run.remote_offset > region_bytes ||
        region_bytes - run.remote_offset < run.bytes) {
      return absl::InvalidArgumentError(absl::StrCat(
          "run ", i, " (offset ", run.remote_offset, ", ", run.bytes,
          " bytes) is outside the worker's ", region, " region of ", region_bytes,
          " bytes"));
    }
  }
  return absl::OkStatus();
}

// How long a pull waits for the worker's offload region to be written: far past any
// step; a worker that never records its event gets an error, not a stuck handler.
constexpr absl::Duration kWrittenLimit = absl::Seconds(30);

// Waits for the worker's event (its GPU may be busy for long; this thread sleeps
// between queries) until it completes or `limit` passes.
absl::Status WaitForWorker(const gpu::Event& event, absl::Duration limit) {
  absl::StatusOr<bool> done = kernels::PollEvent(
      event.get(), absl::Now() + limit, absl::Microseconds(5), "the worker's offload event");
  if (!done.ok()) return done.status();
  if (*done) return absl::OkStatus();
  return absl::DeadlineExceededError(absl::StrCat(
      "the worker's offload region was not written within ", absl::FormatDuration(limit),
      " of its offload request (its GPU stalled, or it asked before recording its event)"));
}

absl::StatusOr<std::vector<gpu::Event>> OpenEvents(int device,
                                                   const std::vector<std::string>& handles) {
  std::vector<gpu::Event> events;
  events.reserve(handles.size());
  for (const std::string& handle : handles) {
    absl::StatusOr<gpu::Event> event = gpu::Event::OpenIpc(device, handle);
    if (!event.ok()) return event.status();
    events.push_back(*std::move(event));
  }
  return events;
}

// How long the issuing thread spins for the next push before it sleeps: in decode a
// recall arrives every few hundred microseconds, and waking a sleeping thread costs
// tens of them on the recall's critical path.
constexpr absl::Duration kIssuerSpin = absl::Microseconds(200);

// cuStreamWriteValue32, from the driver through the runtime (nothing links libcuda):
// the GPU's front end writes the word in stream order, with a fence before it that
// makes the stream's earlier copies visible first. No kernel runs for it.
using WriteValue32 = PFN_cuStreamWriteValue32_v11070;

absl::StatusOr<WriteValue32> StreamWriteValue32() {
  static const absl::StatusOr<WriteValue32> found = []() -> absl::StatusOr<WriteValue32> {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult result = cudaDriverEntryPointSymbolNotFound;
    const cudaError_t err = cudaGetDriverEntryPointByVersion(
        "cuStreamWriteValue32", &fn, 12000, cudaEnableDefault, &result);
    if (err != cudaSuccess || result != cudaDriverEntryPointSuccess || fn == nullptr) {
      return absl::FailedPreconditionError(absl::StrCat(
          "the CUDA driver has no cuStreamWriteValue32 (", cudaGetErrorName(err),
          ", query result ", static_cast<int>(result),
          "); recall signals need a CUDA 12 driver or later"));
    }
    return reinterpret_cast<WriteValue32>(fn);
  }();
  return found;
}

// What a session's lanes share, opened once per session: the worker's staging region,
// the events of its slots, and its signal words if it registered any.
struct StagingTarget {
  int device = 0;
  uint64_t slot_bytes = 0;
  gpu::IpcMapping staging;
  std::vector<gpu::Event> slot_ready;  // the service records, per slot
  std::vector<gpu::Event> slot_free;   // the worker records, per slot
  gpu::IpcMapping signals;             // empty: the session cannot signal
  WriteValue32 write_value = nullptr;  // set with `signals`
};

// One lane of pushes, with its own threads and copy streams: the issuing thread takes
// the lane's pushes in order and, for each,
//   1. makes the lane's streams wait (on the GPU) for the free event of every staging
//      slot the push writes, which the worker records after its last read of the slot;
//   2. copies the runs with the copy engines (CopyStreams: by default gathered by the
//      CPU into pinned bounce buffers and sent as large copies; `split` sends a share
//      straight from the store meanwhile);
//   3. records each written slot's ready event (the worker's stream waits on it) and,
//      when the push carries a signal, writes its word (cuStreamWriteValue32) after
//      the copies on the same stream: the worker's GPU sees the bytes, then the word;
//   4. records a private event and hands it to the lane's completion thread, which
//      waits for it; only then is `done` called, in the lane's push order, on that
//      thread. A push refused (runs outside the region, a CUDA error) completes with
//      its error, in order too.
// Push only queues and returns, so that its caller (the recall stream's gRPC thread)
// reads and resolves the next request while this one is packed and copied.
// Each push that lands is reported to the factory's observer (on_push_landed: the
// kvservice's freekv_recall_push_seconds), and when the lane ends it logs where its
// pushes spent their time on average: queued for the issuing thread, being issued
// (packing included), and on the GPU until the completion thread saw them land.
// Thread-safety: Push, made and AwaitIssued from any thread. Destroying the lane
// drains it (every push made is issued and its `done` called), then stops the threads.
class PushLane {
 public:
  PushLane(bool urgent, const StagingTarget& target, std::unique_ptr<CopyStreams> streams,
           const PushStagesObserver& on_landed)
      : urgent_(urgent),
        name_(urgent ? "urgent" : "bulk"),
        target_(target),
        streams_(std::move(streams)),
        on_landed_(on_landed),
        issuer_([this] { IssueInOrder(); }),
        completer_([this] { CompleteInOrder(); }) {}

  // The issuer ends once every queued push was issued, then the completer once every
  // issued push was completed.
  ~PushLane() {
    {
      absl::MutexLock lock(&issue_mu_);
      issue_stopping_ = true;
    }
    issuer_.join();
    {
      absl::MutexLock lock(&queue_mu_);
      stopping_ = true;
    }
    completer_.join();
    LogStages();
  }

  void Push(std::vector<CopyRun> runs, std::optional<PushSignal> signal,
            absl::AnyInvocable<void(absl::Status) &&> done) {
    absl::MutexLock lock(&issue_mu_);
    to_issue_.push_back(Job{std::move(runs), signal, std::move(done), absl::Now()});
    ++made_;
    waiting_.store(to_issue_.size(), std::memory_order_release);
  }

  // Pushes made so far.
  uint64_t made() {
    absl::MutexLock lock(&issue_mu_);
    return made_;
  }

  // Returns once the first `count` pushes were issued (their copies enqueued) or failed.
  void AwaitIssued(uint64_t count) {
    absl::MutexLock lock(&issue_mu_);
    auto issued = [this, count]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(issue_mu_) {
      return issued_ >= count;
    };
    issue_mu_.Await(absl::Condition(&issued));
  }

 private:
  // A push as its caller made it, waiting for the issuing thread.
  struct Job {
    std::vector<CopyRun> runs;
    std::optional<PushSignal> signal;  // checked by CheckSignal when made
    absl::AnyInvocable<void(absl::Status) &&> done;
    absl::Time made;
  };
  // When a push was made, taken by the issuing thread, and enqueued.
  struct Times {
    absl::Time made, taken, enqueued;
  };
  // A push whose copies are enqueued (or that failed before), waiting for completion.
  struct Pending {
    absl::Status status;   // an enqueue error; `event` is then empty
    gpu::Event event;      // recorded after the push's copies
    bool packed = false;   // its copies were packed on the host
    absl::AnyInvocable<void(absl::Status) &&> done;
    Times times;
  };

  // Issuing thread only.
  bool NextJob(Job* job);  // false once stopping and drained
  void IssueInOrder();
  absl::StatusOr<gpu::Event> EnqueuePush(absl::Span<const CopyRun> runs,
                                         const std::optional<PushSignal>& signal,
                                         bool* packed);
  absl::StatusOr<gpu::Event> TakeEvent();  // a completion event, reused when possible
  // Completion thread only.
  absl::Status WaitFor(const gpu::Event& event) const;
  void CompleteInOrder();
  void LogStages() const;

  const bool urgent_;
  const char* const name_;
  const StagingTarget& target_;
  const std::unique_ptr<CopyStreams> streams_;
  const PushStagesObserver& on_landed_;  // the factory's; may be empty
  // The issuing thread's scratch.
  std::vector<DeviceCopy> push_copies_;
  std::vector<size_t> push_slots_;
  absl::Mutex issue_mu_;
  std::deque<Job> to_issue_ ABSL_GUARDED_BY(issue_mu_);
  std::atomic<size_t> waiting_{0};  // to_issue_.size(), read while spinning
  uint64_t made_ ABSL_GUARDED_BY(issue_mu_) = 0;    // pushes made so far
  uint64_t issued_ ABSL_GUARDED_BY(issue_mu_) = 0;  // of those, issued or failed
  bool issue_stopping_ ABSL_GUARDED_BY(issue_mu_) = false;
  absl::Mutex queue_mu_;
  std::deque<Pending> pending_ ABSL_GUARDED_BY(queue_mu_);
  std::vector<gpu::Event> spare_events_ ABSL_GUARDED_BY(queue_mu_);
  bool stopping_ ABSL_GUARDED_BY(queue_mu_) = false;
  // The completion thread's sums over the pushes that landed (LogStages, once it ended).
  uint64_t landed_ = 0;
  uint64_t packed_ = 0;  // of those, packed on the host
  absl::Duration queued_sum_, issuing_sum_, landing_sum_;
  // Last: started once everything above exists.
  std::thread issuer_;
  std::thread completer_;
};

bool PushLane::NextJob(Job* job) {
  const absl::Time spin_until = absl::Now() + kIssuerSpin;
  while (waiting_.load(std::memory_order_acquire) == 0 && absl::Now() < spin_until) {
    std::this_thread::yield();  // the gRPC thread that queues the next push may need this CPU
  }
  absl::MutexLock lock(&issue_mu_);
  auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(issue_mu_) {
    return !to_issue_.empty() || issue_stopping_;
  };
  issue_mu_.Await(absl::Condition(&ready));
  if (to_issue_.empty()) return false;
  *job = std::move(to_issue_.front());
  to_issue_.pop_front();
  waiting_.store(to_issue_.size(), std::memory_order_release);
  return true;
}

void PushLane::IssueInOrder() {
  NameThisThread(absl::StrCat("kv-", name_, "-issue"));
  Job job;
  while (NextJob(&job)) {
    Pending pending;
    pending.done = std::move(job.done);
    pending.times.made = job.made;
    pending.times.taken = absl::Now();
    absl::StatusOr<gpu::Event> event = EnqueuePush(job.runs, job.signal, &pending.packed);
    pending.times.enqueued = absl::Now();
    if (event.ok()) {
      pending.event = *std::move(event);
    } else {
      pending.status = event.status();
    }
    {
      absl::MutexLock lock(&queue_mu_);
      pending_.push_back(std::move(pending));
    }
    absl::MutexLock lock(&issue_mu_);
    ++issued_;
  }
}

absl::StatusOr<gpu::Event> PushLane::EnqueuePush(absl::Span<const CopyRun> runs,
                                                  const std::optional<PushSignal>& signal,
                                                  bool* packed) {
  const StagingTarget& t = target_;
  if (absl::Status s = CheckRunsInside(runs, t.staging.bytes(), "staging"); !s.ok()) {
    return s;
  }
  // The slots the runs write, in order, each once (a recall writes one slot).
  push_slots_.clear();
  push_copies_.clear();
  for (const CopyRun& run : runs) {
    if (run.bytes == 0) continue;
    const size_t first = run.remote_offset / t.slot_bytes;
    const size_t last = (run.remote_offset + run.bytes - 1) / t.slot_bytes;
    if (last >= t.slot_ready.size()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "a run ending at offset ", run.remote_offset + run.bytes,
          " lies past the last staging slot"));
    }
    for (size_t slot = first; slot <= last; ++slot) {
      if (std::find(push_slots_.begin(), push_slots_.end(), slot) == push_slots_.end()) {
        push_slots_.push_back(slot);
      }
    }
    push_copies_.push_back(
        DeviceCopy{t.staging.data() + run.remote_offset, run.local, run.bytes});
  }
  absl::StatusOr<gpu::Event> completion = TakeEvent();
  if (!completion.ok()) return completion.status();
  for (size_t slot : push_slots_) {
    if (absl::Status s = streams_->WaitEvent(t.slot_free[slot].get()); !s.ok()) return s;
  }
  *packed = streams_->Packs(push_copies_.size());
  if (absl::Status s = streams_->Enqueue(push_copies_); !s.ok()) return s;
  gpu::DeviceGuard guard(t.device);
  cudaStream_t main = streams_->main();
  for (size_t slot : push_slots_) {
    FREEKV_GPU_RETURN_IF_ERROR(cudaEventRecord(t.slot_ready[slot].get(), main));
  }
  if (signal.has_value()) {
    const CUresult written = t.write_value(
        reinterpret_cast<CUstream>(main),
        reinterpret_cast<CUdeviceptr>(t.signals.data() + signal->offset), signal->value,
        CU_STREAM_WRITE_VALUE_DEFAULT);
    if (written != CUDA_SUCCESS) {
      return absl::InternalError(absl::StrCat(
          "cuStreamWriteValue32 of a recall's signal failed (CUresult ",
          static_cast<int>(written), ")"));
    }
  }
  FREEKV_GPU_RETURN_IF_ERROR(cudaEventRecord(completion->get(), main));
  return completion;
}

absl::StatusOr<gpu::Event> PushLane::TakeEvent() {
  {
    absl::MutexLock lock(&queue_mu_);
    if (!spare_events_.empty()) {
      gpu::Event event = std::move(spare_events_.back());
      spare_events_.pop_back();
      return event;
    }
  }
  // Polled (WaitFor), not cudaEventBlockingSync: a client that waits for the reply (one
  // whose recalls name no signal word) has the completion on its critical path, and a
  // sleeping wait adds tens of microseconds.
  return gpu::Event::Create(target_.device, cudaEventDisableTiming);
}

// Polls rather than cudaEventSynchronize, which spins without ever giving up the CPU:
// this thread waits through most of every recall, and a yield lets the session's gRPC
// and packing threads (or a worker's) have the CPU meanwhile, while a free CPU still
// sees the event within a microsecond or two.
absl::Status PushLane::WaitFor(const gpu::Event& event) const {
  gpu::DeviceGuard guard(target_.device);
  return kernels::PollEvent(event.get(), absl::InfiniteFuture(), absl::ZeroDuration(),
                            "waiting for a recall's copies")
      .status();
}

void PushLane::CompleteInOrder() {
  NameThisThread(absl::StrCat("kv-", name_, "-land"));
  for (;;) {
    Pending pending;
    {
      absl::MutexLock lock(&queue_mu_);
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(queue_mu_) {
        return !pending_.empty() || stopping_;
      };
      queue_mu_.Await(absl::Condition(&ready));
      if (pending_.empty()) return;
      pending = std::move(pending_.front());
      pending_.pop_front();
    }
    const absl::Status status = pending.status.ok() ? WaitFor(pending.event) : pending.status;
    if (status.ok()) {
      const Times& t = pending.times;
      const PushStages stages{urgent_, pending.packed, t.taken - t.made,
                              t.enqueued - t.taken, absl::Now() - t.enqueued};
      ++landed_;
      packed_ += pending.packed ? 1 : 0;
      queued_sum_ += stages.queued;
      issuing_sum_ += stages.issuing;
      landing_sum_ += stages.landing;
      if (on_landed_) on_landed_(stages);
    }
    std::move(pending.done)(status);
    if (pending.event.get() != nullptr) {
      absl::MutexLock lock(&queue_mu_);
      spare_events_.push_back(std::move(pending.event));
    }
  }
}

void PushLane::LogStages() const {
  if (landed_ == 0) return;
  auto mean_us = [this](absl::Duration sum) {
    return absl::ToDoubleMicroseconds(sum) / static_cast<double>(landed_);
  };
  Log(LogLevel::kInfo,
      "CUDA IPC %s lane closed: %d pushes landed (%d packed, %d direct); on average "
      "%.0f us queued, %.0f us issuing (packing included), %.0f us on the GPU until "
      "seen landed",
      name_, landed_, packed_, landed_ - packed_, mean_us(queued_sum_),
      mean_us(issuing_sum_), mean_us(landing_sum_));
}

class CudaIpcSessionTransport : public SessionTransport {
 public:
  // Everything Connect opened; the transport takes ownership.
  struct Handles {
    StagingTarget target;
    gpu::IpcMapping offload;
    gpu::Event offload_written;
    std::unique_ptr<CopyStreams> bulk_streams;
    std::unique_ptr<CopyStreams> urgent_streams;  // null: urgent pushes join the bulk
    std::unique_ptr<CopyStreams> pull_streams;
  };

  // `on_landed` (the factory's) outlives the transport.
  CudaIpcSessionTransport(Handles handles, const PushStagesObserver& on_landed)
      : target_(std::move(handles.target)),
        offload_(std::move(handles.offload)),
        offload_written_(std::move(handles.offload_written)),
        pull_streams_(std::move(handles.pull_streams)),
        bulk_(/*urgent=*/false, target_, std::move(handles.bulk_streams), on_landed),
        urgent_(handles.urgent_streams == nullptr
                    ? nullptr
                    : std::make_unique<PushLane>(/*urgent=*/true, target_,
                                                 std::move(handles.urgent_streams),
                                                 on_landed)) {}

  // The lanes drain as they go (members in reverse order), before the handles close.
  ~CudaIpcSessionTransport() override = default;

  absl::Status Pull(absl::Span<const CopyRun> runs) override;
  void Push(std::vector<CopyRun> runs,
            absl::AnyInvocable<void(absl::Status) &&> done) override {
    bulk_.Push(std::move(runs), std::nullopt, std::move(done));
  }
  void PushUrgent(std::vector<CopyRun> runs,
                  absl::AnyInvocable<void(absl::Status) &&> done) override {
    LaneFor(true).Push(std::move(runs), std::nullopt, std::move(done));
  }
  absl::Status CheckSignal(const PushSignal& signal) const override;
  void PushSignalled(std::vector<CopyRun> runs, bool urgent, PushSignal signal,
                     absl::AnyInvocable<void(absl::Status) &&> done) override {
    LaneFor(urgent).Push(std::move(runs), signal, std::move(done));
  }

 private:
  PushLane& LaneFor(bool urgent) { return urgent && urgent_ != nullptr ? *urgent_ : bulk_; }

  const StagingTarget target_;
  const gpu::IpcMapping offload_;
  const gpu::Event offload_written_;
  const std::unique_ptr<CopyStreams> pull_streams_;
  absl::Mutex pull_mu_;  // one pull at a time on the pull streams
  // Last: their threads use everything above.
  PushLane bulk_;
  const std::unique_ptr<PushLane> urgent_;
};

absl::Status CudaIpcSessionTransport::CheckSignal(const PushSignal& signal) const {
  const uint64_t words = target_.signals.bytes();
  if (words == 0) return SessionTransport::CheckSignal(signal);
  if (signal.offset % 4 != 0 || signal.offset >= words) {
    return absl::InvalidArgumentError(absl::StrCat(
        "signal.offset is ", signal.offset, "; a multiple of 4 below the signals "
        "region's ", words, " bytes"));
  }
  return absl::OkStatus();
}

// A pull first waits until every push made before it has been issued, in both lanes
// (so a pull sees the same order as when pushes were issued by their callers), then
// waits for the worker's offload-written event, copies device to host into the store
// and returns when the bytes are there. Pulls do not wait for pushes made after them.
absl::Status CudaIpcSessionTransport::Pull(absl::Span<const CopyRun> runs) {
  if (absl::Status s = CheckRunsInside(runs, offload_.bytes(), "offload"); !s.ok()) {
    return s;
  }
  std::vector<DeviceCopy> copies;
  copies.reserve(runs.size());
  for (const CopyRun& run : runs) {
    copies.push_back(DeviceCopy{run.local, offload_.data() + run.remote_offset, run.bytes});
  }
  const uint64_t bulk_before = bulk_.made();
  const uint64_t urgent_before = urgent_ != nullptr ? urgent_->made() : 0;
  bulk_.AwaitIssued(bulk_before);
  if (urgent_ != nullptr) urgent_->AwaitIssued(urgent_before);
  absl::MutexLock lock(&pull_mu_);
  // The worker recorded this after writing the region and before asking to offload.
  // This thread waits for it, not the pull streams: a stream waiting on the worker's
  // event blocks the hardware queue it sits in, which the push streams may share, and
  // the worker's event may itself sit behind a decode that waits for a push.
  {
    gpu::DeviceGuard guard(target_.device);
    if (absl::Status s = WaitForWorker(offload_written_, kWrittenLimit); !s.ok()) return s;
  }
  if (absl::Status s = pull_streams_->Enqueue(copies); !s.ok()) return s;
  return pull_streams_->Synchronize();
}

// Opens everything a session needs; ownership goes to the transport.
absl::StatusOr<CudaIpcSessionTransport::Handles> OpenHandles(
    const SessionPeer& peer, const CudaIpcTransportOptions& options) {
  const CudaIpcEndpoints& ipc = peer.cuda_ipc;
  CudaIpcSessionTransport::Handles h;
  StagingTarget& t = h.target;
  absl::StatusOr<int> device = gpu::DeviceByPciBusId(ipc.pci_bus_id);
  if (!device.ok()) return device.status();
  t.device = *device;
  t.slot_bytes = ipc.slot_bytes;
  absl::StatusOr<gpu::IpcMapping> staging =
      gpu::IpcMapping::Open(t.device, peer.staging.cuda_ipc_handle, peer.staging.length);
  if (!staging.ok()) return staging.status();
  t.staging = *std::move(staging);
  absl::StatusOr<gpu::IpcMapping> offload =
      gpu::IpcMapping::Open(t.device, peer.offload.cuda_ipc_handle, peer.offload.length);
  if (!offload.ok()) return offload.status();
  h.offload = *std::move(offload);
  absl::StatusOr<std::vector<gpu::Event>> ready = OpenEvents(t.device, ipc.slot_ready_events);
  if (!ready.ok()) return ready.status();
  t.slot_ready = *std::move(ready);
  absl::StatusOr<std::vector<gpu::Event>> free = OpenEvents(t.device, ipc.slot_free_events);
  if (!free.ok()) return free.status();
  t.slot_free = *std::move(free);
  absl::StatusOr<gpu::Event> written = gpu::Event::OpenIpc(t.device, ipc.offload_written_event);
  if (!written.ok()) return written.status();
  h.offload_written = *std::move(written);
  if (ipc.signals.length > 0) {
    absl::StatusOr<WriteValue32> write_value = StreamWriteValue32();
    if (!write_value.ok()) return write_value.status();
    t.write_value = *write_value;
    absl::StatusOr<gpu::IpcMapping> signals =
        gpu::IpcMapping::Open(t.device, ipc.signals.cuda_ipc_handle, ipc.signals.length);
    if (!signals.ok()) return signals.status();
    t.signals = *std::move(signals);
  }
  absl::StatusOr<std::unique_ptr<CopyStreams>> bulk = CopyStreams::Create(t.device, options.push);
  if (!bulk.ok()) return bulk.status();
  h.bulk_streams = *std::move(bulk);
  if (options.urgent.has_value()) {
    absl::StatusOr<std::unique_ptr<CopyStreams>> urgent =
        CopyStreams::Create(t.device, *options.urgent);
    if (!urgent.ok()) return urgent.status();
    h.urgent_streams = *std::move(urgent);
  }
  absl::StatusOr<std::unique_ptr<CopyStreams>> pull = CopyStreams::Create(t.device, options.pull);
  if (!pull.ok()) return pull.status();
  h.pull_streams = *std::move(pull);
  return h;
}

}  // namespace

absl::StatusOr<std::unique_ptr<CudaIpcTransportFactory>> CudaIpcTransportFactory::Create(
    const CudaIpcTransportOptions& options) {
  int devices = 0;
  const cudaError_t err = cudaGetDeviceCount(&devices);
  if (err != cudaSuccess || devices == 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "CUDA IPC needs a GPU and this process sees none (cudaGetDeviceCount: ",
        cudaGetErrorName(err), ", ", devices, " devices)"));
  }
  if (UsesBounce(options.pull.method)) {
    return absl::InvalidArgumentError("pulls copy device to host; they cannot gather");
  }
  if (options.gather_threads < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("gather_threads is ", options.gather_threads, "; at least 1"));
  }
  return std::unique_ptr<CudaIpcTransportFactory>(new CudaIpcTransportFactory(options));
}

CudaIpcTransportFactory::CudaIpcTransportFactory(const CudaIpcTransportOptions& options)
    : options_(options) {
  const bool push_packs = UsesBounce(options_.push.method);
  const bool urgent_packs = options_.urgent.has_value() && UsesBounce(options_.urgent->method);
  if (push_packs || urgent_packs) {
    GatherPoolOptions pool;
    pool.threads = options_.gather_threads;
    pool.streaming_stores = options_.gather_streaming_stores;
    pool.prefetch_bytes = options_.gather_prefetch_bytes;
    gather_pool_ = std::make_unique<GatherPool>(pool);
    if (push_packs) options_.push.gather_pool = gather_pool_.get();
    if (urgent_packs) options_.urgent->gather_pool = gather_pool_.get();
  }
}

absl::StatusOr<std::unique_ptr<SessionTransport>> CudaIpcTransportFactory::Connect(
    const SessionPeer& peer) {
  if (peer.transport != PeerTransport::kCudaIpc) {
    return absl::InvalidArgumentError("the CUDA IPC transport got a peer of another kind");
  }
  const CudaIpcEndpoints& ipc = peer.cuda_ipc;
  if (ipc.slot_bytes == 0 || ipc.slot_ready_events.empty() ||
      ipc.slot_ready_events.size() != ipc.slot_free_events.size() ||
      ipc.slot_ready_events.size() * ipc.slot_bytes > peer.staging.length) {
    return absl::InvalidArgumentError(absl::StrCat(
        "CUDA IPC peer: ", ipc.slot_ready_events.size(), " ready and ",
        ipc.slot_free_events.size(), " free events for slots of ", ipc.slot_bytes,
        " bytes in a staging region of ", peer.staging.length,
        " bytes; one of each per slot, every slot inside the region"));
  }
  absl::StatusOr<CudaIpcSessionTransport::Handles> handles = OpenHandles(peer, options_);
  if (!handles.ok()) return handles.status();
  return std::unique_ptr<SessionTransport>(
      new CudaIpcSessionTransport(*std::move(handles), options_.on_push_landed));
}

}  // namespace freekv
