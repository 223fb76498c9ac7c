#include "kvservice/cuda_ipc_transport.h"

#include <algorithm>
#include <deque>
#include <thread>
#include <utility>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/synchronization/mutex.h"
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

class CudaIpcSessionTransport : public SessionTransport {
 public:
  // Everything Connect opened; the transport takes ownership.
  struct Handles {
    int device = 0;
    uint64_t slot_bytes = 0;
    gpu::IpcMapping staging;
    gpu::IpcMapping offload;
    std::vector<gpu::Event> slot_ready;
    std::vector<gpu::Event> slot_free;
    gpu::Event offload_written;
    std::unique_ptr<CopyStreams> push_streams;
    std::unique_ptr<CopyStreams> pull_streams;
  };

  explicit CudaIpcSessionTransport(Handles handles)
      : h_(std::move(handles)), completer_([this] { CompleteInOrder(); }) {}

  ~CudaIpcSessionTransport() override {
    {
      absl::MutexLock lock(&queue_mu_);
      stopping_ = true;
    }
    completer_.join();  // returns once every queued push was completed
  }

  absl::Status Pull(absl::Span<const CopyRun> runs) override;
  void Push(std::vector<CopyRun> runs,
            absl::AnyInvocable<void(absl::Status) &&> done) override;

 private:
  // A push whose copies are enqueued (or that failed before), waiting for completion.
  struct Pending {
    absl::Status status;   // an enqueue error; `event` is then empty
    gpu::Event event;      // recorded after the push's copies
    absl::AnyInvocable<void(absl::Status) &&> done;
  };

  absl::StatusOr<gpu::Event> EnqueuePushLocked(absl::Span<const CopyRun> runs)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(push_mu_);
  absl::StatusOr<gpu::Event> TakeEvent();
  absl::Status WaitFor(const gpu::Event& event) const;
  void CompleteInOrder();

  Handles h_;
  absl::Mutex pull_mu_;  // one pull at a time on the pull streams
  absl::Mutex push_mu_;  // stream order == queue order
  std::vector<DeviceCopy> push_copies_ ABSL_GUARDED_BY(push_mu_);
  absl::Mutex queue_mu_;
  std::deque<Pending> pending_ ABSL_GUARDED_BY(queue_mu_);
  std::vector<gpu::Event> spare_events_ ABSL_GUARDED_BY(queue_mu_);
  bool stopping_ ABSL_GUARDED_BY(queue_mu_) = false;
  std::thread completer_;  // last: started once everything above exists
};

absl::Status CudaIpcSessionTransport::Pull(absl::Span<const CopyRun> runs) {
  if (absl::Status s = CheckRunsInside(runs, h_.offload.bytes(), "offload"); !s.ok()) {
    return s;
  }
  std::vector<DeviceCopy> copies;
  copies.reserve(runs.size());
  for (const CopyRun& run : runs) {
    copies.push_back(DeviceCopy{run.local, h_.offload.data() + run.remote_offset, run.bytes});
  }
  absl::MutexLock lock(&pull_mu_);
  {
    gpu::DeviceGuard guard(h_.device);
    // The worker recorded this after writing the region and before asking to offload.
    FREEKV_GPU_RETURN_IF_ERROR(
        cudaStreamWaitEvent(h_.pull_streams->main(), h_.offload_written.get(), 0));
  }
  if (absl::Status s = h_.pull_streams->Enqueue(copies); !s.ok()) return s;
  return h_.pull_streams->Synchronize();
}

void CudaIpcSessionTransport::Push(std::vector<CopyRun> runs,
                                   absl::AnyInvocable<void(absl::Status) &&> done) {
  absl::MutexLock lock(&push_mu_);
  Pending pending;
  pending.done = std::move(done);
  absl::StatusOr<gpu::Event> event = EnqueuePushLocked(runs);
  if (event.ok()) {
    pending.event = *std::move(event);
  } else {
    pending.status = event.status();
  }
  absl::MutexLock queue_lock(&queue_mu_);
  pending_.push_back(std::move(pending));
}

