// The CUDA IPC transport: recall into, and offload from, a worker's device memory on
// this node, with the GPU's copy engines (no kernels run in the worker's GPU on its
// behalf; DESIGN.md says why).
//
// Per session (Connect), on the worker's GPU (found by PCI bus id): the worker's
// staging and offload regions are opened once with cudaIpcOpenMemHandle, its
// interprocess events with cudaIpcOpenEventHandle, and two CopyStreams are made, one
// for pushes and one for pulls. A push:
//   1. waits (on the GPU) for the free event of every staging slot it writes, which
//      the worker records after its last read of the slot;
//   2. copies its runs with the copy engines (CopyStreams: by default gathered by the
//      CPU into pinned bounce buffers and sent as large copies);
//   3. records each written slot's ready event (the worker's stream waits on it);
//   4. records a private event that the session's completion thread waits for; only
//      then is `done` called, in push order, on that thread.
// A pull waits for the worker's offload-written event, copies device to host into the
// store and returns when the bytes are there.
//
// Thread-safety: the factory's Connect and each transport's Push/Pull may be called
// from any thread. Each session transport owns its mappings, events, streams and its
// completion thread; destroying it waits for its in-flight pushes.
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
  // Threads of the factory's GatherPool, shared by every session (push.method kGather).
  int gather_threads = 8;
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
