#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/digest.h"
#include "kernels/score.h"
#include "kernels/test_pool.h"

namespace freekv {
namespace kernels {
namespace {

TEST(PageScoreRefTest, HandDerivedScore) {
  const std::vector<float> q = {1, -2};
  const std::vector<float> digest = {3, 1, -1, -4};  // kmax (3, 1), kmin (-1, -4)
  const std::vector<int32_t> begin = {0}, count = {1};
  std::vector<float> scores(2);
  ASSERT_TRUE(PageScoreRef<float>(q, 1, {digest, 1, 1, 1, 2}, {begin, count, 2}, 0.5f, {},
                                  absl::MakeSpan(scores)).ok());
  EXPECT_FLOAT_EQ(scores[0], 0.5f * (3 + 8));  // max(3, -1) + max(-2, 8)
  EXPECT_EQ(scores[1], -INFINITY);             // beyond count
}

TEST(PageScoreRefTest, ScoreBoundsEveryKeyOfThePageWithGqaAndVariableLengths) {
  std::mt19937 rng(22);
  const int page = 4, hkv = 2, hq = 6, dim = 8, max_pages = 10;
  const std::vector<int32_t> lens = {40, 21};
  const TestPool<float> pool = MakeTestPool<float>(rng, lens, page, hkv, dim);
  std::vector<float> data(2 * max_pages * hkv * 2 * dim);
  const DigestTable<float> table{absl::MakeSpan(data), 2, max_pages, hkv, dim};
  std::vector<int32_t> pages, seqs, logical;
  for (int b = 0; b < 2; ++b) {
    for (int p = 0; p < lens[b] / page; ++p) {
      pages.push_back(pool.seq_pages[b][p]);
      seqs.push_back(b);
      logical.push_back(p);
    }
  }
  ASSERT_TRUE(PageDigestRef<float>(pool.view(), {pages, seqs, logical}, table).ok());
  const std::vector<float> q = RandomVector<float>(rng, 2 * hq * dim);
  const std::vector<int32_t> begin = {1, 0}, count = {8, 5};
  const int max_cand = 9;
  std::vector<float> scores(2 * hq * max_cand);
  const float scale = 0.25f;
  ASSERT_TRUE(PageScoreRef<float>(q, hq, {table.data, 2, max_pages, hkv, dim},
                                  {begin, count, max_cand}, scale, {},
                                  absl::MakeSpan(scores)).ok());
  for (int b = 0; b < 2; ++b) {
    for (int h = 0; h < hq; ++h) {
      for (int j = 0; j < max_cand; ++j) {
        const float s = scores[(b * hq + h) * max_cand + j];
        if (j >= count[b]) {
          EXPECT_EQ(s, -INFINITY);
          continue;
        }
        const int pool_page = pool.seq_pages[b][begin[b] + j];
        for (int t = 0; t < page; ++t) {
          const float* key = pool.k.data() + pool.view().offset(pool_page, t, h / 3);
          float dot = 0;
          for (int c = 0; c < dim; ++c) dot += q[(b * hq + h) * dim + c] * key[c];
          EXPECT_GE(s + 1e-5f, scale * dot);
        }
      }
    }
  }
}

TEST(PageScoreRefTest, MaskedHeadsAreLeftUntouched) {
  const std::vector<float> q = {1, 1, 1, 1};  // 2 q heads, 2 kv heads, dim 2
  const std::vector<float> digest = {1, 1, 0, 0, 2, 2, 0, 0};
  const std::vector<int32_t> begin = {0}, count = {1};
  const std::vector<uint8_t> mask = {0, 1};
  std::vector<float> scores = {42, 42};
  ASSERT_TRUE(PageScoreRef<float>(q, 2, {digest, 1, 1, 2, 2}, {begin, count, 1}, 1.0f,
                                  mask, absl::MakeSpan(scores)).ok());
  EXPECT_EQ(scores[0], 42);
  EXPECT_EQ(scores[1], 4);
}

TEST(PageScoreRefTest, RejectsCandidatesBeyondTheTable) {
  const std::vector<float> q(2), digest(4);
  const std::vector<int32_t> begin = {1}, count = {1};
  std::vector<float> scores(1);
  const absl::Status s = PageScoreRef<float>(q, 1, {digest, 1, 1, 1, 2},
                                             {begin, count, 1}, 1.0f, {},
                                             absl::MakeSpan(scores));
  EXPECT_NE(s.message().find("candidates of sequence 0"), std::string::npos) << s;
}

}  // namespace
}  // namespace kernels
}  // namespace freekv
