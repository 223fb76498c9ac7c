// The retrieval policies without a kvservice: the oracle (freekv's selection with
// every page on the worker) against full attention on a random GQA model, its
// statistics on hand-checkable cases, and the policy's argument errors.
// Service-backed runs are in service_policy_test.cc.
#include "worker/retrieval_policy.h"

#include <algorithm>
#include <memory>

#include "gtest/gtest.h"
#include "worker/model/full_attention.h"
#include "worker/test_models.h"

namespace freekv {
namespace {

using testing::Decoded;
using testing::DecodeKeepingLogits;
using testing::RandomPrompts;
using testing::SmallGqaConfig;

class OraclePolicyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    weights_ = *RandomModelWeights(SmallGqaConfig(), RandomWeightsOptions{});
  }
  Decoded Run(AttentionPolicy& policy, const DecodeRequest& request) {
    Transformer model = *Transformer::Create(weights_);
    absl::StatusOr<Decoded> d = DecodeKeepingLogits(model, policy, request);
    EXPECT_TRUE(d.ok()) << d.status();
    return d.ok() ? *std::move(d) : Decoded{};
  }
  Decoded RunFull(const DecodeRequest& request) {
    auto full = *FullAttention::Create(weights_.config, 4);
    return Run(*full, request);
  }
  std::unique_ptr<RetrievalPolicy> Oracle(const RetrievalConfig& config) {
    auto policy =
        RetrievalPolicy::Create(weights_.config, config, RetrievalMode::kOracle, nullptr);
    EXPECT_TRUE(policy.ok()) << policy.status();
    return policy.ok() ? *std::move(policy) : nullptr;
  }
  static DecodeRequest Request(std::vector<int> lengths, int steps) {
    DecodeRequest r;
    r.prompts = RandomPrompts(lengths, SmallGqaConfig().vocab_size, 7);
    r.steps = steps;
    return r;
  }

  ModelWeights weights_;
};

RetrievalConfig Budget(int sinks, int window, int selected, float tau = 0.8f) {
  RetrievalConfig c;
  c.page_tokens = 4;
  c.sink_pages = sinks;
  c.window_pages = window;
  c.selected_pages = selected;
  c.tau = tau;
  return c;
}

TEST_F(OraclePolicyTest, BudgetCoveringTheContextEqualsFullExactly) {
  // Prompts of 13 and 22 tokens decoded 14 steps: at most 35 tokens = 9 pages, so 1
  // sink + 2 window + 8 selected pages hold everything.
  const DecodeRequest request = Request({13, 22}, 14);
  const Decoded full = RunFull(request);
  for (float tau : {0.8f, 2.0f}) {
    auto oracle = Oracle(Budget(1, 2, 8, tau));
    const Decoded got = Run(*oracle, request);
    EXPECT_EQ(got.tokens, full.tokens) << "tau " << tau;
    EXPECT_EQ(got.logits, full.logits) << "tau " << tau;  // bit for bit
  }
}

TEST_F(OraclePolicyTest, SmallBudgetSelectsWithinCandidatesAndDiffersFromFull) {
  const DecodeRequest request = Request({40, 29}, 10);
  const Decoded full = RunFull(request);
  const RetrievalConfig config = Budget(1, 2, 2);
  auto oracle = Oracle(config);
  const Decoded got = Run(*oracle, request);
  // Attention over 5 of 12 pages is not full attention.
  EXPECT_NE(got.logits, full.logits);
  for (int64_t seq : {0, 1}) {
    const int32_t length = static_cast<int32_t>(request.prompts[seq].size()) + 9;
    const PageRanges r = RangesFor(config, length + 1);  // selected for the next step
    for (int layer = 0; layer < 3; ++layer) {
      const absl::Span<const int32_t> sel = oracle->selected(seq, layer);
      ASSERT_EQ(sel.size(), 2u * 2);  // [kv_heads][k]
      for (int h = 0; h < 2; ++h) {
        EXPECT_TRUE(r.is_candidate(sel[2 * h]) && r.is_candidate(sel[2 * h + 1]));
        EXPECT_LT(sel[2 * h], sel[2 * h + 1]);  // ascending, distinct
      }
    }
  }
}

TEST_F(OraclePolicyTest, CorrectionStatisticsFollowTau) {
  const DecodeRequest request = Request({30, 17}, 6);
  // tau above 1 flags every group at every checked step; below -1 none. Checks happen
  // at each of the 5 decode steps, for 2 sequences, 3 layers, 2 KV heads.
  for (const auto& [tau, expected] : {std::pair<float, uint64_t>{2.0f, 5 * 2 * 2},
                                      std::pair<float, uint64_t>{-2.0f, 0}}) {
    RetrievalConfig config = Budget(1, 1, 2, tau);
    config.full_layers = {1};
    auto oracle = Oracle(config);
    Run(*oracle, request);
    const DecodeStats& stats = oracle->stats();
    EXPECT_EQ(stats.decode_steps, 5u);
    EXPECT_EQ(stats.decode_tokens, 10u);
    for (int layer : {0, 2}) {
      EXPECT_EQ(stats.layers[layer].correction_checks, 5u * 2 * 2) << layer;
      EXPECT_EQ(stats.layers[layer].corrections, expected) << layer;
      // Every sequence has >= 2 candidates, so 2 pages per KV head are needed.
      EXPECT_EQ(stats.layers[layer].needed_pages, 5u * 2 * 2 * 2) << layer;
    }
    EXPECT_EQ(stats.layers[1].correction_checks, 0u);  // the exempt layer attends fully
    EXPECT_EQ(stats.Total().recalled_pages, 0u);       // the oracle moves nothing
    if (expected == 0) {
      EXPECT_EQ(stats.speculation_hit_rate(), 1.0);  // nothing corrected, nothing missed
    }
    EXPECT_EQ(stats.correction_rate(), expected == 0 ? 0.0 : 1.0);
  }
}

