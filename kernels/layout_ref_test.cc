#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/layout.h"
#include "kernels/test_pool.h"

namespace freekv {
namespace kernels {
namespace {

constexpr int kPage = 4, kHkv = 3, kDim = 8;

TEST(LayoutRefTest, NhdToHndPlacesEachHeadSliceContiguously) {
  std::mt19937 rng(50);
  const TestPool<BFloat16> pool = MakeTestPool<BFloat16>(rng, {16}, kPage, kHkv, kDim);
  const std::vector<int32_t> pages = {pool.seq_pages[0][2], pool.seq_pages[0][0]};
  std::vector<BFloat16> blocks(2 * kHkv * 2 * kPage * kDim);
  ASSERT_TRUE(NhdToHndRef<BFloat16>(pool.view(), pages, absl::MakeSpan(blocks)).ok());
  for (int i = 0; i < 2; ++i)
    for (int h = 0; h < kHkv; ++h)
      for (int kv = 0; kv < 2; ++kv)
        for (int t = 0; t < kPage; ++t)
          for (int d = 0; d < kDim; ++d) {
            const BFloat16 got =
                blocks[((((i * kHkv + h) * 2 + kv) * kPage) + t) * kDim + d];
            const auto& src = kv == 0 ? pool.k : pool.v;
            EXPECT_EQ(got.bits, src[pool.view().offset(pages[i], t, h) + d].bits);
          }
}

TEST(LayoutRefTest, RoundTripThroughHeadSlicesIsBitExactAndTouchesOnlyItsHead) {
  std::mt19937 rng(51);
  const TestPool<float> src = MakeTestPool<float>(rng, {8}, kPage, kHkv, kDim, 0);
  std::vector<float> blocks(2 * kHkv * 2 * kPage * kDim);
  ASSERT_TRUE(NhdToHndRef<float>(src.view(), src.seq_pages[0], absl::MakeSpan(blocks)).ok());
  // Recall head 1 of both pages into pool pages 3 and 0 of a fresh pool.
  TestPool<float> dst = MakeTestPool<float>(rng, {16}, kPage, kHkv, kDim, 0);
  const std::vector<float> before_k = dst.k;
  const size_t slice = 2 * kPage * kDim;
  std::vector<float> slices;
  for (int i = 0; i < 2; ++i) {
    const auto first = blocks.begin() + (i * kHkv + 1) * slice;
    slices.insert(slices.end(), first, first + slice);
  }
  const std::vector<int32_t> dst_pages = {3, 0}, dst_heads = {1, 1};
  PagedKv<float> view{dst.k.data(), dst.v.data(), dst.view().page_stride, dst.num_pages,
                      kPage, kHkv, kDim};
  ASSERT_TRUE(HndToNhdRef<float>(slices, dst_pages, dst_heads, view).ok());
  for (int i = 0; i < 2; ++i)
    for (int h = 0; h < kHkv; ++h)
      for (int t = 0; t < kPage; ++t)
        for (int d = 0; d < kDim; ++d) {
          const int64_t at = view.offset(dst_pages[i], t, h) + d;
          const float expected =
              h == 1 ? src.k[src.view().offset(src.seq_pages[0][i], t, h) + d] : before_k[at];
          EXPECT_EQ(dst.k[at], expected);
          if (h == 1) {
            EXPECT_EQ(dst.v[at], src.v[src.view().offset(src.seq_pages[0][i], t, h) + d]);
          }
        }
}

TEST(LayoutRefTest, RejectsHeadOutOfRange) {
  std::mt19937 rng(52);
  TestPool<float> dst = MakeTestPool<float>(rng, {4}, kPage, kHkv, kDim, 0);
  const std::vector<float> slices(2 * kPage * kDim, 1.0f);
  const std::vector<int32_t> pages = {0}, heads = {kHkv};
  PagedKv<float> view{dst.k.data(), dst.v.data(), dst.view().page_stride, 1, kPage, kHkv, kDim};
  const absl::Status s = HndToNhdRef<float>(slices, pages, heads, view);
  EXPECT_NE(s.message().find("dst_heads[0]"), std::string::npos) << s;
}

}  // namespace
}  // namespace kernels
}  // namespace freekv
