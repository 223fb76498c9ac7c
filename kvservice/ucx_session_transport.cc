#include "kvservice/ucx_session_transport.h"

#include <deque>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "transport/ucx_endpoint.h"
#include "transport/ucx_status.h"

namespace freekv {

absl::Status CheckRunsInRegion(absl::Span<const CopyRun> runs, uint64_t region_bytes,
                               absl::string_view region_name) {
  for (size_t i = 0; i < runs.size(); ++i) {
    const CopyRun& run = runs[i];
    if (run.local == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("runs[", i, "].local is null"));
    }
    if (run.bytes == 0) {
      return absl::InvalidArgumentError(absl::StrCat("runs[", i, "].bytes is 0"));
    }
    if (run.remote_offset > region_bytes ||
        run.bytes > region_bytes - run.remote_offset) {
      return absl::InvalidArgumentError(absl::StrCat(
          "runs[", i, "]: remote_offset ", run.remote_offset, " + bytes ", run.bytes,
          " is past the end of the ", region_name, " region (", region_bytes, " bytes)"));
    }
  }
  return absl::OkStatus();
}

namespace {

absl::Status CheckRegion(const RemoteRegion& region, absl::string_view name) {
  if (region.address == 0) {
    return absl::InvalidArgumentError(absl::StrCat(name, ".address is 0"));
  }
  if (region.length == 0) {
    return absl::InvalidArgumentError(absl::StrCat(name, ".length is 0"));
  }
  if (region.address + region.length < region.address) {
    return absl::InvalidArgumentError(absl::StrCat(name, ".address ", region.address,
                                                   " + length ", region.length,
                                                   " wraps around the address space"));
  }
  if (region.rkey.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(name, ".rkey is empty"));
  }
  return absl::OkStatus();
}

absl::Status CheckPeer(const SessionPeer& peer) {
  if (peer.transport != PeerTransport::kUcx) {
    return absl::InvalidArgumentError(
        "transport is not UCX; the UCX transport connects UCX peers only");
  }
  if (peer.worker_address.empty()) {
    return absl::InvalidArgumentError("worker_address is empty");
  }
  if (absl::Status s = CheckRegion(peer.staging, "staging"); !s.ok()) return s;
  return CheckRegion(peer.offload, "offload");
}

}  // namespace

// The session's state on the engine thread. Shared by the handle and by the jobs and
// UCX requests in flight, so that a handle destroyed from a done callback can leave
// the close to the engine once the pushes before it are done.
class UcxSessionTransport::Core : public std::enable_shared_from_this<Core> {
 public:
  Core(UcxEngine& engine, const SessionPeer& peer)
      : engine_(engine),
        staging_{peer.staging.address, peer.staging.length, {}},
        offload_{peer.offload.address, peer.offload.length, {}} {}

  // Engine thread: the endpoint and both remote keys.
  absl::Status ConnectOnEngine(const SessionPeer& peer);
  absl::Status Pull(absl::Span<const CopyRun> runs);
  void Push(std::vector<CopyRun> runs, absl::AnyInvocable<void(absl::Status) &&> done);
  // The handle's last act: close once the pushes in flight are done, and wait for
  // that unless on the engine thread.
  void Shutdown();
  std::string Describe() {
    return engine_.Call([this] { return ep_.Describe(); });
  }

 private:
  struct Region {
    const uint64_t base;    // in the worker's address space
    const uint64_t length;  // read by any thread to check runs
    UcxRemoteKey rkey;      // engine thread only
  };
  // One Pull or Push: its runs, its UCX requests in flight, its outcome.
  struct Batch {
    Core* core = nullptr;
    bool push = false;
    std::vector<CopyRun> runs;
    absl::Status status;     // the first error
    size_t outstanding = 0;  // UCX requests made and not completed yet
    bool issued = false;     // every request, the flush included, has been made
    bool finished = false;
    absl::AnyInvocable<void(absl::Status) &&> done;
  };

  void Issue(Batch* batch);
  bool Track(Batch* batch, ucs_status_ptr_t request, const char* what);
  static void OnRequestDone(void* request, ucs_status_t status, void* user_data);
  void Finish(Batch* batch);
  void CompletePushes();
  void MaybeClose();

