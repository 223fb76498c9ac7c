#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/mlp.h"
#include "kernels/test_util.h"

namespace freekv {
namespace kernels {
namespace {

TEST(MlpRefTest, SiluMulHandValues) {
  const std::vector<float> gate = {0.0f, 1.0f, -2.0f, 30.0f};
  const std::vector<float> up = {5.0f, 2.0f, 1.0f, 0.5f};
  std::vector<float> out(4);
  ASSERT_TRUE(SiluMulRef<float>(gate, up, absl::MakeSpan(out)).ok());
  EXPECT_FLOAT_EQ(out[0], 0.0f);
  EXPECT_FLOAT_EQ(out[1], 2.0f / (1.0f + std::exp(-1.0f)));
  EXPECT_FLOAT_EQ(out[2], -2.0f / (1.0f + std::exp(2.0f)));
  EXPECT_NEAR(out[3], 15.0f, 1e-5);  // silu(x) -> x for large x
}

TEST(MlpRefTest, AddIsElementwiseAndMayAliasItsOutput) {
  std::mt19937 rng(7);
  std::vector<float> a = RandomVector<float>(rng, 100);
  const std::vector<float> b = RandomVector<float>(rng, 100);
  const std::vector<float> orig = a;
  ASSERT_TRUE(AddRef<float>(a, b, absl::MakeSpan(a)).ok());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_FLOAT_EQ(a[i], orig[i] + b[i]);
}

TEST(MlpRefTest, Bf16RoundsOnceOnStore) {
  const std::vector<BFloat16> gate = {ToBFloat16(1.5f)};
  const std::vector<BFloat16> up = {ToBFloat16(-3.0f)};
  std::vector<BFloat16> out(1);
  ASSERT_TRUE(SiluMulRef<BFloat16>(gate, up, absl::MakeSpan(out)).ok());
  const float expected = 1.5f / (1.0f + std::exp(-1.5f)) * -3.0f;
  EXPECT_EQ(out[0].bits, ToBFloat16(expected).bits);
}

TEST(MlpRefTest, RejectsMismatchedSizes) {
  const std::vector<float> a(4), b(3);
  std::vector<float> out(4);
  EXPECT_EQ(SiluMulRef<float>(a, b, absl::MakeSpan(out)).code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kernels
}  // namespace freekv
