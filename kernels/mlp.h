// The pieces of Llama's SiLU-gated MLP that are not GEMMs:
//   SiluMul:  out[i] = silu(gate[i]) * up[i], silu(g) = g / (1 + exp(-g))
//   Add:      out[i] = a[i] + b[i]   (the residual connections)
// The MLP is then down(SiluMul(gate(x), up(x))) with the GEMMs from matmul.h (CPU)
// or cuBLAS (GPU).
//
// Shapes: element-wise over equally sized spans (any [rows][hidden] layout); out may
// alias an input. Computed in float32. Dtypes: float32 and bf16 storage.
//
// Thread safety: stateless functions; concurrent calls on disjoint buffers are safe.
#ifndef FREEKV_KERNELS_MLP_H_
#define FREEKV_KERNELS_MLP_H_

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "kernels/bf16.h"
#include "kernels/cuda_fwd.h"

namespace freekv {
namespace kernels {

// CPU references.
template <typename T>
absl::Status SiluMulRef(absl::Span<const T> gate, absl::Span<const T> up,
                        absl::Span<T> out);
template <typename T>
absl::Status AddRef(absl::Span<const T> a, absl::Span<const T> b, absl::Span<T> out);

// CUDA (mlp.cu): device spans, asynchronous on `stream`.
template <typename T>
absl::Status SiluMulCuda(absl::Span<const T> gate, absl::Span<const T> up,
                         absl::Span<T> out, cudaStream_t stream);
template <typename T>
absl::Status AddCuda(absl::Span<const T> a, absl::Span<const T> b, absl::Span<T> out,
                     cudaStream_t stream);

}  // namespace kernels
}  // namespace freekv

#endif  // FREEKV_KERNELS_MLP_H_
