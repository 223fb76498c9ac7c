#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/similarity.h"
#include "kernels/test_util.h"

namespace freekv {
namespace kernels {
namespace {

TEST(QuerySimilarityRefTest, HandDerivedGroupMeansAndFlags) {
  // 1 sequence, 4 query heads, 2 KV heads, dim 2.
  const std::vector<float> q = {1, 0, /**/ 0, 2, /**/ 1, 1, /**/ 3, 0};
  const std::vector<float> prev = {2, 0, /**/ 1, 0, /**/ -1, -1, /**/ 0, 0};
  // Group 0: cos 1 and 0 -> 0.5. Group 1: cos -1 and 0 (zero vector) -> -0.5.
  std::vector<float> sim(2);
  std::vector<uint8_t> flags(2);
  std::vector<int32_t> count(1);
  ASSERT_TRUE(QuerySimilarityRef<float>(q, prev, 4, 2, 2, 0.0f,
                                        {absl::MakeSpan(sim), absl::MakeSpan(flags),
                                         absl::MakeSpan(count)}).ok());
  EXPECT_NEAR(sim[0], 0.5f, 1e-6);
  EXPECT_NEAR(sim[1], -0.5f, 1e-6);
  EXPECT_EQ(flags, (std::vector<uint8_t>{0, 1}));
  EXPECT_EQ(count[0], 1);
}

TEST(QuerySimilarityRefTest, IdenticalQueriesNeverFlagAndScaleDoesNotMatter) {
  std::mt19937 rng(40);
  const int seqs = 3, hq = 8, hkv = 2, dim = 32;
  const std::vector<float> q = RandomVector<float>(rng, seqs * hq * dim);
  std::vector<float> scaled = q;
  for (float& x : scaled) x *= 3.0f;
  std::vector<float> sim(seqs * hkv);
  std::vector<uint8_t> flags(seqs * hkv);
  std::vector<int32_t> count(1, -1);
  ASSERT_TRUE(QuerySimilarityRef<float>(q, scaled, hq, hkv, dim, 0.9f,
                                        {absl::MakeSpan(sim), absl::MakeSpan(flags),
                                         absl::MakeSpan(count)}).ok());
  for (float s : sim) EXPECT_NEAR(s, 1.0f, 1e-5);
  EXPECT_EQ(count[0], 0);
  // Fresh random queries are nearly orthogonal in 32 dims: every group is flagged.
  const std::vector<float> other = RandomVector<float>(rng, q.size());
  ASSERT_TRUE(QuerySimilarityRef<float>(q, other, hq, hkv, dim, 0.9f,
                                        {absl::MakeSpan(sim), absl::MakeSpan(flags),
                                         absl::MakeSpan(count)}).ok());
  EXPECT_EQ(count[0], seqs * hkv);
}

// The CUDA kernel keeps a row's head cosines in one chunk of shared memory: a larger
// group is refused by the shape check both share, with the limit in the message.
TEST(QuerySimilarityRefTest, AGroupOverTheLimitIsRefused) {
  const int hq = kMaxSimilarityGroup + 1, hkv = 1, dim = 2;
  const std::vector<float> q(size_t{hq} * dim, 1.0f);
  std::vector<float> sim(1);
  std::vector<uint8_t> flags(1);
  std::vector<int32_t> count(1);
  const absl::Status status =
      QuerySimilarityRef<float>(q, q, hq, hkv, dim, 0.5f,
                                {absl::MakeSpan(sim), absl::MakeSpan(flags),
                                 absl::MakeSpan(count)});
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find(std::to_string(kMaxSimilarityGroup)), std::string::npos)
      << status.message();
  // At the limit it runs.
  const std::vector<float> at(size_t{kMaxSimilarityGroup} * dim, 1.0f);
  EXPECT_TRUE(QuerySimilarityRef<float>(at, at, kMaxSimilarityGroup, hkv, dim, 0.5f,
                                        {absl::MakeSpan(sim), absl::MakeSpan(flags),
                                         absl::MakeSpan(count)})
                  .ok());
  EXPECT_NEAR(sim[0], 1.0f, 1e-5);
}

}  // namespace
}  // namespace kernels
}  // namespace freekv
