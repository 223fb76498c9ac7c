// The body of the similarity kernel (similarity.h) as a device function, so that a
// kernel elsewhere can do the same work in its own launch (worker/freekv_gpu's
// correction point: the similarity, the diff's stamp and a gate in one kernel). One
// CTA: a warp per (sequence, KV head) row. Internal to kernels/ and its GPU users.
#ifndef FREEKV_KERNELS_SIMILARITY_BLOCK_CUH_
#define FREEKV_KERNELS_SIMILARITY_BLOCK_CUH_

#include <cstdint>

#include "kernels/device_util.cuh"

namespace freekv {
namespace kernels {

// Writes similarity[row] and flags[row] for every row and returns the number of
// flags set, in every thread. blockDim.x must be a multiple of 32; call from every
// thread of the block (it synchronises the block). `scratch` is shared memory [32].
// A lane that wrote a flag fences at system scope first, so a thread that then
// publishes after a __syncthreads() publishes the flags too (they may be pinned host
// memory that a host thread reads).
template <typename DT>
__device__ float SimilarityBlock(const DT* q, const DT* q_prev, int32_t rows, int32_t group,
                                 int32_t head_dim, float tau, float* similarity,
                                 uint8_t* flags, float* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int warps = blockDim.x / 32;
  float flagged = 0.0f;
  for (int row = warp; row < rows; row += warps) {
    float sum_cos = 0.0f;
    for (int i = 0; i < group; ++i) {
      const int64_t off = (int64_t{row} * group + i) * head_dim;
      float dot = 0.0f, na = 0.0f, nb = 0.0f;
      for (int c = lane; c < head_dim; c += 32) {
        const float a = ToF(q[off + c]), b = ToF(q_prev[off + c]);
        dot += a * b;
        na += a * a;
        nb += b * b;
      }
      dot = WarpSum(dot);
      na = WarpSum(na);
      nb = WarpSum(nb);
      const float denom = sqrtf(na * nb);
      sum_cos += denom > 0.0f ? dot / denom : 0.0f;
    }
    const float sim = sum_cos / group;
    if (lane == 0) {
      similarity[row] = sim;
      flags[row] = sim < tau ? 1 : 0;
      flagged += sim < tau ? 1.0f : 0.0f;
    }
  }
  if (lane == 0 && warp < rows) __threadfence_system();
  return BlockSum(flagged, scratch);  // exact: small integers in float
}

}  // namespace kernels
}  // namespace freekv

#endif  // FREEKV_KERNELS_SIMILARITY_BLOCK_CUH_
