// The GPU backend on the real stories15M weights (tools/fetch_model.sh) and a real
// kvservice process over CUDA IPC, held to the CPU backend and to itself:
//   - GPU full (bf16), teacher-forced on the CPU full's (fp32) greedy continuation,
//     picks the same top-1 token in at least 95% of the decode steps;
//   - with a budget that covers the whole context, GPU freekv, blocking and oracle,
//     teacher-forced on GPU full's continuation, agree with it (their pages went
//     through the kvservice);
//   - with the CPU evaluation's small budget (pages of 8 tokens, 1 sink + 5 selected +
//     2 window pages) on contexts past 128 tokens, GPU freekv teacher-forced on GPU
//     full's continuation keeps a high top-1 agreement, and corrects some heads but
//     not all of them;
//   - with a resident cache at that budget, freekv and blocking follow their own
//     uncached continuation and recall fewer pages.
#include <unistd.h>

#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/integration/kvservice_process.h"
#include "worker/backend_factory.h"
#include "worker/decode_backend.h"
#include "worker/eval.h"
#include "worker/model_source.h"

namespace freekv {
namespace {

// Before main, so before CUDA starts: the recall gates need eager module loading.
const bool kPrepared = PrepareDevice(Device::kGpu).ok();

// The evaluation's built-in stories (27, 19 and 36 tokens with BOS).
const std::vector<std::string> kStories = BuiltInStories();

// The CPU evaluation's quarter budget at 256 tokens: 8 pages of 8 tokens.
RetrievalConfig SmallBudget() {
  RetrievalConfig c;
  c.page_tokens = 8;
  c.sink_pages = 1;
  c.selected_pages = 5;
  c.window_pages = 2;
  c.tau = 0.8f;
  return c;
}

class GpuBackendTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    absl::StatusOr<LoadedModel> model = LoadModel("");
    ASSERT_TRUE(model.ok()) << model.status() << " (run tools/fetch_model.sh)";
    model_ = new LoadedModel(*std::move(model));
    absl::StatusOr<std::unique_ptr<testing::KvServiceProcess>> service =
        testing::KvServiceProcess::Start({"--pin_store=true"});
    ASSERT_TRUE(service.ok()) << service.status();
    service_ = service->release();
  }
  static void TearDownTestSuite() {
    delete service_;
    delete model_;
  }
  void SetUp() override {
    ASSERT_TRUE(kPrepared);
    // A recall path that stops answering would hang the GPU at a gate; end the
    // process instead so that the GPU run goes on to the next binary.
    alarm(600);
  }

  static std::vector<std::vector<int32_t>> Prompts() {
    std::vector<std::vector<int32_t>> prompts;
    for (const std::string& story : kStories) {
      prompts.push_back(model_->tokenizer->Encode(story, /*bos=*/true, /*eos=*/false));
    }
    return prompts;
  }
  static EvalContext Context(int32_t target_tokens) {
    absl::StatusOr<EvalContext> context = MakeEvalContext(Prompts(), target_tokens);
    EXPECT_TRUE(context.ok()) << context.status();
    return context.ok() ? *context : EvalContext();
  }
  static std::unique_ptr<DecodeBackend> Backend(Device device, PolicyKind policy,
                                                RetrievalConfig config) {
    BackendOptions options;
    options.policy = policy;
    config.max_sequences = static_cast<int32_t>(kStories.size());
    options.config = config;
    options.target = service_->target();
    options.client_name = absl::StrCat("gpu-backend-test-", PolicyKindName(policy));
    absl::StatusOr<std::unique_ptr<DecodeBackend>> backend =
        MakeBackend(device, model_->weights, options);
    EXPECT_TRUE(backend.ok()) << PolicyKindName(policy) << ": " << backend.status();
    return backend.ok() ? *std::move(backend) : nullptr;
  }
  static LoadedModel* model_;
  static testing::KvServiceProcess* service_;
};

LoadedModel* GpuBackendTest::model_ = nullptr;
testing::KvServiceProcess* GpuBackendTest::service_ = nullptr;

TEST_F(GpuBackendTest, FullFollowsTheCpusGreedyContinuation) {
  const EvalContext context = Context(160);
  auto cpu = Backend(Device::kCpu, PolicyKind::kFull, SmallBudget());
  auto gpu = Backend(Device::kGpu, PolicyKind::kFull, SmallBudget());
  ASSERT_TRUE(cpu && gpu);
  EXPECT_EQ(gpu->device(), Device::kGpu);
  absl::StatusOr<Reference> reference = RunReference(*cpu, context);
  ASSERT_TRUE(reference.ok()) << reference.status();
  absl::StatusOr<AgreementMeter> meter = TeacherForce(*gpu, context, *reference);
  ASSERT_TRUE(meter.ok()) << meter.status();
  EXPECT_EQ(meter->compared(), kStories.size() * (context.steps - 1));
  // bf16 weights and activations against fp32: near ties may flip, little else.
  EXPECT_GE(meter->agreement(), 0.95) << "mean KL " << meter->mean_kl();
  const BackendStats stats = gpu->stats();
  EXPECT_EQ(stats.device, Device::kGpu);
  EXPECT_FALSE(stats.layer_corrections.has_value());  // the GPU does not count them
}

// Two whole-context budgets: most pages kept in slots (filled as pages leave the
// window), or every page in the window.
class WholeContextTest : public GpuBackendTest,
                         public ::testing::WithParamInterface<std::pair<int, int>> {};

