#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/attention.h"
#include "kernels/decode_attention.h"
#include "kernels/test_pool.h"

namespace freekv {
namespace kernels {
namespace {

constexpr int kHq = 8, kHkv = 2, kDim = 16, kPage = 4;

DecodeOptions Options(int pages_per_split = 0) {
  return DecodeOptions{kHq, 1.0f / std::sqrt(float{kDim}), pages_per_split};
}

// Full attention of each sequence's last token, from the contiguous copy.
std::vector<float> FullFromContiguous(const TestPool<float>& pool,
                                      const std::vector<float>& q) {
  std::vector<float> out(q.size());
  const AttentionDims dims{kHq, kHkv, kDim, Options().scale};
  for (size_t b = 0; b < pool.seq_lens.size(); ++b) {
    const std::vector<float> k = pool.Contiguous(pool.k, b);
    const std::vector<float> v = pool.Contiguous(pool.v, b);
    EXPECT_TRUE(CausalAttentionRef<float>(
                    absl::MakeConstSpan(q).subspan(b * kHq * kDim, kHq * kDim), k, v, dims,
                    absl::MakeSpan(out).subspan(b * kHq * kDim, kHq * kDim))
                    .ok());
  }
  return out;
}

TEST(PagedDecodeRefTest, AllPagesEqualsFullAttentionForSharedAndPerHeadTables) {
  std::mt19937 rng(12);
  const std::vector<int32_t> lens = {1, 4, 13, 30};  // partial and full last pages
  const TestPool<float> pool = MakeTestPool<float>(rng, lens, kPage, kHkv, kDim);
  const std::vector<float> q = RandomVector<float>(rng, lens.size() * kHq * kDim);
  const std::vector<float> expected = FullFromContiguous(pool, q);
  for (const HostPageTable& table : {pool.FullTable(), pool.PerHeadTable(rng)}) {
    std::vector<float> out(q.size());
    ASSERT_TRUE(PagedDecodeAttentionRef<float>(q, pool.view(), table.view(), Options(),
                                               absl::MakeSpan(out)).ok());
    EXPECT_LT(RelativeL2(out, expected), 1e-6) << "table_heads " << table.table_heads;
  }
}

TEST(PagedDecodeRefTest, SplitKDoesNotChangeTheResult) {
  std::mt19937 rng(13);
  const std::vector<int32_t> lens = {37, 64, 5};
  const TestPool<float> pool = MakeTestPool<float>(rng, lens, kPage, kHkv, kDim);
  const std::vector<float> q = RandomVector<float>(rng, lens.size() * kHq * kDim, -4, 4);
  const HostPageTable table = pool.PerHeadTable(rng);
  std::vector<float> whole(q.size()), lse_whole(lens.size() * kHq);
  ASSERT_TRUE(PagedDecodeAttentionRef<float>(q, pool.view(), table.view(), Options(),
                                             absl::MakeSpan(whole),
                                             absl::MakeSpan(lse_whole)).ok());
  for (int split : {1, 3, 100}) {
    std::vector<float> out(q.size()), lse(lse_whole.size());
    ASSERT_TRUE(PagedDecodeAttentionRef<float>(q, pool.view(), table.view(),
                                               Options(split), absl::MakeSpan(out),
                                               absl::MakeSpan(lse)).ok());
    EXPECT_LT(RelativeL2(out, whole), 1e-6) << "split " << split;
    EXPECT_LT(RelativeL2(lse, lse_whole), 1e-6) << "split " << split;
  }
}

TEST(PagedDecodeRefTest, PerHeadListsAttendOnlyTheirOwnPages) {
  std::mt19937 rng(14);
  const TestPool<float> pool = MakeTestPool<float>(rng, {40}, kPage, kHkv, kDim);
  const std::vector<float> q = RandomVector<float>(rng, kHq * kDim);
  // Head 0 keeps logical pages {0, 9} (9 is the partial last), head 1 {3, 5, 9}.
  HostPageTable table;
  table.table_heads = kHkv;
  const auto& p = pool.seq_pages[0];
  table.AddList({p[0], p[9]}, pool.last_len(0));
  table.AddList({p[5], p[3], p[9]}, pool.last_len(0));
  std::vector<float> out(q.size());
  ASSERT_TRUE(PagedDecodeAttentionRef<float>(q, pool.view(), table.view(), Options(),
                                             absl::MakeSpan(out)).ok());
  // The same through a pool holding only those pages, as full attention.
  const std::vector<std::vector<int>> kept = {{0, 9}, {3, 5, 9}};
  for (int h = 0; h < kHkv; ++h) {
    HostPageTable one;
    std::vector<int32_t> pages;
    for (int logical : kept[h]) pages.push_back(p[logical]);
    one.AddList(pages, pool.last_len(0));
    std::vector<float> all(q.size());
    ASSERT_TRUE(PagedDecodeAttentionRef<float>(q, pool.view(), one.view(), Options(),
                                               absl::MakeSpan(all)).ok());
    const int group = kHq / kHkv;
    for (int i = h * group * kDim; i < (h + 1) * group * kDim; ++i) {
      EXPECT_NEAR(out[i], all[i], 1e-6);  // same pages, another order
    }
  }
}

TEST(PagedDecodeRefTest, InterleavedKvPoolLayoutIsHonoured) {
  std::mt19937 rng(15);
  const TestPool<float> pool = MakeTestPool<float>(rng, {11, 7}, kPage, kHkv, kDim);
  // Same data as [page][K|V][token][head][dim].
  const int64_t pe = pool.view().page_elems();
  std::vector<float> kv(2 * pe * pool.num_pages);
  for (int p = 0; p < pool.num_pages; ++p) {
    std::copy_n(pool.k.begin() + p * pe, pe, kv.begin() + 2 * p * pe);
    std::copy_n(pool.v.begin() + p * pe, pe, kv.begin() + (2 * p + 1) * pe);
  }
  PagedKv<const float> view = pool.view();
  view.k = kv.data();
  view.v = kv.data() + pe;
  view.page_stride = 2 * pe;
  const std::vector<float> q = RandomVector<float>(rng, 2 * kHq * kDim);
  const HostPageTable table = pool.FullTable();
  std::vector<float> a(q.size()), b(q.size());
  ASSERT_TRUE(PagedDecodeAttentionRef<float>(q, pool.view(), table.view(), Options(),
                                             absl::MakeSpan(a)).ok());
  ASSERT_TRUE(PagedDecodeAttentionRef<float>(q, view, table.view(), Options(),
                                             absl::MakeSpan(b)).ok());
  EXPECT_EQ(a, b);
}

TEST(PagedDecodeRefTest, RejectsBadTablesByField) {
  std::mt19937 rng(16);
  const TestPool<float> pool = MakeTestPool<float>(rng, {8}, kPage, kHkv, kDim);
  const std::vector<float> q = RandomVector<float>(rng, kHq * kDim);
  std::vector<float> out(q.size());
  HostPageTable table = pool.FullTable();
  table.last_page_len[0] = kPage + 1;
  absl::Status s = PagedDecodeAttentionRef<float>(q, pool.view(), table.view(), Options(),
                                                  absl::MakeSpan(out));
  EXPECT_NE(s.message().find("last_page_len"), std::string::npos) << s;
  table = pool.FullTable();
  table.indices[1] = pool.num_pages;
  s = PagedDecodeAttentionRef<float>(q, pool.view(), table.view(), Options(),
                                     absl::MakeSpan(out));
  EXPECT_NE(s.message().find("indices[1]"), std::string::npos) << s;
}

TEST(MergeStatesRefTest, MergingHalvesEqualsTheWholeAndEmptyPartsVanish) {
  // Two parts of one row (head_dim 2): states of logits {0} and {ln 3}.
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<float> o = {1, 2, /*part 1*/ 5, 6, /*part 2 (empty)*/ 9, 9};
  const std::vector<float> lse = {0.0f, std::log(3.0f), -inf};
  std::vector<float> out(2), out_lse(1);
  ASSERT_TRUE(MergeStatesRef(o, lse, 3, 2, absl::MakeSpan(out), absl::MakeSpan(out_lse)).ok());
  EXPECT_NEAR(out[0], 0.25f * 1 + 0.75f * 5, 1e-6);
  EXPECT_NEAR(out[1], 0.25f * 2 + 0.75f * 6, 1e-6);
  EXPECT_NEAR(out_lse[0], std::log(4.0f), 1e-6);
}

}  // namespace
}  // namespace kernels
}  // namespace freekv
