#include "tests/integration/cuda_test_util.h"

#include "kvservice/cuda_handles.cuh"

namespace freekv::testing {
namespace {

__device__ uint64_t GlobalNanoseconds() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

__global__ void BusyKernel(uint64_t nanoseconds) {
  const uint64_t start = GlobalNanoseconds();
  while (GlobalNanoseconds() - start < nanoseconds) __nanosleep(1000);
}

}  // namespace

absl::Status CopyBytes(void* dst, const void* src, size_t bytes) {
  FREEKV_GPU_RETURN_IF_ERROR(cudaMemcpy(dst, src, bytes, cudaMemcpyDefault));
  // cudaMemcpy from pageable memory may return before the DMA lands; another process
  // reads what this wrote, so wait for it.
  return gpu::CudaStatus(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
}

absl::Status FillBytes(void* device_dst, uint8_t value, size_t bytes) {
  FREEKV_GPU_RETURN_IF_ERROR(cudaMemset(device_dst, value, bytes));
  return gpu::CudaStatus(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
}

absl::StatusOr<std::unique_ptr<TestDeviceBuffer>> TestDeviceBuffer::Create(size_t bytes) {
  void* data = nullptr;
  FREEKV_GPU_RETURN_IF_ERROR(cudaMalloc(&data, bytes));
  return std::unique_ptr<TestDeviceBuffer>(
      new TestDeviceBuffer(static_cast<std::byte*>(data), bytes));
}

TestDeviceBuffer::~TestDeviceBuffer() { cudaFree(data_); }

absl::StatusOr<std::unique_ptr<TestHostBuffer>> TestHostBuffer::Create(size_t bytes) {
  void* data = nullptr;
  FREEKV_GPU_RETURN_IF_ERROR(cudaHostAlloc(&data, bytes, cudaHostAllocPortable));
  return std::unique_ptr<TestHostBuffer>(
      new TestHostBuffer(static_cast<std::byte*>(data), bytes));
}

TestHostBuffer::~TestHostBuffer() { cudaFreeHost(data_); }

absl::StatusOr<std::unique_ptr<TestStream>> TestStream::Create() {
  cudaStream_t stream = nullptr;
  FREEKV_GPU_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  return std::unique_ptr<TestStream>(new TestStream(stream));
}

TestStream::~TestStream() {
  cudaStreamSynchronize(stream_);
  cudaStreamDestroy(stream_);
}

absl::Status TestStream::Busy(absl::Duration duration) {
  BusyKernel<<<1, 1, 0, stream_>>>(
      static_cast<uint64_t>(absl::ToInt64Nanoseconds(duration)));
  return gpu::CudaStatus(cudaGetLastError(), "BusyKernel launch");
}

absl::Status TestStream::CopyAsync(void* dst, const void* src, size_t bytes) {
  return gpu::CudaStatus(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, stream_),
                         "cudaMemcpyAsync");
}

absl::Status TestStream::FillAsync(void* device_dst, uint8_t value, size_t bytes) {
  return gpu::CudaStatus(cudaMemsetAsync(device_dst, value, bytes, stream_),
                         "cudaMemsetAsync");
}

absl::Status TestStream::Synchronize() {
  return gpu::CudaStatus(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
}

}  // namespace freekv::testing
