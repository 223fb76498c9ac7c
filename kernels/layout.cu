// CUDA kernels of layout.h: pure permutations moved as 16-byte vectors. Threads
// walk the destination in order (coalesced writes); each source row is a contiguous
// head_dim run, so reads stay in whole 32-byte sectors. kUnroll vectors per thread
// are loaded before any is stored, to keep enough bytes in flight.
#include <cstdint>
#include <type_traits>

#include "kernels/cuda_check.cuh"
#include "kernels/device_util.cuh"
#include "kernels/layout.h"

namespace freekv {
namespace kernels {

namespace {

constexpr int kThreads = 256;
constexpr int kUnroll = 4;

struct LayoutArgs {
  int64_t page_stride;  // in 16-byte vectors
  int32_t page_tokens, num_kv_heads, vecs_per_row;  // vecs_per_row = head_dim / vec
  int64_t total;  // vectors to move
};

// Vector index v of the HND side -> (item, head, kv, token, vec) and the NHD offset.
// For NhdToHnd an item is a pool page with every head; for HndToNhd a slice (one
// head, given per item).
template <bool kAllHeads>
__device__ __forceinline__ int64_t NhdOffset(const LayoutArgs& a, uint32_t v,
                                             const int32_t* pages, const int32_t* heads,
                                             bool* is_v) {
  // 32-bit index arithmetic (the launcher caps total below 2^31): 64-bit division
  // would cost more instructions than the copy has cycles.
  const uint32_t vec = v % a.vecs_per_row;
  uint32_t r = v / a.vecs_per_row;
  const uint32_t t = r % a.page_tokens;
  r /= a.page_tokens;
  *is_v = r % 2;
  r /= 2;
  uint32_t head, item;
  if (kAllHeads) {
    head = r % a.num_kv_heads;
    item = r / a.num_kv_heads;
  } else {
    item = r;
    head = heads[item];
  }
  return pages[item] * a.page_stride +
         int64_t{t * a.num_kv_heads + head} * a.vecs_per_row + vec;
}

// kToHnd: HND[v] = NHD[offset(v)]; otherwise NHD[offset(v)] = HND[v].
template <bool kToHnd>
__global__ void __launch_bounds__(kThreads)
    LayoutKernel(uint4* nhd_k, uint4* nhd_v, uint4* hnd, const int32_t* pages,
                 const int32_t* heads, LayoutArgs a) {
  const int64_t stride = int64_t{gridDim.x} * kThreads;
  for (int64_t base = blockIdx.x * int64_t{kThreads} + threadIdx.x; base < a.total;
       base += stride * kUnroll) {
    uint4 data[kUnroll];
    int64_t off[kUnroll];
    bool is_v[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t v = base + u * stride;
      if (v >= a.total) break;
      off[u] = NhdOffset<kToHnd>(a, static_cast<uint32_t>(v), pages, heads, &is_v[u]);
      data[u] = kToHnd ? __ldg((is_v[u] ? nhd_v : nhd_k) + off[u]) : __ldg(hnd + v);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t v = base + u * stride;
      if (v >= a.total) break;
      if (kToHnd) {
        hnd[v] = data[u];
      } else {
        (is_v[u] ? nhd_v : nhd_k)[off[u]] = data[u];
      }
    }
  }
}

template <typename T>
absl::Status MakeArgs(const PagedKv<T>& pool, size_t rows, LayoutArgs* a) {
  FREEKV_RETURN_IF_ERROR(ValidatePagedKv(pool));
  constexpr int kVec = 16 / sizeof(T);
  const auto misaligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16; };
  if (pool.head_dim % kVec != 0 || pool.page_stride % kVec != 0 || misaligned(pool.k) ||
      misaligned(pool.v)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "layout conversion needs 16-byte rows: head_dim ", pool.head_dim,
        " and page_stride ", pool.page_stride, " multiples of ", kVec, ", k/v aligned"));
  }
  a->page_stride = pool.page_stride / kVec;
  a->page_tokens = pool.page_tokens;
  a->num_kv_heads = pool.num_kv_heads;
  a->vecs_per_row = pool.head_dim / kVec;
  a->total = static_cast<int64_t>(rows) * pool.page_tokens * a->vecs_per_row;
  if (a->total > 0x7fffffff) {
    return absl::InvalidArgumentError(
        absl::StrCat("layout conversion of ", a->total, " vectors: split it below 2^31"));
  }
  return absl::OkStatus();
}

unsigned Blocks(int64_t total) {
  return GridFor((total + kUnroll - 1) / kUnroll, kThreads);
}

}  // namespace

template <typename T>
absl::Status NhdToHndCuda(const PagedKv<const T>& pool,
                          absl::Span<const int32_t> pool_pages, absl::Span<T> blocks,
                          cudaStream_t stream) {
  LayoutArgs a;
  // Rows of the HND side: one per (page, head, K|V).
  FREEKV_RETURN_IF_ERROR(MakeArgs(pool, pool_pages.size() * pool.num_kv_heads * 2, &a));
  FREEKV_RETURN_IF_ERROR(CheckSize("blocks", blocks.size(),
                                   static_cast<size_t>(a.total) * (16 / sizeof(T))));
  if (a.total == 0) return absl::OkStatus();
  LayoutKernel<true><<<Blocks(a.total), kThreads, 0, stream>>>(
      reinterpret_cast<uint4*>(const_cast<T*>(pool.k)),
      reinterpret_cast<uint4*>(const_cast<T*>(pool.v)), reinterpret_cast<uint4*>(blocks.data()),
      pool_pages.data(), nullptr, a);
  return LaunchStatus("NhdToHndKernel");
}

template <typename T>
absl::Status HndToNhdCuda(absl::Span<const T> slices,
                          absl::Span<const int32_t> dst_pages,
                          absl::Span<const int32_t> dst_heads, const PagedKv<T>& pool,
                          cudaStream_t stream) {
  LayoutArgs a;
  FREEKV_RETURN_IF_ERROR(MakeArgs(pool, dst_pages.size() * 2, &a));
  FREEKV_RETURN_IF_ERROR(CheckSize("dst_heads", dst_heads.size(), dst_pages.size()));
  FREEKV_RETURN_IF_ERROR(CheckSize("slices", slices.size(),
                                   static_cast<size_t>(a.total) * (16 / sizeof(T))));
  if (a.total == 0) return absl::OkStatus();
  LayoutKernel<false><<<Blocks(a.total), kThreads, 0, stream>>>(
      reinterpret_cast<uint4*>(pool.k), reinterpret_cast<uint4*>(pool.v),
      reinterpret_cast<uint4*>(const_cast<T*>(slices.data())), dst_pages.data(),
      dst_heads.data(), a);
  return LaunchStatus("HndToNhdKernel");
}

#define FREEKV_INSTANTIATE(T)                                                          \
  template absl::Status NhdToHndCuda<T>(const PagedKv<const T>&,                       \
                                        absl::Span<const int32_t>, absl::Span<T>,      \
                                        cudaStream_t);                                 \
  template absl::Status HndToNhdCuda<T>(absl::Span<const T>, absl::Span<const int32_t>, \
                                        absl::Span<const int32_t>, const PagedKv<T>&,  \
                                        cudaStream_t);
FREEKV_INSTANTIATE(float)
FREEKV_INSTANTIATE(BFloat16)
#undef FREEKV_INSTANTIATE

}  // namespace kernels
}  // namespace freekv
