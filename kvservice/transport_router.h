// TransportRouter: the service's one TransportFactory, which hands each session to the
// factory of the transport its worker asked for (SessionPeer::transport): UCX for host
// memory, CUDA IPC for device memory on this node.
//
// Owns the factories it routes to. A kind with no factory (a build without CUDA, or a
// node whose kvservice sees no GPU) is refused with FAILED_PRECONDITION naming why, so
// the worker learns to use UCX instead. Thread-safe: Connect may be called
// concurrently when the factories allow it (both of ours do).
#ifndef FREEKV_KVSERVICE_TRANSPORT_ROUTER_H_
#define FREEKV_KVSERVICE_TRANSPORT_ROUTER_H_

#include <memory>
#include <string>

#include "kvservice/transport.h"

namespace freekv {

class TransportRouter : public TransportFactory {
 public:
  // Either factory may be null; `cuda_ipc_absent_reason` says why CUDA IPC is
  // unavailable when `cuda_ipc` is null (e.g. "this kvservice was built without CUDA").
  TransportRouter(std::unique_ptr<TransportFactory> ucx,
                  std::unique_ptr<TransportFactory> cuda_ipc,
                  std::string cuda_ipc_absent_reason);

  absl::StatusOr<std::unique_ptr<SessionTransport>> Connect(
      const SessionPeer& peer) override;

 private:
  const std::unique_ptr<TransportFactory> ucx_;
  const std::unique_ptr<TransportFactory> cuda_ipc_;
  const std::string cuda_ipc_absent_reason_;
};

}  // namespace freekv

#endif  // FREEKV_KVSERVICE_TRANSPORT_ROUTER_H_