absl::StatusOr<gpu::Event> CudaIpcSessionTransport::EnqueuePushLocked(
    absl::Span<const CopyRun> runs) {
  if (absl::Status s = CheckRunsInside(runs, h_.staging.bytes(), "staging"); !s.ok()) {
    return s;
  }
  // The slots the runs write, in order, each once (a recall writes one slot).
  std::vector<size_t> slots;
  push_copies_.clear();
  for (const CopyRun& run : runs) {
    if (run.bytes == 0) continue;
    const size_t first = run.remote_offset / h_.slot_bytes;
    const size_t last = (run.remote_offset + run.bytes - 1) / h_.slot_bytes;
    if (last >= h_.slot_ready.size()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "a run ending at offset ", run.remote_offset + run.bytes,
          " lies past the last staging slot"));
    }
    for (size_t slot = first; slot <= last; ++slot) {
      if (std::find(slots.begin(), slots.end(), slot) == slots.end()) slots.push_back(slot);
    }
    push_copies_.push_back(
        DeviceCopy{h_.staging.data() + run.remote_offset, run.local, run.bytes});
  }
  absl::StatusOr<gpu::Event> completion = TakeEvent();
  if (!completion.ok()) return completion.status();
  gpu::DeviceGuard guard(h_.device);
  cudaStream_t main = h_.push_streams->main();
  for (size_t slot : slots) {
    FREEKV_GPU_RETURN_IF_ERROR(cudaStreamWaitEvent(main, h_.slot_free[slot].get(), 0));
  }
  if (absl::Status s = h_.push_streams->Enqueue(push_copies_); !s.ok()) return s;
  for (size_t slot : slots) {
    FREEKV_GPU_RETURN_IF_ERROR(cudaEventRecord(h_.slot_ready[slot].get(), main));
  }
  FREEKV_GPU_RETURN_IF_ERROR(cudaEventRecord(completion->get(), main));
  return completion;
}

absl::StatusOr<gpu::Event> CudaIpcSessionTransport::TakeEvent() {
  {
    absl::MutexLock lock(&queue_mu_);
    if (!spare_events_.empty()) {
      gpu::Event event = std::move(spare_events_.back());
      spare_events_.pop_back();
      return event;
    }
  }
  // Spin-waited (no cudaEventBlockingSync): a recall's completion is on the decode's
  // critical path, and a sleeping wait adds tens of microseconds.
  return gpu::Event::Create(h_.device, cudaEventDisableTiming);
}

absl::Status CudaIpcSessionTransport::WaitFor(const gpu::Event& event) const {
  gpu::DeviceGuard guard(h_.device);
  return gpu::CudaStatus(cudaEventSynchronize(event.get()), "waiting for a recall's copies");
}

void CudaIpcSessionTransport::CompleteInOrder() {
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
    std::move(pending.done)(pending.status.ok() ? WaitFor(pending.event) : pending.status);
    if (pending.event.get() != nullptr) {
      absl::MutexLock lock(&queue_mu_);
      spare_events_.push_back(std::move(pending.event));
    }
  }
}

// Opens everything a session needs; ownership goes to the transport.
absl::StatusOr<CudaIpcSessionTransport::Handles> OpenHandles(
    const SessionPeer& peer, const CudaIpcTransportOptions& options) {
  const CudaIpcEndpoints& ipc = peer.cuda_ipc;
  CudaIpcSessionTransport::Handles h;
  absl::StatusOr<int> device = gpu::DeviceByPciBusId(ipc.pci_bus_id);
  if (!device.ok()) return device.status();
  h.device = *device;
  h.slot_bytes = ipc.slot_bytes;
  absl::StatusOr<gpu::IpcMapping> staging =
      gpu::IpcMapping::Open(h.device, peer.staging.cuda_ipc_handle, peer.staging.length);
  if (!staging.ok()) return staging.status();
  h.staging = *std::move(staging);
  absl::StatusOr<gpu::IpcMapping> offload =
      gpu::IpcMapping::Open(h.device, peer.offload.cuda_ipc_handle, peer.offload.length);
  if (!offload.ok()) return offload.status();
  h.offload = *std::move(offload);
  absl::StatusOr<std::vector<gpu::Event>> ready = OpenEvents(h.device, ipc.slot_ready_events);
  if (!ready.ok()) return ready.status();
  h.slot_ready = *std::move(ready);
  absl::StatusOr<std::vector<gpu::Event>> free = OpenEvents(h.device, ipc.slot_free_events);
  if (!free.ok()) return free.status();
  h.slot_free = *std::move(free);
  absl::StatusOr<gpu::Event> written = gpu::Event::OpenIpc(h.device, ipc.offload_written_event);
  if (!written.ok()) return written.status();
  h.offload_written = *std::move(written);
  absl::StatusOr<std::unique_ptr<CopyStreams>> push = CopyStreams::Create(h.device, options.push);
  if (!push.ok()) return push.status();
  h.push_streams = *std::move(push);
  absl::StatusOr<std::unique_ptr<CopyStreams>> pull = CopyStreams::Create(h.device, options.pull);
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
  if (options.pull.method == CopyMethod::kGather) {
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
  if (options_.push.method == CopyMethod::kGather) {
    gather_pool_ = std::make_unique<GatherPool>(options_.gather_threads);
    options_.push.gather_pool = gather_pool_.get();
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
      new CudaIpcSessionTransport(*std::move(handles)));
}

}  // namespace freekv
