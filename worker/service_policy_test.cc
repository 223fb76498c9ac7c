// freekv and blocking through the real kvservice process (started per test suite):
// with a budget covering the context they equal full attention exactly, freekv
// equals the oracle bit for bit at a small budget (the pages that come back are the
// pages that went out), the statistics are right on a hand-checked case and reach the
// service's Prometheus metrics, and the worker keeps only sinks, window and slots.
#include <memory>

#include "gtest/gtest.h"
#include "tests/integration/kvservice_process.h"
#include "worker/kv_service_link.h"
#include "worker/model/full_attention.h"
#include "worker/retrieval_policy.h"
#include "worker/test_models.h"

namespace freekv {
namespace {

using testing::Decoded;
using testing::KvServiceProcess;

class ServicePolicyTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    absl::StatusOr<std::unique_ptr<KvServiceProcess>> service =
        KvServiceProcess::Start({"--capacity=256M", "--chunk_bytes=4M"});
    ASSERT_TRUE(service.ok()) << service.status();
    service_ = service->release();
  }
  static void TearDownTestSuite() { delete service_; }
  void SetUp() override {
    ASSERT_NE(service_, nullptr);
    weights_ = *RandomModelWeights(testing::SmallGqaConfig(), RandomWeightsOptions{});
  }

  std::unique_ptr<KvServiceLink> Link(const RetrievalConfig& config) {
    KvServiceLinkOptions options;
    options.target = service_->target();
    options.client_name = ::testing::UnitTest::GetInstance()->current_test_info()->name();
    options.offload_blocks = 4;  // small, so that prefill offloads in several chunks
    absl::StatusOr<std::unique_ptr<KvServiceLink>> link =
        KvServiceLink::Open(options, weights_.config, config);
    EXPECT_TRUE(link.ok()) << link.status();
    return link.ok() ? *std::move(link) : nullptr;
  }
  std::unique_ptr<RetrievalPolicy> Policy(const RetrievalConfig& config,
                                          RetrievalMode mode, PageLink* link) {
    auto policy = RetrievalPolicy::Create(weights_.config, config, mode, link);
    EXPECT_TRUE(policy.ok()) << policy.status();
    return policy.ok() ? *std::move(policy) : nullptr;
  }
  Decoded Run(AttentionPolicy& policy, const DecodeRequest& request) {
    Transformer model = *Transformer::Create(weights_);
    absl::StatusOr<Decoded> d = testing::DecodeKeepingLogits(model, policy, request);
    EXPECT_TRUE(d.ok()) << d.status();
    return d.ok() ? *std::move(d) : Decoded{};
  }
  static RetrievalConfig Budget(int sinks, int window, int selected, float tau = 0.8f) {
    RetrievalConfig c;
    c.page_tokens = 4;
    c.sink_pages = sinks;
    c.window_pages = window;
    c.selected_pages = selected;
    c.tau = tau;
    c.max_sequences = 2;
    return c;
  }
  static DecodeRequest Request(std::vector<int> lengths, int steps) {
    DecodeRequest r;
    r.prompts = testing::RandomPrompts(lengths, testing::SmallGqaConfig().vocab_size, 11);
    r.steps = steps;
    return r;
  }

  static KvServiceProcess* service_;
  ModelWeights weights_;
};

KvServiceProcess* ServicePolicyTest::service_ = nullptr;

TEST_F(ServicePolicyTest, BudgetCoveringTheContextEqualsFullExactly) {
  const DecodeRequest request = Request({13, 22}, 14);  // at most 35 tokens = 9 pages
  auto full = *FullAttention::Create(weights_.config, 4);
  const Decoded expected = Run(*full, request);
  for (RetrievalMode mode : {RetrievalMode::kFreeKv, RetrievalMode::kBlocking}) {
    auto link = Link(Budget(1, 2, 8));
    auto policy = Policy(Budget(1, 2, 8), mode, link.get());
    const Decoded got = Run(*policy, request);
    EXPECT_EQ(got.tokens, expected.tokens) << RetrievalModeName(mode);
    EXPECT_EQ(got.logits, expected.logits) << RetrievalModeName(mode);
    // The candidates were recalled from the service, not read from the worker.
    EXPECT_GT(policy->stats().Total().recalled_pages, 0u) << RetrievalModeName(mode);
  }
}

