// The CUDA IPC transport: recall into, and offload from, a worker's device memory on
// this node, with the GPU's copy engines (no kernels run in the worker's GPU on its
// behalf; DESIGN.md says why).
//
// Per session (Connect), on the worker's GPU (found by PCI bus id): the worker's
// staging and offload regions are opened once with cudaIpcOpenMemHandle, its
// interprocess events with cudaIpcOpenEventHandle, and two CopyStreams are made, one
// for pushes and one for pulls. Push only queues its runs and returns: the session's
// issuing thread takes the pushes in order, so that the caller (the recall stream's
// gRPC thread) reads and resolves the next request while this one is packed and
// copied. For each push the issuing thread
//   1. makes the push streams wait (on the GPU) for the free event of every staging
//      slot the push writes, which the worker records after its last read of the slot;
//   2. copies the runs with the copy engines (CopyStreams: by default gathered by the
//      CPU into pinned bounce buffers and sent as large copies; `split` sends a share
//      straight from the store meanwhile);
//   3. records each written slot's ready event (the worker's stream waits on it);
//   4. records a private event and hands it to the session's completion thread, which
//      waits for it; only then is `done` called, in push order, on that thread. A push
//      refused (runs outside the region, a CUDA error) completes with its error, in
//      order too.
// A pull first waits until every push made before it has been issued (so a pull sees
// the same order as when pushes were issued by their callers), then waits for the
// worker's offload-written event, copies device to host into the store and returns when
// the bytes are there. Pulls do not wait for pushes made after them.
//
// Thread-safety: the factory's Connect and each transport's Push/Pull may be called
// from any thread. Each session transport owns its mappings, events, streams, its
// issuing thread and its completion thread; destroying it drains (every push made is
// issued and its `done` called), then stops the threads and closes the handles.
#ifndef FREEKV_KVSERVICE_CUDA_IPC_TRANSPORT_H_
#define FREEKV_KVSERVICE_CUDA_IPC_TRANSPORT_H_

#include <memory>

#include "absl/status/statusor.h"
#include "kvservice/cuda_copy.h"
#include "kvservice/gather_pool.h"
#include "kvservice/transport.h"

namespace freekv {

struct CudaIpcTransportOptions {
  // How pushes (recalls: many 16 KiB blocks) move; gather_pool is set by the factory.
  CopyOptions push;
  // How pulls (offloads: whole blocks, merged) move.
  CopyOptions pull;
  // The factory's GatherPool, shared by every session (push.method kGather or kSplit):
  // its threads, whether they write the bounce buffers with streaming stores, and how
  // far ahead of their copy they prefetch the store.
  int gather_threads = 8;
  bool gather_streaming_stores = true;
  size_t gather_prefetch_bytes = size_t{8} << 10;
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
