// GpuGenerator end to end with a real kvservice process over CUDA IPC: prompts of
// assorted lengths (shorter than a sink page, within the budget, far past it) decoded
// under each policy with the same teacher-forced tokens.
//   - With a budget that holds every page, oracle, blocking and freekv attend to every
//     page, so their logits are full's (up to bf16 summation order).
//   - With a small budget, blocking and freekv with every head corrected (tau > 1)
//     select with the current query exactly as the oracle does, over pages that went
//     through prefill, offload, the kvservice's store, recall and apply: their logits
//     are the oracle's. freekv with no head corrected (tau < -1) attends to what it
//     speculated one step earlier (its distance to the oracle is printed).
// A random model's logits have unit scale, so a page attended or missed shows as a
// difference far above the tolerance.
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/cuda_test_util.h"
#include "tests/integration/kvservice_process.h"
#include "worker/freekv_gpu/gpu_generator.h"
#include "worker/model/model_weights.h"

namespace freekv::gpu {
namespace {

// Before main, so before CUDA starts.
const bool kEager = (RequireEagerLoading(), kernels::ShareOneWorkQueue(), true);

using kernels::Must;

constexpr int32_t kPage = 4;
constexpr int kSteps = 28;

// stories15M's head_dim (48) under GQA (group 2).
ModelConfig SmallConfig() {
  ModelConfig c;
  c.dim = 192;
  c.hidden_dim = 384;
  c.num_layers = 2;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 48;
  c.vocab_size = 101;
  c.max_seq_len = 1024;
  return c;
}

// Prompts: 3 tokens (inside the sink page), 9, 17 and 37 (many candidates), and 22,
// which completes a page at the steps where the others start one (and may promote a
// page into a slot): both kinds of page work in one step.
DecodeRequest ForcedRequest(const ModelConfig& c) {
  std::mt19937 rng(5);
  std::uniform_int_distribution<int32_t> token(0, c.vocab_size - 1);
  DecodeRequest r;
  for (int len : {3, 9, 17, 37, 22}) {
    r.prompts.emplace_back(len);
    for (int32_t& t : r.prompts.back()) t = token(rng);
    r.forced.emplace_back(kSteps - 1);
    for (int32_t& t : r.forced.back()) t = token(rng);
  }
  r.first_sequence = 40;
  r.steps = kSteps;
  return r;
}

struct Rig {
  ModelConfig config = SmallConfig();
  std::unique_ptr<GpuLlama> model;
  std::unique_ptr<testing::KvServiceProcess> service;
  std::unique_ptr<CudaKvClient> kv;
};

std::unique_ptr<Rig> MakeRig(const GpuGenerateOptions& shape) {
  auto rig = std::make_unique<Rig>();
  rig->model = Must(GpuLlama::Create(Must(RandomModelWeights(rig->config, {})), 32));
  rig->service = Must(testing::KvServiceProcess::Start({"--pin_store=true"}));
  KvClientOptions ko;
  ko.target = rig->service->target();
  ko.geometry = KvGeometry(rig->config, kPage, DType::kBFloat16);
  ko.slot_bytes = GpuGenerator::SlotBytes(shape, rig->config, 32);
  ko.offload_blocks = static_cast<uint32_t>(
      GpuGenerator::OffloadBytes(shape, rig->config) / ko.geometry.block_bytes());
  ko.client_name = "gpu_generator_cuda_test";
  rig->kv = Must(CudaKvClient::Open(ko, 0));
  return rig;
}

struct Result {
  std::vector<std::vector<int32_t>> tokens;
  std::vector<std::vector<float>> logits;  // [step * batch + sequence][vocab]
  GpuGenerateStats stats;
};

Result Decode(Rig& rig, GpuGenerateOptions options, const DecodeRequest& request) {
  auto gen = Must(GpuGenerator::Create(*rig.model, options, rig.kv.get()));
  Result r;
  r.logits.resize(size_t(request.steps) * request.prompts.size());
  r.tokens = Must(gen->Decode(request, [&](int step, size_t seq, absl::Span<const float> l) {
    r.logits[step * request.prompts.size() + seq].assign(l.begin(), l.end());
    return absl::OkStatus();
  }));
  r.stats = gen->stats();
  return r;
}

// The largest |difference| of logits over every step and sequence.
float MaxDiff(const Result& a, const Result& b) {
  float worst = 0;
  for (size_t i = 0; i < a.logits.size(); ++i) {
    for (size_t v = 0; v < a.logits[i].size(); ++v) {
      worst = std::max(worst, std::fabs(a.logits[i][v] - b.logits[i][v]));
    }
  }
  return worst;
}

TEST(GpuGenerator, EveryPolicyIsFullWhenTheBudgetHoldsEveryPage) {
  alarm(240);  // a hung recall ends the process, not the whole GPU run
  GpuGenerateOptions opt;
  opt.page_tokens = kPage;
  opt.layout = {1, 16, 2};  // 76 tokens: more than 37 + 28
  auto rig = MakeRig(opt);
  const DecodeRequest request = ForcedRequest(rig->config);
  opt.policy = GpuPolicy::kFull;
  const Result full = Decode(*rig, opt, request);
  opt.policy = GpuPolicy::kOracle;
  const Result oracle = Decode(*rig, opt, request);
  for (GpuPolicy p : {GpuPolicy::kOracle, GpuPolicy::kBlocking, GpuPolicy::kFreeKv}) {
    opt.policy = p;
    const Result decoded = p == GpuPolicy::kOracle ? Result{} : Decode(*rig, opt, request);
    const Result& r = p == GpuPolicy::kOracle ? oracle : decoded;
    // Full sums the pages in another order (all of them per query head): bf16 noise.
    EXPECT_LT(MaxDiff(r, full), 0.05f) << GpuPolicyName(p);
    // The oracle attends to the same pages in the same order (sinks, candidates
    // ascending, window), from a full pool instead of slots and a ring: equal logits.
    // Anything written to the wrong place (a page, a digest) shows here.
    EXPECT_LT(MaxDiff(r, oracle), 1e-3f) << GpuPolicyName(p);
    // Nothing to recall: every page stays on the GPU.
    EXPECT_EQ(r.stats.slices, 0u) << GpuPolicyName(p);
    // Teacher forcing returns what the model chose: the argmax of the logits.
    for (size_t b = 0; b < request.prompts.size(); ++b) {
      for (int s = 0; s < kSteps; ++s) {
        const auto& row = r.logits[s * request.prompts.size() + b];
        EXPECT_EQ(r.tokens[b][s], std::max_element(row.begin(), row.end()) - row.begin());
      }
    }
  }
}

TEST(GpuGenerator, RecalledPagesGiveTheOraclesAttentionAtASmallBudget) {
  alarm(240);
  GpuGenerateOptions opt;
  opt.page_tokens = kPage;
  opt.layout = {1, 2, 2};  // 20 tokens of 40 to 65
  auto rig = MakeRig(opt);
  const DecodeRequest request = ForcedRequest(rig->config);
  opt.policy = GpuPolicy::kFull;
  const Result full = Decode(*rig, opt, request);
  opt.policy = GpuPolicy::kOracle;
  const Result oracle = Decode(*rig, opt, request);
  // The budget matters: the oracle is not full.
  EXPECT_GT(MaxDiff(oracle, full), 0.2f);
  opt.policy = GpuPolicy::kBlocking;
  const Result blocking = Decode(*rig, opt, request);
  EXPECT_LT(MaxDiff(blocking, oracle), 0.05f);
  EXPECT_GT(blocking.stats.slices, 0u);
  EXPECT_GT(blocking.stats.offloaded_pages, 0u);
  opt.policy = GpuPolicy::kFreeKv;
  opt.tau = 2.0f;  // every head corrected: blocking's pages
  const Result corrected = Decode(*rig, opt, request);
  EXPECT_LT(MaxDiff(corrected, oracle), 0.05f);
  EXPECT_DOUBLE_EQ(corrected.stats.correction_rate(), 1.0);
  opt.tau = -2.0f;  // none corrected: the pages selected one step earlier
  const Result speculated = Decode(*rig, opt, request);
  EXPECT_DOUBLE_EQ(speculated.stats.correction_rate(), 0.0);
  // Some heads corrected: the same tokens whether each step waits for the GPU (a
  // sink) or the steps run ahead of it (none): the gates, not the timing, decide.
  opt.tau = 0.8f;
  const Result mixed = Decode(*rig, opt, request);
  EXPECT_GT(mixed.stats.correction_rate(), 0.0);
  EXPECT_LT(mixed.stats.correction_rate(), 1.0);
  auto gen = Must(GpuGenerator::Create(*rig->model, opt, rig->kv.get()));
  EXPECT_EQ(Must(gen->Decode(request)), mixed.tokens);
  std::printf("max |logit diff|: oracle-full %.4f blocking-oracle %.4f "
              "freekv(tau 2)-oracle %.4f freekv(tau -2)-oracle %.4f\n",
              MaxDiff(oracle, full), MaxDiff(blocking, oracle), MaxDiff(corrected, oracle),
              MaxDiff(speculated, oracle));
}

// A resident cache of 3 slots beyond the 2 selected: pages that leave the window are
// promoted into slots until 5 candidates fill them, and later recalls evict the
// lowest-scored unselected page. Each policy attends to the pages it attends without
// the cache (the logits agree up to the order attention sums them in), and recalls
// fewer blocks. Prompts cross 2 and 5 candidates on different steps, so a step mixes
// sequences that attend every candidate by position with ones that attend their
// selection's slots.
TEST(GpuGenerator, AResidentCacheAttendsWhatTheUncachedDecodeAttends) {
  alarm(240);
  GpuGenerateOptions opt;
  opt.page_tokens = kPage;
  opt.layout = {1, 2, 2};
  auto rig = MakeRig(opt);
  const DecodeRequest request = ForcedRequest(rig->config);
  opt.policy = GpuPolicy::kOracle;
  const Result oracle = Decode(*rig, opt, request);
  struct Row {
    GpuPolicy policy;
    float tau;
  };
  for (const Row row : {Row{GpuPolicy::kBlocking, 0.8f}, Row{GpuPolicy::kFreeKv, 2.0f},
                        Row{GpuPolicy::kFreeKv, -2.0f}, Row{GpuPolicy::kFreeKv, 0.8f}}) {
    opt.policy = row.policy;
    opt.tau = row.tau;
    opt.layout.cache = 0;
    const Result uncached = Decode(*rig, opt, request);
    opt.layout.cache = 3;
    const Result cached = Decode(*rig, opt, request);
    const std::string what = absl::StrCat(GpuPolicyName(row.policy), " tau ", row.tau);
    EXPECT_LT(MaxDiff(cached, uncached), 0.05f) << what;
    EXPECT_LT(cached.stats.slices, uncached.stats.slices) << what;
    EXPECT_GT(cached.stats.slices, 0u) << what << ": the cache never filled";
    EXPECT_EQ(cached.stats.flagged_heads, uncached.stats.flagged_heads) << what;
    // For scale: a page attended or missed moves logits by more than 0.2 at this
    // budget (RecalledPagesGiveTheOraclesAttentionAtASmallBudget, oracle against full).
    std::printf("%s: max |logit diff| cached-uncached %.4f (uncached-oracle %.4f), blocks "
                "recalled %llu -> %llu\n",
                what.c_str(), MaxDiff(cached, uncached), MaxDiff(uncached, oracle),
                static_cast<unsigned long long>(uncached.stats.slices),
                static_cast<unsigned long long>(cached.stats.slices));
  }
}

// The worker's case: one prompt decoded greedily with no sink, so steps run ahead of
// the GPU (the host at most two steps ahead) while pages fill, are offloaded and are
// promoted into slots. Within the budget freekv attends to blocking's pages: the same
// tokens.
TEST(GpuGenerator, OnePromptRunsAheadUnderFreekvAsUnderBlocking) {
  alarm(120);
  GpuGenerateOptions opt;
  opt.page_tokens = kPage;
  opt.layout = {1, 16, 2};
  auto rig = MakeRig(opt);
  DecodeRequest r = ForcedRequest(rig->config);
  r.prompts = {r.prompts[3]};  // 37 tokens: pages fill and leave the window
  r.forced.clear();
  r.steps = kSteps;
  opt.policy = GpuPolicy::kBlocking;
  auto blocking = Must(GpuGenerator::Create(*rig->model, opt, rig->kv.get()));
  const auto want = Must(blocking->Decode(r));
  opt.policy = GpuPolicy::kFreeKv;
  auto freekv = Must(GpuGenerator::Create(*rig->model, opt, rig->kv.get()));
  const auto got = freekv->Decode(r);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, want);
  EXPECT_GT(freekv->stats().offloaded_pages, 0u);
  EXPECT_EQ(freekv->stats().slices, 0u);
}

TEST(GpuGenerator, RefusesWhatItCannotServe) {
  alarm(120);
  GpuGenerateOptions opt;
  opt.page_tokens = kPage;
  auto rig = MakeRig(opt);
  auto gen = Must(GpuGenerator::Create(*rig->model, opt, rig->kv.get()));
  DecodeRequest r = ForcedRequest(rig->config);
  r.prompts[1][2] = rig->config.vocab_size;  // outside the vocabulary
  EXPECT_EQ(gen->Decode(r).status().code(), absl::StatusCode::kInvalidArgument);
  r = ForcedRequest(rig->config);
  r.prompts.resize(33, r.prompts[0]);  // over max_batch
  r.forced.clear();
  EXPECT_EQ(gen->Decode(r).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(GpuGenerator::Create(*rig->model, opt, nullptr).status().code(),
            absl::StatusCode::kInvalidArgument);  // freekv needs a session
  opt.page_tokens = 8;  // the session's pages hold 4 tokens
  EXPECT_EQ(GpuGenerator::Create(*rig->model, opt, rig->kv.get()).status().code(),
            absl::StatusCode::kInvalidArgument);
  // After refusals the generator still decodes, greedily and with no sink, so steps
  // run ahead of the GPU while pages fill and are offloaded.
  r = ForcedRequest(rig->config);
  r.forced.clear();
  const auto tokens = gen->Decode(r);
  ASSERT_TRUE(tokens.ok()) << tokens.status();
  EXPECT_EQ(tokens->size(), r.prompts.size());
  EXPECT_EQ((*tokens)[3].size(), size_t(kSteps));
  EXPECT_GT(gen->stats().offloaded_pages, 0u);
  EXPECT_GT(gen->stats().correction_rate(), 0.0);
}

}  // namespace
}  // namespace freekv::gpu
