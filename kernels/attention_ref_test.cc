#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/attention.h"
#include "kernels/test_util.h"

namespace freekv {
namespace kernels {
namespace {

// Textbook attention in double: explicit softmax over all visible keys.
std::vector<float> NaiveCausal(const std::vector<float>& q, const std::vector<float>& k,
                               const std::vector<float>& v, const AttentionDims& d) {
  const int nq = q.size() / (d.num_q_heads * d.head_dim);
  const int nkv = k.size() / (d.num_kv_heads * d.head_dim);
  const int group = d.num_q_heads / d.num_kv_heads;
  std::vector<float> out(q.size());
  for (int i = 0; i < nq; ++i) {
    for (int h = 0; h < d.num_q_heads; ++h) {
      const float* qh = &q[(i * d.num_q_heads + h) * d.head_dim];
      const int visible = nkv - nq + i + 1;
      std::vector<double> w(visible);
      double max_w = -1e300, sum = 0;
      for (int j = 0; j < visible; ++j) {
        const float* kj = &k[(j * d.num_kv_heads + h / group) * d.head_dim];
        double dot = 0;
        for (int c = 0; c < d.head_dim; ++c) dot += double{qh[c]} * kj[c];
        w[j] = d.scale * dot;
        max_w = std::max(max_w, w[j]);
      }
      for (double& x : w) sum += (x = std::exp(x - max_w));
      for (int c = 0; c < d.head_dim; ++c) {
        double acc = 0;
        for (int j = 0; j < visible; ++j) {
          acc += w[j] * v[(j * d.num_kv_heads + h / group) * d.head_dim + c];
        }
        out[(i * d.num_q_heads + h) * d.head_dim + c] = acc / sum;
      }
    }
  }
  return out;
}

AttentionDims Dims(int hq, int hkv, int dim) {
  return AttentionDims{hq, hkv, dim, 1.0f / std::sqrt(static_cast<float>(dim))};
}

TEST(CausalAttentionRefTest, FirstQueryOutputsFirstValueAndLseIsItsLogit) {
  const AttentionDims d = Dims(1, 1, 2);
  const std::vector<float> q = {1, 2, 0.5f, 0.5f};
  const std::vector<float> k = {3, -1, 2, 2};
  const std::vector<float> v = {7, 8, 9, 10};
  std::vector<float> out(4), lse(2);
  ASSERT_TRUE(CausalAttentionRef<float>(q, k, v, d, absl::MakeSpan(out),
                                        absl::MakeSpan(lse)).ok());
  EXPECT_FLOAT_EQ(out[0], 7);  // token 0 sees only key 0
  EXPECT_FLOAT_EQ(out[1], 8);
  EXPECT_FLOAT_EQ(lse[0], d.scale * (1 * 3 + 2 * -1));
  // Token 1: logits scale*1 and scale*2; softmax by hand.
  const float l0 = d.scale * 1.0f, l1 = d.scale * 2.0f;
  const float p1 = 1.0f / (1.0f + std::exp(l0 - l1));
  EXPECT_NEAR(out[2], (1 - p1) * 7 + p1 * 9, 1e-6);
  EXPECT_NEAR(lse[1], std::log(std::exp(l0) + std::exp(l1)), 1e-6);
}

TEST(CausalAttentionRefTest, SoftmaxWeightsSumToOne) {
  std::mt19937 rng(9);
  const AttentionDims d = Dims(4, 2, 16);
  const int n = 9;
  const std::vector<float> q = RandomVector<float>(rng, n * 4 * 16, -3, 3);
  const std::vector<float> k = RandomVector<float>(rng, n * 2 * 16, -3, 3);
  const std::vector<float> ones(k.size(), 1.0f);  // V = 1: output = sum of weights
  std::vector<float> out(q.size());
  ASSERT_TRUE(CausalAttentionRef<float>(q, k, ones, d, absl::MakeSpan(out)).ok());
  for (float o : out) EXPECT_NEAR(o, 1.0f, 1e-6);
}

TEST(CausalAttentionRefTest, MatchesDoublePrecisionWithGqaAndPastTokens) {
  std::mt19937 rng(10);
  const AttentionDims d = Dims(8, 2, 32);
  const int nq = 5, nkv = 12;  // a chunk of 5 queries after 7 cached tokens
  const std::vector<float> q = RandomVector<float>(rng, nq * 8 * 32);
  const std::vector<float> k = RandomVector<float>(rng, nkv * 2 * 32);
  const std::vector<float> v = RandomVector<float>(rng, nkv * 2 * 32);
  std::vector<float> out(q.size());
  ASSERT_TRUE(CausalAttentionRef<float>(q, k, v, d, absl::MakeSpan(out)).ok());
  EXPECT_LT(RelativeL2(out, NaiveCausal(q, k, v, d)), 1e-6);
}

TEST(CausalAttentionRefTest, Bf16StorageMatchesFloat) {
  std::mt19937 rng(11);
  const AttentionDims d = Dims(4, 1, 64);
  const int n = 20;
  auto qf = RandomVector<float>(rng, n * 4 * 64);
  auto kf = RandomVector<float>(rng, n * 64);
  auto vf = RandomVector<float>(rng, n * 64);
  std::vector<BFloat16> qb, kb, vb, outb(qf.size());
  for (float& x : qf) qb.push_back(ToBFloat16(x)), x = ToFloat(qb.back());
  for (float& x : kf) kb.push_back(ToBFloat16(x)), x = ToFloat(kb.back());
  for (float& x : vf) vb.push_back(ToBFloat16(x)), x = ToFloat(vb.back());
  std::vector<float> outf(qf.size());
  ASSERT_TRUE(CausalAttentionRef<float>(qf, kf, vf, d, absl::MakeSpan(outf)).ok());
  ASSERT_TRUE(CausalAttentionRef<BFloat16>(qb, kb, vb, d, absl::MakeSpan(outb)).ok());
  EXPECT_LT(RelativeL2(outb, outf), 1e-2);
}

TEST(CausalAttentionRefTest, RejectsMoreQueriesThanKeysAndBadGqa) {
  const std::vector<float> q(3 * 4), k(2 * 4), v(2 * 4);
  std::vector<float> out(q.size());
  EXPECT_EQ(CausalAttentionRef<float>(q, k, v, Dims(1, 1, 4), absl::MakeSpan(out)).code(),
            absl::StatusCode::kInvalidArgument);
  const absl::Status s =
      CausalAttentionRef<float>(q, k, v, Dims(3, 2, 2), absl::MakeSpan(out));
  EXPECT_NE(s.message().find("num_q_heads"), std::string::npos) << s;
}

}  // namespace
}  // namespace kernels
}  // namespace freekv
