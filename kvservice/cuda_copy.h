// CopyStreams: many copies between host and device memory, moved by the GPU's copy
// engines only (no kernels), over one or more streams of one device.
//
// Why: a 16 KiB copy issued alone reaches 0.09 of PCIe and batched ones not much more
// (bench/RESULTS.md): the copy engines pay a fixed cost per copy. kGather therefore
// packs scattered host sources with the CPU (GatherPool) into two pinned bounce
// buffers in turn, and moves each with one large copy per run of adjacent
// destinations, pipelined: the CPU packs one buffer while the DMA drains the other.
// Batched copies and the CPU gather each stall well short of the link on their own
// (the gather needs many threads, and then host memory bounds it: each gathered byte
// is read and written by the CPU and read again by the DMA, which held it to 0.77 of
// the link on the lent H100 hosts, bench/RESULTS.md GPU recall run 7), so
// kSplit runs both at once: while the CPU packs most of a piece, one batched call
// sends the rest straight from the sources on a second stream, which waits only for
// the caller's events (WaitEvent), not for the previous piece's copy-out. kAuto
// chooses per Enqueue: small ones batched straight from their sources (one pass over
// host memory, no packing threads woken), large ones gathered.
// The kvservice pushes recalls and pulls offloads with it, and
// bench/gpu_recall_bench measures every method in-process with the same code.
//
// Owns its streams, the events that order them and its bounce buffers. Not
// thread-safe: callers serialise Enqueue (the transport does, per session).
#ifndef FREEKV_KVSERVICE_CUDA_COPY_H_
#define FREEKV_KVSERVICE_CUDA_COPY_H_

#include <cstddef>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kernels/cuda_fwd.h"
#include "kvservice/copy_method.h"
#include "kvservice/gather_pool.h"

// As CUDA's driver_types.h spells it (kernels/cuda_fwd.h does the same for streams).
struct CUevent_st;
typedef struct CUevent_st* cudaEvent_t;

namespace freekv {

struct CopyOptions {
  CopyMethod method = CopyMethod::kBatch;
  // kBatch, kPerRun: streams the copies are spread over.
  int streams = 1;
  // kBatch: cudaMemcpyFlagPreferOverlapWithCompute on every copy.
  bool prefer_overlap = false;
  // kBatch: sources may be read out of stream order (cudaMemcpySrcAccessOrderAny);
  // otherwise in stream order.
  bool any_source_order = false;
  // kGather, kSplit, kAuto: bytes of each of the two pinned bounce buffers, and the
  // threads that pack them (required; not owned, outlives the CopyStreams).
  size_t bounce_bytes = size_t{8} << 20;
  GatherPool* gather_pool = nullptr;
  // kGather, kSplit, kAuto: bytes packed and sent at a time, at most bounce_bytes (0:
  // all of them). Smaller pieces start the copy engine sooner, which shortens a lone
  // request (a correction that the decode waits for); each piece costs a wake-up of
  // the packing threads and a copy call.
  size_t piece_bytes = 0;
  // kSplit: the share (0 to 1) of each bounce-sized piece's copies that is not packed
  // but sent straight from its source. Run 4 in bench/RESULTS.md: end to end, 1/3 beat
  // plain gather by about 30%; in-process 1/4 did best and 1/2 worst (the direct
  // copies slow the copy-out beside them), so more is not better.
  double direct_share = 1.0 / 3;
  // kAuto: an Enqueue of at most this many copies goes as kBatch (the copy engines
  // read the sources once; no packing threads), a larger one as kGather. Where host
  // memory was slow, batched copies kept the decode's recalls (about 300 blocks a
  // push) moving faster than packing, each packed byte crossing DRAM three times,
  // while blocking's pushes of about 780 blocks were 3.3 times slower batched
  // (bench/RESULTS.md decode run 24). On hosts that kept up, auto, gather and batch
  // gave the decode the same step (run 25).
  size_t direct_max_copies = 512;
};

// GPUs this process sees; 0 when the driver reports none or cannot be reached.
int VisibleCudaDeviceCount();

// One copy; direction follows from the pointers (unified addressing).
struct DeviceCopy {
  void* dst = nullptr;
  const void* src = nullptr;
  size_t bytes = 0;
};

class CopyStreams {
 public:
  // INVALID_ARGUMENT naming a bad option; the CUDA error when a stream, event or
  // bounce buffer cannot be made.
  static absl::StatusOr<std::unique_ptr<CopyStreams>> Create(int device,
                                                             const CopyOptions& options);
  ~CopyStreams();  // waits for the streams' work
  CopyStreams(const CopyStreams&) = delete;
  CopyStreams& operator=(const CopyStreams&) = delete;

  int device() const;
  const CopyOptions& options() const;
  // Work enqueued on main() after Enqueue (events to record) starts after every one of
  // Enqueue's copies. Order copies after earlier work with WaitEvent, not through
  // main(): kSplit's direct copies do not wait for main().
  cudaStream_t main() const;

  // Every copy of later Enqueue calls starts after the work `event` was last recorded
  // after (as of this call), on whichever stream it runs.
  absl::Status WaitEvent(cudaEvent_t event);

  // Enqueues `copies`. kBatch/kPerRun return at once; kGather returns once the
  // sources are packed (it may wait for a bounce buffer's previous copy), so its
  // sources may change as soon as it returns; kSplit's direct copies still read theirs
  // until main() passes them, as do kAuto's when it does not pack them. The calling
  // thread's current device is left unchanged.
  absl::Status Enqueue(absl::Span<const DeviceCopy> copies);

  // Whether an Enqueue of `copies` copies packs them (or some of them) on the host.
  bool Packs(size_t copies) const;

  // Waits for everything enqueued on main() so far.
  absl::Status Synchronize();

  struct Impl;

 private:
  explicit CopyStreams(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace freekv

#endif  // FREEKV_KVSERVICE_CUDA_COPY_H_
