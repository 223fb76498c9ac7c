// Page digests: per (sequence, page, KV head) the per-channel max and min of the
// page's post-RoPE keys, the summary FreeKV scores pages by. Computed for every full
// page at prefill and for each page as it fills during decode. One table per layer.
//
// Digest table layout: [num_seqs][max_pages][num_kv_heads][2][head_dim], where
// [...][0][:] is the max and [...][1][:] the min over the page's page_tokens keys;
// the page index is the sequence's logical page (token / page_tokens). The digest has
// the keys' dtype (max and min of bf16 values are exact bf16 values).
//
// A job names a full page of the NHD pool (paged_kv.h) and where its digest goes:
// jobs.pool_pages[i] -> (jobs.seqs[i], jobs.logical_pages[i]), every KV head. A job
// outside the pool or the table is refused by the reference and skipped by the CUDA
// kernel (which cannot see the device-side lists before it runs), so a bad list never
// writes past the table.
//
// Thread safety: stateless; concurrent calls writing disjoint digests are safe.
#ifndef FREEKV_KERNELS_DIGEST_H_
#define FREEKV_KERNELS_DIGEST_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "kernels/bf16.h"
#include "kernels/cuda_fwd.h"
#include "kernels/paged_kv.h"

namespace freekv {
namespace kernels {

// A view (owns nothing). T is float or BFloat16, const-qualified for inputs.
template <typename T>
struct DigestTable {
  absl::Span<T> data;
  int32_t num_seqs = 0;
  int32_t max_pages = 0;
  int32_t num_kv_heads = 0;
  int32_t head_dim = 0;

  size_t expected_size() const {
    return size_t{static_cast<uint32_t>(num_seqs)} * static_cast<uint32_t>(max_pages) *
           static_cast<uint32_t>(num_kv_heads) * 2 * static_cast<uint32_t>(head_dim);
  }
  // Offset of the max row of (seq, page, head); the min row follows at +head_dim.
  int64_t offset(int64_t seq, int64_t page, int64_t head) const {
    return (((seq * max_pages + page) * num_kv_heads + head) * 2) * head_dim;
  }
};

template <typename T>
absl::Status ValidateDigestTable(const DigestTable<T>& t) {
  FREEKV_RETURN_IF_ERROR(CheckPositive("DigestTable.num_seqs", t.num_seqs));
  FREEKV_RETURN_IF_ERROR(CheckPositive("DigestTable.max_pages", t.max_pages));
  FREEKV_RETURN_IF_ERROR(CheckPositive("DigestTable.num_kv_heads", t.num_kv_heads));
  FREEKV_RETURN_IF_ERROR(CheckPositive("DigestTable.head_dim", t.head_dim));
  return CheckSize("DigestTable.data", t.data.size(), t.expected_size());
}

struct DigestJobs {
  absl::Span<const int32_t> pool_pages;
  absl::Span<const int32_t> seqs;
  absl::Span<const int32_t> logical_pages;
};

// Shape checks shared by the reference and the launcher (contents not read).
template <typename T>
absl::Status CheckDigestArgs(const PagedKv<const T>& kv, const DigestJobs& jobs,
                             const DigestTable<T>& table) {
  FREEKV_RETURN_IF_ERROR(ValidatePagedKv(kv));
  FREEKV_RETURN_IF_ERROR(ValidateDigestTable(table));
  if (table.num_kv_heads != kv.num_kv_heads || table.head_dim != kv.head_dim) {
    return absl::InvalidArgumentError("DigestTable heads/head_dim differ from the pool's");
  }
  const size_t n = jobs.pool_pages.size();
  FREEKV_RETURN_IF_ERROR(CheckSize("jobs.seqs", jobs.seqs.size(), n));
  return CheckSize("jobs.logical_pages", jobs.logical_pages.size(), n);
}

// CPU reference.
template <typename T>
absl::Status PageDigestRef(const PagedKv<const T>& kv, const DigestJobs& jobs,
                           const DigestTable<T>& table);

// CUDA (digest.cu): device memory, asynchronous on `stream`.
template <typename T>
absl::Status PageDigestCuda(const PagedKv<const T>& kv, const DigestJobs& jobs,
                            const DigestTable<T>& table, cudaStream_t stream);

}  // namespace kernels
}  // namespace freekv

#endif  // FREEKV_KERNELS_DIGEST_H_
