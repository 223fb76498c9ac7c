// The benchmark's model geometry (Llama-3.1-8B: 32 query heads, 8 KV heads,
// head_dim 128, pages of 32 tokens, bf16), the L2-defeating rotation and a random NHD
// pool, shared by the benchmark's files. Single-threaded.
#ifndef FREEKV_BENCH_KERNELS_LLAMA_CASE_H_
#define FREEKV_BENCH_KERNELS_LLAMA_CASE_H_

#include <algorithm>
#include <cstdint>

#include "absl/status/statusor.h"
#include "bench/kernels/bench_util.h"
#include "kernels/paged_kv.h"

namespace freekv {
namespace bench {

using kernels::PagedKv;

constexpr int kHq = 32, kHkv = 8, kDim = 128, kPage = 32;
constexpr int kBudgetPages = 64;  // 2048 tokens: 16 sink + 32 selected + 16 window
constexpr int kSelected = 32, kCapacity = 48, kSinkPages = 16, kWindowPages = 16;
constexpr double kFootprint = 320e6;
constexpr int kLaunches = 40;
constexpr size_t kSliceElems = size_t{kPage} * kDim;             // one K or V slice
constexpr size_t kPageElems = size_t{kPage} * kHkv * kDim;       // one K or V page
constexpr double kSliceBytes = 2.0 * kSliceElems * sizeof(BFloat16);  // K + V

#define BENCH_ASSIGN(lhs, expr)               \
  auto lhs##_or = (expr);                     \
  if (!lhs##_or.ok()) return lhs##_or.status(); \
  auto lhs = std::move(*lhs##_or)

inline int Instances(double bytes_per_instance) {
  return std::max(1, static_cast<int>(kFootprint / bytes_per_instance + 0.999));
}

// A bf16 NHD pool of `pages` pages with random K and V.
struct Pool {
  DeviceBuffer k, v;
  int32_t pages = 0;
  PagedKv<const BFloat16> view() const {
    return {k.span<const BFloat16>().data(), v.span<const BFloat16>().data(),
            static_cast<int64_t>(kPageElems), pages, kPage, kHkv, kDim};
  }
  PagedKv<BFloat16> mutable_view() const {
    return {k.span<BFloat16>().data(), v.span<BFloat16>().data(),
            static_cast<int64_t>(kPageElems), pages, kPage, kHkv, kDim};
  }
};

inline absl::StatusOr<Pool> MakePool(int32_t pages, uint64_t seed) {
  Pool p;
  p.pages = pages;
  BENCH_ASSIGN(k, Upload(RandomBf16(pages * kPageElems, seed)));
  BENCH_ASSIGN(v, Upload(RandomBf16(pages * kPageElems, seed + 1)));
  p.k = std::move(k);
  p.v = std::move(v);
  return p;
}

}  // namespace bench
}  // namespace freekv

#endif  // FREEKV_BENCH_KERNELS_LLAMA_CASE_H_
