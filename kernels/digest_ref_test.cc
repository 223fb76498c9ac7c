#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/digest.h"
#include "kernels/test_pool.h"

namespace freekv {
namespace kernels {
namespace {

TEST(PageDigestRefTest, HandDerivedMaxAndMin) {
  // One page of 2 tokens, 1 head, 2 channels: keys (1, -3) and (2, -5).
  const std::vector<float> k = {1, -3, 2, -5};
  const std::vector<float> v = {0.5f, 0.5f, 0.5f, 0.5f};
  const PagedKv<const float> pool{k.data(), v.data(), 4, 1, 2, 1, 2};
  std::vector<float> digest(4, 7.0f);
  const std::vector<int32_t> pages = {0}, seqs = {0}, logical = {0};
  ASSERT_TRUE(PageDigestRef<float>(pool, {pages, seqs, logical},
                                   {absl::MakeSpan(digest), 1, 1, 1, 2}).ok());
  EXPECT_EQ(digest, (std::vector<float>{2, -3, 1, -5}));
}

TEST(PageDigestRefTest, BoundsEveryKeyTightlyAndTouchesOnlyItsSlots) {
  std::mt19937 rng(20);
  const int page = 8, hkv = 2, dim = 16;
  const TestPool<BFloat16> pool = MakeTestPool<BFloat16>(rng, {40, 24}, page, hkv, dim);
  const int max_pages = 6;
  const BFloat16 sentinel = ToBFloat16(1234.0f);
  std::vector<BFloat16> data(2 * max_pages * hkv * 2 * dim, sentinel);
  const DigestTable<BFloat16> table{absl::MakeSpan(data), 2, max_pages, hkv, dim};
  // Full pages only: logical 0..4 of sequence 0 and 0..2 of sequence 1, not 1 of seq 1.
  std::vector<int32_t> pages, seqs, logical;
  for (int b = 0; b < 2; ++b) {
    for (int p = 0; p < pool.seq_lens[b] / page; ++p) {
      if (b == 1 && p == 1) continue;
      pages.push_back(pool.seq_pages[b][p]);
      seqs.push_back(b);
      logical.push_back(p);
    }
  }
  ASSERT_TRUE(PageDigestRef<BFloat16>(pool.view(), {pages, seqs, logical}, table).ok());
  for (size_t j = 0; j < pages.size(); ++j) {
    for (int h = 0; h < hkv; ++h) {
      const BFloat16* kmax = data.data() + table.offset(seqs[j], logical[j], h);
      for (int c = 0; c < dim; ++c) {
        bool hit_max = false, hit_min = false;
        for (int t = 0; t < page; ++t) {
          const BFloat16 key = pool.k[pool.view().offset(pages[j], t, h) + c];
          EXPECT_LE(ToFloat(key), ToFloat(kmax[c]));
          EXPECT_GE(ToFloat(key), ToFloat(kmax[dim + c]));
          hit_max |= key.bits == kmax[c].bits;  // exact: a bf16 key value
          hit_min |= key.bits == kmax[dim + c].bits;
        }
        EXPECT_TRUE(hit_max && hit_min) << "page " << j << " head " << h << " dim " << c;
      }
    }
  }
  const BFloat16* skipped = data.data() + table.offset(1, 1, 0);
  for (int i = 0; i < hkv * 2 * dim; ++i) EXPECT_EQ(skipped[i].bits, sentinel.bits);
}

TEST(PageDigestRefTest, RejectsOutOfRangeJob) {
  std::mt19937 rng(21);
  const TestPool<float> pool = MakeTestPool<float>(rng, {8}, 4, 1, 8);
  std::vector<float> data(2 * 1 * 2 * 8);
  const std::vector<int32_t> pages = {0}, seqs = {0}, logical = {2};
  const absl::Status s = PageDigestRef<float>(pool.view(), {pages, seqs, logical},
                                              {absl::MakeSpan(data), 1, 2, 1, 8});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("logical page 2"), std::string::npos) << s;
}

}  // namespace
}  // namespace kernels
}  // namespace freekv