  UcxEngine& engine_;
  Region staging_;
  Region offload_;
  // Engine thread only.
  UcxEndpoint ep_;
  std::deque<std::unique_ptr<Batch>> pushes_;  // in Push order, until done has run
  bool closing_ = false;
  bool closed_ = false;
  std::shared_ptr<Core> self_;  // keeps the core while its close waits for pushes
  absl::Notification closed_note_;
};

namespace {

absl::Status Prefixed(const absl::Status& status, absl::string_view field) {
  return absl::Status(status.code(), absl::StrCat(field, ": ", status.message()));
}

}  // namespace

absl::Status UcxSessionTransport::Core::ConnectOnEngine(const SessionPeer& peer) {
  absl::StatusOr<UcxEndpoint> ep =
      UcxEndpoint::Connect(engine_.worker(), peer.worker_address);
  if (!ep.ok()) return Prefixed(ep.status(), "worker_address");
  absl::StatusOr<UcxRemoteKey> staging = UcxRemoteKey::Unpack(
      *ep, peer.staging.rkey, peer.staging.address, peer.staging.length);
  if (!staging.ok()) return Prefixed(staging.status(), "staging.rkey");
  absl::StatusOr<UcxRemoteKey> offload = UcxRemoteKey::Unpack(
      *ep, peer.offload.rkey, peer.offload.address, peer.offload.length);
  if (!offload.ok()) return Prefixed(offload.status(), "offload.rkey");
  ep_ = *std::move(ep);
  staging_.rkey = *std::move(staging);
  offload_.rkey = *std::move(offload);
  return absl::OkStatus();
}

absl::Status UcxSessionTransport::Core::Pull(absl::Span<const CopyRun> runs) {
  if (absl::Status s = CheckRunsInRegion(runs, offload_.length, "offload"); !s.ok()) {
    return s;
  }
  if (runs.empty()) return absl::OkStatus();
  if (engine_.OnEngineThread()) {
    return absl::FailedPreconditionError(
        "Pull called on the UCX engine thread (from a Push done callback?); it would "
        "wait on itself");
  }
  // Shared with the engine so that neither side outlives what it touches.
  struct Waiter {
    absl::Notification done;
    absl::Status status;
  };
  auto waiter = std::make_shared<Waiter>();
  auto batch = std::make_unique<Batch>();
  batch->core = this;
  batch->runs.assign(runs.begin(), runs.end());
  batch->done = [waiter](absl::Status status) {
    waiter->status = std::move(status);
    waiter->done.Notify();
  };
  engine_.Post([self = shared_from_this(), batch = std::move(batch)]() mutable {
    self->Issue(batch.release());  // owned by Finish from here on
  });
  waiter->done.WaitForNotification();
  return waiter->status;
}

void UcxSessionTransport::Core::Push(std::vector<CopyRun> runs,
                                     absl::AnyInvocable<void(absl::Status) &&> done) {
  auto batch = std::make_unique<Batch>();
  batch->core = this;
  batch->push = true;
  // A refused push still takes its turn, so that completions stay in push order.
  batch->status = CheckRunsInRegion(runs, staging_.length, "staging");
  if (batch->status.ok()) batch->runs = std::move(runs);
  batch->done = std::move(done);
  engine_.Post([self = shared_from_this(), batch = std::move(batch)]() mutable {
    Batch* raw = batch.get();
    self->pushes_.push_back(std::move(batch));
    self->Issue(raw);
  });
}

void UcxSessionTransport::Core::Issue(Batch* batch) {
  Region& region = batch->push ? staging_ : offload_;
  if (closed_ && batch->status.ok()) {
    batch->status = absl::FailedPreconditionError("the UCX session transport is closed");
  }
  ucp_request_param_t param = {};
  param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA |
                       UCP_OP_ATTR_FIELD_MEMORY_TYPE;
  param.cb.send = &Core::OnRequestDone;
  param.user_data = batch;
  param.memory_type = UCS_MEMORY_TYPE_HOST;
  if (batch->status.ok() && !batch->runs.empty()) {
    for (const CopyRun& run : batch->runs) {
      const uint64_t remote = region.base + run.remote_offset;
      const ucs_status_ptr_t request =
          batch->push ? ucp_put_nbx(ep_.get(), run.local, run.bytes, remote,
                                    region.rkey.get(), &param)
                      : ucp_get_nbx(ep_.get(), run.local, run.bytes, remote,
                                    region.rkey.get(), &param);
      if (!Track(batch, request, batch->push ? "ucp_put_nbx" : "ucp_get_nbx")) break;
    }
    // Flush even after an error: runs already started use store memory until they
    // complete, and only a flush says that a put has landed at the worker.
    param.op_attr_mask &= ~UCP_OP_ATTR_FIELD_MEMORY_TYPE;
    Track(batch, ucp_ep_flush_nbx(ep_.get(), &param), "ucp_ep_flush_nbx");
  }
  batch->issued = true;
  if (batch->outstanding == 0) Finish(batch);
}

