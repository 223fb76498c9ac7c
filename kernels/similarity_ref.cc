// CPU reference of similarity.h.
#include <cmath>

#include "absl/strings/str_cat.h"
#include "kernels/shape.h"
#include "kernels/similarity.h"

namespace freekv {
namespace kernels {

absl::Status CheckSimilarityShapes(size_t q_size, size_t q_prev_size, int32_t num_q_heads,
                                   int32_t num_kv_heads, int32_t head_dim,
                                   const SimilarityOutputs& outputs) {
  FREEKV_RETURN_IF_ERROR(CheckGqa(num_q_heads, num_kv_heads));
  if (num_q_heads / num_kv_heads > kMaxSimilarityGroup) {
    return absl::InvalidArgumentError(
        absl::StrCat(num_q_heads / num_kv_heads, " query heads per KV head; at most ",
                     kMaxSimilarityGroup));
  }
  FREEKV_RETURN_IF_ERROR(CheckPositive("head_dim", head_dim));
  const size_t row = size_t(head_dim) * num_q_heads;
  FREEKV_RETURN_IF_ERROR(CheckRows("q", q_size, row));
  FREEKV_RETURN_IF_ERROR(CheckSize("q_prev", q_prev_size, q_size));
  const size_t rows = q_size / row * num_kv_heads;
  FREEKV_RETURN_IF_ERROR(CheckSize("similarity", outputs.similarity.size(), rows));
  FREEKV_RETURN_IF_ERROR(CheckSize("flags", outputs.flags.size(), rows));
  return CheckSize("num_flagged", outputs.num_flagged.size(), 1);
}

template <typename T>
absl::Status QuerySimilarityRef(absl::Span<const T> q, absl::Span<const T> q_prev,
                                int32_t num_q_heads, int32_t num_kv_heads,
                                int32_t head_dim, float tau,
                                const SimilarityOutputs& outputs) {
  FREEKV_RETURN_IF_ERROR(CheckSimilarityShapes(q.size(), q_prev.size(), num_q_heads,
                                               num_kv_heads, head_dim, outputs));
  const size_t d = head_dim;
  const size_t rows = outputs.flags.size();
  const int32_t group = num_q_heads / num_kv_heads;
  int32_t flagged = 0;
  for (size_t row = 0; row < rows; ++row) {  // row = seq * num_kv_heads + kv head
    float sum_cos = 0.0f;
    for (int32_t i = 0; i < group; ++i) {
      const size_t off = (row * group + i) * d;  // query head row*group+i of the batch
      float dot = 0.0f, na = 0.0f, nb = 0.0f;
      for (size_t c = 0; c < d; ++c) {
        const float a = ToFloat(q[off + c]);
        const float b = ToFloat(q_prev[off + c]);
        dot += a * b;
        na += a * a;
        nb += b * b;
      }
      const float denom = std::sqrt(na * nb);
      sum_cos += denom > 0.0f ? dot / denom : 0.0f;
    }
    const float sim = sum_cos / group;
    outputs.similarity[row] = sim;
    outputs.flags[row] = sim < tau ? 1 : 0;
    flagged += outputs.flags[row];
  }
  outputs.num_flagged[0] = flagged;
  return absl::OkStatus();
}

#define FREEKV_INSTANTIATE(T)                                                          \
  template absl::Status QuerySimilarityRef<T>(absl::Span<const T>, absl::Span<const T>, \
                                              int32_t, int32_t, int32_t, float,        \
                                              const SimilarityOutputs&);
FREEKV_INSTANTIATE(float)
FREEKV_INSTANTIATE(BFloat16)
#undef FREEKV_INSTANTIATE

}  // namespace kernels
}  // namespace freekv
