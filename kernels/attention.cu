// CUDA kernel of attention.h: one CTA per (query token, KV head) runs the AttnCore
// engine over the keys the token may see. A correctness baseline for prefill (it
// re-reads K/V per query, from L2); decode uses decode_attention.cu.
#include <type_traits>

#include "kernels/attention.h"
#include "kernels/attention_core.cuh"
#include "kernels/cuda_check.cuh"
#include "kernels/shape.h"

namespace freekv {
namespace kernels {

namespace {

constexpr int kWarps = 4;

template <typename DT, int kGroup, int kLanes>
__global__ void __launch_bounds__(kWarps * 32)
    CausalKernel(const DT* q, const DT* k, const DT* v, DT* out, float* lse,
                 int32_t num_q, int32_t num_kv, int32_t num_kv_heads, int32_t head_dim,
                 float scale_log2) {
  using Core = AttnCore<DT, kGroup, kLanes, kWarps>;
  __shared__ typename Core::Smem smem;
  const int i = blockIdx.x, kvh = blockIdx.y;
  const int num_q_heads = num_kv_heads * kGroup;
  const int64_t row0 = int64_t{i} * num_q_heads + kvh * kGroup;  // first query row
  float qf[kGroup][Core::kVec];
  Core::LoadQ(q + row0 * head_dim, head_dim, scale_log2, qf);
  typename Core::State state;
  Core::Init(state);
  const int64_t token_stride = int64_t{num_kv_heads} * head_dim;
  const int64_t head_off = int64_t{kvh} * head_dim;
  Core::Attend(qf, k, v, head_dim,
               [&](int tok) { return tok * token_stride + head_off; },
               0, num_kv - num_q + i + 1, state);
  Core::Finish(
      state, head_dim, smem,
      [&](int g, int d, float o) { out[(row0 + g) * head_dim + d] = FromF<DT>(o); },
      [&](int g, float l) {
        if (lse != nullptr) lse[row0 + g] = l;
      });
}

}  // namespace

template <typename T>
absl::Status CausalAttentionCuda(absl::Span<const T> q, absl::Span<const T> k,
                                 absl::Span<const T> v, const AttentionDims& dims,
                                 absl::Span<T> out, absl::Span<float> lse,
                                 cudaStream_t stream) {
  FREEKV_RETURN_IF_ERROR(CheckGqa(dims.num_q_heads, dims.num_kv_heads));
  FREEKV_RETURN_IF_ERROR(CheckPositive("head_dim", dims.head_dim));
  const size_t q_row = size_t(dims.num_q_heads) * dims.head_dim;
  const size_t kv_row = size_t(dims.num_kv_heads) * dims.head_dim;
  FREEKV_RETURN_IF_ERROR(CheckRows("q", q.size(), q_row));
  FREEKV_RETURN_IF_ERROR(CheckRows("k", k.size(), kv_row));
  FREEKV_RETURN_IF_ERROR(CheckSize("v", v.size(), k.size()));
  FREEKV_RETURN_IF_ERROR(CheckSize("out", out.size(), q.size()));
  const size_t num_q = q.size() / q_row, num_kv = k.size() / kv_row;
  if (num_kv < num_q || num_kv > 0x7fffffff) {
    return absl::InvalidArgumentError(
        absl::StrCat("k holds ", num_kv, " tokens for ", num_q, " queries"));
  }
  if (!lse.empty()) {
    FREEKV_RETURN_IF_ERROR(CheckSize("lse", lse.size(), num_q * dims.num_q_heads));
  }
  using DT = std::remove_const_t<typename DeviceType<const T>::type>;
  return DispatchGroupLanes<DT>(
      dims.num_q_heads / dims.num_kv_heads, dims.head_dim,
      [&](auto g, auto lanes) -> absl::Status {
        constexpr int kGroup = decltype(g)::value, kLanes = decltype(lanes)::value;
        const dim3 grid(static_cast<unsigned>(num_q), dims.num_kv_heads);
        CausalKernel<DT, kGroup, kLanes><<<grid, kWarps * 32, 0, stream>>>(
            Dev(q.data()), Dev(k.data()), Dev(v.data()), Dev(out.data()),
            lse.empty() ? nullptr : lse.data(), static_cast<int32_t>(num_q),
            static_cast<int32_t>(num_kv), dims.num_kv_heads, dims.head_dim,
            dims.scale * kLog2e);
        return LaunchStatus("CausalKernel");
      });
}

template absl::Status CausalAttentionCuda<float>(absl::Span<const float>,
                                                 absl::Span<const float>,
                                                 absl::Span<const float>,
                                                 const AttentionDims&, absl::Span<float>,
                                                 absl::Span<float>, cudaStream_t);
template absl::Status CausalAttentionCuda<BFloat16>(absl::Span<const BFloat16>,
                                                    absl::Span<const BFloat16>,
                                                    absl::Span<const BFloat16>,
                                                    const AttentionDims&,
                                                    absl::Span<BFloat16>,
                                                    absl::Span<float>, cudaStream_t);

}  // namespace kernels
}  // namespace freekv
