// SessionPeerFromProto for TRANSPORT_CUDA_IPC: a well-formed request becomes a peer with
// every handle in place (the signals region optional); malformed handles, event lists
// and signal regions are refused naming the field; a recall's signal reaches its spec.
#include "kvservice/proto_convert.h"

#include <string>

#include "gtest/gtest.h"

namespace freekv {
namespace {

constexpr uint32_t kLayers = 3;

// A distinct 64-byte "handle" per index, so that a mix-up shows.
std::string Handle(char tag, int index) {
  std::string handle(kCudaIpcHandleBytes, tag);
  handle[0] = static_cast<char>(index);
  return handle;
}

v1::OpenSessionRequest CudaIpcRequest() {
  v1::OpenSessionRequest request;
  request.mutable_geometry()->set_num_layers(kLayers);
  request.set_transport(v1::TRANSPORT_CUDA_IPC);
  request.set_slot_bytes(4096);
  request.mutable_staging()->set_length(2 * kLayers * 4096);
  request.mutable_staging()->set_cuda_ipc_handle(Handle('s', 0));
  request.mutable_offload()->set_length(65536);
  request.mutable_offload()->set_cuda_ipc_handle(Handle('o', 0));
  v1::CudaIpcPeer* ipc = request.mutable_cuda_ipc();
  ipc->set_pci_bus_id("0000:19:00.0");
  for (int i = 0; i < 2 * static_cast<int>(kLayers); ++i) {
    ipc->add_slot_ready_events(Handle('r', i));
    ipc->add_slot_free_events(Handle('f', i));
  }
  ipc->set_offload_written_event(Handle('w', 0));
  ipc->mutable_signals()->set_length(8 * kLayers);
  ipc->mutable_signals()->set_cuda_ipc_handle(Handle('g', 0));
  return request;
}

void ExpectRefused(const v1::OpenSessionRequest& request, const std::string& field) {
  absl::StatusOr<SessionPeer> peer = SessionPeerFromProto(request);
  ASSERT_FALSE(peer.ok());
  EXPECT_EQ(peer.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(peer.status().message().find(field), absl::string_view::npos) << peer.status();
}

TEST(ProtoConvertTest, CudaIpcPeerCarriesEveryHandle) {
  absl::StatusOr<SessionPeer> peer = SessionPeerFromProto(CudaIpcRequest());
  ASSERT_TRUE(peer.ok()) << peer.status();
  EXPECT_EQ(peer->transport, PeerTransport::kCudaIpc);
  EXPECT_EQ(peer->staging.length, 2 * kLayers * 4096);
  EXPECT_EQ(peer->staging.cuda_ipc_handle, Handle('s', 0));
  EXPECT_EQ(peer->offload.length, 65536u);
  EXPECT_EQ(peer->offload.cuda_ipc_handle, Handle('o', 0));
  EXPECT_EQ(peer->cuda_ipc.pci_bus_id, "0000:19:00.0");
  EXPECT_EQ(peer->cuda_ipc.slot_bytes, 4096u);
  ASSERT_EQ(peer->cuda_ipc.slot_ready_events.size(), 2 * kLayers);
  ASSERT_EQ(peer->cuda_ipc.slot_free_events.size(), 2 * kLayers);
  for (int i = 0; i < 2 * static_cast<int>(kLayers); ++i) {
    EXPECT_EQ(peer->cuda_ipc.slot_ready_events[i], Handle('r', i));
    EXPECT_EQ(peer->cuda_ipc.slot_free_events[i], Handle('f', i));
  }
  EXPECT_EQ(peer->cuda_ipc.offload_written_event, Handle('w', 0));
  EXPECT_EQ(peer->cuda_ipc.signals.length, 8 * kLayers);
  EXPECT_EQ(peer->cuda_ipc.signals.cuda_ipc_handle, Handle('g', 0));
}

TEST(ProtoConvertTest, CudaIpcSignalsAreOptional) {
  v1::OpenSessionRequest request = CudaIpcRequest();
  request.mutable_cuda_ipc()->clear_signals();
  absl::StatusOr<SessionPeer> peer = SessionPeerFromProto(request);
  ASSERT_TRUE(peer.ok()) << peer.status();
  EXPECT_EQ(peer->cuda_ipc.signals.length, 0u);
  EXPECT_TRUE(peer->cuda_ipc.signals.cuda_ipc_handle.empty());
}

TEST(ProtoConvertTest, RecallSignalReachesTheSpec) {
  v1::RecallRequest request;
  request.set_layer(2);
  request.set_urgent(true);
  EXPECT_FALSE(RecallSpecFromProto(request).signal.has_value());
  request.mutable_signal()->set_offset(12);
  request.mutable_signal()->set_value(0xabcd1234u);
  const RecallSpec spec = RecallSpecFromProto(request);
  ASSERT_TRUE(spec.signal.has_value());
  EXPECT_EQ(spec.signal->offset, 12u);
  EXPECT_EQ(spec.signal->value, 0xabcd1234u);
  EXPECT_EQ(spec.layer, 2u);
  EXPECT_TRUE(spec.urgent);
}

TEST(ProtoConvertTest, CudaIpcRefusesMalformedFields) {
  v1::OpenSessionRequest request = CudaIpcRequest();
  request.mutable_staging()->set_cuda_ipc_handle("short");
  ExpectRefused(request, "staging.cuda_ipc_handle");

  request = CudaIpcRequest();
  request.mutable_offload()->set_length(0);
  ExpectRefused(request, "offload.length");

  request = CudaIpcRequest();
  request.mutable_cuda_ipc()->clear_pci_bus_id();
  ExpectRefused(request, "cuda_ipc.pci_bus_id");

  request = CudaIpcRequest();
  request.mutable_cuda_ipc()->mutable_slot_ready_events()->RemoveLast();
  ExpectRefused(request, "cuda_ipc.slot_ready_events");

  request = CudaIpcRequest();
  request.mutable_cuda_ipc()->set_slot_free_events(2, "x");
  ExpectRefused(request, "cuda_ipc.slot_free_events[2]");

  request = CudaIpcRequest();
  request.mutable_cuda_ipc()->clear_offload_written_event();
  ExpectRefused(request, "cuda_ipc.offload_written_event");

  request = CudaIpcRequest();
  request.mutable_cuda_ipc()->mutable_signals()->set_length(6);
  ExpectRefused(request, "cuda_ipc.signals.length");

  request = CudaIpcRequest();
  request.mutable_cuda_ipc()->mutable_signals()->set_length(0);
  ExpectRefused(request, "cuda_ipc.signals.length");

  request = CudaIpcRequest();
  request.mutable_cuda_ipc()->mutable_signals()->set_cuda_ipc_handle("short");
  ExpectRefused(request, "cuda_ipc.signals.cuda_ipc_handle");
}

TEST(ProtoConvertTest, UnspecifiedTransportIsRefused) {
  v1::OpenSessionRequest request = CudaIpcRequest();
  request.set_transport(v1::TRANSPORT_UNSPECIFIED);
  ExpectRefused(request, "transport");
}

}  // namespace
}  // namespace freekv
