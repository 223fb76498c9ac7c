// What the GPU integration tests and benchmarks do as "the worker" on the GPU: copies
// between host and device memory, fills, and a stream that can be held busy for a
// known time so that a test can prove the kvservice waited for the worker's events.
// CUDA-free header; implemented in cuda_test_util.cu. Any thread; one TestStream per
// thread at a time.
#ifndef FREEKV_TESTS_INTEGRATION_CUDA_TEST_UTIL_H_
#define FREEKV_TESTS_INTEGRATION_CUDA_TEST_UTIL_H_

#include <cstddef>
#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "kernels/cuda_fwd.h"

namespace freekv::testing {

// Synchronous copies (any direction, unified addressing) and fill: the bytes are in
// place when they return.
absl::Status CopyBytes(void* dst, const void* src, size_t bytes);
absl::Status FillBytes(void* device_dst, uint8_t value, size_t bytes);

// Device memory owned by the test (cudaMalloc / cudaFree).
class TestDeviceBuffer {
 public:
  static absl::StatusOr<std::unique_ptr<TestDeviceBuffer>> Create(size_t bytes);
  ~TestDeviceBuffer();
  std::byte* data() const { return data_; }
  size_t bytes() const { return bytes_; }

 private:
  TestDeviceBuffer(std::byte* data, size_t bytes) : data_(data), bytes_(bytes) {}
  std::byte* data_;
  size_t bytes_;
};

// Pinned host memory from cudaHostAlloc, owned by the test.
class TestHostBuffer {
 public:
  static absl::StatusOr<std::unique_ptr<TestHostBuffer>> Create(size_t bytes);
  ~TestHostBuffer();
  std::byte* data() const { return data_; }
  size_t bytes() const { return bytes_; }

 private:
  TestHostBuffer(std::byte* data, size_t bytes) : data_(data), bytes_(bytes) {}
  std::byte* data_;
  size_t bytes_;
};

// A non-blocking stream standing for the worker's compute stream.
class TestStream {
 public:
  static absl::StatusOr<std::unique_ptr<TestStream>> Create();
  ~TestStream();
  cudaStream_t get() const { return stream_; }

  // Enqueues a kernel that keeps the stream busy for `duration` (the GPU's clock).
  absl::Status Busy(absl::Duration duration);
  absl::Status CopyAsync(void* dst, const void* src, size_t bytes);
  absl::Status FillAsync(void* device_dst, uint8_t value, size_t bytes);
  absl::Status Synchronize();

 private:
  explicit TestStream(cudaStream_t stream) : stream_(stream) {}
  cudaStream_t stream_;
};

}  // namespace freekv::testing

#endif  // FREEKV_TESTS_INTEGRATION_CUDA_TEST_UTIL_H_
