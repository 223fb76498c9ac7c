// Test fixture data for paged attention: a random NHD pool holding a batch of
// sequences whose pages sit at shuffled pool positions, plus host page tables over
// it. Test-only; each test owns its pool.
#ifndef FREEKV_KERNELS_TEST_POOL_H_
#define FREEKV_KERNELS_TEST_POOL_H_

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/paged_kv.h"
#include "kernels/test_util.h"

namespace freekv {
namespace kernels {

struct HostPageTable {
  std::vector<int32_t> indptr{0};
  std::vector<int32_t> indices;
  std::vector<int32_t> last_page_len;
  int32_t table_heads = 1;

  void AddList(const std::vector<int32_t>& pages, int32_t last_len) {
    indices.insert(indices.end(), pages.begin(), pages.end());
    indptr.push_back(static_cast<int32_t>(indices.size()));
    last_page_len.push_back(last_len);
  }
  PageTable view() const { return PageTable{indptr, indices, last_page_len, table_heads}; }
};

template <typename T>
struct TestPool {
  int32_t page_tokens = 0, num_kv_heads = 0, head_dim = 0, num_pages = 0;
  std::vector<T> k, v;                          // [num_pages][page_tokens][Hkv][D]
  std::vector<int32_t> seq_lens;                // tokens per sequence
  std::vector<std::vector<int32_t>> seq_pages;  // pool page of each logical page

  PagedKv<const T> view() const {
    return PagedKv<const T>{k.data(), v.data(), int64_t{page_tokens} * num_kv_heads * head_dim,
                            num_pages, page_tokens, num_kv_heads, head_dim};
  }
  int32_t last_len(int32_t seq) const {
    return seq_lens[seq] - (static_cast<int32_t>(seq_pages[seq].size()) - 1) * page_tokens;
  }
  // The sequence's keys (or values) gathered into [len][Hkv][D].
  std::vector<T> Contiguous(const std::vector<T>& pool, int32_t seq) const {
    const size_t row = size_t{static_cast<uint32_t>(num_kv_heads)} * head_dim;
    std::vector<T> out;
    for (int32_t t = 0; t < seq_lens[seq]; ++t) {
      const T* src = pool.data() + view().offset(seq_pages[seq][t / page_tokens],
                                                 t % page_tokens, 0);
      out.insert(out.end(), src, src + row);
    }
    return out;
  }
  // One list per sequence, all its pages in logical order (full attention).
  HostPageTable FullTable() const {
    HostPageTable table;
    for (size_t b = 0; b < seq_lens.size(); ++b) {
      table.AddList(seq_pages[b], last_len(static_cast<int32_t>(b)));
    }
    return table;
  }
  // Per-(sequence, KV head) lists, each every page of the sequence (shuffled except
  // the partial last page, which must stay last).
  HostPageTable PerHeadTable(std::mt19937& rng) const {
    HostPageTable table;
    table.table_heads = num_kv_heads;
    for (size_t b = 0; b < seq_lens.size(); ++b) {
      for (int32_t h = 0; h < num_kv_heads; ++h) {
        std::vector<int32_t> pages = seq_pages[b];
        std::shuffle(pages.begin(), pages.end() - 1, rng);
        table.AddList(pages, last_len(static_cast<int32_t>(b)));
      }
    }
    return table;
  }
};

// Random keys and values; each sequence's pages at shuffled pool positions, with
// `spare_pages` unused pages mixed in.
template <typename T>
TestPool<T> MakeTestPool(std::mt19937& rng, const std::vector<int32_t>& seq_lens,
                         int32_t page_tokens, int32_t num_kv_heads, int32_t head_dim,
                         int32_t spare_pages = 3) {
  TestPool<T> pool;
  pool.page_tokens = page_tokens;
  pool.num_kv_heads = num_kv_heads;
  pool.head_dim = head_dim;
  pool.seq_lens = seq_lens;
  int32_t used = 0;
  for (int32_t len : seq_lens) used += (len + page_tokens - 1) / page_tokens;
  pool.num_pages = used + spare_pages;
  std::vector<int32_t> order(pool.num_pages);
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), rng);
  size_t next = 0;
  for (int32_t len : seq_lens) {
    std::vector<int32_t> pages((len + page_tokens - 1) / page_tokens);
    for (int32_t& p : pages) p = order[next++];
    pool.seq_pages.push_back(pages);
  }
  const size_t elems = size_t{static_cast<uint32_t>(pool.num_pages)} * page_tokens *
                       num_kv_heads * head_dim;
  pool.k = RandomVector<T>(rng, elems);
  pool.v = RandomVector<T>(rng, elems);
  return pool;
}

}  // namespace kernels
}  // namespace freekv

#endif  // FREEKV_KERNELS_TEST_POOL_H_
