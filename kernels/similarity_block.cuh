// The body of the similarity kernel (similarity.h) as device functions, so that a
// kernel elsewhere can do the same work in its own launch (worker/freekv_gpu's
// correction point: the similarity, the head masks and a gate in one kernel, over
// many blocks). The block spreads a chunk of rows' (row, query head) pairs over all its
// lanes. Internal to kernels/ and its GPU users.
//
// Why: a warp per row in one block took 18 us a layer at batch 16 (128 rows) on the
// H100, 6% of a decode step, each warp doing four rows of four heads one after the
// other, each head a trip to memory and three warp sums. Pairs spread over the block
// with their loads issued together still took 16 us in one block; the correction point
// therefore gives each block a few rows (bench/RESULTS.md, decode run 22).
#ifndef FREEKV_KERNELS_SIMILARITY_BLOCK_CUH_
#define FREEKV_KERNELS_SIMILARITY_BLOCK_CUH_

#include <cstdint>

#include "kernels/device_util.cuh"
#include "kernels/similarity.h"

namespace freekv {
namespace kernels {

// (row, head) cosines held at once in shared memory; a row's heads stay in one chunk
// (CheckSimilarityShapes keeps the group within it).
constexpr int kSimilarityChunk = kMaxSimilarityGroup;
// Pairs each lane loads before it reduces any: one trip to memory for all of them.
constexpr int kSimilarityPairsAtOnce = 4;

// The cosine of every (row, head) pair of rows [first_row, first_row + chunk_rows)
// into cosines[pair - first pair]. kVec elements per load: VecLen<DT>() (16-byte loads)
// when head_dim allows, else 1. A segment of S lanes (a power of two, at most 32)
// shares a pair, each lane summing its part of the head's dot products; the segment
// then reduces with shuffles in a fixed order, so the result does not vary between
// runs. Every lane of every warp runs the shuffles (no lane leaves early).
template <typename DT, int kVec>
__device__ void PairCosines(const DT* q, const DT* q_prev, int64_t first_pair, int pairs,
                            int32_t head_dim, float* cosines) {
  const int units = head_dim / kVec;
  int seg = 1;
  while (seg * 2 <= units && seg < 32) seg *= 2;
  const int slot = threadIdx.x / seg, in_seg = threadIdx.x % seg;
  const int slots = blockDim.x / seg;
  for (int base = 0; base < pairs; base += slots * kSimilarityPairsAtOnce) {
    float dot[kSimilarityPairsAtOnce], na[kSimilarityPairsAtOnce], nb[kSimilarityPairsAtOnce];
#pragma unroll
    for (int j = 0; j < kSimilarityPairsAtOnce; ++j) dot[j] = na[j] = nb[j] = 0.0f;
    for (int u = in_seg; u < units; u += seg) {
      float a[kSimilarityPairsAtOnce][kVec], b[kSimilarityPairsAtOnce][kVec];
#pragma unroll
      for (int j = 0; j < kSimilarityPairsAtOnce; ++j) {
        const int pair = base + j * slots + slot;
        if (pair >= pairs) {
#pragma unroll
          for (int e = 0; e < kVec; ++e) a[j][e] = b[j][e] = 0.0f;
          continue;
        }
        const int64_t off = (first_pair + pair) * head_dim + int64_t{u} * kVec;
        if constexpr (kVec == 1) {
          a[j][0] = ToF(q[off]);
          b[j][0] = ToF(q_prev[off]);
        } else {
          Widen<DT>(LoadRaw(q + off), a[j]);
          Widen<DT>(LoadRaw(q_prev + off), b[j]);
        }
      }
#pragma unroll
      for (int j = 0; j < kSimilarityPairsAtOnce; ++j) {
#pragma unroll
        for (int e = 0; e < kVec; ++e) {
          dot[j] += a[j][e] * b[j][e];
          na[j] += a[j][e] * a[j][e];
          nb[j] += b[j][e] * b[j][e];
        }
      }
    }
    for (int off = seg / 2; off > 0; off /= 2) {
#pragma unroll
      for (int j = 0; j < kSimilarityPairsAtOnce; ++j) {
        dot[j] += __shfl_xor_sync(0xffffffffu, dot[j], off);
        na[j] += __shfl_xor_sync(0xffffffffu, na[j], off);
        nb[j] += __shfl_xor_sync(0xffffffffu, nb[j], off);
      }
    }
#pragma unroll
    for (int j = 0; j < kSimilarityPairsAtOnce; ++j) {
      const int pair = base + j * slots + slot;
      if (in_seg == 0 && pair < pairs) {
        const float denom = sqrtf(na[j] * nb[j]);
        cosines[pair] = denom > 0.0f ? dot[j] / denom : 0.0f;
      }
    }
  }
}

// Rows [first_row, first_row + chunk_rows) (at most kSimilarityChunk / group of them):
// writes similarity[row] and flags[row], and returns how many of the flags this thread
// set (the caller sums them over its block). Call from every thread of the block
// (blockDim.x a multiple of 32); it synchronises the block. `cosines` is shared memory
// [kSimilarityChunk]. A thread that wrote a flag fences at system scope first, so a
// thread that publishes after a __syncthreads() publishes the flags too (they may be
// pinned host memory that a host thread reads). A row is the mean over its group's
// query heads of each head's cosine, summed in head order.
template <typename DT>
__device__ int SimilarityRows(const DT* q, const DT* q_prev, int32_t first_row,
                              int32_t chunk_rows, int32_t group, int32_t head_dim, float tau,
                              float* similarity, uint8_t* flags, float* cosines) {
  constexpr int kVec = VecLen<DT>();
  const bool vectors = head_dim % kVec == 0 && reinterpret_cast<uintptr_t>(q) % 16 == 0 &&
                       reinterpret_cast<uintptr_t>(q_prev) % 16 == 0;
  const int64_t first_pair = int64_t{first_row} * group;
  if (vectors) {
    PairCosines<DT, kVec>(q, q_prev, first_pair, chunk_rows * group, head_dim, cosines);
  } else {
    PairCosines<DT, 1>(q, q_prev, first_pair, chunk_rows * group, head_dim, cosines);
  }
  __syncthreads();
  int flagged = 0;
  for (int r = threadIdx.x; r < chunk_rows; r += blockDim.x) {
    float sum_cos = 0.0f;
    for (int i = 0; i < group; ++i) sum_cos += cosines[r * group + i];
    const float sim = sum_cos / group;
    similarity[first_row + r] = sim;
    flags[first_row + r] = sim < tau ? 1 : 0;
    flagged += sim < tau ? 1 : 0;
  }
  if (threadIdx.x < chunk_rows) __threadfence_system();
  __syncthreads();  // the caller's next chunk may rewrite cosines
  return flagged;
}

// Every row in one block, chunk after chunk; returns the number of flags set, in every
// thread. `scratch` is shared memory [32].
template <typename DT>
__device__ float SimilarityBlock(const DT* q, const DT* q_prev, int32_t rows, int32_t group,
                                 int32_t head_dim, float tau, float* similarity,
                                 uint8_t* flags, float* scratch) {
  __shared__ float cosines[kSimilarityChunk];
  const int rows_per_chunk = kSimilarityChunk / group;
  float flagged = 0.0f;
  for (int first = 0; first < rows; first += rows_per_chunk) {
    flagged += SimilarityRows(q, q_prev, first, min(rows_per_chunk, rows - first), group,
                              head_dim, tau, similarity, flags, cosines);
  }
  return BlockSum(flagged, scratch);  // exact: small integers in float
}

}  // namespace kernels
}  // namespace freekv

#endif  // FREEKV_KERNELS_SIMILARITY_BLOCK_CUH_