TEST_F(OraclePolicyTest, ExemptLayersAndReleaseKeepPoolsBounded) {
  RetrievalConfig config = Budget(1, 2, 2);
  config.full_layers = {0};
  auto oracle = Oracle(config);
  DecodeRequest request = Request({21, 9}, 4);
  Run(*oracle, request);
  // The oracle keeps every page: 24 tokens = 6 pages and 12 tokens = 3 pages.
  EXPECT_EQ(oracle->worker_pages(0), 9);
  EXPECT_EQ(oracle->worker_pages(2), 9);
  ASSERT_TRUE(oracle->Release(0).ok());
  ASSERT_TRUE(oracle->Release(1).ok());
  EXPECT_EQ(oracle->worker_pages(2), 0);
  EXPECT_EQ(oracle->Release(1).code(), absl::StatusCode::kNotFound);
}

TEST_F(OraclePolicyTest, RejectsWhatItCannotDo) {
  const ModelConfig model = SmallGqaConfig();
  RetrievalConfig bad = Budget(1, 0, 2);
  absl::StatusOr<std::unique_ptr<RetrievalPolicy>> p =
      RetrievalPolicy::Create(model, bad, RetrievalMode::kOracle, nullptr);
  EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(p.status().message().find("window_pages is 0"), std::string::npos)
      << p.status();
  bad = Budget(1, 2, 2);
  bad.full_layers = {3};
  p = RetrievalPolicy::Create(model, bad, RetrievalMode::kOracle, nullptr);
  EXPECT_NE(p.status().message().find("full_layers names layer 3"), std::string::npos)
      << p.status();
  p = RetrievalPolicy::Create(model, Budget(1, 2, 2), RetrievalMode::kFreeKv, nullptr);
  EXPECT_NE(p.status().message().find("needs a kvservice link"), std::string::npos)
      << p.status();

  auto oracle = Oracle(Budget(1, 2, 2));
  Transformer transformer = *Transformer::Create(weights_);
  const std::vector<int32_t> tokens = {3, 4, 5};
  std::vector<float> logits;
  ASSERT_TRUE(
      transformer
          .Forward({BatchEntry{0, 0, tokens}}, *oracle, LogitsFor::kLastToken, logits)
          .ok());
  // A second multi-token pass (chunked prefill) is refused with the reason.
  absl::Status s = transformer.Forward({BatchEntry{0, 3, tokens}}, *oracle,
                                       LogitsFor::kLastToken, logits);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("prefills from position 0 only"), std::string::npos) << s;
  s = transformer.Forward({BatchEntry{1, 0, tokens}, BatchEntry{1, 0, tokens}}, *oracle,
                          LogitsFor::kLastToken, logits);
  EXPECT_NE(s.message().find("appears twice"), std::string::npos) << s;
}

TEST(RangesTest, SinksWindowAndCandidates) {
  RetrievalConfig c;
  c.page_tokens = 8;
  c.sink_pages = 2;
  c.window_pages = 3;
  PageRanges r = RangesFor(c, 81);  // 11 pages, the last holds 1 token
  EXPECT_EQ(r.num_pages, 11);
  EXPECT_EQ(r.sink_end, 2);
  EXPECT_EQ(r.window_begin, 8);
  EXPECT_EQ(r.last_page_len, 1);
  EXPECT_EQ(r.candidate_count(), 6);
  r = RangesFor(c, 24);  // 3 pages: 2 sinks, the window gets what is left
  EXPECT_EQ(r.sink_end, 2);
  EXPECT_EQ(r.window_begin, 2);
  EXPECT_EQ(r.last_page_len, 8);
  EXPECT_EQ(r.candidate_count(), 0);
  r = RangesFor(c, 0);
  EXPECT_EQ(r.num_pages, 0);
  EXPECT_EQ(r.candidate_count(), 0);
}

TEST(LayerListTest, ParsesAndRejects) {
  EXPECT_EQ(*ParseLayerList(""), std::vector<int>{});
  EXPECT_EQ(*ParseLayerList("0, 2"), (std::vector<int>{0, 2}));
  absl::StatusOr<std::vector<int>> bad = ParseLayerList("0,x");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("\"x\""), std::string::npos);
}

}  // namespace
}  // namespace freekv
