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

namespace {

absl::StatusOr<SessionPeer> UcxPeerFromProto(const v1::OpenSessionRequest& request) {
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
  peer.transport = PeerTransport::kUcx;
  peer.worker_address = request.ucx_worker_address();
  peer.staging = RemoteRegion{request.staging().address(), request.staging().length(),
                              request.staging().ucx_rkey(), ""};
  peer.offload = RemoteRegion{request.offload().address(), request.offload().length(),
                              request.offload().ucx_rkey(), ""};
  return peer;
}

// OK when `handles` holds `count` CUDA IPC handles; else names the field.
absl::Status CheckIpcHandles(const char* field,
                             const google::protobuf::RepeatedPtrField<std::string>& handles,
                             size_t count) {
  if (static_cast<size_t>(handles.size()) != count) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cuda_ipc.", field, " has ", handles.size(), " entries; 2 slots x num_layers = ",
        count, " expected"));
  }
  for (int i = 0; i < handles.size(); ++i) {
    if (handles[i].size() != kCudaIpcHandleBytes) {
      return absl::InvalidArgumentError(
          absl::StrCat("cuda_ipc.", field, "[", i, "] has ", handles[i].size(),
                       " bytes; a cudaIpcEventHandle_t has ", kCudaIpcHandleBytes));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<SessionPeer> CudaIpcPeerFromProto(const v1::OpenSessionRequest& request) {
  for (const auto* region : {&request.staging(), &request.offload()}) {
    const char* name = region == &request.staging() ? "staging" : "offload";
    if (region->length() == 0) {
      return absl::InvalidArgumentError(absl::StrCat(name, ".length must be non-zero"));
    }
    if (region->cuda_ipc_handle().size() != kCudaIpcHandleBytes) {
      return absl::InvalidArgumentError(absl::StrCat(
          name, ".cuda_ipc_handle has ", region->cuda_ipc_handle().size(),
          " bytes; send cudaIpcGetMemHandle's ", kCudaIpcHandleBytes));
    }
  }
  const v1::CudaIpcPeer& ipc = request.cuda_ipc();
  if (ipc.pci_bus_id().empty()) {
    return absl::InvalidArgumentError(
        "cuda_ipc.pci_bus_id is empty; send cudaDeviceGetPCIBusId's string");
  }
  const size_t slots = 2 * size_t{request.geometry().num_layers()};
  if (absl::Status s = CheckIpcHandles("slot_ready_events", ipc.slot_ready_events(), slots);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = CheckIpcHandles("slot_free_events", ipc.slot_free_events(), slots);
      !s.ok()) {
    return s;
  }
  if (ipc.offload_written_event().size() != kCudaIpcHandleBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cuda_ipc.offload_written_event has ", ipc.offload_written_event().size(),
        " bytes; a cudaIpcEventHandle_t has ", kCudaIpcHandleBytes));
  }
  if (ipc.has_signals()) {
    const v1::MemoryRegion& signals = ipc.signals();
    if (signals.length() == 0 || signals.length() % 4 != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "cuda_ipc.signals.length is ", signals.length(),
          "; a positive multiple of 4 (the region holds 32-bit words)"));
    }
    if (signals.cuda_ipc_handle().size() != kCudaIpcHandleBytes) {
      return absl::InvalidArgumentError(absl::StrCat(
          "cuda_ipc.signals.cuda_ipc_handle has ", signals.cuda_ipc_handle().size(),
          " bytes; send cudaIpcGetMemHandle's ", kCudaIpcHandleBytes));
    }
  }
  SessionPeer peer;
  peer.transport = PeerTransport::kCudaIpc;
  peer.staging = RemoteRegion{0, request.staging().length(), "",
                              request.staging().cuda_ipc_handle()};
  peer.offload = RemoteRegion{0, request.offload().length(), "",
                              request.offload().cuda_ipc_handle()};
  peer.cuda_ipc.pci_bus_id = ipc.pci_bus_id();
  peer.cuda_ipc.slot_bytes = request.slot_bytes();
  peer.cuda_ipc.slot_ready_events.assign(ipc.slot_ready_events().begin(),
                                         ipc.slot_ready_events().end());
  peer.cuda_ipc.slot_free_events.assign(ipc.slot_free_events().begin(),
                                        ipc.slot_free_events().end());
  peer.cuda_ipc.offload_written_event = ipc.offload_written_event();
  if (ipc.has_signals()) {
    peer.cuda_ipc.signals =
        RemoteRegion{0, ipc.signals().length(), "", ipc.signals().cuda_ipc_handle()};
  }
  return peer;
}

}  // namespace

absl::StatusOr<SessionPeer> SessionPeerFromProto(const v1::OpenSessionRequest& request) {
  switch (request.transport()) {
    case v1::TRANSPORT_UCX:
      return UcxPeerFromProto(request);
    case v1::TRANSPORT_CUDA_IPC:
      return CudaIpcPeerFromProto(request);
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("transport is ", v1::TransportKind_Name(request.transport()),
                       "; use TRANSPORT_UCX or TRANSPORT_CUDA_IPC"));
  }
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
  RecallSpec spec{request.step(), request.layer(), request.slot(),
                  request.verify_integrity(), request.urgent()};
  if (request.has_signal()) {
    spec.signal = PushSignal{request.signal().offset(), request.signal().value()};
  }
  return spec;
}

}  // namespace freekv
