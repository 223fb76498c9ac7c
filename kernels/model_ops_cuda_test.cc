// GPU tests of rope.h, rmsnorm.h and mlp.h against their CPU references.
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cuda_test_util.h"
#include "kernels/mlp.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope.h"

namespace freekv {
namespace kernels {
namespace {

template <typename T>
class ModelOpsCudaTest : public ::testing::Test {};
using Types = ::testing::Types<float, BFloat16>;
TYPED_TEST_SUITE(ModelOpsCudaTest, Types);

TYPED_TEST(ModelOpsCudaTest, RopeMatchesReferenceForBothStylesAndLongPositions) {
  using T = TypeParam;
  std::mt19937 rng(100);
  const int tokens = 37, heads = 32, dim = 128;
  RopeConfig config;
  config.head_dim = dim;
  config.theta = 500000.0f;
  config.llama3_factor = 8.0f;
  const std::vector<float> inv_freq = Must(RopeInvFreq(config));
  std::vector<int32_t> pos(tokens);
  for (int32_t& p : pos) p = std::uniform_int_distribution<int>(0, 131071)(rng);
  for (RopeStyle style : {RopeStyle::kInterleaved, RopeStyle::kHalf}) {
    std::vector<T> x = RandomVector<T>(rng, tokens * heads * dim, -2, 2);
    DeviceBuffer dx = Up(x), dpos = Up(pos), dfreq = Up(inv_freq);
    ASSERT_TRUE(ApplyRopeRef<T>(absl::MakeSpan(x), pos, inv_freq, heads, style).ok());
    ASSERT_TRUE(ApplyRopeCuda<T>(dx.span<T>(), dpos.span<const int32_t>(),
                                 dfreq.span<const float>(), heads, style, nullptr).ok());
    const double err = RelativeL2(Down<T>(dx), x);
    EXPECT_LT(err, Tolerance<T>()) << "style " << static_cast<int>(style);
    std::printf("rope style %d: relative L2 %.3g\n", static_cast<int>(style), err);
  }
}

TYPED_TEST(ModelOpsCudaTest, RmsNormMatchesReference) {
  using T = TypeParam;
  std::mt19937 rng(101);
  for (int dim : {288, 4096}) {
    const std::vector<T> x = RandomVector<T>(rng, 9 * dim, -3, 3);
    const std::vector<T> w = RandomVector<T>(rng, dim, 0.5f, 1.5f);
    std::vector<T> ref(x.size());
    ASSERT_TRUE(RmsNormRef<T>(x, w, 1e-5f, absl::MakeSpan(ref)).ok());
    DeviceBuffer dx = Up(x), dw = Up(w), dout = Poisoned<T>(x.size());
    ASSERT_TRUE(RmsNormCuda<T>(dx.span<const T>(), dw.span<const T>(), 1e-5f,
                               dout.span<T>(), nullptr).ok());
    const double err = RelativeL2(Down<T>(dout), ref);
    EXPECT_LT(err, Tolerance<T>()) << "dim " << dim;
    std::printf("rmsnorm dim %d: relative L2 %.3g\n", dim, err);
  }
}

TYPED_TEST(ModelOpsCudaTest, SiluMulAndAddMatchReference) {
  using T = TypeParam;
  std::mt19937 rng(102);
  const size_t n = 3 * 14336 + 5;
  const std::vector<T> a = RandomVector<T>(rng, n, -6, 6), b = RandomVector<T>(rng, n);
  std::vector<T> silu(n), sum(n);
  ASSERT_TRUE(SiluMulRef<T>(a, b, absl::MakeSpan(silu)).ok());
  ASSERT_TRUE(AddRef<T>(a, b, absl::MakeSpan(sum)).ok());
  DeviceBuffer da = Up(a), db = Up(b), d1 = Poisoned<T>(n), d2 = Poisoned<T>(n);
  ASSERT_TRUE(SiluMulCuda<T>(da.span<const T>(), db.span<const T>(), d1.span<T>(), nullptr).ok());
  ASSERT_TRUE(AddCuda<T>(da.span<const T>(), db.span<const T>(), d2.span<T>(), nullptr).ok());
  EXPECT_LT(RelativeL2(Down<T>(d1), silu), Tolerance<T>());
  EXPECT_LT(RelativeL2(Down<T>(d2), sum), Tolerance<T>());
}

}  // namespace
}  // namespace kernels
}  // namespace freekv
