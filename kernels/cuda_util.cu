// Implementation of cuda_util.h.
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

#include "kernels/cuda_check.cuh"
#include "kernels/cuda_util.h"
#include "kernels/event_poll.cuh"
#include "kernels/shape.h"

namespace freekv {
namespace kernels {

absl::StatusOr<DeviceBuffer> DeviceBuffer::Allocate(size_t bytes) {
  DeviceBuffer buf;
  if (bytes == 0) return buf;
  FREEKV_RETURN_IF_ERROR(CudaStatus(cudaMalloc(&buf.ptr_, bytes),
                                    absl::StrCat("cudaMalloc of ", bytes, " bytes").c_str()));
  buf.bytes_ = bytes;
  return buf;
}

DeviceBuffer::DeviceBuffer(DeviceBuffer&& other) noexcept
    : ptr_(std::exchange(other.ptr_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& other) noexcept {
  if (this != &other) {
    if (ptr_ != nullptr) cudaFree(ptr_);
    ptr_ = std::exchange(other.ptr_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

DeviceBuffer::~DeviceBuffer() {
  if (ptr_ != nullptr) cudaFree(ptr_);
}

absl::Status DeviceBuffer::CopyFromHost(const void* host, size_t bytes) {
  if (bytes > bytes_) {
    return absl::InvalidArgumentError(
        absl::StrCat("copy of ", bytes, " bytes into a buffer of ", bytes_));
  }
  if (bytes == 0) return absl::OkStatus();
  return CudaStatus(cudaMemcpy(ptr_, host, bytes, cudaMemcpyHostToDevice),
                    "cudaMemcpy host to device");
}

absl::Status DeviceBuffer::CopyToHost(void* host, size_t bytes) const {
  if (bytes > bytes_) {
    return absl::InvalidArgumentError(
        absl::StrCat("copy of ", bytes, " bytes out of a buffer of ", bytes_));
  }
  if (bytes == 0) return absl::OkStatus();
  return CudaStatus(cudaMemcpy(host, ptr_, bytes, cudaMemcpyDeviceToHost),
                    "cudaMemcpy device to host");
}

absl::Status DeviceBuffer::Poison() {
  if (bytes_ == 0) return absl::OkStatus();
  FREEKV_CUDA_RETURN_IF_ERROR(cudaMemset(ptr_, 0xFF, bytes_));
  return CudaStatus(cudaDeviceSynchronize(), "cudaDeviceSynchronize after poison");
}

absl::Status DeviceBuffer::Zero() {
  if (bytes_ == 0) return absl::OkStatus();
  FREEKV_CUDA_RETURN_IF_ERROR(cudaMemset(ptr_, 0, bytes_));
  return CudaStatus(cudaDeviceSynchronize(), "cudaDeviceSynchronize after zero");
}

absl::StatusOr<PinnedBuffer> PinnedBuffer::Allocate(size_t bytes) {
  PinnedBuffer buf;
  if (bytes == 0) return buf;
  FREEKV_RETURN_IF_ERROR(
      CudaStatus(cudaHostAlloc(&buf.ptr_, bytes, cudaHostAllocDefault),
                 absl::StrCat("cudaHostAlloc of ", bytes, " bytes").c_str()));
  buf.bytes_ = bytes;
  return buf;
}

PinnedBuffer::PinnedBuffer(PinnedBuffer&& other) noexcept
    : ptr_(std::exchange(other.ptr_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}

PinnedBuffer& PinnedBuffer::operator=(PinnedBuffer&& other) noexcept {
  if (this != &other) {
    if (ptr_ != nullptr) cudaFreeHost(ptr_);
    ptr_ = std::exchange(other.ptr_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

PinnedBuffer::~PinnedBuffer() {
  if (ptr_ != nullptr) cudaFreeHost(ptr_);
}

absl::StatusOr<CudaStream> CudaStream::Create() {
  CudaStream s;
  FREEKV_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&s.stream_, cudaStreamNonBlocking));
  return s;
}

CudaStream::CudaStream(CudaStream&& other) noexcept
    : stream_(std::exchange(other.stream_, nullptr)) {}

CudaStream& CudaStream::operator=(CudaStream&& other) noexcept {
  if (this != &other) {
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
    stream_ = std::exchange(other.stream_, nullptr);
  }
  return *this;
}

CudaStream::~CudaStream() {
  if (stream_ != nullptr) cudaStreamDestroy(stream_);
}

absl::Status CudaStream::Synchronize() const {
  return CudaStatus(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
}

bool CudaStream::Busy() const { return cudaStreamQuery(stream_) == cudaErrorNotReady; }

absl::StatusOr<CudaEvent> CudaEvent::Create(bool timing) {
  CudaEvent e;
  FREEKV_CUDA_RETURN_IF_ERROR(
      cudaEventCreateWithFlags(&e.event_, timing ? cudaEventDefault : cudaEventDisableTiming));
  return e;
}

absl::Status CudaEvent::Synchronize() const {
  return CudaStatus(cudaEventSynchronize(event_), "cudaEventSynchronize");
}

absl::Status CudaEvent::WaitFor(absl::Duration timeout) const {
  const absl::StatusOr<bool> done =
      PollEvent(event_, absl::Now() + timeout, absl::Microseconds(20), "cudaEventQuery");
  if (!done.ok()) return done.status();
  if (*done) return absl::OkStatus();
  return absl::DeadlineExceededError(absl::StrCat(
      "the GPU work before the event has not run within ", absl::FormatDuration(timeout)));
}

absl::Status CudaEvent::MakeStreamWait(cudaStream_t stream) const {
  return CudaStatus(cudaStreamWaitEvent(stream, event_, 0), "cudaStreamWaitEvent");
}

CudaEvent::CudaEvent(CudaEvent&& other) noexcept
    : event_(std::exchange(other.event_, nullptr)) {}

CudaEvent& CudaEvent::operator=(CudaEvent&& other) noexcept {
  if (this != &other) {
    if (event_ != nullptr) cudaEventDestroy(event_);
    event_ = std::exchange(other.event_, nullptr);
  }
  return *this;
}

CudaEvent::~CudaEvent() {
  if (event_ != nullptr) cudaEventDestroy(event_);
}

absl::Status CudaEvent::Record(cudaStream_t stream) {
  return CudaStatus(cudaEventRecord(event_, stream), "cudaEventRecord");
}

absl::StatusOr<float> CudaEvent::ElapsedMsSince(const CudaEvent& start) const {
  FREEKV_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(event_));
  float ms = 0.0f;
  FREEKV_CUDA_RETURN_IF_ERROR(cudaEventElapsedTime(&ms, start.event_, event_));
  return ms;
}

absl::StatusOr<CudaGraph> CudaGraph::Capture(cudaStream_t stream,
                                             const std::function<absl::Status()>& body) {
  FREEKV_CUDA_RETURN_IF_ERROR(cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed));
  const absl::Status recorded = body();
  CudaGraph g;
  const cudaError_t ended = cudaStreamEndCapture(stream, &g.graph_);
  FREEKV_RETURN_IF_ERROR(recorded);
  FREEKV_RETURN_IF_ERROR(CudaStatus(ended, "cudaStreamEndCapture"));
  FREEKV_CUDA_RETURN_IF_ERROR(cudaGraphInstantiate(&g.exec_, g.graph_, 0));
  return g;
}

CudaGraph::CudaGraph(CudaGraph&& other) noexcept
    : graph_(std::exchange(other.graph_, nullptr)), exec_(std::exchange(other.exec_, nullptr)) {}

CudaGraph& CudaGraph::operator=(CudaGraph&& other) noexcept {
  if (this != &other) {
    Reset();
    graph_ = std::exchange(other.graph_, nullptr);
    exec_ = std::exchange(other.exec_, nullptr);
  }
  return *this;
}

CudaGraph::~CudaGraph() { Reset(); }

void CudaGraph::Reset() {
  if (exec_ != nullptr) cudaGraphExecDestroy(exec_);
  if (graph_ != nullptr) cudaGraphDestroy(graph_);
  exec_ = nullptr;
  graph_ = nullptr;
}

absl::Status CudaGraph::Launch(cudaStream_t stream) const {
  return CudaStatus(cudaGraphLaunch(exec_, stream), "cudaGraphLaunch");
}

absl::StatusOr<DeviceInfo> GetDeviceInfo() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    cudaGetLastError();  // clear the sticky "no device" error
    return absl::FailedPreconditionError("no CUDA device is visible");
  }
  int dev = 0;
  FREEKV_CUDA_RETURN_IF_ERROR(cudaGetDevice(&dev));
  cudaDeviceProp prop;
  FREEKV_CUDA_RETURN_IF_ERROR(cudaGetDeviceProperties(&prop, dev));
  DeviceInfo info;
  info.name = prop.name;
  info.sm_count = prop.multiProcessorCount;
  info.l2_bytes = prop.l2CacheSize;
  info.global_bytes = static_cast<int64_t>(prop.totalGlobalMem);
  info.compute_major = prop.major;
  info.compute_minor = prop.minor;
  return info;
}

absl::Status CopyDeviceToDevice(void* dst, const void* src, size_t bytes,
                                cudaStream_t stream) {
  return CudaStatus(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream),
                    "cudaMemcpyAsync device to device");
}

absl::Status CopyAsync(void* dst, const void* src, size_t bytes, cudaStream_t stream) {
  return CudaStatus(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, stream),
                    "cudaMemcpyAsync");
}

absl::StatusOr<DeviceMemory> GetDeviceMemory() {
  DeviceMemory m;
  FREEKV_CUDA_RETURN_IF_ERROR(cudaMemGetInfo(&m.free_bytes, &m.total_bytes));
  return m;
}

absl::Status DeviceSynchronize() {
  return CudaStatus(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
}

}  // namespace kernels
}  // namespace freekv
