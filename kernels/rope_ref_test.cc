#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/rope.h"
#include "kernels/test_util.h"

namespace freekv {
namespace kernels {
namespace {

std::vector<float> InvFreq(int32_t head_dim, float theta = 10000.0f) {
  RopeConfig config;
  config.head_dim = head_dim;
  config.theta = theta;
  return RopeInvFreq(config).value();
}

TEST(RopeRefTest, InvFreqMatchesTheFormula) {
  const std::vector<float> f = InvFreq(4);
  ASSERT_EQ(f.size(), 2u);
  EXPECT_FLOAT_EQ(f[0], 1.0f);
  EXPECT_FLOAT_EQ(f[1], 0.01f);  // 10000^(-2/4)
}

TEST(RopeRefTest, HandDerivedInterleavedRotation) {
  std::vector<float> x = {1, 0, 1, 0};  // one token, one head
  const std::vector<int32_t> pos = {1};
  ASSERT_TRUE(ApplyRopeRef<float>(absl::MakeSpan(x), pos, InvFreq(4), 1,
                                  RopeStyle::kInterleaved).ok());
  EXPECT_FLOAT_EQ(x[0], std::cos(1.0f));
  EXPECT_FLOAT_EQ(x[1], std::sin(1.0f));
  EXPECT_FLOAT_EQ(x[2], std::cos(0.01f));
  EXPECT_FLOAT_EQ(x[3], std::sin(0.01f));
}

TEST(RopeRefTest, HandDerivedHalfRotation) {
  std::vector<float> x = {0, 2, 1, 0};  // pairs (x0, x2) and (x1, x3)
  const std::vector<int32_t> pos = {2};
  ASSERT_TRUE(
      ApplyRopeRef<float>(absl::MakeSpan(x), pos, InvFreq(4), 1, RopeStyle::kHalf).ok());
  EXPECT_FLOAT_EQ(x[0], -std::sin(2.0f));  // (0, 1) by 2 rad
  EXPECT_FLOAT_EQ(x[2], std::cos(2.0f));
  EXPECT_FLOAT_EQ(x[1], 2 * std::cos(0.02f));  // (2, 0) by 0.02 rad
  EXPECT_FLOAT_EQ(x[3], 2 * std::sin(0.02f));
}

TEST(RopeRefTest, PositionZeroIsIdentityAndNormsArePreserved) {
  std::mt19937 rng(1);
  const int32_t heads = 3, dim = 16;
  std::vector<float> x = RandomVector<float>(rng, 2 * heads * dim);
  const std::vector<float> orig = x;
  const std::vector<int32_t> pos = {0, 777};
  ASSERT_TRUE(ApplyRopeRef<float>(absl::MakeSpan(x), pos, InvFreq(dim), heads,
                                  RopeStyle::kInterleaved).ok());
  for (int i = 0; i < heads * dim; ++i) EXPECT_EQ(x[i], orig[i]);
  for (int i = heads * dim; i < 2 * heads * dim; i += 2) {
    EXPECT_NEAR(std::hypot(x[i], x[i + 1]), std::hypot(orig[i], orig[i + 1]), 1e-5);
  }
}

TEST(RopeRefTest, HalfStyleIsInterleavedOnPermutedDims) {
  std::mt19937 rng(2);
  const int32_t dim = 8, half = 4;
  std::vector<float> a = RandomVector<float>(rng, dim);
  std::vector<float> b(dim);  // b holds pair j at (j, j + half)
  for (int j = 0; j < half; ++j) {
    b[j] = a[2 * j];
    b[j + half] = a[2 * j + 1];
  }
  const std::vector<int32_t> pos = {123};
  ASSERT_TRUE(ApplyRopeRef<float>(absl::MakeSpan(a), pos, InvFreq(dim), 1,
                                  RopeStyle::kInterleaved).ok());
  ASSERT_TRUE(
      ApplyRopeRef<float>(absl::MakeSpan(b), pos, InvFreq(dim), 1, RopeStyle::kHalf).ok());
  for (int j = 0; j < half; ++j) {
    EXPECT_FLOAT_EQ(b[j], a[2 * j]);
    EXPECT_FLOAT_EQ(b[j + half], a[2 * j + 1]);
  }
}

TEST(RopeRefTest, DotProductDependsOnlyOnRelativePosition) {
  std::mt19937 rng(3);
  const int32_t dim = 32;
  const std::vector<float> q0 = RandomVector<float>(rng, dim);
  const std::vector<float> k0 = RandomVector<float>(rng, dim);
  auto rotated_dot = [&](int32_t qpos, int32_t kpos) {
    std::vector<float> q = q0, k = k0;
    const std::vector<int32_t> qp = {qpos}, kp = {kpos};
    EXPECT_TRUE(ApplyRopeRef<float>(absl::MakeSpan(q), qp, InvFreq(dim), 1,
                                    RopeStyle::kHalf).ok());
    EXPECT_TRUE(ApplyRopeRef<float>(absl::MakeSpan(k), kp, InvFreq(dim), 1,
                                    RopeStyle::kHalf).ok());
    double s = 0;
    for (int i = 0; i < dim; ++i) s += q[i] * k[i];
    return s;
  };
  EXPECT_NEAR(rotated_dot(10, 3), rotated_dot(107, 100), 1e-4);
}

TEST(RopeRefTest, Llama3ScalingKeepsHighAndStretchesLowFrequencies) {
  RopeConfig config;
  config.head_dim = 128;
  config.theta = 500000.0f;
  const std::vector<float> plain = RopeInvFreq(config).value();
  config.llama3_factor = 8.0f;
  const std::vector<float> scaled = RopeInvFreq(config).value();
  EXPECT_FLOAT_EQ(scaled[0], plain[0]);          // wavelength 2*pi: kept
  EXPECT_FLOAT_EQ(scaled[63], plain[63] / 8.0f);  // longest wavelength: stretched
}

TEST(RopeRefTest, Bf16MatchesFloatWithinBf16Rounding) {
  std::mt19937 rng(4);
  const int32_t heads = 4, dim = 64, tokens = 5;
  std::vector<float> xf = RandomVector<float>(rng, tokens * heads * dim);
  std::vector<BFloat16> xb(xf.size());
  for (size_t i = 0; i < xf.size(); ++i) {
    xb[i] = ToBFloat16(xf[i]);
    xf[i] = ToFloat(xb[i]);
  }
  const std::vector<int32_t> pos = {0, 5, 99, 1000, 4096};
  ASSERT_TRUE(ApplyRopeRef<float>(absl::MakeSpan(xf), pos, InvFreq(dim), heads,
                                  RopeStyle::kHalf).ok());
  ASSERT_TRUE(ApplyRopeRef<BFloat16>(absl::MakeSpan(xb), pos, InvFreq(dim), heads,
                                     RopeStyle::kHalf).ok());
  EXPECT_LT(RelativeL2(xb, xf), 1e-2);
}

TEST(RopeRefTest, RejectsBadShapesByName) {
  RopeConfig config;
  config.head_dim = 7;
  EXPECT_NE(RopeInvFreq(config).status().message().find("head_dim"), std::string::npos);
  std::vector<float> x(10);
  const std::vector<int32_t> pos = {0};
  const absl::Status s =
      ApplyRopeRef<float>(absl::MakeSpan(x), pos, InvFreq(4), 2, RopeStyle::kHalf);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("x"), std::string::npos);
}

}  // namespace
}  // namespace kernels
}  // namespace freekv
