// CPU references of layout.h.
#include <algorithm>

#include "absl/strings/str_cat.h"
#include "kernels/layout.h"

namespace freekv {
namespace kernels {

namespace {

absl::Status CheckIndex(absl::string_view field, size_t i, int32_t value, int32_t limit) {
  if (value >= 0 && value < limit) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(field, "[", i, "] is ", value, ", outside [0, ", limit, ")"));
}

}  // namespace

template <typename T>
absl::Status NhdToHndRef(const PagedKv<const T>& pool,
                         absl::Span<const int32_t> pool_pages, absl::Span<T> blocks) {
  FREEKV_RETURN_IF_ERROR(ValidatePagedKv(pool));
  const size_t slice = size_t{static_cast<uint32_t>(pool.page_tokens)} * pool.head_dim;
  const size_t block = 2 * slice * pool.num_kv_heads;
  FREEKV_RETURN_IF_ERROR(CheckSize("blocks", blocks.size(), pool_pages.size() * block));
  for (size_t i = 0; i < pool_pages.size(); ++i) {
    FREEKV_RETURN_IF_ERROR(CheckIndex("pool_pages", i, pool_pages[i], pool.num_pages));
    for (int32_t h = 0; h < pool.num_kv_heads; ++h) {
      T* k_dst = blocks.data() + i * block + 2 * h * slice;
      T* v_dst = k_dst + slice;
      for (int32_t t = 0; t < pool.page_tokens; ++t) {
        const int64_t src = pool.offset(pool_pages[i], t, h);
        std::copy_n(pool.k + src, pool.head_dim, k_dst + t * pool.head_dim);
        std::copy_n(pool.v + src, pool.head_dim, v_dst + t * pool.head_dim);
      }
    }
  }
  return absl::OkStatus();
}

template <typename T>
absl::Status HndToNhdRef(absl::Span<const T> slices, absl::Span<const int32_t> dst_pages,
                         absl::Span<const int32_t> dst_heads, const PagedKv<T>& pool) {
  FREEKV_RETURN_IF_ERROR(ValidatePagedKv(pool));
  const size_t slice = size_t{static_cast<uint32_t>(pool.page_tokens)} * pool.head_dim;
  FREEKV_RETURN_IF_ERROR(CheckSize("dst_heads", dst_heads.size(), dst_pages.size()));
  FREEKV_RETURN_IF_ERROR(CheckSize("slices", slices.size(), dst_pages.size() * 2 * slice));
  for (size_t i = 0; i < dst_pages.size(); ++i) {
    FREEKV_RETURN_IF_ERROR(CheckIndex("dst_pages", i, dst_pages[i], pool.num_pages));
    FREEKV_RETURN_IF_ERROR(CheckIndex("dst_heads", i, dst_heads[i], pool.num_kv_heads));
    const T* k_src = slices.data() + 2 * i * slice;
    const T* v_src = k_src + slice;
    for (int32_t t = 0; t < pool.page_tokens; ++t) {
      const int64_t dst = pool.offset(dst_pages[i], t, dst_heads[i]);
      std::copy_n(k_src + t * pool.head_dim, pool.head_dim, pool.k + dst);
      std::copy_n(v_src + t * pool.head_dim, pool.head_dim, pool.v + dst);
    }
  }
  return absl::OkStatus();
}

#define FREEKV_INSTANTIATE(T)                                                          \
  template absl::Status NhdToHndRef<T>(const PagedKv<const T>&,                        \
                                       absl::Span<const int32_t>, absl::Span<T>);      \
  template absl::Status HndToNhdRef<T>(absl::Span<const T>, absl::Span<const int32_t>, \
                                       absl::Span<const int32_t>, const PagedKv<T>&);
FREEKV_INSTANTIATE(float)
FREEKV_INSTANTIATE(BFloat16)
#undef FREEKV_INSTANTIATE

}  // namespace kernels
}  // namespace freekv
