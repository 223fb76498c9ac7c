// cuda_support.h for builds with CUDA (--config=cuda).
#include <utility>

#include "kvservice/cuda_ipc_transport.h"
#include "kvservice/cuda_support.h"
#include "kvservice/pinned_chunk_allocator.h"

namespace freekv {

bool BuiltWithCuda() { return true; }

int VisibleGpuCount() { return VisibleCudaDeviceCount(); }

absl::StatusOr<std::unique_ptr<ChunkAllocator>> MakePinnedChunkAllocator(
    std::unique_ptr<ChunkAllocator> inner, size_t probe_bytes) {
  absl::StatusOr<std::unique_ptr<PinnedChunkAllocator>> pinned =
      PinnedChunkAllocator::Create(std::move(inner), probe_bytes);
  if (!pinned.ok()) return pinned.status();
  return std::unique_ptr<ChunkAllocator>(*std::move(pinned));
}

absl::StatusOr<std::unique_ptr<TransportFactory>> MakeCudaIpcTransportFactory(
    const CudaSupportOptions& options) {
  absl::StatusOr<CopyMethod> method = ParseCopyMethod(options.copy_method);
  if (!method.ok()) return method.status();
  CudaIpcTransportOptions transport;
  transport.push.method = *method;
  transport.push.streams = options.copy_streams;
  transport.push.direct_share = options.direct_share;
  transport.push.direct_max_copies = static_cast<size_t>(options.direct_max_blocks);
  transport.push.piece_bytes = size_t(options.gather_piece_kib) << 10;
  if (options.urgent_copy_method != "off") {
    absl::StatusOr<CopyMethod> urgent = ParseCopyMethod(options.urgent_copy_method);
    if (!urgent.ok()) return urgent.status();
    transport.urgent = transport.push;
    transport.urgent->method = *urgent;
  }
  transport.pull.method = CopyMethod::kBatch;
  transport.pull.streams = options.copy_streams;
  transport.gather_threads = options.gather_threads;
  transport.gather_prefetch_bytes = size_t(options.gather_prefetch_kib) << 10;
  transport.on_push_landed = options.on_push_landed;
  absl::StatusOr<std::unique_ptr<CudaIpcTransportFactory>> factory =
      CudaIpcTransportFactory::Create(transport);
  if (!factory.ok()) return factory.status();
  return std::unique_ptr<TransportFactory>(*std::move(factory));
}

}  // namespace freekv
