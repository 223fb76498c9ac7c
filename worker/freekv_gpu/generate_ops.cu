// CUDA launchers of generate_ops.h. Every launcher checks sizes, launches one kernel
// and returns; nothing allocates or waits, so each can be captured in a CUDA graph.
#include <cuda_runtime.h>

#include <climits>
#include <cmath>
#include <cstdint>

#include "kernels/cuda_check.cuh"
#include "kernels/device_util.cuh"
#include "worker/freekv_gpu/generate_ops.h"

namespace freekv::gpu {
namespace {

using kernels::LaunchStatus;

constexpr int kThreads = 256;

// ---- PickTokens ----------------------------------------------------------------

// A row of 128256 fp32 logits is 500 KiB read by one block, so the block is wide and
// each thread keeps kPickUnroll 16-byte loads in flight.
constexpr int kPickThreads = 1024;
constexpr int kPickUnroll = 4;
constexpr int32_t kNone = INT_MAX;  // the index of "no candidate yet"

// Whether (value, index) is ahead of (best, at) in argmax order: larger value first,
// then lower index. NaN compares false both ways, so it is never ahead of anything;
// (best, at) never holds NaN (it starts at (-inf, kNone)), so the order is total and
// the reduction below may combine candidates in any order.
__device__ __forceinline__ void Consider(float value, int32_t index, float& best,
                                         int32_t& at) {
  if (value > best || (value == best && index < at)) {
    best = value;
    at = index;
  }
}

// The argmax of the block's candidates, in thread 0 (blockDim.x == kPickThreads).
__device__ int32_t BlockArgMax(float best, int32_t at) {
  __shared__ float values[32];
  __shared__ int32_t indices[32];
#pragma unroll
  for (int off = 16; off > 0; off /= 2) {
    Consider(__shfl_xor_sync(0xffffffffu, best, off),
             __shfl_xor_sync(0xffffffffu, at, off), best, at);
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) values[warp] = best, indices[warp] = at;
  __syncthreads();
  if (warp != 0) return kNone;
  best = lane < kPickThreads / 32 ? values[lane] : -INFINITY;
  at = lane < kPickThreads / 32 ? indices[lane] : kNone;
#pragma unroll
  for (int off = 16; off > 0; off /= 2) {
    Consider(__shfl_xor_sync(0xffffffffu, best, off),
             __shfl_xor_sync(0xffffffffu, at, off), best, at);
  }
  return at;
}

// One block per row. `vectorised`: rows are whole, 16-byte aligned float4s.
__global__ void __launch_bounds__(kPickThreads)
    PickTokensKernel(const float* logits, int32_t vocab, bool vectorised,
                     const int32_t* forced, int32_t* tokens, int32_t* host_out) {
  const int32_t b = blockIdx.x;
  int32_t token;
  {
    const float* row = logits + int64_t{b} * vocab;
    float best = -INFINITY;
    int32_t at = kNone;
    int32_t scalar_from = 0;
    if (vectorised) {
      const int32_t vecs = vocab / 4;
      const float4* row4 = reinterpret_cast<const float4*>(row);
      for (int32_t base = threadIdx.x; base < vecs; base += kPickThreads * kPickUnroll) {
        float4 x[kPickUnroll];
#pragma unroll
        for (int u = 0; u < kPickUnroll; ++u) {
          const int32_t v = base + u * kPickThreads;
          x[u] = v < vecs ? __ldg(row4 + v) : make_float4(NAN, NAN, NAN, NAN);
        }
#pragma unroll
        for (int u = 0; u < kPickUnroll; ++u) {
          const int32_t i = 4 * (base + u * kPickThreads);
          Consider(x[u].x, i, best, at);
          Consider(x[u].y, i + 1, best, at);
          Consider(x[u].z, i + 2, best, at);
          Consider(x[u].w, i + 3, best, at);
        }
      }
      scalar_from = 4 * vecs;
    }
    for (int32_t i = scalar_from + threadIdx.x; i < vocab; i += kPickThreads) {
      Consider(__ldg(row + i), i, best, at);
    }
    token = BlockArgMax(best, at);
    if (token == kNone) token = 0;  // a row of NaN
  }
  if (threadIdx.x != 0) return;
  tokens[b] = forced != nullptr && forced[b] >= 0 ? forced[b] : token;
  if (host_out != nullptr) host_out[b] = token;
}

// ---- CopyPages -----------------------------------------------------------------

// A pool as whole words of Word (uint4: 8 bf16; uint16_t: 1).
template <typename Word>
struct PoolWords {
  Word* k;
  Word* v;
  int64_t stride;  // words
  int32_t num_pages;
};

template <typename Word, typename T>
PoolWords<Word> Words(const kernels::PagedKv<T>& pool) {
  constexpr int64_t per_word = sizeof(Word) / sizeof(BFloat16);
  return {reinterpret_cast<Word*>(pool.k), reinterpret_cast<Word*>(pool.v),
          pool.page_stride / per_word, pool.num_pages};
}

// blockIdx.x: the page pair; blockIdx.y: a share of its 2 * words (K, then V).
template <typename Word>
__global__ void __launch_bounds__(kThreads)
    CopyPagesKernel(PoolWords<const Word> src, const int32_t* src_pages,
                    PoolWords<Word> dst, const int32_t* dst_pages, int64_t words) {
  const int64_t s = src_pages[blockIdx.x], d = dst_pages[blockIdx.x];
  if (s < 0 || s >= src.num_pages || d < 0 || d >= dst.num_pages) return;
  for (int64_t w = int64_t{blockIdx.y} * kThreads + threadIdx.x; w < 2 * words;
       w += int64_t{gridDim.y} * kThreads) {
    if (w < words) {
      dst.k[d * dst.stride + w] = src.k[s * src.stride + w];
    } else {
      dst.v[d * dst.stride + w - words] = src.v[s * src.stride + w - words];
    }
  }
}

bool Aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <typename Word>
absl::Status LaunchCopyPages(const kernels::PagedKv<const BFloat16>& src,
                             absl::Span<const int32_t> src_pages,
                             const kernels::PagedKv<BFloat16>& dst,
                             absl::Span<const int32_t> dst_pages, cudaStream_t stream) {
  const int64_t words = src.page_elems() * sizeof(BFloat16) / sizeof(Word);
  constexpr int64_t kMaxShares = 64;  // enough blocks to fill the GPU for a few pages
  const int64_t shares = (2 * words + kThreads - 1) / kThreads;
  const dim3 grid(static_cast<unsigned>(src_pages.size()),
                  static_cast<unsigned>(shares < kMaxShares ? shares : kMaxShares));
  CopyPagesKernel<Word><<<grid, kThreads, 0, stream>>>(
      Words<const Word>(src), src_pages.data(), Words<Word>(dst), dst_pages.data(),
      words);
  return LaunchStatus("CopyPagesKernel");
}

// ---- ScatterWords, SelectedToTable ---------------------------------------------

__global__ void ScatterWordsKernel(int32_t* dst, int64_t dst_size, const int32_t* indices,
                                   const int32_t* values, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int32_t at = indices[i];
    if (at >= 0 && at < dst_size) dst[at] = values[i];
  }
}

__global__ void SelectedToTableKernel(const int32_t* selected, int64_t entries, int32_t k,
                                      int32_t num_kv_heads, SeqPages pages,
                                      const int32_t* starts, int32_t* indices,
                                      int64_t indices_size) {
  for (int64_t e = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; e < entries;
       e += int64_t{gridDim.x} * blockDim.x) {
    const int32_t s = selected[e];
    if (s < 0 || s >= pages.count) continue;
    const int64_t list = e / k, to = int64_t{starts[list]} + e % k;
    if (to < 0 || to >= indices_size) continue;
    indices[to] =
        static_cast<int32_t>(list / num_kv_heads) * pages.pages_per_seq + pages.first + s;
  }
}

}  // namespace

