#include "client/cuda_kv_client.h"

#include <utility>

namespace freekv {

absl::StatusOr<std::unique_ptr<CudaKvClient>> CudaKvClient::Open(KvClientOptions options,
                                                                 int device) {
  if (absl::Status s = ValidateGeometry(options.geometry); !s.ok()) return s;
  const Geometry& g = options.geometry;
  if (options.slot_bytes == 0) {
    options.slot_bytes = uint64_t{options.slot_slices} * g.head_slice_bytes();
  }
  if (options.offload_bytes == 0) {
    options.offload_bytes = uint64_t{options.offload_blocks} * g.block_bytes();
  }
  absl::StatusOr<std::unique_ptr<CudaRegions>> regions = CudaRegions::Create(
      device, g.num_layers, options.slot_bytes, options.offload_bytes);
  if (!regions.ok()) return regions.status();
  options.cuda_ipc = (*regions)->handles();
  absl::StatusOr<std::unique_ptr<KvClient>> client = KvClient::Open(options);
  if (!client.ok()) return client.status();
  return std::unique_ptr<CudaKvClient>(
      new CudaKvClient(*std::move(regions), *std::move(client)));
}

CudaKvClient::~CudaKvClient() {
  // Close before the regions go: the kvservice drops its mappings with the session.
  client_.reset();
}

}  // namespace freekv
