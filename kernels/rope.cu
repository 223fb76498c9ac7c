// CUDA kernel of rope.h: one thread per (token, head, pair).
#include "kernels/cuda_check.cuh"
#include "kernels/device_util.cuh"
#include "kernels/rope.h"
#include "kernels/shape.h"

namespace freekv {
namespace kernels {

namespace {

template <typename T>
__global__ void RopeKernel(T* x, const int32_t* positions, const float* inv_freq,
                           int64_t num_pairs, int32_t num_heads, int32_t half,
                           bool interleaved) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < num_pairs;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int32_t j = static_cast<int32_t>(i % half);
    const int64_t row = i / half;  // token * num_heads + head
    const int64_t token = row / num_heads;
    const float angle = static_cast<float>(positions[token]) * inv_freq[j];
    float s, c;
    sincosf(angle, &s, &c);
    T* head = x + row * 2 * half;
    const int32_t lo = interleaved ? 2 * j : j;
    const int32_t hi = interleaved ? 2 * j + 1 : j + half;
    const float a = ToF(head[lo]);
    const float b = ToF(head[hi]);
    head[lo] = FromF<T>(a * c - b * s);
    head[hi] = FromF<T>(a * s + b * c);
  }
}

}  // namespace

template <typename T>
absl::Status ApplyRopeCuda(absl::Span<T> x, absl::Span<const int32_t> positions,
                           absl::Span<const float> inv_freq, int32_t num_heads,
                           RopeStyle style, cudaStream_t stream) {
  FREEKV_RETURN_IF_ERROR(CheckPositive("num_heads", num_heads));
  FREEKV_RETURN_IF_ERROR(CheckPositive("inv_freq size", inv_freq.size()));
  const int32_t half = static_cast<int32_t>(inv_freq.size());
  FREEKV_RETURN_IF_ERROR(
      CheckSize("x", x.size(), positions.size() * num_heads * 2 * size_t(half)));
  const int64_t pairs = static_cast<int64_t>(x.size() / 2);
  if (pairs == 0) return absl::OkStatus();
  constexpr int kThreads = 256;
  RopeKernel<<<GridFor(pairs, kThreads), kThreads, 0, stream>>>(
      Dev(x.data()), positions.data(), inv_freq.data(), pairs, num_heads, half,
      style == RopeStyle::kInterleaved);
  return LaunchStatus("RopeKernel");
}

template absl::Status ApplyRopeCuda<float>(absl::Span<float>, absl::Span<const int32_t>,
                                           absl::Span<const float>, int32_t, RopeStyle,
                                           cudaStream_t);
template absl::Status ApplyRopeCuda<BFloat16>(absl::Span<BFloat16>,
                                              absl::Span<const int32_t>,
                                              absl::Span<const float>, int32_t,
                                              RopeStyle, cudaStream_t);

}  // namespace kernels
}  // namespace freekv
