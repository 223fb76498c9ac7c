// CUDA kernel of similarity.h: a single CTA (SimilarityBlock, similarity_block.cuh),
// whose block sum gives the count, so num_flagged needs no prior memset.
#include <type_traits>

#include "kernels/cuda_check.cuh"
#include "kernels/device_util.cuh"
#include "kernels/shape.h"
#include "kernels/similarity.h"
#include "kernels/similarity_block.cuh"

namespace freekv {
namespace kernels {

namespace {

constexpr int kThreads = 1024;

template <typename DT>
__global__ void __launch_bounds__(kThreads)
    SimilarityKernel(const DT* q, const DT* q_prev, int32_t rows, int32_t group,
                     int32_t head_dim, float tau, float* similarity, uint8_t* flags,
                     int32_t* num_flagged) {
  __shared__ float scratch[32];
  const float flagged =
      SimilarityBlock(q, q_prev, rows, group, head_dim, tau, similarity, flags, scratch);
  if (threadIdx.x == 0) num_flagged[0] = static_cast<int32_t>(flagged);
}

}  // namespace

template <typename T>
absl::Status QuerySimilarityCuda(absl::Span<const T> q, absl::Span<const T> q_prev,
                                 int32_t num_q_heads, int32_t num_kv_heads,
                                 int32_t head_dim, float tau,
                                 const SimilarityOutputs& outputs, cudaStream_t stream) {
  FREEKV_RETURN_IF_ERROR(CheckSimilarityShapes(q.size(), q_prev.size(), num_q_heads,
                                               num_kv_heads, head_dim, outputs));
  const size_t rows = outputs.flags.size();
  using DT = std::remove_const_t<typename DeviceType<const T>::type>;
  SimilarityKernel<DT><<<1, kThreads, 0, stream>>>(
      Dev(q.data()), Dev(q_prev.data()), static_cast<int32_t>(rows),
      num_q_heads / num_kv_heads, head_dim, tau, outputs.similarity.data(),
      outputs.flags.data(), outputs.num_flagged.data());
  return LaunchStatus("SimilarityKernel");
}

#define FREEKV_INSTANTIATE(T)                                                          \
  template absl::Status QuerySimilarityCuda<T>(absl::Span<const T>, absl::Span<const T>, \
                                               int32_t, int32_t, int32_t, float,        \
                                               const SimilarityOutputs&, cudaStream_t);
FREEKV_INSTANTIATE(float)
FREEKV_INSTANTIATE(BFloat16)
#undef FREEKV_INSTANTIATE

}  // namespace kernels
}  // namespace freekv
