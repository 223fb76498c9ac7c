// CudaKvClient: a worker's CUDA IPC session with the kvservice on its node. Recalls
// land in device memory (two staging slots per layer) by the GPU's copy engines, and
// offloads are read from a device region; the kvservice pins its store.
//
// Owns the device regions and events (CudaRegions) and the session (KvClient), and
// closes the session before it frees the regions, so the kvservice never copies into
// freed memory. Use client() for offload/recall/wait/release exactly as with UCX, and
// regions() for device pointers and the stream-side protocol:
//   write the offload region on stream s; regions().MarkOffloadWritten(s);
//   client().Offload(...);
//   ticket = client().Recall(step + 1, layer, ...);          // one step ahead
//   client().Wait(ticket, deadline);  regions().WaitSlotReady(layer, ticket.slot, s);
//   ... attention reads regions().staging_slot(layer, ticket.slot) on s ...
//   regions().MarkSlotFree(layer, ticket.slot, s);  client().Release(ticket);
//
// Thread-safe as KvClient and CudaRegions are.
#ifndef FREEKV_CLIENT_CUDA_KV_CLIENT_H_
#define FREEKV_CLIENT_CUDA_KV_CLIENT_H_

#include <memory>

#include "absl/status/statusor.h"
#include "client/cuda_regions.h"
#include "client/kv_client.h"

namespace freekv {

class CudaKvClient {
 public:
  // Allocates the regions on `device` (sizes as KvClient::Open picks them from
  // `options`) and opens the session with TRANSPORT_CUDA_IPC.
  static absl::StatusOr<std::unique_ptr<CudaKvClient>> Open(KvClientOptions options,
                                                            int device);
  ~CudaKvClient();
  CudaKvClient(const CudaKvClient&) = delete;
  CudaKvClient& operator=(const CudaKvClient&) = delete;

  KvClient& client() { return *client_; }
  const CudaRegions& regions() const { return *regions_; }

 private:
  CudaKvClient(std::unique_ptr<CudaRegions> regions, std::unique_ptr<KvClient> client)
      : regions_(std::move(regions)), client_(std::move(client)) {}

  std::unique_ptr<CudaRegions> regions_;  // declared first: destroyed last
  std::unique_ptr<KvClient> client_;
};

}  // namespace freekv

#endif  // FREEKV_CLIENT_CUDA_KV_CLIENT_H_
