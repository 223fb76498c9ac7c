// The model on random weights of a small GQA geometry: the paged cache, the forward
// pass's prefill, chunked-prefill, decode and batched paths against each other.
#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "worker/model/full_attention.h"
#include "worker/model/llama2c_reference.h"
#include "worker/model/paged_kv_cache.h"
#include "worker/model/test_configs.h"
#include "worker/model/transformer.h"

namespace freekv {
namespace {

using testing::SmallGqaConfig;

std::vector<int32_t> RandomTokens(int n, int vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> out(n);
  for (int32_t& t : out) t = static_cast<int32_t>(rng() % vocab);
  return out;
}

std::vector<float> RandomRows(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> out(n);
  for (float& x : out) x = dist(rng);
  return out;
}

float MaxAbsDiff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  float m = 0.0f;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) m = std::max(m, std::abs(a[i] - b[i]));
  return m;
}

TEST(PagedKvCacheTest, AppendsAcrossPagesAndGathersInOrder) {
  const ModelConfig c = SmallGqaConfig();
  PagedKvCache cache = *PagedKvCache::Create(c, /*page_tokens=*/4);
  const size_t row = c.kv_width();
  const std::vector<float> k = RandomRows(11 * row, 1), v = RandomRows(11 * row, 2);
  ASSERT_TRUE(cache.Append(1, 7, 0, absl::MakeConstSpan(k).first(5 * row),
                           absl::MakeConstSpan(v).first(5 * row)).ok());
  ASSERT_TRUE(cache.Append(1, 7, 5, absl::MakeConstSpan(k).subspan(5 * row),
                           absl::MakeConstSpan(v).subspan(5 * row)).ok());
  EXPECT_EQ(cache.length(1, 7), 11);
  EXPECT_EQ(cache.length(0, 7), 0);
  EXPECT_EQ(cache.pages(1, 7).size(), 3u);  // 4 + 4 + 3
  std::vector<float> k_back, v_back;
  cache.Gather(1, 7, k_back, v_back);
  EXPECT_EQ(k_back, k);
  EXPECT_EQ(v_back, v);
  // Token 9 sits in the third page, slot 1, of the NHD pool.
  const kernels::PagedKv<const float> pool = cache.pool(1);
  EXPECT_EQ(pool.k[pool.offset(cache.pages(1, 7)[2], 1, 1)], k[9 * row + c.head_dim]);
  EXPECT_EQ(pool.v[pool.offset(cache.pages(1, 7)[2], 1, 0)], v[9 * row]);

  const absl::Status gap = cache.Append(1, 7, 12, absl::MakeConstSpan(k).first(row),
                                        absl::MakeConstSpan(v).first(row));
  EXPECT_EQ(gap.code(), absl::StatusCode::kInvalidArgument) << gap;
  // Released pages are reused rather than growing the pool.
  const int32_t pool_pages = cache.pool(1).num_pages;
  cache.Release(7);
  EXPECT_EQ(cache.length(1, 7), 0);
  ASSERT_TRUE(cache.Append(1, 8, 0, k, v).ok());
  EXPECT_EQ(cache.pool(1).num_pages, pool_pages);
}

TEST(RandomWeightsTest, DeterministicPerSeedAndAliasesLayersOnRequest) {
  const ModelConfig c = SmallGqaConfig();
  const ModelWeights a = *RandomModelWeights(c, {/*seed=*/3});
  const ModelWeights b = *RandomModelWeights(c, {/*seed=*/3});
  const ModelWeights other = *RandomModelWeights(c, {/*seed=*/4});
  EXPECT_EQ(a.layers[2]->w2, b.layers[2]->w2);
  EXPECT_NE(a.layers[2]->w2, other.layers[2]->w2);
  EXPECT_NE(a.layers[0]->wq, a.layers[1]->wq);
  const ModelWeights shared = *RandomModelWeights(c, {/*seed=*/3, /*distinct_layers=*/1});
  EXPECT_EQ(shared.layers[0].get(), shared.layers[2].get());
  EXPECT_TRUE(ValidateModelWeights(shared).ok());

  ModelWeights broken = a;
  auto layer = std::make_shared<LayerWeights>(*a.layers[1]);
  layer->wk.pop_back();
  broken.layers[1] = layer;
  const absl::Status s = ValidateModelWeights(broken);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("layers[1].wk"), std::string::npos) << s;
}

