#include "worker/page_pool.h"

namespace freekv {

int32_t PagePool::Allocate() {
  if (!free_.empty()) {
    const int32_t page = free_.back();
    free_.pop_back();
    return page;
  }
  const int32_t page = capacity();
  storage_.resize(storage_.size() + page_stride());
  return page;
}

void PagePool::Free(int32_t page) { free_.push_back(page); }

template <typename T>
kernels::PagedKv<T> PagePool::MakeView(T* base) const {
  kernels::PagedKv<T> kv;
  kv.k = base;
  kv.v = base + page_elems();
  kv.page_stride = static_cast<int64_t>(page_stride());
  kv.num_pages = capacity();
  kv.page_tokens = page_tokens_;
  kv.num_kv_heads = kv_heads_;
  kv.head_dim = head_dim_;
  return kv;
}

kernels::PagedKv<float> PagePool::view() { return MakeView<float>(storage_.data()); }

kernels::PagedKv<const float> PagePool::const_view() const {
  return MakeView<const float>(storage_.data());
}

}  // namespace freekv
