// What a worker sends to open a TRANSPORT_CUDA_IPC session: its GPU, IPC handles of its
// device regions and of its interprocess events (see CudaIpcPeer in kvservice.proto).
// Plain data, CUDA-free, so that KvClient (built without CUDA) can carry it;
// CudaRegions (client/cuda_regions.h) produces it.
#ifndef FREEKV_CLIENT_CUDA_IPC_HANDLES_H_
#define FREEKV_CLIENT_CUDA_IPC_HANDLES_H_

#include <cstdint>
#include <string>
#include <vector>

namespace freekv {

struct CudaIpcHandles {
  std::string pci_bus_id;      // cudaDeviceGetPCIBusId
  std::string staging_handle;  // cudaIpcMemHandle_t bytes of the staging region
  uint64_t staging_bytes = 0;  // 2 slots per layer, layer-major
  std::string offload_handle;  // cudaIpcMemHandle_t bytes of the offload region
  uint64_t offload_bytes = 0;
  // cudaIpcEventHandle_t bytes, [2 * layer + slot].
  std::vector<std::string> slot_ready_events;
  std::vector<std::string> slot_free_events;
  std::string offload_written_event;
  // cudaIpcMemHandle_t bytes of the signal words (32-bit, zeroed at first); none when
  // signals_bytes is 0.
  std::string signals_handle;
  uint64_t signals_bytes = 0;
};

}  // namespace freekv

#endif  // FREEKV_CLIENT_CUDA_IPC_HANDLES_H_
