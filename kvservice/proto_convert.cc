#include "kvservice/proto_convert.h"

#include <algorithm>
#include <string>

#include "absl/strings/str_cat.h"

namespace freekv {

absl::StatusOr<SessionConfig> SessionConfigFromProto(
    const v1::OpenSessionRequest& request, absl::Duration default_lease,
    absl::Duration max_lease, uint32_t max_request_blocks) {
  absl::StatusOr<Geometry> geometry = GeometryFromProto(request.geometry());
  if (!geometry.ok()) return geometry.status();
  SessionConfig config;
  config.geometry = *geometry;
  config.staging_bytes = request.staging().length();
  config.slot_bytes = request.slot_bytes();
  config.offload_bytes = request.offload().length();
  config.lease = request.lease_ms() == 0
                     ? default_lease
                     : std::min(absl::Milliseconds(request.lease_ms()), max_lease);
  config.client_name = request.client_name().substr(0, 256);
  config.max_request_blocks = max_request_blocks;
  if (absl::Status s = ValidateSessionConfig(config); !s.ok()) return s;
  return config;
}

absl::StatusOr<SessionPeer> SessionPeerFromProto(const v1::OpenSessionRequest& request) {
  if (request.transport() != v1::TRANSPORT_UCX) {
    if (request.transport() == v1::TRANSPORT_CUDA_IPC) {
      return absl::UnimplementedError(
          "transport TRANSPORT_CUDA_IPC is not available in this kvservice build; "
          "use TRANSPORT_UCX");
    }
    return absl::InvalidArgumentError(absl::StrCat(
        "transport is ", v1::TransportKind_Name(request.transport()),
        "; use TRANSPORT_UCX"));
  }
  if (request.ucx_worker_address().empty()) {
    return absl::InvalidArgumentError(
        "ucx_worker_address is empty; send ucp_worker_get_address's bytes");
  }
  for (const auto* region : {&request.staging(), &request.offload()}) {
    const char* name = region == &request.staging() ? "staging" : "offload";
    if (region->address() == 0 || region->length() == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, ".address and ", name, ".length must be non-zero"));
    }
    if (region->ucx_rkey().empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, ".ucx_rkey is empty; send ucp_rkey_pack's bytes"));
    }
  }
  SessionPeer peer;
  peer.worker_address = request.ucx_worker_address();
  peer.staging = RemoteRegion{request.staging().address(), request.staging().length(),
                              request.staging().ucx_rkey()};
  peer.offload = RemoteRegion{request.offload().address(), request.offload().length(),
                              request.offload().ucx_rkey()};
  return peer;
}

std::vector<OffloadItem> OffloadItemsFromProto(const v1::OffloadRequest& request) {
  std::vector<OffloadItem> items;
  items.reserve(request.pages_size());
  for (const v1::OffloadPage& page : request.pages()) {
    items.push_back(
        OffloadItem{page.sequence_id(), page.layer(), page.page(), page.offload_offset()});
  }
  return items;
}

std::vector<RecallItem> RecallItemsFromProto(const v1::RecallRequest& request) {
  std::vector<RecallItem> items;
  items.reserve(request.blocks_size());
  for (const v1::RecallBlock& block : request.blocks()) {
    items.push_back(RecallItem{block.sequence_id(), block.kv_head(), block.page(),
                               block.slot_offset()});
  }
  return items;
}

RecallSpec RecallSpecFromProto(const v1::RecallRequest& request) {
  return RecallSpec{request.step(), request.layer(), request.slot(),
                    request.verify_integrity()};
}

}  // namespace freekv
