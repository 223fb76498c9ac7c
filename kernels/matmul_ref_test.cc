#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/matmul.h"
#include "kernels/test_util.h"

namespace freekv {
namespace kernels {
namespace {

TEST(MatmulRefTest, HandDerivedProductUsesTransposedWeights) {
  const std::vector<float> x = {1, 2, 3,   // row 0
                                4, 5, 6};  // row 1
  const std::vector<float> w = {1, 0, -1,  // out feature 0
                                2, 1, 0};  // out feature 1
  std::vector<float> out(4);
  ASSERT_TRUE(MatmulRef(x, w, 3, 2, absl::MakeSpan(out)).ok());
  EXPECT_EQ(out, (std::vector<float>{-2, 4, -2, 13}));
}

TEST(MatmulRefTest, MatchesDoublePrecisionOnRandomOddShapes) {
  std::mt19937 rng(8);
  const int rows = 3, in = 37, outf = 23;  // 23 exercises the tail of the 4-wide loop
  const std::vector<float> x = RandomVector<float>(rng, rows * in);
  const std::vector<float> w = RandomVector<float>(rng, outf * in);
  std::vector<float> out(rows * outf);
  ASSERT_TRUE(MatmulRef(x, w, in, outf, absl::MakeSpan(out)).ok());
  std::vector<double> ref(rows * outf, 0.0);
  for (int m = 0; m < rows; ++m)
    for (int n = 0; n < outf; ++n)
      for (int k = 0; k < in; ++k) ref[m * outf + n] += double{x[m * in + k]} * w[n * in + k];
  std::vector<float> reff(ref.begin(), ref.end());
  EXPECT_LT(RelativeL2(out, reff), 1e-6);
}

TEST(MatmulRefTest, RejectsWrongWeightSize) {
  const std::vector<float> x(6), w(5);
  std::vector<float> out(4);
  const absl::Status s = MatmulRef(x, w, 3, 2, absl::MakeSpan(out));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("w has 5"), std::string::npos) << s;
}

}  // namespace
}  // namespace kernels
}  // namespace freekv
