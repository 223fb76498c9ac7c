// CPU reference of matmul.h. Both operands are read along contiguous rows, and four
// output columns share each load of x: the model's CPU path runs on this, so it is
// kept cache-friendly while each sum stays a plain sequential float32 sum.
#include "kernels/matmul.h"
#include "kernels/shape.h"

namespace freekv {
namespace kernels {

absl::Status MatmulRef(absl::Span<const float> x, absl::Span<const float> w,
                       int32_t in_features, int32_t out_features, absl::Span<float> out) {
  FREEKV_RETURN_IF_ERROR(CheckPositive("in_features", in_features));
  FREEKV_RETURN_IF_ERROR(CheckPositive("out_features", out_features));
  FREEKV_RETURN_IF_ERROR(CheckRows("x", x.size(), in_features));
  const size_t k_dim = in_features;
  const size_t n_dim = out_features;
  const size_t rows = x.size() / k_dim;
  FREEKV_RETURN_IF_ERROR(CheckSize("w", w.size(), n_dim * k_dim));
  FREEKV_RETURN_IF_ERROR(CheckSize("out", out.size(), rows * n_dim));
  for (size_t m = 0; m < rows; ++m) {
    const float* xr = x.data() + m * k_dim;
    float* o = out.data() + m * n_dim;
    size_t n = 0;
    for (; n + 4 <= n_dim; n += 4) {
      const float* w0 = w.data() + n * k_dim;
      float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
      for (size_t k = 0; k < k_dim; ++k) {
        s0 += xr[k] * w0[k];
        s1 += xr[k] * w0[k_dim + k];
        s2 += xr[k] * w0[2 * k_dim + k];
        s3 += xr[k] * w0[3 * k_dim + k];
      }
      o[n] = s0;
      o[n + 1] = s1;
      o[n + 2] = s2;
      o[n + 3] = s3;
    }
    for (; n < n_dim; ++n) {
      const float* wr = w.data() + n * k_dim;
      float s = 0;
      for (size_t k = 0; k < k_dim; ++k) s += xr[k] * wr[k];
      o[n] = s;
    }
  }
  return absl::OkStatus();
}

}  // namespace kernels
}  // namespace freekv
