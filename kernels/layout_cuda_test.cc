// GPU tests of layout.h against its CPU references: bit-exact permutations.
#include <algorithm>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cuda_test_util.h"
#include "kernels/layout.h"

namespace freekv {
namespace kernels {
namespace {

template <typename T>
class LayoutCudaTest : public ::testing::Test {};
using Types = ::testing::Types<float, BFloat16>;
TYPED_TEST_SUITE(LayoutCudaTest, Types);

template <typename T>
bool BitEqual(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

TYPED_TEST(LayoutCudaTest, NhdToHndAndBackAreBitExact) {
  using T = TypeParam;
  std::mt19937 rng(400);
  for (int dim : {128, 64}) {
    const int hkv = 8, page = 32;
    const TestPool<T> pool = MakeTestPool<T>(rng, {32 * 50}, page, hkv, dim);
    std::vector<int32_t> pages = pool.seq_pages[0];
    std::shuffle(pages.begin(), pages.end(), rng);
    const size_t block = size_t{2} * hkv * page * dim;
    std::vector<T> ref_blocks(pages.size() * block);
    ASSERT_TRUE(NhdToHndRef<T>(pool.view(), pages, absl::MakeSpan(ref_blocks)).ok());
    DeviceBuffer dk = Up(pool.k), dv = Up(pool.v), dpages = Up(pages);
    DeviceBuffer dblocks = Poisoned<T>(ref_blocks.size());
    PagedKv<const T> src = pool.view();
    src.k = dk.span<const T>().data();
    src.v = dv.span<const T>().data();
    ASSERT_TRUE(NhdToHndCuda<T>(src, dpages.span<const int32_t>(), dblocks.span<T>(), nullptr).ok());
    EXPECT_TRUE(BitEqual(Down<T>(dblocks), ref_blocks)) << "dim " << dim;

    // Recall: every (page, head) slice into random distinct (pool page, head) slots.
    const size_t n = pages.size() * hkv;
    std::vector<int32_t> slots(size_t(pool.num_pages) * hkv);
    std::iota(slots.begin(), slots.end(), 0);
    std::shuffle(slots.begin(), slots.end(), rng);
    std::vector<int32_t> dst_pages(n), dst_heads(n);
    for (size_t i = 0; i < n; ++i) {
      dst_pages[i] = slots[i] / hkv;
      dst_heads[i] = slots[i] % hkv;
    }
    TestPool<T> ref_pool = MakeTestPool<T>(rng, {32 * 50}, page, hkv, dim);
    DeviceBuffer rk = Up(ref_pool.k), rv = Up(ref_pool.v);  // same starting contents
    DeviceBuffer dp = Up(dst_pages), dh = Up(dst_heads);
    PagedKv<T> ref_view{ref_pool.k.data(), ref_pool.v.data(), ref_pool.view().page_stride,
                        ref_pool.num_pages, page, hkv, dim};
    ASSERT_TRUE(HndToNhdRef<T>(ref_blocks, dst_pages, dst_heads, ref_view).ok());
    PagedKv<T> dst = ref_view;
    dst.k = rk.span<T>().data();
    dst.v = rv.span<T>().data();
    ASSERT_TRUE(HndToNhdCuda<T>(dblocks.span<const T>(), dp.span<const int32_t>(),
                                dh.span<const int32_t>(), dst, nullptr).ok());
    EXPECT_TRUE(BitEqual(Down<T>(rk), ref_pool.k)) << "dim " << dim;
    EXPECT_TRUE(BitEqual(Down<T>(rv), ref_pool.v)) << "dim " << dim;
  }
}

TEST(LayoutCudaStandaloneTest, RejectsRowsThatAreNotWholeVectors) {
  std::mt19937 rng(401);
  const TestPool<BFloat16> pool = MakeTestPool<BFloat16>(rng, {32}, 32, 2, 12);
  DeviceBuffer dk = Up(pool.k), dv = Up(pool.v), dp = Up(pool.seq_pages[0]);
  PagedKv<const BFloat16> src = pool.view();
  src.k = dk.span<const BFloat16>().data();
  src.v = dv.span<const BFloat16>().data();
  DeviceBuffer out = Poisoned<BFloat16>(2 * 2 * 32 * 12);
  const absl::Status s = NhdToHndCuda<BFloat16>(src, dp.span<const int32_t>(),
                                                out.span<BFloat16>(), nullptr);
  EXPECT_NE(s.message().find("head_dim 12"), std::string::npos) << s;
}

}  // namespace
}  // namespace kernels
}  // namespace freekv
