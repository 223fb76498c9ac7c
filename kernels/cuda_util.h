// RAII owners of CUDA resources and the few runtime calls that gcc-compiled code
// (tests, benchmarks, the worker) needs, so that only nvcc-compiled files include the
// CUDA headers. Each owner frees its resource in its destructor; owners are move-only
// and are used by one thread at a time. Implemented in cuda_util.cu.
#ifndef FREEKV_KERNELS_CUDA_UTIL_H_
#define FREEKV_KERNELS_CUDA_UTIL_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "kernels/cuda_fwd.h"

struct CUevent_st;
struct CUgraph_st;
struct CUgraphExec_st;

namespace freekv {
namespace kernels {

// Owns `bytes` of device memory from cudaMalloc (256-byte aligned).
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  static absl::StatusOr<DeviceBuffer> Allocate(size_t bytes);
  // Allocates and copies `host` (synchronously).
  template <typename T>
  static absl::StatusOr<DeviceBuffer> Upload(absl::Span<const T> host) {
    auto buf = Allocate(host.size() * sizeof(T));
    if (!buf.ok()) return buf.status();
    absl::Status s = buf->CopyFromHost(host.data(), host.size() * sizeof(T));
    if (!s.ok()) return s;
    return buf;
  }
  DeviceBuffer(DeviceBuffer&& other) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer();

  void* data() const { return ptr_; }
  size_t bytes() const { return bytes_; }
  // The buffer as `bytes / sizeof(T)` device elements.
  template <typename T>
  absl::Span<T> span() const {
    return absl::Span<T>(static_cast<T*>(ptr_), bytes_ / sizeof(T));
  }

  // Synchronous copies of the first `bytes` bytes.
  absl::Status CopyFromHost(const void* host, size_t bytes);
  absl::Status CopyToHost(void* host, size_t bytes) const;
  template <typename T>
  absl::Status Download(absl::Span<T> host) const {
    return CopyToHost(host.data(), host.size() * sizeof(T));
  }
  // Fills every byte with 0xFF: NaN in float32 and bf16, -1 in int32 (poison, so a
  // test sees any element a kernel failed to write).
  absl::Status Poison();
  // Fills every byte with 0 (synchronously).
  absl::Status Zero();

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// Owns `bytes` of page-locked host memory from cudaHostAlloc: the host side of
// asynchronous copies (a copy to pageable memory would block the calling thread).
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  static absl::StatusOr<PinnedBuffer> Allocate(size_t bytes);
  PinnedBuffer(PinnedBuffer&& other) noexcept;
  PinnedBuffer& operator=(PinnedBuffer&& other) noexcept;
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  ~PinnedBuffer();

  void* data() const { return ptr_; }
  size_t bytes() const { return bytes_; }
  template <typename T>
  absl::Span<T> span() const {
    return absl::Span<T>(static_cast<T*>(ptr_), bytes_ / sizeof(T));
  }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// Owns a non-blocking CUDA stream.
class CudaStream {
 public:
  static absl::StatusOr<CudaStream> Create();
  CudaStream(CudaStream&& other) noexcept;
  CudaStream& operator=(CudaStream&& other) noexcept;
  CudaStream(const CudaStream&) = delete;
  CudaStream& operator=(const CudaStream&) = delete;
  ~CudaStream();

  cudaStream_t get() const { return stream_; }
  // Waits for the stream's work; returns the first error it met.
  absl::Status Synchronize() const;
  // Whether work enqueued on the stream has yet to run (does not wait); for reports.
  bool Busy() const;

 private:
  CudaStream() = default;
  cudaStream_t stream_ = nullptr;
};

// Owns an event: a timing one by default, or (timing = false) a lighter one that only
// orders work and lets a host thread wait.
class CudaEvent {
 public:
  static absl::StatusOr<CudaEvent> Create(bool timing = true);
  CudaEvent(CudaEvent&& other) noexcept;
  CudaEvent& operator=(CudaEvent&& other) noexcept;
  CudaEvent(const CudaEvent&) = delete;
  CudaEvent& operator=(const CudaEvent&) = delete;
  ~CudaEvent();

  absl::Status Record(cudaStream_t stream);
  // Blocks the calling thread until the work before the last Record has run.
  absl::Status Synchronize() const;
  // The same with a limit: DEADLINE_EXCEEDED when that work has not run within
  // `timeout` (a stream held at a gate nobody opens; the host polls, sleeping briefly
  // between queries, so it never blocks inside the driver).
  absl::Status WaitFor(absl::Duration timeout) const;
  // Makes `stream` wait for the work before the last Record (the host does not wait).
  absl::Status MakeStreamWait(cudaStream_t stream) const;
  // Milliseconds from `start` to this event; both must have completed (synchronises).
  absl::StatusOr<float> ElapsedMsSince(const CudaEvent& start) const;

 private:
  CudaEvent() = default;
  CUevent_st* event_ = nullptr;
};

// Owns a captured, instantiated CUDA graph: a fixed sequence of launches replayed with
// one call (how the benchmark hides launch gaps, as a decode loop would).
class CudaGraph {
 public:
  // Records what `body` enqueues on `stream` (nothing runs while recording; relaxed
  // capture mode, so launchers may query the device).
  static absl::StatusOr<CudaGraph> Capture(cudaStream_t stream,
                                           const std::function<absl::Status()>& body);
  CudaGraph(CudaGraph&& other) noexcept;
  CudaGraph& operator=(CudaGraph&& other) noexcept;
  CudaGraph(const CudaGraph&) = delete;
  CudaGraph& operator=(const CudaGraph&) = delete;
  ~CudaGraph();

  absl::Status Launch(cudaStream_t stream) const;

 private:
  CudaGraph() = default;
  void Reset();
  CUgraph_st* graph_ = nullptr;
  CUgraphExec_st* exec_ = nullptr;
};

struct DeviceInfo {
  std::string name;
  int32_t sm_count = 0;
  int64_t l2_bytes = 0;
  int64_t global_bytes = 0;
  int32_t compute_major = 0;
  int32_t compute_minor = 0;
};

// Properties of the current device; FAILED_PRECONDITION when there is no GPU.
absl::StatusOr<DeviceInfo> GetDeviceInfo();

// Asynchronous device-to-device copy (the bandwidth ceiling of the benchmark).
absl::Status CopyDeviceToDevice(void* dst, const void* src, size_t bytes,
                                cudaStream_t stream);

// Asynchronous copy in any direction (unified addressing); host memory must be
// pinned for the call not to block.
absl::Status CopyAsync(void* dst, const void* src, size_t bytes, cudaStream_t stream);

// Free and total bytes of the current device's memory.
struct DeviceMemory {
  size_t free_bytes = 0;
  size_t total_bytes = 0;
};
absl::StatusOr<DeviceMemory> GetDeviceMemory();

// Waits for all device work; returns the first pending error.
absl::Status DeviceSynchronize();

}  // namespace kernels
}  // namespace freekv

#endif  // FREEKV_KERNELS_CUDA_UTIL_H_
