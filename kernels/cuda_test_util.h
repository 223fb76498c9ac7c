// Helpers for the GPU tests of kernels/: moving host vectors to poisoned or filled
// device buffers and back, with any CUDA error failing the test loudly. Test-only.
#ifndef FREEKV_KERNELS_CUDA_TEST_UTIL_H_
#define FREEKV_KERNELS_CUDA_TEST_UTIL_H_

#include <cstdio>
#include <cstdlib>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/cuda_util.h"
#include "kernels/test_pool.h"

namespace freekv {
namespace kernels {

// Makes every stream of this process, and of the processes it starts, share one
// hardware work queue (CUDA_DEVICE_MAX_CONNECTIONS=1); call before any CUDA call. A
// stream that waits for work another stream enqueues after it then deadlocks every
// time, instead of only when the driver happens to put both streams in one queue.
inline void ShareOneWorkQueue() { setenv("CUDA_DEVICE_MAX_CONNECTIONS", "1", 1); }

template <typename T>
T Must(absl::StatusOr<T> value) {
  if (!value.ok()) {
    std::fprintf(stderr, "fatal: %s\n", value.status().ToString().c_str());
    std::abort();
  }
  return *std::move(value);
}

inline void Must(const absl::Status& status) {
  if (!status.ok()) {
    std::fprintf(stderr, "fatal: %s\n", status.ToString().c_str());
    std::abort();
  }
}

template <typename T>
DeviceBuffer Up(const std::vector<T>& host) {
  return Must(DeviceBuffer::Upload<T>(host));
}

// A device buffer of n elements of T, every byte 0xFF (NaN / -1).
template <typename T>
DeviceBuffer Poisoned(size_t n) {
  DeviceBuffer buf = Must(DeviceBuffer::Allocate(n * sizeof(T)));
  Must(buf.Poison());
  return buf;
}

// Waits for the device, then copies the first n elements back.
template <typename T>
std::vector<T> Down(const DeviceBuffer& buf, size_t n) {
  Must(DeviceSynchronize());
  std::vector<T> host(n);
  Must(buf.Download<T>(absl::MakeSpan(host)));
  return host;
}

template <typename T>
std::vector<T> Down(const DeviceBuffer& buf) {
  return Down<T>(buf, buf.bytes() / sizeof(T));
}

// A page table in device memory.
struct DevicePageTable {
  explicit DevicePageTable(const HostPageTable& host)
      : indptr(Up(host.indptr)),
        indices(Up(host.indices)),
        last(Up(host.last_page_len)),
        table_heads(host.table_heads) {}
  PageTable view() const {
    return PageTable{indptr.span<const int32_t>(), indices.span<const int32_t>(),
                     last.span<const int32_t>(), table_heads};
  }
  DeviceBuffer indptr, indices, last;
  int32_t table_heads;
};

}  // namespace kernels
}  // namespace freekv

#endif  // FREEKV_KERNELS_CUDA_TEST_UTIL_H_