TEST_P(WholeContextTest, FollowsFull) {
  // The longest prompt (36 tokens) ends at 96 = 12 pages.
  const EvalContext context = Context(96);
  RetrievalConfig whole = SmallBudget();
  whole.selected_pages = GetParam().first;
  whole.window_pages = GetParam().second;
  auto full = Backend(Device::kGpu, PolicyKind::kFull, whole);
  ASSERT_TRUE(full);
  absl::StatusOr<Reference> reference = RunReference(*full, context);
  ASSERT_TRUE(reference.ok()) << reference.status();
  for (PolicyKind policy : {PolicyKind::kFreeKv, PolicyKind::kBlocking, PolicyKind::kOracle}) {
    auto sparse = Backend(Device::kGpu, policy, whole);
    ASSERT_TRUE(sparse);
    absl::StatusOr<AgreementMeter> meter = TeacherForce(*sparse, context, *reference);
    ASSERT_TRUE(meter.ok()) << meter.status();
    // Every page is attended, in another order than full's (sinks, slots, window):
    // bf16 sums differ in the last bits, so a near tie may flip, and little more.
    EXPECT_GE(meter->agreement(), 0.98) << PolicyKindName(policy);
    EXPECT_LT(meter->mean_kl(), 1e-3) << PolicyKindName(policy);
    if (policy == PolicyKind::kOracle) continue;
    const BackendStats stats = sparse->stats();
    ASSERT_TRUE(stats.offloaded_pages.has_value());
    EXPECT_GT(*stats.offloaded_pages, 0u) << PolicyKindName(policy);
  }
}

INSTANTIATE_TEST_SUITE_P(Budgets, WholeContextTest,
                         ::testing::Values(std::pair{12, 2}, std::pair{1, 13}));

TEST_F(GpuBackendTest, SmallBudgetFreekvStaysCloseToFull) {
  // 192 tokens = 24 pages against a budget of 8: most pages live in the kvservice.
  const EvalContext context = Context(192);
  auto full = Backend(Device::kGpu, PolicyKind::kFull, SmallBudget());
  auto freekv = Backend(Device::kGpu, PolicyKind::kFreeKv, SmallBudget());
  ASSERT_TRUE(full && freekv);
  absl::StatusOr<Reference> reference = RunReference(*full, context);
  ASSERT_TRUE(reference.ok()) << reference.status();
  absl::StatusOr<AgreementMeter> meter = TeacherForce(*freekv, context, *reference);
  ASSERT_TRUE(meter.ok()) << meter.status();
  // The CPU evaluation (fp32, freekv through a kvservice) measures 95.3% over these
  // prompts at 192 tokens with this budget (94.2% at 256: bench/RESULTS.md), with a
  // correction rate of 79%; bf16 moves near ties in both runs, so allow five points.
  EXPECT_GE(meter->agreement(), 0.90) << "mean KL " << meter->mean_kl();
  const BackendStats stats = freekv->stats();
  ASSERT_TRUE(stats.corrections.rate().has_value());
  EXPECT_GT(*stats.corrections.rate(), 0.0);
  EXPECT_LT(*stats.corrections.rate(), 1.0);
  EXPECT_GT(stats.pages_recalled, 0u);
}

// stories15M with its real weights: a resident cache changes what is recalled, not
// what is attended. Each policy with 8 cached pages per head, teacher-forced on the
// same policy's own continuation without the cache, follows it token for token (up to
// near ties of bf16 sums taken in another page order) and recalls fewer pages.
TEST_F(GpuBackendTest, AResidentCacheAttendsTheSamePagesAndRecallsFewer) {
  const EvalContext context = Context(192);
  RetrievalConfig uncached = SmallBudget(), cached = SmallBudget();
  uncached.resident_cache_pages = 0;
  cached.resident_cache_pages = 8;
  for (PolicyKind policy : {PolicyKind::kFreeKv, PolicyKind::kBlocking}) {
    auto plain = Backend(Device::kGpu, policy, uncached);
    auto with_cache = Backend(Device::kGpu, policy, cached);
    ASSERT_TRUE(plain && with_cache);
    absl::StatusOr<Reference> reference = RunReference(*plain, context);
    ASSERT_TRUE(reference.ok()) << reference.status();
    const uint64_t plain_recalled = plain->stats().pages_recalled;
    absl::StatusOr<AgreementMeter> meter = TeacherForce(*with_cache, context, *reference);
    ASSERT_TRUE(meter.ok()) << meter.status();
    EXPECT_GE(meter->agreement(), 0.98) << PolicyKindName(policy);
    EXPECT_LT(meter->mean_kl(), 1e-3) << PolicyKindName(policy);
    // The reference run decoded the same tokens (its own greedy choices).
    const uint64_t cached_recalled = with_cache->stats().pages_recalled;
    EXPECT_GT(cached_recalled, 0u) << PolicyKindName(policy);
    EXPECT_LT(cached_recalled, plain_recalled) << PolicyKindName(policy);
    std::printf("%s: agreement %.4f, mean KL %.2e, pages recalled %llu -> %llu\n",
                PolicyKindName(policy), meter->agreement(), meter->mean_kl(),
                static_cast<unsigned long long>(plain_recalled),
                static_cast<unsigned long long>(cached_recalled));
  }
}

TEST_F(GpuBackendTest, ExemptLayersAreRefused) {
  RetrievalConfig config = SmallBudget();
  config.full_layers = {0};
  config.max_sequences = 1;
  BackendOptions options;
  options.policy = PolicyKind::kFreeKv;
  options.config = config;
  options.target = service_->target();
  absl::StatusOr<std::unique_ptr<DecodeBackend>> backend =
      MakeBackend(Device::kGpu, model_->weights, options);
  EXPECT_EQ(backend.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(backend.status().message().find("full_layers is 0"), std::string::npos)
      << backend.status();
}

}  // namespace
}  // namespace freekv