TEST(ModelConfigTest, Llama31_8BGeometry) {
  const ModelConfig c = Llama31_8BConfig();
  EXPECT_TRUE(ValidateModelConfig(c).ok());
  EXPECT_EQ(c.group_size(), 4);
  const LayerShapes s = LayerShapesOf(c);
  EXPECT_EQ(s.wq, 4096u * 4096);
  EXPECT_EQ(s.wkv, 1024u * 4096);
  EXPECT_EQ(s.w_up, 14336u * 4096);
  const Geometry g = KvGeometry(c, 32, DType::kBFloat16);
  EXPECT_EQ(g.head_slice_bytes(), 16u * 1024);  // the design card's 16 KiB
  ModelConfig bad = c;
  bad.num_kv_heads = 5;
  EXPECT_EQ(ValidateModelConfig(bad).code(), absl::StatusCode::kInvalidArgument);
}

class ForwardTest : public ::testing::Test {
 protected:
  ForwardTest() : weights_(*RandomModelWeights(SmallGqaConfig(), {/*seed=*/11})) {}

  std::unique_ptr<FullAttention> NewPolicy(int32_t page_tokens = 4) {
    return *FullAttention::Create(weights_.config, page_tokens);
  }
  // Logits of every token of `tokens` from one prefill pass.
  std::vector<float> PrefillEveryToken(const std::vector<int32_t>& tokens) {
    Transformer model = *Transformer::Create(weights_);
    auto policy = NewPolicy();
    std::vector<float> logits;
    EXPECT_TRUE(model.Forward({BatchEntry{0, 0, tokens}}, *policy, LogitsFor::kEveryToken,
                              logits).ok());
    return logits;
  }
  // Logits of every token of `tokens`, decoded one token per pass.
  std::vector<float> DecodeEveryToken(const std::vector<int32_t>& tokens, int64_t seq = 0) {
    Transformer model = *Transformer::Create(weights_);
    auto policy = NewPolicy();
    std::vector<float> all, logits;
    for (size_t i = 0; i < tokens.size(); ++i) {
      const BatchEntry e{seq, static_cast<int32_t>(i), absl::MakeConstSpan(&tokens[i], 1)};
      EXPECT_TRUE(model.Forward({e}, *policy, LogitsFor::kLastToken, logits).ok());
      all.insert(all.end(), logits.begin(), logits.end());
    }
    return all;
  }

  ModelWeights weights_;
};

TEST_F(ForwardTest, PrefillMatchesTokenByTokenDecode) {
  const std::vector<int32_t> tokens = RandomTokens(21, 97, 5);
  const std::vector<float> prefill = PrefillEveryToken(tokens);
  ASSERT_EQ(prefill.size(), tokens.size() * 97);
  for (const float x : prefill) ASSERT_TRUE(std::isfinite(x));
  EXPECT_LE(MaxAbsDiff(prefill, DecodeEveryToken(tokens)), 1e-4f);
}

// llama2.c's forward, transcribed independently, on a GQA geometry whose q width
// (64) differs from dim (48): checks the head mapping and RoPE pairing too.
TEST_F(ForwardTest, MatchesLlama2cForwardTranscription) {
  const std::vector<int32_t> tokens = RandomTokens(12, 97, 10);
  const std::vector<float> ours = PrefillEveryToken(tokens);
  Llama2cReference reference(weights_);
  std::vector<float> theirs;
  for (size_t pos = 0; pos < tokens.size(); ++pos) {
    const std::vector<float> row = reference.Forward(tokens[pos], static_cast<int>(pos));
    theirs.insert(theirs.end(), row.begin(), row.end());
  }
  EXPECT_LE(MaxAbsDiff(ours, theirs), 1e-4f);
}

