// One layer's NHD page pool on the worker (kernels/paged_kv.h): pages of
// [K|V][page_tokens][num_kv_heads][head_dim] floats, handed out and taken back by id.
// The retrieval policies keep sink pages, window pages and resident slots of every
// sequence in it, so that one page table can name all the pages attention reads.
// Freed ids are reused before the pool grows.
//
// Owns its storage. Not thread-safe: one thread at a time (the forward pass). Views
// and pointers are invalidated by the next Allocate.
#ifndef FREEKV_WORKER_PAGE_POOL_H_
#define FREEKV_WORKER_PAGE_POOL_H_

#include <cstdint>
#include <vector>

#include "kernels/paged_kv.h"

namespace freekv {

class PagePool {
 public:
  PagePool(int32_t page_tokens, int32_t num_kv_heads, int32_t head_dim)
      : page_tokens_(page_tokens), kv_heads_(num_kv_heads), head_dim_(head_dim) {}

  int32_t Allocate();
  // REQUIRES: `page` came from Allocate and was not freed since.
  void Free(int32_t page);

  // Pages handed out and not freed.
  int32_t in_use() const { return capacity() - static_cast<int32_t>(free_.size()); }
  int32_t capacity() const {
    return static_cast<int32_t>(storage_.size() / page_stride());
  }

  // Element offset of (page, token, head, dim 0) of K from the storage start; V is at
  // + page_elems(). The same arithmetic as the kernels' PagedKv::offset.
  size_t row() const { return static_cast<size_t>(kv_heads_) * head_dim_; }
  size_t page_elems() const { return page_tokens_ * row(); }
  size_t page_stride() const { return 2 * page_elems(); }
  float* k_token(int32_t page, int32_t token) {
    return storage_.data() + page * page_stride() + token * row();
  }
  float* v_token(int32_t page, int32_t token) {
    return k_token(page, token) + page_elems();
  }

  kernels::PagedKv<float> view();
  kernels::PagedKv<const float> const_view() const;

 private:
  template <typename T>
  kernels::PagedKv<T> MakeView(T* base) const;

  int32_t page_tokens_;
  int32_t kv_heads_;
  int32_t head_dim_;
  std::vector<float> storage_;
  std::vector<int32_t> free_;
};

}  // namespace freekv

#endif  // FREEKV_WORKER_PAGE_POOL_H_
