// RMSNorm: out[r][i] = x[r][i] / sqrt(mean_i(x[r][i]^2) + eps) * weight[i].
//
// Shapes: x and out are [rows][dim] (row-major), weight is [dim]; rows is
// x.size() / dim. out may alias x (in place). The mean of squares is accumulated in
// float32. Dtypes: float32, and bf16 storage for x, weight and out.
//
// Thread safety: stateless functions; concurrent calls on disjoint buffers are safe.
#ifndef FREEKV_KERNELS_RMSNORM_H_
#define FREEKV_KERNELS_RMSNORM_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "kernels/bf16.h"
#include "kernels/cuda_fwd.h"

namespace freekv {
namespace kernels {

// CPU reference.
template <typename T>
absl::Status RmsNormRef(absl::Span<const T> x, absl::Span<const T> weight, float eps,
                        absl::Span<T> out);

// CUDA (rmsnorm.cu): device spans, asynchronous on `stream`.
template <typename T>
absl::Status RmsNormCuda(absl::Span<const T> x, absl::Span<const T> weight, float eps,
                         absl::Span<T> out, cudaStream_t stream);

}  // namespace kernels
}  // namespace freekv

#endif  // FREEKV_KERNELS_RMSNORM_H_