TEST_F(ForwardTest, ChunkedPrefillMatchesOnePass) {
  const std::vector<int32_t> tokens = RandomTokens(13, 97, 6);
  const std::vector<float> whole = PrefillEveryToken(tokens);
  Transformer model = *Transformer::Create(weights_);
  auto chunked = NewPolicy(3);
  std::vector<float> first, second;
  const absl::Span<const int32_t> all(tokens);
  ASSERT_TRUE(model.Forward({BatchEntry{0, 0, all.first(6)}}, *chunked, LogitsFor::kEveryToken,
                            first).ok());
  ASSERT_TRUE(model.Forward({BatchEntry{0, 6, all.subspan(6)}}, *chunked,
                            LogitsFor::kEveryToken, second).ok());
  first.insert(first.end(), second.begin(), second.end());
  EXPECT_LE(MaxAbsDiff(whole, first), 1e-4f);
}

// Sequences of different lengths decoded in one pass give exactly what each gives
// alone: rows never mix.
TEST_F(ForwardTest, BatchedDecodeEqualsSeparateSequences) {
  const std::vector<int32_t> a = RandomTokens(9, 97, 7), b = RandomTokens(4, 97, 8);
  Transformer model = *Transformer::Create(weights_);
  auto policy = NewPolicy();
  std::vector<float> logits;
  // Prefill both (one multi-token entry each, in one pass), then decode both together.
  const absl::Span<const int32_t> sa(a), sb(b);
  ASSERT_TRUE(model.Forward({BatchEntry{10, 0, sa.first(8)}, BatchEntry{20, 0, sb.first(3)}},
                            *policy, LogitsFor::kLastToken, logits).ok());
  ASSERT_TRUE(model.Forward({BatchEntry{10, 8, sa.subspan(8)}, BatchEntry{20, 3, sb.subspan(3)}},
                            *policy, LogitsFor::kLastToken, logits).ok());
  ASSERT_EQ(logits.size(), 2u * 97);
  const std::vector<float> alone_a = DecodeEveryToken(a), alone_b = DecodeEveryToken(b);
  const std::vector<float> last_a(alone_a.end() - 97, alone_a.end());
  const std::vector<float> last_b(alone_b.end() - 97, alone_b.end());
  EXPECT_LE(MaxAbsDiff(std::vector<float>(logits.begin(), logits.begin() + 97), last_a), 1e-4f);
  EXPECT_LE(MaxAbsDiff(std::vector<float>(logits.begin() + 97, logits.end()), last_b), 1e-4f);
}

TEST_F(ForwardTest, RejectsBadTokensEntriesAndPositions) {
  Transformer model = *Transformer::Create(weights_);
  auto policy = NewPolicy();
  std::vector<float> logits;
  const std::vector<int32_t> bad = {3, 97};
  EXPECT_EQ(model.Forward({BatchEntry{0, 0, bad}}, *policy, LogitsFor::kLastToken, logits)
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(model.Forward({BatchEntry{0, 0, {}}}, *policy, LogitsFor::kLastToken, logits)
                .code(),
            absl::StatusCode::kInvalidArgument);
  const std::vector<int32_t> ok = {3, 4};
  // Position 5 on an empty cache: the policy refuses the gap.
  EXPECT_EQ(model.Forward({BatchEntry{0, 5, ok}}, *policy, LogitsFor::kLastToken, logits)
                .code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(ForwardTest, GreedyDecodeIsDeterministicAndFollowsArgmax) {
  const std::vector<int32_t> prompt = RandomTokens(5, 97, 9);
  Transformer model = *Transformer::Create(weights_);
  auto p1 = NewPolicy(), p2 = NewPolicy();
  const std::vector<int32_t> g1 = *GreedyDecode(model, *p1, 0, prompt, 6);
  const std::vector<int32_t> g2 = *GreedyDecode(model, *p2, 0, prompt, 6);
  EXPECT_EQ(g1, g2);
  ASSERT_EQ(g1.size(), 6u);
  // Each generated token is the argmax after the prompt and the tokens before it.
  std::vector<int32_t> context = prompt;
  context.insert(context.end(), g1.begin(), g1.end() - 1);
  const std::vector<float> every = DecodeEveryToken(context);
  for (size_t i = 0; i < g1.size(); ++i) {
    const size_t row = prompt.size() - 1 + i;
    EXPECT_EQ(g1[i], Argmax(absl::MakeConstSpan(every).subspan(row * 97, 97))) << i;
  }
}

}  // namespace
}  // namespace freekv
