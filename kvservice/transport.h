// The seam between the recall pipeline and how bytes reach the worker: UCX RMA
// (kvservice/ucx_transport.h), or CUDA IPC copy engines on a GPU node
// (kvservice/cuda_ipc_transport.h); TransportRouter picks one per session.
//
// A TransportFactory lives as long as the service; it connects one SessionTransport
// per session at OpenSession. Callers validate and merge runs before calling; a
// transport still refuses runs outside the worker's regions.
#ifndef FREEKV_KVSERVICE_TRANSPORT_H_
#define FREEKV_KVSERVICE_TRANSPORT_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"

namespace freekv {

// One contiguous copy between store memory (`local`) and a worker region, at
// `remote_offset` from the region's start.
struct CopyRun {
  std::byte* local = nullptr;
  uint64_t remote_offset = 0;
  size_t bytes = 0;
};

// A region of the worker's memory as the worker described it at OpenSession.
struct RemoteRegion {
  uint64_t address = 0;          // base in the worker's address space (UCX)
  uint64_t length = 0;           // bytes
  std::string rkey;              // packed remote key (UCX)
  std::string cuda_ipc_handle;   // cudaIpcMemHandle_t bytes (CUDA IPC)
};

// How the worker's regions are reached; picks the TransportFactory (TransportRouter).
enum class PeerTransport { kUcx, kCudaIpc };

// Size of cudaIpcMemHandle_t and cudaIpcEventHandle_t (CUDA_IPC_HANDLE_SIZE), so that
// code built without CUDA can validate handles.
inline constexpr size_t kCudaIpcHandleBytes = 64;

// The worker's GPU side of a CUDA IPC session (see CudaIpcPeer in kvservice.proto).
struct CudaIpcEndpoints {
  std::string pci_bus_id;                      // the worker's GPU
  uint64_t slot_bytes = 0;                     // staging slot (layer, s) starts at
                                               // (2 * layer + s) * slot_bytes
  std::vector<std::string> slot_ready_events;  // [2 * layer + slot], the service records
  std::vector<std::string> slot_free_events;   // [2 * layer + slot], the worker records
  std::string offload_written_event;           // the worker records
  RemoteRegion signals;                        // optional (length 0: none): words that
                                               // pushes may signal (PushSignal)
};

// A 32-bit word a transport writes into the worker's signal region once every byte of
// a push has landed, in order after them on the worker's GPU and before the push's
// `done`: the worker's kernels can wait for the word rather than for the host.
struct PushSignal {
  uint64_t offset = 0;  // into the signals region, a multiple of 4
  uint32_t value = 0;
};

// Where one push that landed spent its time in a transport with queued lanes (CUDA
// IPC): waiting for its lane's issuing thread (`queued`: the lane was busy with pushes
// before it, e.g. a kvservice whose packing falls behind the decode), being packed and
// enqueued (`issuing`), and from then until its completion was seen (`landing`: the
// copies, and any wait for the worker to free the slot first).
struct PushStages {
  bool urgent = false;  // the urgent lane (corrections), else the bulk lane
  bool packed = false;  // packed on the host (CopyStreams::Packs), else sent directly
  absl::Duration queued, issuing, landing;
};
// Called on the transport's completion thread for every push that landed; must be
// cheap and thread-safe (ServiceMetrics::OnPushLanded).
using PushStagesObserver = std::function<void(const PushStages&)>;

// The worker's side of a session.
struct SessionPeer {
  PeerTransport transport = PeerTransport::kUcx;
  std::string worker_address;  // ucp_worker_get_address bytes (UCX)
  RemoteRegion staging;        // recall destination: 2 slots per layer
  RemoteRegion offload;        // offload source
  CudaIpcEndpoints cuda_ipc;   // CUDA IPC only
};

// The worker's side of one session. Thread-safe: Pull and Push may be called from any
// thread. Destroying it disconnects; the caller makes sure nothing is in flight.
class SessionTransport {
 public:
  virtual ~SessionTransport() = default;

  // Copies runs from the worker's offload region into store memory; returns once
  // every byte is in the store.
  virtual absl::Status Pull(absl::Span<const CopyRun> runs) = 0;

  // Copies runs from the store into the worker's staging region; calls `done` exactly
  // once, after every byte has landed (flushed) or with the error. Pushes of one
  // session complete in the order they were made. `done` runs on the transport's own
  // thread and must be cheap.
  virtual void Push(std::vector<CopyRun> runs,
                    absl::AnyInvocable<void(absl::Status) &&> done) = 0;

  // As Push, for a recall the worker waits for now (a correction): a transport with
  // an urgent lane serves it beside the pushes already queued instead of after them,
  // so it may complete before pushes made earlier (urgent pushes still complete in
  // the order they were made among themselves). Without one (this default), it is a
  // Push. The two never write the same bytes at once: a worker reuses a staging slot
  // only after the push that wrote it completed and it read the slot.
  virtual void PushUrgent(std::vector<CopyRun> runs,
                          absl::AnyInvocable<void(absl::Status) &&> done) {
    Push(std::move(runs), std::move(done));
  }

  // OK when a push may carry `signal` (PushSignalled): the session has a signals region
  // holding the word. By default (UCX) no signal can be written: FAILED_PRECONDITION.
  virtual absl::Status CheckSignal(const PushSignal& /*signal*/) const {
    return absl::FailedPreconditionError(
        "this session cannot signal: only a CUDA IPC session that registered a signals "
        "region (CudaIpcPeer.signals) can; send the recall without a signal");
  }

  // As Push (or PushUrgent when `urgent`), and writes `signal` once the bytes landed.
  // Call only with a signal CheckSignal accepted; by default `done` gets its error.
  virtual void PushSignalled(std::vector<CopyRun> runs, bool urgent, PushSignal signal,
                             absl::AnyInvocable<void(absl::Status) &&> done) {
    std::move(done)(CheckSignal(signal));
  }
};

class TransportFactory {
 public:
  virtual ~TransportFactory() = default;
  virtual absl::StatusOr<std::unique_ptr<SessionTransport>> Connect(
      const SessionPeer& peer) = 0;
};

}  // namespace freekv

#endif  // FREEKV_KVSERVICE_TRANSPORT_H_
