// Device-side helpers shared by the .cu files of this folder: the storage types as the
// device sees them, 16-byte vector loads/stores widened to float, cp.async staging,
// warp reductions and grid sizing. Internal to kernels/.
#ifndef FREEKV_KERNELS_DEVICE_UTIL_CUH_
#define FREEKV_KERNELS_DEVICE_UTIL_CUH_

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/bf16.h"

namespace freekv {
namespace kernels {

// The device type behind each host storage type (same size and bits).
template <typename T>
struct DeviceType {
  using type = T;
};
template <>
struct DeviceType<BFloat16> {
  using type = __nv_bfloat16;
};
template <>
struct DeviceType<const BFloat16> {
  using type = const __nv_bfloat16;
};

template <typename T>
typename DeviceType<T>::type* Dev(T* p) {
  return reinterpret_cast<typename DeviceType<T>::type*>(p);
}

__device__ __forceinline__ float ToF(float x) { return x; }
__device__ __forceinline__ float ToF(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T FromF(float x);
template <>
__device__ __forceinline__ float FromF<float>(float x) { return x; }
template <>
__device__ __forceinline__ __nv_bfloat16 FromF<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// Elements of T in one 16-byte vector.
template <typename T>
__host__ __device__ constexpr int VecLen() {
  return 16 / static_cast<int>(sizeof(T));
}

// Loads VecLen<T>() elements (16-byte aligned) and widens them to float.
template <typename T>
__device__ __forceinline__ void LoadVec(const T* src, float (&out)[VecLen<T>()]) {
  const uint4 raw = *reinterpret_cast<const uint4*>(src);
  const T* elems = reinterpret_cast<const T*>(&raw);
#pragma unroll
  for (int i = 0; i < VecLen<T>(); ++i) out[i] = ToF(elems[i]);
}

// Raw 16-byte load, widened later (lets callers issue many loads before using any).
template <typename T>
__device__ __forceinline__ uint4 LoadRaw(const T* src) {
  return __ldg(reinterpret_cast<const uint4*>(src));
}

template <typename T>
__device__ __forceinline__ void Widen(const uint4& raw, float (&out)[VecLen<T>()]) {
  const T* elems = reinterpret_cast<const T*>(&raw);
#pragma unroll
  for (int i = 0; i < VecLen<T>(); ++i) out[i] = ToF(elems[i]);
}

template <typename T>
__device__ __forceinline__ void StoreVec(T* dst, const float (&in)[VecLen<T>()]) {
  uint4 raw;
  T* elems = reinterpret_cast<T*>(&raw);
#pragma unroll
  for (int i = 0; i < VecLen<T>(); ++i) elems[i] = FromF<T>(in[i]);
  *reinterpret_cast<uint4*>(dst) = raw;
}

// cp.async (sm_80+): 16 bytes global -> shared without passing through registers, so a
// thread can keep many loads in flight at no register cost. .cg caches in L2 only
// (streamed K/V is read once). Completion is per thread and per commit group: after
// CpAsyncWait<n>(), all but the n most recent groups this thread committed have
// landed and are visible to this thread (other threads need a barrier).
__device__ __forceinline__ void CpAsync16(void* smem, const void* global) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(global)
               : "memory");
}

__device__ __forceinline__ void CpAsyncCommit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}

template <int kPending>
__device__ __forceinline__ void CpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

// CpAsyncWait with a run-time bound (the instruction takes an immediate); a bound
// above 4 waits as for 4, which is stricter and so still correct.
__device__ __forceinline__ void CpAsyncWaitPending(int pending) {
  if (pending <= 0) {
    CpAsyncWait<0>();
  } else if (pending == 1) {
    CpAsyncWait<1>();
  } else if (pending == 2) {
    CpAsyncWait<2>();
  } else if (pending == 3) {
    CpAsyncWait<3>();
  } else {
    CpAsyncWait<4>();
  }
}

// Sum / max over groups of `width` consecutive lanes (width a power of two <= 32).
template <int kWidth>
__device__ __forceinline__ float GroupSum(float x) {
#pragma unroll
  for (int off = kWidth / 2; off > 0; off /= 2) x += __shfl_xor_sync(0xffffffffu, x, off);
  return x;
}

__device__ __forceinline__ float WarpMax(float x) {
#pragma unroll
  for (int off = 16; off > 0; off /= 2) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, off));
  return x;
}

__device__ __forceinline__ float WarpSum(float x) { return GroupSum<32>(x); }

// Block-wide sum for blockDim.x a multiple of 32 (<= 1024); every thread gets it.
__device__ __forceinline__ float BlockSum(float x, float* scratch /* [32] */) {
  x = WarpSum(x);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = x;
  __syncthreads();
  x = lane < static_cast<int>(blockDim.x / 32) ? scratch[lane] : 0.0f;
  return WarpSum(x);
}

__device__ __forceinline__ float BlockMax(float x, float* scratch /* [32] */) {
  x = WarpMax(x);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();
  if (lane == 0) scratch[warp] = x;
  __syncthreads();
  x = lane < static_cast<int>(blockDim.x / 32) ? scratch[lane] : -INFINITY;
  return WarpMax(x);
}

// Exclusive prefix sum over the block in thread order (blockDim.x a multiple of 32);
// *total receives the block's sum. Every thread must call it.
__device__ __forceinline__ int BlockExclusiveScan(int x, int* scratch /* [33] */,
                                                  int* total) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  int incl = x;
#pragma unroll
  for (int off = 1; off < 32; off *= 2) {
    const int y = __shfl_up_sync(0xffffffffu, incl, off);
    if (lane >= off) incl += y;
  }
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 31) scratch[warp] = incl;
  __syncthreads();
  if (warp == 0) {
    const int n = blockDim.x / 32;
    int w = lane < n ? scratch[lane] : 0;
#pragma unroll
    for (int off = 1; off < 32; off *= 2) {
      const int y = __shfl_up_sync(0xffffffffu, w, off);
      if (lane >= off) w += y;
    }
    if (lane < n) scratch[lane] = w;  // inclusive prefix over warps
    if (lane == n - 1) scratch[32] = w;
  }
  __syncthreads();
  *total = scratch[32];
  return incl - x + (warp > 0 ? scratch[warp - 1] : 0);
}

// Blocks for a grid-stride loop over n items, capped so the grid stays resident.
inline unsigned GridFor(int64_t n, int threads) {
  const int64_t blocks = (n + threads - 1) / threads;
  return static_cast<unsigned>(blocks < 1 ? 1 : (blocks > 65535 * 8 ? 65535 * 8 : blocks));
}

}  // namespace kernels
}  // namespace freekv

#endif  // FREEKV_KERNELS_DEVICE_UTIL_CUH_
