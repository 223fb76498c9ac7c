// Decode-attention rows of the kernel benchmark: sparse decode (per-(sequence, KV
// head) page tables, 2048-token budget) at batch 1-32 and full-cache decode (32K
// context, shared tables), each with the default options and the register kernel,
// optionally a sweep of the staged kernel's split and ring depth. Single-threaded.
#ifndef FREEKV_BENCH_KERNELS_DECODE_BENCH_H_
#define FREEKV_BENCH_KERNELS_DECODE_BENCH_H_

#include <map>

#include "absl/status/statusor.h"
#include "bench/kernels/bench_util.h"
#include "kernels/cuda_fwd.h"

namespace freekv {
namespace bench {

struct DecodeBenchResult {
  std::map<int, double> sparse_us;  // batch -> default options' us per call
  int mismatches = 0;  // option sets whose output differs from the register kernel's
};

// Adds its rows to `table`; with `sweep`, every pages-per-split x stages pair too.
absl::StatusOr<DecodeBenchResult> DecodeBench(cudaStream_t s, bool sweep, Table& table);

}  // namespace bench
}  // namespace freekv

#endif  // FREEKV_BENCH_KERNELS_DECODE_BENCH_H_