TEST_F(ServicePolicyTest, FreekvEqualsTheOracleBitForBitAtASmallBudget) {
  // 2 selected pages of up to 13: selection, corrections and data must all agree.
  const DecodeRequest request = Request({41, 26}, 12);
  RetrievalConfig config = Budget(1, 2, 2, 0.9f);
  config.full_layers = {1};
  auto oracle = Policy(config, RetrievalMode::kOracle, nullptr);
  const Decoded expected = Run(*oracle, request);
  auto link = Link(config);
  auto freekv = Policy(config, RetrievalMode::kFreeKv, link.get());
  const Decoded got = Run(*freekv, request);
  EXPECT_EQ(got.logits, expected.logits);
  const DecodeStats& a = freekv->stats();
  const DecodeStats& b = oracle->stats();
  for (int layer = 0; layer < 3; ++layer) {
    EXPECT_EQ(a.layers[layer].corrections, b.layers[layer].corrections) << layer;
    EXPECT_EQ(a.layers[layer].hit_pages, b.layers[layer].hit_pages) << layer;
  }
  EXPECT_GT(a.Total().recalled_pages, 0u);
  // The worker holds 1 sink + 2 window + 2 slot pages per sequence on layers 0 and 2;
  // the exempt layer 1 keeps all 13 + 10 pages (52 and 37 tokens). The rest lives in
  // the kvservice.
  EXPECT_EQ(freekv->worker_pages(0), 2 * 5);
  EXPECT_EQ(freekv->worker_pages(1), 13 + 10);
  EXPECT_EQ(oracle->worker_pages(0), 13 + 10);
}

TEST_F(ServicePolicyTest, StatisticsOnAHandCheckedCase) {
  // One sequence of 13 tokens (pages 0-3) decoded to 15 tokens (and selected for a
  // 16th): with 1 sink and 1 window page the candidates stay pages 1 and 2, exactly
  // k = 2. Each policy recalls both pages for both KV heads of all 3 layers once: 12
  // slices in 3 requests, over 2 decode steps.
  const DecodeRequest request = Request({13}, 3);
  for (RetrievalMode mode : {RetrievalMode::kFreeKv, RetrievalMode::kBlocking}) {
    RetrievalConfig config = Budget(1, 1, 2, 2.0f);  // tau 2 flags every group
    config.stats_every = 0;
    auto link = Link(config);
    auto policy = Policy(config, mode, link.get());
    Run(*policy, request);
    const DecodeStats& s = policy->stats();
    EXPECT_EQ(s.decode_steps, 2u);
    EXPECT_EQ(s.Total().recalled_pages, 12u) << RetrievalModeName(mode);
    EXPECT_EQ(s.recall_requests, 3u) << RetrievalModeName(mode);
    EXPECT_DOUBLE_EQ(s.pages_recalled_per_step(), 6.0);
    if (mode == RetrievalMode::kFreeKv) {
      // 2 steps x 3 layers x 2 groups checked and corrected; every needed slice (2 per
      // group) was brought by the speculative recall after the prefill.
      EXPECT_EQ(s.Total().correction_checks, 12u);
      EXPECT_EQ(s.Total().corrections, 12u);
      EXPECT_EQ(s.Total().needed_pages, 24u);
      EXPECT_EQ(s.speculation_hit_rate(), 1.0);
    } else {
      EXPECT_EQ(s.Total().correction_checks, 0u);  // blocking does not speculate
      EXPECT_FALSE(s.speculation_hit_rate().has_value());
    }
    absl::StatusOr<v1::GetStatsResponse> before = link->client().ServiceStats();
    ASSERT_TRUE(before.ok()) << before.status();
    ASSERT_TRUE(policy->Release(0).ok());
    absl::StatusOr<v1::GetStatsResponse> after = link->client().ServiceStats();
    ASSERT_TRUE(after.ok()) << after.status();
    // The full pages 0-2 of 3 layers were stored, then freed.
    EXPECT_EQ(before->store_pages() - after->store_pages(), 9u);
  }
}

TEST_F(ServicePolicyTest, StatisticsReachTheServicesMetrics) {
  auto metric = [](const std::string& name) -> double {
    absl::StatusOr<std::string> text =
        testing::HttpGet(service_->metrics_port(), "/metrics");
    if (!text.ok()) return -1;
    absl::StatusOr<double> v = testing::MetricValue(*text, name);
    return v.ok() ? *v : 0;
  };
  const double steps_before = metric("freekv_worker_decode_steps_total");
  const double checks_before = metric("freekv_worker_correction_checks_total");
  RetrievalConfig config = Budget(1, 1, 2, 2.0f);
  config.stats_every = 2;  // reported after decode steps 2 and 4, the rest on demand
  auto link = Link(config);
  auto policy = Policy(config, RetrievalMode::kFreeKv, link.get());
  Run(*policy, Request({13}, 6));
  EXPECT_EQ(metric("freekv_worker_decode_steps_total") - steps_before, 4);
  ASSERT_TRUE(policy->ReportStats().ok());
  EXPECT_EQ(metric("freekv_worker_decode_steps_total") - steps_before, 5);
  EXPECT_EQ(metric("freekv_worker_correction_checks_total") - checks_before,
            static_cast<double>(policy->stats().Total().correction_checks));
}

}  // namespace
}  // namespace freekv
