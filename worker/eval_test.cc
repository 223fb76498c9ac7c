// The evaluation's arithmetic on hand-checked cases, and teacher forcing of the oracle
// policy against full attention on a random GQA model, both on CPU backends.
#include "worker/eval.h"

#include <cmath>
#include <memory>

#include "gtest/gtest.h"
#include "worker/agreement.h"
#include "worker/cpu_backend.h"
#include "worker/eval_report.h"
#include "worker/exact_selection.h"
#include "worker/policy_factory.h"
#include "worker/test_models.h"

namespace freekv {
namespace {

TEST(AgreementTest, KlAndTopOneOnHandCheckedDistributions) {
  const std::vector<float> even = LogSoftmax(std::vector<float>{0.0f, 0.0f});
  EXPECT_NEAR(std::exp(even[0]) + std::exp(even[1]), 1.0, 1e-6);
  // P = (1/2, 1/2), Q = (3/4, 1/4): KL(P||Q) = 1/2 ln(2/3) + 1/2 ln 2 = 1/2 ln(4/3).
  const std::vector<float> q_logits = {std::log(3.0f), 0.0f};
  EXPECT_NEAR(KlDivergence(even, LogSoftmax(q_logits)), 0.5 * std::log(4.0 / 3.0), 1e-6);
  EXPECT_EQ(KlDivergence(even, even), 0.0);

  AgreementMeter meter;
  ASSERT_TRUE(meter.Add(even, /*reference_token=*/0, q_logits).ok());  // Q's top is 0
  ASSERT_TRUE(meter.Add(even, /*reference_token=*/1, q_logits).ok());  // full chose 1
  EXPECT_EQ(meter.compared(), 2u);
  EXPECT_EQ(meter.agreed(), 1u);
  EXPECT_DOUBLE_EQ(meter.agreement(), 0.5);
  EXPECT_NEAR(meter.mean_kl(), 0.5 * std::log(4.0 / 3.0), 1e-6);
  EXPECT_EQ(meter.Add(even, 0, std::vector<float>{1, 2, 3}).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(EvalContextTest, StepsBudgetsAndErrors) {
  absl::StatusOr<EvalContext> c = MakeEvalContext({{1, 2, 3}, {1, 2, 3, 4, 5, 6}}, 256);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->steps, 250);  // the longest prompt reaches 256 tokens
  EXPECT_TRUE(c->within(256));
  RetrievalConfig base;
  base.page_tokens = 8;
  base.sink_pages = 1;
  base.window_pages = 2;
  // 256 tokens = 32 pages; a quarter is 8 pages: 1 sink + 2 window + 5 selected.
  EXPECT_EQ(BudgetFor(base, *c, 0.25).selected_pages, 5);
  EXPECT_EQ(BudgetFor(base, *c, 0.25).max_sequences, 2);
  EXPECT_EQ(BudgetFor(base, *c, 0.01).selected_pages, 1);  // at least one
  EXPECT_EQ(MakeEvalContext({{1, 2, 3}}, 4).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MakeEvalContext({{}}, 40).status().code(),
            absl::StatusCode::kInvalidArgument);
}

class TeacherForceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    weights_ = *RandomModelWeights(testing::SmallGqaConfig(), RandomWeightsOptions{});
    context_ = *MakeEvalContext(testing::RandomPrompts({11, 19}, 97, 3), 40);
    RetrievalConfig config;
    config.page_tokens = 4;
    reference_ = *RunReference(*Backend(PolicyKind::kFull, config), context_);
  }
  std::unique_ptr<CpuBackend> Backend(PolicyKind kind, const RetrievalConfig& config) {
    BackendOptions options;
    options.policy = kind;
    options.config = config;
    return *CpuBackend::Create(weights_, options);
  }
  std::unique_ptr<CpuBackend> Exact(const RetrievalConfig& config) {
    PolicyBundle bundle;
    bundle.policy = *ExactSelection::Create(weights_.config, config);
    return *CpuBackend::Create(weights_, std::move(bundle));
  }
  std::unique_ptr<CpuBackend> Oracle(int selected_pages) {
    RetrievalConfig config;
    config.page_tokens = 4;
    config.selected_pages = selected_pages;
    return Backend(PolicyKind::kOracle, config);
  }
  AgreementMeter Force(DecodeBackend& backend) {
    absl::StatusOr<AgreementMeter> meter = TeacherForce(backend, context_, reference_);
    EXPECT_TRUE(meter.ok()) << meter.status();
    return meter.ok() ? *meter : AgreementMeter();
  }
  AgreementMeter Force(int selected_pages) { return Force(*Oracle(selected_pages)); }

