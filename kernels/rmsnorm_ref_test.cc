#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/rmsnorm.h"
#include "kernels/test_util.h"

namespace freekv {
namespace kernels {
namespace {

TEST(RmsNormRefTest, HandDerivedRow) {
  const std::vector<float> x = {3, 4};  // mean square 12.5
  const std::vector<float> w = {1, 2};
  std::vector<float> out(2);
  ASSERT_TRUE(RmsNormRef<float>(x, w, 0.0f, absl::MakeSpan(out)).ok());
  const float rms = std::sqrt(12.5f);
  EXPECT_FLOAT_EQ(out[0], 3 / rms);
  EXPECT_FLOAT_EQ(out[1], 8 / rms);
}

TEST(RmsNormRefTest, EachRowIsScaleInvariantAndInPlaceWorks) {
  std::mt19937 rng(5);
  const int dim = 48;
  std::vector<float> x = RandomVector<float>(rng, 3 * dim);
  const std::vector<float> w = RandomVector<float>(rng, dim);
  std::vector<float> scaled = x;
  for (int i = dim; i < 2 * dim; ++i) scaled[i] *= 9.5f;  // only row 1
  std::vector<float> out(x.size());
  ASSERT_TRUE(RmsNormRef<float>(x, w, 0.0f, absl::MakeSpan(out)).ok());
  ASSERT_TRUE(RmsNormRef<float>(scaled, w, 0.0f, absl::MakeSpan(scaled)).ok());
  for (size_t i = 0; i < out.size(); ++i) EXPECT_NEAR(scaled[i], out[i], 1e-5);
}

TEST(RmsNormRefTest, EpsilonEntersUnderTheRoot) {
  const std::vector<float> x = {1, 1};
  const std::vector<float> w = {1, 1};
  std::vector<float> out(2);
  ASSERT_TRUE(RmsNormRef<float>(x, w, 3.0f, absl::MakeSpan(out)).ok());
  EXPECT_FLOAT_EQ(out[0], 0.5f);  // 1 / sqrt(1 + 3)
}

TEST(RmsNormRefTest, Bf16MatchesFloat) {
  std::mt19937 rng(6);
  const int dim = 128;
  const std::vector<float> xf = RandomVector<float>(rng, 4 * dim);
  const std::vector<float> wf = RandomVector<float>(rng, dim, 0.5f, 1.5f);
  std::vector<BFloat16> xb(xf.size()), wb(wf.size()), outb(xf.size());
  std::vector<float> xr(xf.size()), wr(wf.size()), outf(xf.size());
  for (size_t i = 0; i < xf.size(); ++i) xr[i] = ToFloat(xb[i] = ToBFloat16(xf[i]));
  for (size_t i = 0; i < wf.size(); ++i) wr[i] = ToFloat(wb[i] = ToBFloat16(wf[i]));
  ASSERT_TRUE(RmsNormRef<float>(xr, wr, 1e-5f, absl::MakeSpan(outf)).ok());
  ASSERT_TRUE(RmsNormRef<BFloat16>(xb, wb, 1e-5f, absl::MakeSpan(outb)).ok());
  EXPECT_LT(RelativeL2(outb, outf), 1e-2);
}

TEST(RmsNormRefTest, RejectsRaggedRows) {
  const std::vector<float> x(10), w(4);
  std::vector<float> out(10);
  const absl::Status s = RmsNormRef<float>(x, w, 1e-5f, absl::MakeSpan(out));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("x has 10"), std::string::npos) << s;
}

}  // namespace
}  // namespace kernels
}  // namespace freekv
