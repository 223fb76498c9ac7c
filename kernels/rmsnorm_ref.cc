// CPU reference of rmsnorm.h.
#include <cmath>

#include "kernels/rmsnorm.h"
#include "kernels/shape.h"

namespace freekv {
namespace kernels {

template <typename T>
absl::Status RmsNormRef(absl::Span<const T> x, absl::Span<const T> weight, float eps,
                        absl::Span<T> out) {
  const size_t dim = weight.size();
  FREEKV_RETURN_IF_ERROR(CheckRows("x", x.size(), dim));
  FREEKV_RETURN_IF_ERROR(CheckSize("out", out.size(), x.size()));
  for (size_t r = 0; r < x.size() / dim; ++r) {
    const T* row = x.data() + r * dim;
    float sum_sq = 0.0f;
    for (size_t i = 0; i < dim; ++i) sum_sq += ToFloat(row[i]) * ToFloat(row[i]);
    const float inv_rms = 1.0f / std::sqrt(sum_sq / dim + eps);
    T* dst = out.data() + r * dim;
    for (size_t i = 0; i < dim; ++i) {
      dst[i] = FromFloat<T>(ToFloat(row[i]) * inv_rms * ToFloat(weight[i]));
    }
  }
  return absl::OkStatus();
}

template absl::Status RmsNormRef<float>(absl::Span<const float>, absl::Span<const float>,
                                        float, absl::Span<float>);
template absl::Status RmsNormRef<BFloat16>(absl::Span<const BFloat16>,
                                           absl::Span<const BFloat16>, float,
                                           absl::Span<BFloat16>);

}  // namespace kernels
}  // namespace freekv
