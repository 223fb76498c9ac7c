// Float32 matrix product in the weight layout of llama2.c and PyTorch's nn.Linear:
//   out[m][n] = sum_k x[m][k] * w[n][k]      (out = x * w^T)
//
// Shapes: x is [rows][in_features], w is [out_features][in_features], out is
// [rows][out_features], all row-major; rows = x.size() / in_features. out must not
// alias x or w. Accumulates in float32. CPU only: on the GPU the model uses cuBLAS.
//
// Thread safety: stateless; concurrent calls on disjoint outputs are safe.
#ifndef FREEKV_KERNELS_MATMUL_H_
#define FREEKV_KERNELS_MATMUL_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/types/span.h"

namespace freekv {
namespace kernels {

absl::Status MatmulRef(absl::Span<const float> x, absl::Span<const float> w,
                       int32_t in_features, int32_t out_features, absl::Span<float> out);

}  // namespace kernels
}  // namespace freekv

#endif  // FREEKV_KERNELS_MATMUL_H_
