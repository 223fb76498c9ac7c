// CopyStreams: many copies between host and device memory, moved by the GPU's copy
// engines only (no kernels), over one or more streams of one device.
//
// Why: a 16 KiB copy issued alone reaches 0.09 of PCIe and one cudaMemcpyBatchAsync
// of 16 KiB copies about 0.6 (DESIGN.md, measured facts); batches on several streams
// let several copy engines share the per-copy cost. The kvservice pushes recalls and
// pulls offloads with it, and bench/gpu_recall_bench measures it in-process with the
// same code.
//
// Owns its streams and the events that order them. Not thread-safe: callers serialise
// Enqueue (the transport does, per session).
#ifndef FREEKV_KVSERVICE_CUDA_COPY_H_
#define FREEKV_KVSERVICE_CUDA_COPY_H_

#include <cstddef>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "kernels/cuda_fwd.h"

namespace freekv {

enum class CopyMethod {
  kBatch,   // one cudaMemcpyBatchAsync per stream per Enqueue
  kPerRun,  // one cudaMemcpyAsync per copy (the reference system's way, for benches)
};

// "batch" or "per_run"; INVALID_ARGUMENT naming the value otherwise.
absl::StatusOr<CopyMethod> ParseCopyMethod(absl::string_view name);
const char* CopyMethodName(CopyMethod method);

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
  // `streams` non-blocking streams on `device`, at least 1.
  static absl::StatusOr<std::unique_ptr<CopyStreams>> Create(int device, int streams,
                                                             CopyMethod method);
  ~CopyStreams();  // waits for the streams' work
  CopyStreams(const CopyStreams&) = delete;
  CopyStreams& operator=(const CopyStreams&) = delete;

  int device() const;
  int streams() const;
  // The ordering stream: Enqueue's copies start after what was enqueued on it before,
  // and what is enqueued on it after Enqueue starts after every one of the copies.
  cudaStream_t main() const;

  // Enqueues `copies`, split into contiguous parts of about equal bytes, one per
  // stream. Returns at once; the calling thread's current device is left unchanged.
  absl::Status Enqueue(absl::Span<const DeviceCopy> copies);

  // Waits for everything enqueued on main() so far.
  absl::Status Synchronize();

 private:
  struct Impl;
  explicit CopyStreams(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace freekv

#endif  // FREEKV_KVSERVICE_CUDA_COPY_H_