absl::Status PickTokensCuda(absl::Span<const float> logits, int32_t vocab,
                            absl::Span<const int32_t> forced, absl::Span<int32_t> tokens,
                            absl::Span<int32_t> host_out, cudaStream_t stream) {
  FREEKV_RETURN_IF_ERROR(CheckPickTokensShapes(logits.size(), vocab, forced.size(),
                                               tokens.size(), host_out.size()));
  if (tokens.empty()) return absl::OkStatus();
  const bool vectorised = vocab % 4 == 0 && Aligned16(logits.data());
  PickTokensKernel<<<static_cast<unsigned>(tokens.size()), kPickThreads, 0, stream>>>(
      logits.data(), vocab, vectorised, forced.empty() ? nullptr : forced.data(),
      tokens.data(), host_out.empty() ? nullptr : host_out.data());
  return LaunchStatus("PickTokensKernel");
}

absl::Status CopyPagesCuda(const kernels::PagedKv<const BFloat16>& src,
                           absl::Span<const int32_t> src_pages,
                           const kernels::PagedKv<BFloat16>& dst,
                           absl::Span<const int32_t> dst_pages, cudaStream_t stream) {
  FREEKV_RETURN_IF_ERROR(
      CheckCopyPagesShapes(src, src_pages.size(), dst, dst_pages.size()));
  if (src_pages.empty()) return absl::OkStatus();
  constexpr int64_t kPerVec = 16 / sizeof(BFloat16);
  const bool vectorised = src.page_elems() % kPerVec == 0 &&
                          src.page_stride % kPerVec == 0 &&
                          dst.page_stride % kPerVec == 0 && Aligned16(src.k) &&
                          Aligned16(src.v) && Aligned16(dst.k) && Aligned16(dst.v);
  return vectorised ? LaunchCopyPages<uint4>(src, src_pages, dst, dst_pages, stream)
                    : LaunchCopyPages<uint16_t>(src, src_pages, dst, dst_pages, stream);
}

absl::Status ScatterWordsCuda(absl::Span<int32_t> dst, absl::Span<const int32_t> indices,
                              absl::Span<const int32_t> values, cudaStream_t stream) {
  FREEKV_RETURN_IF_ERROR(CheckScatterWordsShapes(indices.size(), values.size()));
  if (indices.empty()) return absl::OkStatus();
  const int64_t n = indices.size();
  ScatterWordsKernel<<<kernels::GridFor(n, kThreads), kThreads, 0, stream>>>(
      dst.data(), static_cast<int64_t>(dst.size()), indices.data(), values.data(), n);
  return LaunchStatus("ScatterWordsKernel");
}

absl::Status SelectedToTableCuda(absl::Span<const int32_t> selected, int32_t k,
                                 int32_t num_kv_heads, const SeqPages& pages,
                                 absl::Span<const int32_t> starts,
                                 absl::Span<int32_t> indices, cudaStream_t stream) {
  FREEKV_RETURN_IF_ERROR(CheckSelectedToTableShapes(selected.size(), k, num_kv_heads,
                                                    pages, starts.size()));
  if (selected.empty()) return absl::OkStatus();
  const int64_t n = selected.size();
  SelectedToTableKernel<<<kernels::GridFor(n, kThreads), kThreads, 0, stream>>>(
      selected.data(), n, k, num_kv_heads, pages, starts.data(),
      indices.data(), static_cast<int64_t>(indices.size()));
  return LaunchStatus("SelectedToTableKernel");
}

}  // namespace freekv::gpu
