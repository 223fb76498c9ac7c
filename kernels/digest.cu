// CUDA kernel of digest.h: one CTA per job; each thread owns a 16-byte column
// (head, dims) and walks the page's tokens, so loads are whole 16-byte vectors.
#include <cstdint>
#include <type_traits>

#include "kernels/cuda_check.cuh"
#include "kernels/device_util.cuh"
#include "kernels/digest.h"

namespace freekv {
namespace kernels {

namespace {

template <typename DT>
__global__ void DigestKernel(const DT* k, int64_t page_stride, int32_t page_tokens,
                             int32_t num_kv_heads, int32_t head_dim,
                             const int32_t* pool_pages, const int32_t* seqs,
                             const int32_t* logical_pages, int32_t num_pages, DT* table,
                             int32_t num_seqs, int32_t max_pages) {
  constexpr int kVec = VecLen<DT>();
  const int job = blockIdx.x;
  // A job out of range is skipped (digest.h): its write would land outside the table.
  if (pool_pages[job] < 0 || pool_pages[job] >= num_pages || seqs[job] < 0 ||
      seqs[job] >= num_seqs || logical_pages[job] < 0 || logical_pages[job] >= max_pages) {
    return;
  }
  const DT* page = k + pool_pages[job] * page_stride;
  const int vecs_per_head = head_dim / kVec;
  const int64_t out_page =
      (int64_t{seqs[job]} * max_pages + logical_pages[job]) * num_kv_heads * 2 * head_dim;
  for (int col = threadIdx.x; col < num_kv_heads * vecs_per_head; col += blockDim.x) {
    const int h = col / vecs_per_head;
    const int d0 = (col % vecs_per_head) * kVec;
    const DT* src = page + int64_t{h} * head_dim + d0;
    float hi[kVec], lo[kVec], x[kVec];
    LoadVec(src, hi);
#pragma unroll
    for (int i = 0; i < kVec; ++i) lo[i] = hi[i];
    const int64_t token_stride = int64_t{num_kv_heads} * head_dim;
    for (int t = 1; t < page_tokens; ++t) {
      LoadVec(src + t * token_stride, x);
#pragma unroll
      for (int i = 0; i < kVec; ++i) {
        hi[i] = fmaxf(hi[i], x[i]);
        lo[i] = fminf(lo[i], x[i]);
      }
    }
    DT* dst = table + out_page + int64_t{h} * 2 * head_dim + d0;
    StoreVec(dst, hi);  // exact: values of DT widened and narrowed back
    StoreVec(dst + head_dim, lo);
  }
}

}  // namespace

template <typename T>
absl::Status PageDigestCuda(const PagedKv<const T>& kv, const DigestJobs& jobs,
                            const DigestTable<T>& table, cudaStream_t stream) {
  FREEKV_RETURN_IF_ERROR(CheckDigestArgs(kv, jobs, table));
  const size_t n = jobs.pool_pages.size();
  using DT = std::remove_const_t<typename DeviceType<const T>::type>;
  if (kv.head_dim % VecLen<DT>() != 0 || kv.page_stride % VecLen<DT>() != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "head_dim ", kv.head_dim, " and page_stride must be multiples of ", VecLen<DT>()));
  }
  if (n == 0) return absl::OkStatus();
  const int cols = kv.num_kv_heads * kv.head_dim / VecLen<DT>();
  const int threads = cols >= 256 ? 256 : (cols + 31) / 32 * 32;
  DigestKernel<DT><<<static_cast<unsigned>(n), threads, 0, stream>>>(
      Dev(kv.k), kv.page_stride, kv.page_tokens, kv.num_kv_heads, kv.head_dim,
      jobs.pool_pages.data(), jobs.seqs.data(), jobs.logical_pages.data(), kv.num_pages,
      Dev(table.data.data()), table.num_seqs, table.max_pages);
  return LaunchStatus("DigestKernel");
}

template absl::Status PageDigestCuda<float>(const PagedKv<const float>&,
                                            const DigestJobs&, const DigestTable<float>&,
                                            cudaStream_t);
template absl::Status PageDigestCuda<BFloat16>(const PagedKv<const BFloat16>&,
                                               const DigestJobs&,
                                               const DigestTable<BFloat16>&,
                                               cudaStream_t);

}  // namespace kernels
}  // namespace freekv