  ModelWeights weights_;
  EvalContext context_;
  Reference reference_;
};

TEST_F(TeacherForceTest, WholeContextBudgetAgreesExactly) {
  // 40 tokens = 10 pages; 1 sink + 2 window + 8 selected hold them all.
  const AgreementMeter meter = Force(8);
  EXPECT_EQ(meter.compared(), 2u * (context_.steps - 1));  // decode steps only
  EXPECT_EQ(meter.agreement(), 1.0);
  EXPECT_EQ(meter.mean_kl(), 0.0);
}

TEST_F(TeacherForceTest, ExactSelectionWithWholeContextBudgetAgreesExactly) {
  RetrievalConfig config;
  config.page_tokens = 4;
  config.selected_pages = 8;
  absl::StatusOr<AgreementMeter> meter =
      TeacherForce(*Exact(config), context_, reference_);
  ASSERT_TRUE(meter.ok()) << meter.status();
  EXPECT_EQ(meter->agreement(), 1.0);
  EXPECT_EQ(meter->mean_kl(), 0.0);
  // With one selected page it attends to less than everything, and it shows.
  config.selected_pages = 1;
  meter = TeacherForce(*Exact(config), context_, reference_);
  ASSERT_TRUE(meter.ok()) << meter.status();
  EXPECT_GT(meter->mean_kl(), 0.0);
}

TEST_F(TeacherForceTest, SmallBudgetDiverges) {
  const AgreementMeter meter = Force(1);
  EXPECT_GT(meter.mean_kl(), 0.0);
  EXPECT_GT(meter.max_kl(), meter.mean_kl());
}

TEST_F(TeacherForceTest, CpuBackendReportsThePolicysStatistics) {
  std::unique_ptr<CpuBackend> oracle = Oracle(1);
  Force(*oracle);
  const BackendStats stats = oracle->stats();
  EXPECT_EQ(stats.device, Device::kCpu);
  EXPECT_EQ(stats.decode_steps, static_cast<uint64_t>(context_.steps - 1));
  EXPECT_GT(stats.prefill_seconds, 0.0);
  EXPECT_GT(stats.decode_seconds, 0.0);
  EXPECT_EQ(stats.pages_recalled, 0u);  // the oracle keeps every page
  EXPECT_FALSE(stats.offloaded_pages.has_value());
  // 40 tokens = 10 pages against 4 of budget: groups are checked, and the per-layer
  // tallies add up to the total.
  ASSERT_TRUE(stats.layer_corrections.has_value());
  ASSERT_EQ(stats.layer_corrections->size(),
            static_cast<size_t>(weights_.config.num_layers));
  Tally sum;
  for (const Tally& t : *stats.layer_corrections) sum.Add(t);
  EXPECT_GT(stats.corrections.chances, 0u);
  EXPECT_EQ(sum.count, stats.corrections.count);
  EXPECT_EQ(sum.chances, stats.corrections.chances);
  EXPECT_GT(stats.speculation_hits.chances, 0u);
  EXPECT_NE(stats.text.find("correction rate"), std::string::npos) << stats.text;
  // Full attention selects nothing: no rates, no text.
  RetrievalConfig config;
  config.page_tokens = 4;
  std::unique_ptr<CpuBackend> full = Backend(PolicyKind::kFull, config);
  Force(*full);
  EXPECT_FALSE(full->stats().corrections.rate().has_value());
  EXPECT_TRUE(full->stats().text.empty());
}

TEST(EvalReportTest, JsonHeadlineIsFreekvAtTheQuarterBudget) {
  EvalContext within;
  within.target_tokens = 256;
  EvalContext beyond;
  beyond.target_tokens = 512;
  const std::vector<float> even = LogSoftmax(std::vector<float>{0.0f, 0.0f});
  auto cell = [&](size_t context, std::string policy, double budget, float tau,
                  int agree) {
    EvalCell c;
    c.context = context;
    c.policy = policy;
    c.budget_fraction = budget;
    c.config.tau = tau;
    for (int i = 0; i < 4; ++i) {
      EXPECT_TRUE(c.meter.Add(even, i < agree ? 0 : 1, std::vector<float>{1, 0}).ok());
    }
    return c;
  };
  const std::vector<EvalCell> cells = {
      cell(0, "freekv", 0.125, 0.8f, 1), cell(0, "freekv", 0.25, 0.8f, 3),
      cell(0, "freekv", 0.25, 0.9f, 4), cell(1, "freekv", 0.25, 0.8f, 2),
      cell(0, "blocking", 0.25, 0.8f, 4)};
  const std::string json = EvalJson(cells, {within, beyond}, 256);
  EXPECT_EQ(json.find("{\"agreement\":0.75,"), 0u) << json;
  EXPECT_NE(json.find("\"agreement_beyond\":0.5,"), std::string::npos) << json;
  EXPECT_NE(json.find("\"blocking_agreement\":1,"), std::string::npos) << json;
  EXPECT_NE(json.find("\"budget\":0.25,\"tau\":0.8,\"device\":\"cpu\","),
            std::string::npos)
      << json;
  const std::string table = FormatEvalTable(cells, {within, beyond}, 256);
  EXPECT_NE(table.find("| 512 (beyond) | freekv | 0.25"), std::string::npos) << table;
  EXPECT_NE(table.find("| 75.00% |"), std::string::npos) << table;
}

}  // namespace
}  // namespace freekv
