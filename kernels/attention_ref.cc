// CPU reference of attention.h.
#include "absl/strings/str_cat.h"
#include "kernels/attention.h"
#include "kernels/online_softmax.h"
#include "kernels/shape.h"

namespace freekv {
namespace kernels {

template <typename T>
absl::Status CausalAttentionRef(absl::Span<const T> q, absl::Span<const T> k,
                                absl::Span<const T> v, const AttentionDims& dims,
                                absl::Span<T> out, absl::Span<float> lse) {
  FREEKV_RETURN_IF_ERROR(CheckGqa(dims.num_q_heads, dims.num_kv_heads));
  FREEKV_RETURN_IF_ERROR(CheckPositive("head_dim", dims.head_dim));
  const size_t d = dims.head_dim;
  const size_t q_row = size_t{static_cast<uint32_t>(dims.num_q_heads)} * d;
  const size_t kv_row = size_t{static_cast<uint32_t>(dims.num_kv_heads)} * d;
  FREEKV_RETURN_IF_ERROR(CheckRows("q", q.size(), q_row));
  FREEKV_RETURN_IF_ERROR(CheckRows("k", k.size(), kv_row));
  FREEKV_RETURN_IF_ERROR(CheckSize("v", v.size(), k.size()));
  FREEKV_RETURN_IF_ERROR(CheckSize("out", out.size(), q.size()));
  const size_t num_q = q.size() / q_row;
  const size_t num_kv = k.size() / kv_row;
  if (num_kv < num_q) {
    return absl::InvalidArgumentError(
        absl::StrCat("k holds ", num_kv, " tokens, fewer than q's ", num_q));
  }
  if (!lse.empty()) {
    FREEKV_RETURN_IF_ERROR(CheckSize("lse", lse.size(), num_q * dims.num_q_heads));
  }
  const int32_t group = dims.num_q_heads / dims.num_kv_heads;
  for (size_t i = 0; i < num_q; ++i) {
    const size_t last_key = num_kv - num_q + i;
    for (int32_t h = 0; h < dims.num_q_heads; ++h) {
      const T* qh = q.data() + i * q_row + h * d;
      const size_t kv_off = static_cast<size_t>(h / group) * d;
      OnlineSoftmax state(d);
      for (size_t j = 0; j <= last_key; ++j) {
        const float logit = dims.scale * DotAsFloat(qh, k.data() + j * kv_row + kv_off, d);
        state.Add(logit, v.data() + j * kv_row + kv_off);
      }
      state.Write(out.data() + i * q_row + h * d);
      if (!lse.empty()) lse[i * dims.num_q_heads + h] = state.lse();
    }
  }
  return absl::OkStatus();
}

template absl::Status CausalAttentionRef<float>(absl::Span<const float>,
                                                absl::Span<const float>,
                                                absl::Span<const float>,
                                                const AttentionDims&, absl::Span<float>,
                                                absl::Span<float>);
template absl::Status CausalAttentionRef<BFloat16>(absl::Span<const BFloat16>,
                                                   absl::Span<const BFloat16>,
                                                   absl::Span<const BFloat16>,
                                                   const AttentionDims&,
                                                   absl::Span<BFloat16>,
                                                   absl::Span<float>);

}  // namespace kernels
}  // namespace freekv
