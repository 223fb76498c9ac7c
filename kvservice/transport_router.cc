#include "kvservice/transport_router.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace freekv {

TransportRouter::TransportRouter(std::unique_ptr<TransportFactory> ucx,
                                 std::unique_ptr<TransportFactory> cuda_ipc,
                                 std::string cuda_ipc_absent_reason)
    : ucx_(std::move(ucx)),
      cuda_ipc_(std::move(cuda_ipc)),
      cuda_ipc_absent_reason_(std::move(cuda_ipc_absent_reason)) {}

absl::StatusOr<std::unique_ptr<SessionTransport>> TransportRouter::Connect(
    const SessionPeer& peer) {
  switch (peer.transport) {
    case PeerTransport::kUcx:
      if (ucx_ == nullptr) {
        return absl::FailedPreconditionError(
            "transport TRANSPORT_UCX is not available in this kvservice");
      }
      return ucx_->Connect(peer);
    case PeerTransport::kCudaIpc:
      if (cuda_ipc_ == nullptr) {
        return absl::FailedPreconditionError(
            absl::StrCat("transport TRANSPORT_CUDA_IPC is not available: ",
                         cuda_ipc_absent_reason_, "; use TRANSPORT_UCX"));
      }
      return cuda_ipc_->Connect(peer);
  }
  return absl::InvalidArgumentError("unknown peer transport");
}

}  // namespace freekv
