// CUDA kernels of mlp.h: element-wise, grid-stride.
#include "kernels/cuda_check.cuh"
#include "kernels/device_util.cuh"
#include "kernels/mlp.h"
#include "kernels/shape.h"

namespace freekv {
namespace kernels {

namespace {

struct SiluMulOp {
  __device__ float operator()(float g, float u) const { return g / (1.0f + expf(-g)) * u; }
};
struct AddOp {
  __device__ float operator()(float a, float b) const { return a + b; }
};

template <typename T, typename Op>
__global__ void ElementWiseKernel(const T* a, const T* b, T* out, int64_t n, Op op) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    out[i] = FromF<T>(op(ToF(a[i]), ToF(b[i])));
  }
}

template <typename T, typename Op>
absl::Status Launch(absl::Span<const T> a, absl::Span<const T> b, absl::Span<T> out,
                    Op op, const char* name, cudaStream_t stream) {
  FREEKV_RETURN_IF_ERROR(CheckSize("second input", b.size(), a.size()));
  FREEKV_RETURN_IF_ERROR(CheckSize("out", out.size(), a.size()));
  if (a.empty()) return absl::OkStatus();
  constexpr int kThreads = 256;
  const int64_t n = static_cast<int64_t>(a.size());
  ElementWiseKernel<<<GridFor(n, kThreads), kThreads, 0, stream>>>(
      Dev(a.data()), Dev(b.data()), Dev(out.data()), n, op);
  return LaunchStatus(name);
}

}  // namespace

template <typename T>
absl::Status SiluMulCuda(absl::Span<const T> gate, absl::Span<const T> up,
                         absl::Span<T> out, cudaStream_t stream) {
  return Launch(gate, up, out, SiluMulOp{}, "SiluMulKernel", stream);
}

template <typename T>
absl::Status AddCuda(absl::Span<const T> a, absl::Span<const T> b, absl::Span<T> out,
                     cudaStream_t stream) {
  return Launch(a, b, out, AddOp{}, "AddKernel", stream);
}

#define FREEKV_INSTANTIATE(T)                                                         \
  template absl::Status SiluMulCuda<T>(absl::Span<const T>, absl::Span<const T>,      \
                                       absl::Span<T>, cudaStream_t);                  \
  template absl::Status AddCuda<T>(absl::Span<const T>, absl::Span<const T>,          \
                                   absl::Span<T>, cudaStream_t);
FREEKV_INSTANTIATE(float)
FREEKV_INSTANTIATE(BFloat16)
#undef FREEKV_INSTANTIATE

}  // namespace kernels
}  // namespace freekv
