// CPU references of resident_ops.h, and the shape checks the CUDA launchers share.
#include <algorithm>

#include "absl/strings/str_cat.h"
#include "worker/freekv_gpu/resident_ops.h"
#include "worker/freekv_gpu/resident_ops_checks.h"

namespace freekv::gpu {

absl::Status CheckResidentLayout(const ResidentLayout& layout) {
  if (layout.sink < 0 || layout.selected <= 0 || layout.window <= 0 || layout.cache < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ResidentLayout needs sink >= 0, selected > 0, window > 0 and cache >= 0; got ",
        layout.sink, "/", layout.selected, "/", layout.window, "/", layout.cache));
  }
  return absl::OkStatus();
}

absl::Status CheckApplyShapes(size_t slot_elems, const RecallDiff& diff,
                              size_t head_mask_size,
                              const kernels::PagedKv<BFloat16>& pool,
                              const ResidentLayout& layout, size_t resident_size) {
  FREEKV_RETURN_IF_ERROR(kernels::ValidatePagedKv(pool));
  FREEKV_RETURN_IF_ERROR(CheckResidentLayout(layout));
  const size_t lists = diff.counts.size();
  const size_t heads = pool.num_kv_heads;
  if (lists == 0 || lists % heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "diff.counts has ", lists, " entries, not a positive multiple of ", heads,
        " KV heads"));
  }
  const size_t entries = lists * layout.selected;
  FREEKV_RETURN_IF_ERROR(kernels::CheckSize("diff.pages", diff.pages.size(), entries));
  FREEKV_RETURN_IF_ERROR(kernels::CheckSize("diff.slots", diff.slots.size(), entries));
  FREEKV_RETURN_IF_ERROR(
      kernels::CheckSize("resident", resident_size, lists * layout.capacity()));
  if (head_mask_size != 0) {
    FREEKV_RETURN_IF_ERROR(kernels::CheckSize("heads.flags", head_mask_size, lists));
  }
  const size_t slice = 2 * size_t(pool.page_tokens) * pool.head_dim;
  FREEKV_RETURN_IF_ERROR(kernels::CheckSize("slot", slot_elems, entries * slice));
  const int64_t seqs = lists / heads;
  if (pool.num_pages < seqs * layout.pages_per_seq()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "pool has ", pool.num_pages, " pages; ", seqs, " sequences need ",
        seqs * layout.pages_per_seq()));
  }
  return absl::OkStatus();
}

absl::Status CheckAppendShapes(size_t k_size, size_t v_size, size_t pages_size,
                               size_t tokens_size, const kernels::PagedKv<BFloat16>& pool) {
  FREEKV_RETURN_IF_ERROR(kernels::ValidatePagedKv(pool));
  const size_t row = size_t(pool.num_kv_heads) * pool.head_dim;
  if (k_size == 0 || k_size % row != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("k has ", k_size, " elements, not a positive multiple of ", row));
  }
  FREEKV_RETURN_IF_ERROR(kernels::CheckSize("v", v_size, k_size));
  FREEKV_RETURN_IF_ERROR(kernels::CheckSize("pages", pages_size, k_size / row));
  return kernels::CheckSize("tokens", tokens_size, k_size / row);
}

absl::Status ApplyRecallRef(absl::Span<const BFloat16> slot, const RecallDiff& diff,
                            const HeadMask& heads, const kernels::PagedKv<BFloat16>& pool,
                            const ResidentLayout& layout, absl::Span<int32_t> resident) {
  FREEKV_RETURN_IF_ERROR(CheckApplyShapes(slot.size(), diff, heads.flags.size(), pool,
                                          layout, resident.size()));
  const int32_t k = layout.selected, capacity = layout.capacity();
  const int64_t row = pool.head_dim, half = int64_t{pool.page_tokens} * row;
  for (size_t list = 0; list < diff.counts.size(); ++list) {
    if (!heads.covers(list)) continue;
    const int32_t seq = list / pool.num_kv_heads, head = list % pool.num_kv_heads;
    for (int32_t j = 0; j < std::min(diff.counts[list], k); ++j) {
      const int32_t s = diff.slots[list * k + j];
      if (s < 0 || s >= capacity) {
        return absl::InvalidArgumentError(absl::StrCat("diff slot ", s, " out of range"));
      }
      const BFloat16* src = slot.data() + (list * k + j) * 2 * half;
      const int32_t page = layout.selected_page(seq, s);
      for (int32_t t = 0; t < pool.page_tokens; ++t) {
        const int64_t dst = pool.offset(page, t, head);
        std::copy_n(src + t * row, row, pool.k + dst);
        std::copy_n(src + half + t * row, row, pool.v + dst);
      }
      resident[list * capacity + s] = diff.pages[list * k + j];
    }
  }
  return absl::OkStatus();
}

absl::Status AppendKvRef(absl::Span<const BFloat16> k, absl::Span<const BFloat16> v,
                         absl::Span<const int32_t> pages, absl::Span<const int32_t> tokens,
                         const kernels::PagedKv<BFloat16>& pool) {
  FREEKV_RETURN_IF_ERROR(
      CheckAppendShapes(k.size(), v.size(), pages.size(), tokens.size(), pool));
  const int64_t row = int64_t{pool.num_kv_heads} * pool.head_dim;
  for (size_t b = 0; b < pages.size(); ++b) {
    if (pages[b] < 0 || pages[b] >= pool.num_pages || tokens[b] < 0 ||
        tokens[b] >= pool.page_tokens) {
      return absl::InvalidArgumentError(absl::StrCat(
          "sequence ", b, ": page ", pages[b], " token ", tokens[b], " outside the pool"));
    }
    const int64_t dst = pool.offset(pages[b], tokens[b], 0);
    std::copy_n(k.data() + b * row, row, pool.k + dst);
    std::copy_n(v.data() + b * row, row, pool.v + dst);
  }
  return absl::OkStatus();
}

}  // namespace freekv::gpu
