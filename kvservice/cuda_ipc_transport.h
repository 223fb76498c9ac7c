// The CUDA IPC transport: recall into, and offload from, a worker's device memory on
// this node, with the GPU's copy engines (no kernels run in the worker's GPU on its
// behalf; DESIGN.md says why).
//
// Per session (Connect), on the worker's GPU (found by PCI bus id): the worker's
// staging and offload regions are opened once with cudaIpcOpenMemHandle, its
// interprocess events with cudaIpcOpenEventHandle, and CopyStreams are made for pulls
// and for each lane of pushes. A lane (PushLane in the .cu) is an issuing thread, a
// completion thread and its own streams: Push only queues its runs and returns, the
// issuing thread makes the lane's streams wait for the free events of the slots a push
// writes, enqueues its copies and records the slots' ready events, and the completion
// thread calls `done` once the copies have landed, in the lane's push order. Pushes go
// to the bulk lane; PushUrgent (a correction the worker waits for) goes to the urgent
// lane when `urgent` is set, so that it is packed, copied and completed beside the
// bulk lane's queue instead of after it (bench/RESULTS.md, GPU recall run 9).
// PushSignalled (a recall with RecallRequest.signal) goes to either lane, and its lane
// also writes the signal word into the worker's signals region (opened at Connect when
// the worker registered one) with cuStreamWriteValue32, right after the copies on the
// same stream: the worker's kernels wait for that word, not for the reply.
// A pull first waits until every push made before it has been issued, in both lanes,
// then waits for the worker's offload-written event, copies device to host into the
// store and returns when the bytes are there.
//
// Thread-safety: the factory's Connect and each transport's Push/PushUrgent/PushSignalled/Pull may
// be called from any thread. Each session transport owns its mappings, events, streams
// and lanes; destroying it drains (every push made is issued and its `done` called),
// then stops the threads and closes the handles.
#ifndef FREEKV_KVSERVICE_CUDA_IPC_TRANSPORT_H_
#define FREEKV_KVSERVICE_CUDA_IPC_TRANSPORT_H_

#include <memory>
#include <optional>

#include "absl/status/statusor.h"
#include "kvservice/cuda_copy.h"
#include "kvservice/gather_pool.h"
#include "kvservice/transport.h"

namespace freekv {

struct CudaIpcTransportOptions {
  // How pushes (recalls: many 16 KiB blocks) move; gather_pool is set by the factory.
  CopyOptions push;
  // How urgent pushes (PushUrgent: a correction the worker waits for) move, in a lane
  // of their own; unset, they join the bulk lane's queue.
  std::optional<CopyOptions> urgent;
  // How pulls (offloads: whole blocks, merged) move.
  CopyOptions pull;
  // The factory's GatherPool, shared by every session and lane that packs (kGather or
  // kSplit):
  // its threads, whether they write the bounce buffers with streaming stores, and how
  // far ahead of their copy they prefetch the store.
  int gather_threads = 8;
  bool gather_streaming_stores = true;
  size_t gather_prefetch_bytes = size_t{8} << 10;
  // Told where every push that landed spent its time, per lane (unset: nobody).
  PushStagesObserver on_push_landed;
};

class CudaIpcTransportFactory : public TransportFactory {
 public:
  // FAILED_PRECONDITION when this process sees no GPU.
  static absl::StatusOr<std::unique_ptr<CudaIpcTransportFactory>> Create(
      const CudaIpcTransportOptions& options);

  // INVALID_ARGUMENT for a peer that is not CUDA IPC or whose fields are malformed;
  // FAILED_PRECONDITION when its GPU is not visible here; INTERNAL naming the CUDA call
  // that failed to open a handle.
  absl::StatusOr<std::unique_ptr<SessionTransport>> Connect(
      const SessionPeer& peer) override;

 private:
  explicit CudaIpcTransportFactory(const CudaIpcTransportOptions& options);
  std::unique_ptr<GatherPool> gather_pool_;  // before options_: they point to it
  CudaIpcTransportOptions options_;
};

}  // namespace freekv

#endif  // FREEKV_KVSERVICE_CUDA_IPC_TRANSPORT_H_
