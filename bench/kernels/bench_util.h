// Timing and reporting for the GPU kernel benchmark: launches captured into a CUDA
// graph and replayed (so launch gaps do not count, as in a graph-captured decode
// loop), the median of several replays, and the results table. Single-threaded.
#ifndef FREEKV_BENCH_KERNELS_BENCH_UTIL_H_
#define FREEKV_BENCH_KERNELS_BENCH_UTIL_H_

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_format.h"
#include "kernels/bf16.h"
#include "kernels/cuda_util.h"
#include "kernels/shape.h"

namespace freekv {
namespace bench {

using kernels::BFloat16;
using kernels::CudaEvent;
using kernels::CudaGraph;
using kernels::DeviceBuffer;

// Median microseconds per call of enqueue(i), i = 0..launches-1, replayed `reps` times.
inline absl::StatusOr<double> TimeUs(cudaStream_t stream, int launches,
                                     const std::function<absl::Status(int)>& enqueue,
                                     int reps = 7) {
  // One eager call first: loads the module and lets launchers set kernel attributes
  // outside the capture.
  FREEKV_RETURN_IF_ERROR(enqueue(0));
  FREEKV_RETURN_IF_ERROR(kernels::DeviceSynchronize());
  auto graph = CudaGraph::Capture(stream, [&]() -> absl::Status {
    for (int i = 0; i < launches; ++i) FREEKV_RETURN_IF_ERROR(enqueue(i));
    return absl::OkStatus();
  });
  if (!graph.ok()) return graph.status();
  auto start = CudaEvent::Create();
  auto end = CudaEvent::Create();
  if (!start.ok()) return start.status();
  if (!end.ok()) return end.status();
  FREEKV_RETURN_IF_ERROR(graph->Launch(stream));  // warm-up
  std::vector<double> us;
  for (int r = 0; r < reps; ++r) {
    FREEKV_RETURN_IF_ERROR(start->Record(stream));
    FREEKV_RETURN_IF_ERROR(graph->Launch(stream));
    FREEKV_RETURN_IF_ERROR(end->Record(stream));
    auto ms = end->ElapsedMsSince(*start);
    if (!ms.ok()) return ms.status();
    us.push_back(*ms * 1000.0 / launches);
  }
  std::sort(us.begin(), us.end());
  return us[us.size() / 2];
}

// Random bf16 in [-1, 1) from a fast generator (hundreds of MB are filled).
inline std::vector<BFloat16> RandomBf16(size_t n, uint64_t seed) {
  std::vector<BFloat16> v(n);
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (BFloat16& e : v) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    e = kernels::ToBFloat16(static_cast<float>(x >> 40) / (1 << 23) - 1.0f);
  }
  return v;
}

template <typename T>
absl::StatusOr<DeviceBuffer> Upload(const std::vector<T>& host) {
  return DeviceBuffer::Upload<T>(host);
}

struct Row {
  std::string kernel;
  std::string config;
  double us = 0;
  double bytes = 0;  // fewest bytes the kernel must move (read + write)
  std::string note;
};

class Table {
 public:
  explicit Table(double ceiling_gbps) : ceiling_gbps_(ceiling_gbps) {}
  void Add(Row row) {
    std::printf("  %-22s %-34s %10.2f us\n", row.kernel.c_str(), row.config.c_str(), row.us);
    std::fflush(stdout);
    rows_.push_back(std::move(row));
  }
  void Print() const {
    std::printf("\n| kernel | config | time (us) | GB/s | of copy | note |\n");
    std::printf("| --- | --- | ---: | ---: | ---: | --- |\n");
    for (const Row& r : rows_) {
      const double gbps = r.bytes > 0 ? r.bytes / (r.us * 1e3) : 0;
      std::printf("| %s | %s | %.2f | %s | %s | %s |\n", r.kernel.c_str(), r.config.c_str(),
                  r.us, r.bytes > 0 ? absl::StrFormat("%.0f", gbps).c_str() : "-",
                  r.bytes > 0 ? absl::StrFormat("%.0f%%", 100 * gbps / ceiling_gbps_).c_str()
                              : "-",
                  r.note.c_str());
    }
  }

 private:
  double ceiling_gbps_;
  std::vector<Row> rows_;
};

}  // namespace bench
}  // namespace freekv

#endif  // FREEKV_BENCH_KERNELS_BENCH_UTIL_H_
