// CPU reference of digest.h.
#include <algorithm>

#include "absl/strings/str_cat.h"
#include "kernels/digest.h"

namespace freekv {
namespace kernels {

template <typename T>
absl::Status PageDigestRef(const PagedKv<const T>& kv, const DigestJobs& jobs,
                           const DigestTable<T>& table) {
  FREEKV_RETURN_IF_ERROR(CheckDigestArgs(kv, jobs, table));
  const size_t n = jobs.pool_pages.size();
  for (size_t i = 0; i < n; ++i) {
    const int32_t page = jobs.pool_pages[i];
    const int32_t seq = jobs.seqs[i];
    const int32_t logical = jobs.logical_pages[i];
    if (page < 0 || page >= kv.num_pages || seq < 0 || seq >= table.num_seqs ||
        logical < 0 || logical >= table.max_pages) {
      return absl::InvalidArgumentError(absl::StrCat("digest job ", i, " (pool page ", page,
                                                     ", seq ", seq, ", logical page ",
                                                     logical, ") is out of range"));
    }
    for (int32_t h = 0; h < kv.num_kv_heads; ++h) {
      T* kmax = table.data.data() + table.offset(seq, logical, h);
      T* kmin = kmax + kv.head_dim;
      for (int32_t c = 0; c < kv.head_dim; ++c) {
        float hi = ToFloat(kv.k[kv.offset(page, 0, h) + c]);
        float lo = hi;
        for (int32_t t = 1; t < kv.page_tokens; ++t) {
          const float x = ToFloat(kv.k[kv.offset(page, t, h) + c]);
          hi = std::max(hi, x);
          lo = std::min(lo, x);
        }
        kmax[c] = FromFloat<T>(hi);  // exact: hi and lo are values of T
        kmin[c] = FromFloat<T>(lo);
      }
    }
  }
  return absl::OkStatus();
}

template absl::Status PageDigestRef<float>(const PagedKv<const float>&, const DigestJobs&,
                                           const DigestTable<float>&);
template absl::Status PageDigestRef<BFloat16>(const PagedKv<const BFloat16>&,
                                              const DigestJobs&,
                                              const DigestTable<BFloat16>&);

}  // namespace kernels
}  // namespace freekv