bool UcxSessionTransport::Core::Track(Batch* batch, ucs_status_ptr_t request,
                                      const char* what) {
  if (UCS_PTR_IS_PTR(request)) {
    ++batch->outstanding;  // OnRequestDone will come from a later progress
    return true;
  }
  if (UCS_PTR_IS_ERR(request)) {
    if (batch->status.ok()) batch->status = UcxStatus(UCS_PTR_STATUS(request), what);
    return false;
  }
  return true;  // completed at once
}

// A UCX callback, inside ucp_worker_progress: it may not call UCX, so what follows the
// batch's last request runs as a job.
void UcxSessionTransport::Core::OnRequestDone(void* request, ucs_status_t status,
                                              void* user_data) {
  auto* batch = static_cast<Batch*>(user_data);
  if (status != UCS_OK && batch->status.ok()) {
    batch->status = UcxStatus(status, batch->push ? "UCX put" : "UCX get");
  }
  ucp_request_free(request);
  if (--batch->outstanding == 0 && batch->issued) {
    Core* core = batch->core;
    core->engine_.Post([self = core->shared_from_this(), batch] { self->Finish(batch); });
  }
}

void UcxSessionTransport::Core::Finish(Batch* batch) {
  batch->finished = true;
  if (batch->push) {
    CompletePushes();
    return;
  }
  std::unique_ptr<Batch> owned(batch);  // a pull is owned here once issued
  std::move(owned->done)(std::move(owned->status));
}

void UcxSessionTransport::Core::CompletePushes() {
  const std::shared_ptr<Core> keep = shared_from_this();  // a done may drop the handle
  while (!pushes_.empty() && pushes_.front()->finished) {
    std::unique_ptr<Batch> batch = std::move(pushes_.front());
    pushes_.pop_front();
    std::move(batch->done)(std::move(batch->status));
  }
  MaybeClose();
}

void UcxSessionTransport::Core::Shutdown() {
  const bool wait = !engine_.OnEngineThread();
  engine_.Post([self = shared_from_this()] {
    self->closing_ = true;
    self->MaybeClose();
  });
  if (wait) closed_note_.WaitForNotification();
}

void UcxSessionTransport::Core::MaybeClose() {
  if (!closing_ || closed_) return;
  if (!pushes_.empty()) {
    self_ = shared_from_this();  // the handle is gone; the pushes still need the core
    return;
  }
  closed_ = true;
  staging_.rkey.Reset();  // remote keys before their endpoint
  offload_.rkey.Reset();
  ep_.Close();
  closed_note_.Notify();
  self_.reset();  // never the last reference: every caller holds one
}

absl::StatusOr<std::unique_ptr<UcxSessionTransport>> UcxSessionTransport::Connect(
    UcxEngine& engine, const SessionPeer& peer) {
  if (absl::Status s = CheckPeer(peer); !s.ok()) return s;
  auto core = std::make_shared<Core>(engine, peer);
  // On failure nothing was kept: ConnectOnEngine stores the endpoint and keys last.
  if (absl::Status s = engine.Call([&] { return core->ConnectOnEngine(peer); });
      !s.ok()) {
    return s;
  }
  return std::unique_ptr<UcxSessionTransport>(new UcxSessionTransport(std::move(core)));
}

UcxSessionTransport::~UcxSessionTransport() { core_->Shutdown(); }

absl::Status UcxSessionTransport::Pull(absl::Span<const CopyRun> runs) {
  return core_->Pull(runs);
}

void UcxSessionTransport::Push(std::vector<CopyRun> runs,
                               absl::AnyInvocable<void(absl::Status) &&> done) {
  core_->Push(std::move(runs), std::move(done));
}

std::string UcxSessionTransport::Describe() const { return core_->Describe(); }

}  // namespace freekv
