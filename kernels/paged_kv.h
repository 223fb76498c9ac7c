// Views of the device-resident (or, for the references, host) paged KV cache and of
// the page tables attention reads it through. Views only: they own nothing, and the
// memory they name must outlive every call that uses them.
//
// NHD pool layout (attention-friendly, appends are contiguous): page p holds
// page_tokens tokens of every KV head; element (p, token, head, dim) of K is at
//   k[p * page_stride + (token * num_kv_heads + head) * head_dim + dim]
// and the same for V. page_stride >= page_tokens * num_kv_heads * head_dim, so K and
// V may live in separate arrays (stride = that product) or interleaved in one
// ([page][K|V][token][head][dim]: v = k + page_tokens*num_kv_heads*head_dim and
// stride twice that).
//
// FreeKV keeps a separate resident copy per KV head: the (page, head) slice of a pool
// page may hold a different logical page for each head, so a page table is per
// (sequence, KV head) and names pool pages. Full attention shares one list among
// the heads of a sequence.
#ifndef FREEKV_KERNELS_PAGED_KV_H_
#define FREEKV_KERNELS_PAGED_KV_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "kernels/shape.h"

namespace freekv {
namespace kernels {

// T is float or BFloat16, const-qualified for inputs.
template <typename T>
struct PagedKv {
  T* k = nullptr;
  T* v = nullptr;
  int64_t page_stride = 0;  // elements from one page to the next
  int32_t num_pages = 0;
  int32_t page_tokens = 0;
  int32_t num_kv_heads = 0;
  int32_t head_dim = 0;

  int64_t page_elems() const {
    return int64_t{page_tokens} * num_kv_heads * head_dim;
  }
  // Offset of (page, token, head, dim 0) from k (and from v).
  int64_t offset(int64_t page, int64_t token, int64_t head) const {
    return page * page_stride + (token * num_kv_heads + head) * head_dim;
  }
};

template <typename T>
absl::Status ValidatePagedKv(const PagedKv<T>& kv) {
  if (kv.k == nullptr || kv.v == nullptr) {
    return absl::InvalidArgumentError("PagedKv k and v must be non-null");
  }
  FREEKV_RETURN_IF_ERROR(CheckPositive("PagedKv.num_pages", kv.num_pages));
  FREEKV_RETURN_IF_ERROR(CheckPositive("PagedKv.page_tokens", kv.page_tokens));
  FREEKV_RETURN_IF_ERROR(CheckPositive("PagedKv.num_kv_heads", kv.num_kv_heads));
  FREEKV_RETURN_IF_ERROR(CheckPositive("PagedKv.head_dim", kv.head_dim));
  if (kv.page_stride < kv.page_elems()) {
    return absl::InvalidArgumentError(
        absl::StrCat("PagedKv.page_stride ", kv.page_stride, " is below one page of ",
                     kv.page_elems(), " elements"));
  }
  return absl::OkStatus();
}

// The pages each (sequence, head) attends. List i = seq * table_heads + head (head
// is ignored, i.e. 0, when table_heads == 1) is indices[indptr[i] .. indptr[i+1]),
// pool page ids in any order; every page is full except the list's last, which holds
// last_page_len[i] tokens (1..page_tokens). Lists are non-empty.
struct PageTable {
  absl::Span<const int32_t> indptr;         // [num_seqs * table_heads + 1]
  absl::Span<const int32_t> indices;        // [indptr[last]]
  absl::Span<const int32_t> last_page_len;  // [num_seqs * table_heads]
  int32_t table_heads = 1;                  // 1 (shared) or num_kv_heads

  int32_t num_lists() const { return static_cast<int32_t>(last_page_len.size()); }
};

// Checks sizes only (the contents may be device memory).
inline absl::Status ValidatePageTable(const PageTable& t, int32_t num_seqs,
                                      int32_t num_kv_heads) {
  if (t.table_heads != 1 && t.table_heads != num_kv_heads) {
    return absl::InvalidArgumentError(absl::StrCat(
        "PageTable.table_heads is ", t.table_heads, ", expected 1 or ", num_kv_heads));
  }
  const size_t lists = size_t{static_cast<uint32_t>(num_seqs)} * t.table_heads;
  FREEKV_RETURN_IF_ERROR(CheckSize("PageTable.last_page_len", t.last_page_len.size(),
                                   lists));
  FREEKV_RETURN_IF_ERROR(CheckSize("PageTable.indptr", t.indptr.size(), lists + 1));
  return CheckPositive("PageTable.indices size", static_cast<int64_t>(t.indices.size()));
}

}  // namespace kernels
}  // namespace freekv

#endif  // FREEKV_KERNELS_PAGED_KV_H_
