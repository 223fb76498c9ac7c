// What a kvservice built with --config=cuda adds: a pinned page store and the CUDA IPC
// transport. The build links cuda_support_cuda.cc or, without CUDA,
// cuda_support_none.cc (whose functions report that CUDA is absent), so main.cc needs
// no #ifdef and one binary target serves both builds. Safe from any thread.
#ifndef FREEKV_KVSERVICE_CUDA_SUPPORT_H_
#define FREEKV_KVSERVICE_CUDA_SUPPORT_H_

#include <cstddef>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "kvservice/chunk_allocator.h"
#include "kvservice/transport.h"

namespace freekv {

struct CudaSupportOptions {
  std::string copy_method = "gather";  // recalls: as ParseCopyMethod reads it
  // Urgent recalls (corrections) in a lane of their own: as ParseCopyMethod reads it,
  // or "off" (they queue with the others).
  std::string urgent_copy_method = "gather";
  int copy_streams = 1;                // per session: batch/per_run recalls, and pulls
  int gather_threads = 8;              // shared by every session (gather, split)
  int gather_prefetch_kib = 8;         // how far ahead the packing threads prefetch
  int gather_piece_kib = 0;            // bytes packed and sent at a time (0: 8 MiB)
  double direct_share = 1.0 / 3;       // split: each piece's share sent from the store
  int direct_max_blocks = 512;         // auto: the largest push sent from the store
  PushStagesObserver on_push_landed;   // told where each push spent its time
};

// True when this binary was built with CUDA.
bool BuiltWithCuda();

// GPUs this process sees: 0 without CUDA, without a driver, or without devices.
int VisibleGpuCount();

// Wraps `inner` so that every chunk is pinned (PinnedChunkAllocator), pinning one
// probe chunk of `probe_bytes` now. UNIMPLEMENTED without CUDA.
absl::StatusOr<std::unique_ptr<ChunkAllocator>> MakePinnedChunkAllocator(
    std::unique_ptr<ChunkAllocator> inner, size_t probe_bytes);

// The CUDA IPC TransportFactory. UNIMPLEMENTED without CUDA; FAILED_PRECONDITION
// without a GPU.
absl::StatusOr<std::unique_ptr<TransportFactory>> MakeCudaIpcTransportFactory(
    const CudaSupportOptions& options);

}  // namespace freekv

#endif  // FREEKV_KVSERVICE_CUDA_SUPPORT_H_
