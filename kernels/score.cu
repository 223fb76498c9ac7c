// CUDA kernel of score.h. One CTA per (sequence, KV head, chunk of candidates): the
// digest of each page is read once for all query heads of the group, kLanes lanes
// per digest row (16 bytes each), several pages in flight per warp.
#include <algorithm>
#include <type_traits>

#include "kernels/attention_core.cuh"
#include "kernels/cuda_check.cuh"
#include "kernels/score.h"

namespace freekv {
namespace kernels {

namespace {

constexpr int kWarps = 4;
constexpr int kUnroll = 4;

struct ScoreArgs {
  int32_t num_kv_heads, head_dim, max_pages, max_candidates;
  int32_t pages_per_cta;
  const int32_t* begin;
  const int32_t* count;
  const uint8_t* head_mask;  // or nullptr
  float scale;
};

template <typename DT, int kGroup, int kLanes>
__global__ void __launch_bounds__(kWarps * 32)
    ScoreKernel(const DT* q, const DT* digests, float* scores, ScoreArgs a) {
  constexpr int kVec = VecLen<DT>(), kRows = 32 / kLanes;
  const int seq = blockIdx.y / a.num_kv_heads, kvh = blockIdx.y % a.num_kv_heads;
  if (a.head_mask != nullptr && a.head_mask[blockIdx.y] == 0) return;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int dim0 = (lane % kLanes) * kVec;
  const bool active = dim0 < a.head_dim;
  const int num_q_heads = a.num_kv_heads * kGroup;
  const int64_t row0 = int64_t{seq} * num_q_heads + kvh * kGroup;
  float qf[kGroup][kVec];
#pragma unroll
  for (int g = 0; g < kGroup; ++g) {
#pragma unroll
    for (int i = 0; i < kVec; ++i) qf[g][i] = 0.0f;
    if (active) LoadVec(q + (row0 + g) * a.head_dim + dim0, qf[g]);
  }
  const int count = a.count[seq], first = a.begin[seq];
  const int chunk_end = min(a.max_candidates, (blockIdx.x + 1) * a.pages_per_cta);
  for (int base = blockIdx.x * a.pages_per_cta + warp * kRows * kUnroll; base < chunk_end;
       base += kWarps * kRows * kUnroll) {
    uint4 hi_raw[kUnroll], lo_raw[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int j = base + u * kRows + lane / kLanes;
      hi_raw[u] = lo_raw[u] = make_uint4(0, 0, 0, 0);
      if (j < count && active) {
        const DT* d = digests + ((int64_t{seq} * a.max_pages + first + j) * a.num_kv_heads +
                                 kvh) * 2 * a.head_dim + dim0;
        hi_raw[u] = LoadRaw(d);
        lo_raw[u] = LoadRaw(d + a.head_dim);
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      float hi[kVec], lo[kVec];
      Widen<DT>(hi_raw[u], hi);
      Widen<DT>(lo_raw[u], lo);
      const int j = base + u * kRows + lane / kLanes;
#pragma unroll
      for (int g = 0; g < kGroup; ++g) {
        float s = 0.0f;
#pragma unroll
        for (int i = 0; i < kVec; ++i) s += fmaxf(qf[g][i] * hi[i], qf[g][i] * lo[i]);
        s = GroupSum<kLanes>(s);
        if (lane % kLanes == 0 && j < chunk_end) {
          scores[(row0 + g) * a.max_candidates + j] = j < count ? a.scale * s : -INFINITY;
        }
      }
    }
  }
}

// CTAs resident at once (4 per SM at ~128 registers per thread).
int WaveCtas() { return 4 * MultiprocessorCount(); }

}  // namespace

template <typename T>
absl::Status PageScoreCuda(absl::Span<const T> q, int32_t num_q_heads,
                           const DigestTable<const T>& digests,
                           const Candidates& candidates, float scale,
                           absl::Span<const uint8_t> head_mask, absl::Span<float> scores,
                           cudaStream_t stream) {
  FREEKV_RETURN_IF_ERROR(ValidateDigestTable(digests));
  FREEKV_RETURN_IF_ERROR(ValidateCandidates(candidates));
  FREEKV_RETURN_IF_ERROR(CheckGqa(num_q_heads, digests.num_kv_heads));
  const size_t seqs = candidates.num_seqs();
  if (seqs > static_cast<size_t>(digests.num_seqs)) {
    return absl::InvalidArgumentError(absl::StrCat(
        seqs, " sequences of candidates, digest table holds ", digests.num_seqs));
  }
  FREEKV_RETURN_IF_ERROR(CheckSize("q", q.size(), seqs * num_q_heads * digests.head_dim));
  FREEKV_RETURN_IF_ERROR(
      CheckSize("scores", scores.size(), seqs * num_q_heads * candidates.max_candidates));
  if (!head_mask.empty()) {
    FREEKV_RETURN_IF_ERROR(CheckSize("head_mask", head_mask.size(), seqs * digests.num_kv_heads));
  }
  ScoreArgs a{digests.num_kv_heads, digests.head_dim, digests.max_pages,
              candidates.max_candidates, 0, candidates.begin.data(),
              candidates.count.data(), head_mask.empty() ? nullptr : head_mask.data(), scale};
  using DT = std::remove_const_t<typename DeviceType<const T>::type>;
  return DispatchGroupLanes<DT>(
      num_q_heads / digests.num_kv_heads, digests.head_dim,
      [&](auto g, auto lanes) -> absl::Status {
        constexpr int kGroup = decltype(g)::value, kLanes = decltype(lanes)::value;
        // Pages per CTA: a multiple of one block step, about one wave of CTAs in all.
        const int step = kWarps * (32 / kLanes) * kUnroll;
        const int64_t rows = int64_t(seqs) * digests.num_kv_heads;
        const int64_t per_cta = (candidates.max_candidates * rows + WaveCtas() - 1) / WaveCtas();
        a.pages_per_cta = static_cast<int32_t>(std::max<int64_t>(1, (per_cta + step - 1) / step) * step);
        const dim3 grid((candidates.max_candidates + a.pages_per_cta - 1) / a.pages_per_cta,
                        static_cast<unsigned>(rows));
        ScoreKernel<DT, kGroup, kLanes><<<grid, kWarps * 32, 0, stream>>>(
            Dev(q.data()), Dev(digests.data.data()), scores.data(), a);
        return LaunchStatus("ScoreKernel");
      });
}

#define FREEKV_INSTANTIATE(T)                                                          \
  template absl::Status PageScoreCuda<T>(absl::Span<const T>, int32_t,                 \
                                         const DigestTable<const T>&, const Candidates&, \
                                         float, absl::Span<const uint8_t>,             \
                                         absl::Span<float>, cudaStream_t);
FREEKV_INSTANTIATE(float)
FREEKV_INSTANTIATE(BFloat16)
#undef FREEKV_INSTANTIATE

}  // namespace kernels
}  // namespace freekv
