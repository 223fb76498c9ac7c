// CUDA kernel of rmsnorm.h: one block per row, a block reduction of the squares.
#include "kernels/cuda_check.cuh"
#include "kernels/device_util.cuh"
#include "kernels/rmsnorm.h"
#include "kernels/shape.h"

namespace freekv {
namespace kernels {

namespace {

template <typename T>
__global__ void RmsNormKernel(const T* x, const T* weight, float eps, int32_t dim, T* out) {
  __shared__ float scratch[32];
  const T* row = x + int64_t{blockIdx.x} * dim;
  float sum_sq = 0.0f;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) {
    const float v = ToF(row[i]);
    sum_sq += v * v;
  }
  sum_sq = BlockSum(sum_sq, scratch);
  const float inv_rms = rsqrtf(sum_sq / dim + eps);
  T* dst = out + int64_t{blockIdx.x} * dim;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) {
    dst[i] = FromF<T>(ToF(row[i]) * inv_rms * ToF(weight[i]));
  }
}

}  // namespace

template <typename T>
absl::Status RmsNormCuda(absl::Span<const T> x, absl::Span<const T> weight, float eps,
                         absl::Span<T> out, cudaStream_t stream) {
  const size_t dim = weight.size();
  FREEKV_RETURN_IF_ERROR(CheckRows("x", x.size(), dim));
  FREEKV_RETURN_IF_ERROR(CheckSize("out", out.size(), x.size()));
  const size_t rows = x.size() / dim;
  if (rows > 0x7fffffffu) return absl::InvalidArgumentError("x has too many rows");
  const int threads = dim >= 1024 ? 1024 : static_cast<int>((dim + 31) / 32 * 32);
  RmsNormKernel<<<static_cast<unsigned>(rows), threads, 0, stream>>>(
      Dev(x.data()), Dev(weight.data()), eps, static_cast<int32_t>(dim), Dev(out.data()));
  return LaunchStatus("RmsNormKernel");
}

template absl::Status RmsNormCuda<float>(absl::Span<const float>, absl::Span<const float>,
                                         float, absl::Span<float>, cudaStream_t);
template absl::Status RmsNormCuda<BFloat16>(absl::Span<const BFloat16>,
                                            absl::Span<const BFloat16>, float,
                                            absl::Span<BFloat16>, cudaStream_t);

}  // namespace kernels
}  // namespace freekv
