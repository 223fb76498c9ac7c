// GpuDecoder end to end against the real kvservice process over CUDA IPC: after a few
// freekv or blocking steps, every selected slot of every layer holds, byte for byte,
// the page of the store its resident entry names (the diff, the request, the
// kvservice's copies, the slot layout and the apply all agree), and the pages are
// candidates (not sinks, not the window); a kvservice that dies ends the next run with
// an error instead of a hang. Without a session, full and oracle still decode.
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <memory>
#include <vector>

#include "absl/strings/match.h"
#include "common/random_bytes.h"
#include "gtest/gtest.h"
#include "kernels/cuda_test_util.h"
#include "kernels/test_util.h"
#include "tests/integration/cuda_test_util.h"
#include "tests/integration/kvservice_process.h"
#include "worker/freekv_gpu/gpu_decoder.h"
#include "worker/model/model_weights.h"

namespace freekv::gpu {
namespace {

// Before main, so before CUDA starts.
const bool kEager = (RequireEagerLoading(), kernels::ShareOneWorkQueue(), true);

using kernels::Must;

constexpr int32_t kPages = 24;  // context: 24 full pages of 32 tokens
constexpr int32_t kBatch = 2;
const ResidentLayout kLayout{2, 4, 2};

ModelConfig TinyConfig() {
  ModelConfig c;
  c.dim = 256;
  c.hidden_dim = 512;
  c.num_layers = 2;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 128;  // the CUDA attention's smallest-but-one head size
  c.vocab_size = 64;
  c.max_seq_len = 4096;
  return c;
}

// The stored bytes of (sequence, layer, page): distinct for each.
std::vector<std::byte> PageBytes(size_t block, uint64_t seq, uint32_t layer, uint32_t page) {
  return RandomBytes(block, seq * 1'000'003 + layer * 1'009 + page + 1);
}

void FillStore(CudaKvClient& kv, const std::vector<uint64_t>& seqs, int32_t layers) {
  const size_t block = kv.client().geometry().block_bytes();
  auto stream = Must(testing::TestStream::Create());
  for (uint64_t seq : seqs) {
    for (int32_t l = 0; l < layers; ++l) {
      std::vector<OffloadPageRef> refs;
      for (uint32_t p = 0; p < kPages; ++p) {
        const std::vector<std::byte> bytes = PageBytes(block, seq, l, p);
        ASSERT_TRUE(testing::CopyBytes(kv.regions().offload() + p * block, bytes.data(),
                                       block)
                        .ok());
        refs.push_back({seq, uint32_t(l), p, p * block});
      }
      ASSERT_TRUE(kv.regions().MarkOffloadWritten(stream->get()).ok());
      ASSERT_TRUE(kv.client().Offload(refs).ok());
    }
  }
}

// A tiny model, a kvservice process whose store holds every page of both sequences,
// and a CUDA IPC session to it: what a recalling policy needs.
struct Rig {
  ModelConfig config = TinyConfig();
  std::unique_ptr<GpuLlama> model;
  std::unique_ptr<testing::KvServiceProcess> service;
  GpuDecoderOptions options;
  KvClientOptions ko;
  std::unique_ptr<CudaKvClient> kv;
};

std::unique_ptr<Rig> MakeRig(GpuPolicy policy, int32_t max_steps) {
  auto rig = std::make_unique<Rig>();
  const ModelWeights weights = Must(RandomModelWeights(rig->config, {}));
  rig->model = Must(GpuLlama::Create(weights, kBatch));
  rig->service = Must(testing::KvServiceProcess::Start({"--pin_store=true"}));
  GpuDecoderOptions& options = rig->options;
  options.policy = policy;
  options.batch = kBatch;
  options.layers = rig->config.num_layers;
  options.context = int64_t{kPages} * 32;
  options.max_steps = max_steps;
  options.layout = kLayout;
  options.drift = 0.5f;  // a large drift: pages change from step to step
  options.sequence_ids = {11, 12};
  KvClientOptions& ko = rig->ko;
  ko.target = rig->service->target();
  ko.geometry = KvGeometry(rig->config, 32, DType::kBFloat16);
  ko.slot_bytes = GpuDecoder::SlotBytes(options, rig->config);
  ko.offload_blocks = 256;  // 8 MiB: regions of the size the benchmark uses
  rig->kv = Must(CudaKvClient::Open(ko, 0));
  FillStore(*rig->kv, options.sequence_ids, rig->config.num_layers);
  return rig;
}

// The residual stream after the last decoded step's last layer, as floats.
std::vector<float> Hidden(const GpuLlama& model, const ModelConfig& config) {
  std::vector<BFloat16> bits(size_t(kBatch) * config.dim);
  EXPECT_TRUE(kernels::DeviceSynchronize().ok());
  EXPECT_TRUE(kernels::CopyAsync(bits.data(), model.hidden().data(),
                                 bits.size() * sizeof(BFloat16), nullptr)
                  .ok());
  EXPECT_TRUE(kernels::DeviceSynchronize().ok());
  std::vector<float> out;
  for (BFloat16 x : bits) out.push_back(kernels::ToFloat(x));
  return out;
}

struct CheckedRun {
  GpuStepStats stats;
  std::vector<float> hidden;  // Hidden()
};

// Runs a few steps of `policy` (freekv with threshold `tau`) over `layout` and checks
// every filled slot of every layer against the store (each list has at least
// `selected` of them); returns the run's statistics and output. `signal_gates`:
// GpuDecoderOptions::signal_gates.
CheckedRun RunAndCheckSlots(GpuPolicy policy, float tau, const ResidentLayout& layout = kLayout,
                            bool signal_gates = true) {
  std::unique_ptr<Rig> rig = MakeRig(policy, 6);
  rig->options.tau = tau;
  rig->options.layout = layout;
  rig->options.signal_gates = signal_gates;
  const ModelConfig& config = rig->config;
  const GpuDecoderOptions& options = rig->options;
  const KvClientOptions& ko = rig->ko;
  auto decoder = Must(GpuDecoder::Create(*rig->model, options, rig->kv.get()));
  const GpuStepStats stats = Must(decoder->Run(/*warmup=*/1, /*steps=*/4));

  const size_t block = ko.geometry.block_bytes(), slice = ko.geometry.head_slice_bytes();
  const size_t row = config.head_dim * sizeof(BFloat16);
  int checked = 0;
  for (int32_t layer = 0; layer < config.num_layers; ++layer) {
    const GpuDecoder::ResidentSnapshot snap = Must(decoder->Snapshot(layer));
    for (int32_t b = 0; b < kBatch; ++b) {
      for (int32_t h = 0; h < config.num_kv_heads; ++h) {
        int32_t filled = 0;
        for (int32_t s = 0; s < layout.capacity(); ++s) {
          const int32_t page =
              snap.resident[(b * config.num_kv_heads + h) * layout.capacity() + s];
          if (page < 0 && layout.cache > 0) continue;  // a cache slot never used yet
          ++filled;
          EXPECT_GE(page, kLayout.sink) << "an empty slot or a sink page";
          EXPECT_LT(page, kPages + 1 - kLayout.window) << "a window page";
          if (page < kLayout.sink || page >= kPages + 1 - kLayout.window) continue;
          const std::vector<std::byte> want =
              PageBytes(block, options.sequence_ids[b], layer, page);
          const std::byte* k_rows = want.data() + h * slice;  // [K|V][token][dim]
          const int32_t pool_page = layout.selected_page(b, s);
          for (int32_t t = 0; t < 32; ++t) {
            const int64_t at = snap.pool.offset(pool_page, t, h);
            EXPECT_EQ(std::memcmp(snap.pool.k + at, k_rows + t * row, row), 0)
                << "layer " << layer << " seq " << b << " head " << h << " slot " << s
                << " page " << page << " K token " << t;
            EXPECT_EQ(std::memcmp(snap.pool.v + at, k_rows + (32 + t) * row, row), 0)
                << "V token " << t;
          }
          ++checked;
        }
        EXPECT_GE(filled, layout.selected) << "layer " << layer << " seq " << b << " head " << h;
      }
    }
  }
  EXPECT_GE(checked, config.num_layers * kBatch * config.num_kv_heads * layout.selected);
  return {stats, Hidden(*rig->model, config)};
}

class GpuDecoderTest : public ::testing::TestWithParam<GpuPolicy> {};

TEST_P(GpuDecoderTest, SelectedSlotsHoldTheStoredPagesTheyName) {
  // A recall path that stops answering would hang the GPU at a gate; end the process
  // instead (SIGALRM) so that the GPU run goes on to the next binary.
  alarm(180);
  RunAndCheckSlots(GetParam(), GpuDecoderOptions{}.tau);
  alarm(0);
}

// freekv where every head is corrected at every step (tau above any similarity), and
// where none is (tau below): every layer selects, recalls and waits for its correction
// on the decode stream, or none does, and the slots hold the stored pages either way.
// The first of these runs hung when an eager step gave the driver a layer's items only
// after the layer's launches (one of which, cuBLAS loading a kernel, waited for the GPU
// held at that layer's gate).
TEST(GpuDecoderCorrections, EveryHeadOrNoHeadCorrected) {
  alarm(180);
  EXPECT_EQ(RunAndCheckSlots(GpuPolicy::kFreeKv, 2.0f).stats.corrected, 1.0);
  EXPECT_EQ(RunAndCheckSlots(GpuPolicy::kFreeKv, -2.0f).stats.corrected, 0.0);
  alarm(0);
}

// Gates opened by the recall driver from the host once a reply arrived
// (signal_gates off), rather than by the kvservice's signal words, serve the same
// decode: every head corrected at every step, so every layer waits at a gate for a
// recall, the slots hold the stored pages, and the output is the same bit for bit.
TEST(GpuDecoderCorrections, GatesOpenedByTheHostOrByTheKvserviceDecodeTheSame) {
  alarm(180);
  const CheckedRun signalled = RunAndCheckSlots(GpuPolicy::kFreeKv, 2.0f, kLayout, true);
  const CheckedRun host = RunAndCheckSlots(GpuPolicy::kFreeKv, 2.0f, kLayout, false);
  EXPECT_EQ(signalled.stats.corrected, 1.0);
  EXPECT_EQ(host.stats.corrected, 1.0);
  EXPECT_GT(signalled.stats.slices_per_step, 0);
  EXPECT_EQ(signalled.stats.slices_per_step, host.stats.slices_per_step);
  EXPECT_EQ(signalled.hidden, host.hidden);
  alarm(0);
}

// A resident cache (4 more slots than the 4 attended) changes where pages live, not
// which pages attention reads: the decode's output equals the uncached decoder's up to
// the order of its float additions, the slots hold the stored pages they name, and
// pages that come back need no recall, so fewer blocks are recalled. Sink and window
// pages hold the same random values in both pools (LayerState), and the inputs drift
// by the same seeds. The control: the same decode with its recalls left out (the slots
// keep their random values) ends elsewhere, so the output does depend on the bytes
// of the pages attended.
TEST_P(GpuDecoderTest, AResidentCacheAttendsTheSamePagesWithFewerRecalls) {
  alarm(180);
  ResidentLayout cached = kLayout;
  cached.cache = 4;
  const CheckedRun plain = RunAndCheckSlots(GetParam(), GpuDecoderOptions{}.tau);
  const CheckedRun with_cache = RunAndCheckSlots(GetParam(), GpuDecoderOptions{}.tau, cached);
  std::unique_ptr<Rig> rig = MakeRig(GetParam(), 6);
  rig->options.skip_recall = true;
  auto unrecalled = Must(GpuDecoder::Create(*rig->model, rig->options, nullptr));
  Must(unrecalled->Run(/*warmup=*/1, /*steps=*/4));
  const std::vector<float> control = Hidden(*rig->model, rig->config);
  const double cache_vs_plain = kernels::RelativeL2(with_cache.hidden, plain.hidden);
  const double control_vs_plain = kernels::RelativeL2(control, plain.hidden);
  std::fprintf(stderr,
               "%s: relative L2 %.2e cached, %.2e without recalls; blocks per step %.1f "
               "uncached, %.1f cached\n",
               GpuPolicyName(GetParam()).c_str(), cache_vs_plain, control_vs_plain,
               plain.stats.slices_per_step, with_cache.stats.slices_per_step);
  EXPECT_LT(cache_vs_plain, 1e-2);
  EXPECT_GT(control_vs_plain, 10 * std::max(cache_vs_plain, 1e-3));
  EXPECT_LT(with_cache.stats.slices_per_step, plain.stats.slices_per_step);
  alarm(0);
}

// The kvservice dies (SIGKILL) between two runs: the next run ends with an error
// that says so, within the driver's deadlines, instead of leaving the GPU waiting at
// a gate; and the decoder can still be destroyed.
TEST_P(GpuDecoderTest, AKvServiceThatDiesEndsTheRunWithAnError) {
  alarm(180);
  std::unique_ptr<Rig> rig = MakeRig(GetParam(), 8);
  auto decoder = Must(GpuDecoder::Create(*rig->model, rig->options, rig->kv.get()));
  Must(decoder->Run(/*warmup=*/1, /*steps=*/2));
  EXPECT_FALSE(rig->service->Stop(absl::ZeroDuration()).ok()) << "killed, not drained";
  const absl::Time start = absl::Now();
  const absl::StatusOr<GpuStepStats> run = decoder->Run(/*warmup=*/1, /*steps=*/2);
  ASSERT_FALSE(run.ok()) << "a run without its kvservice succeeded";
  // The recall stream breaks (UNAVAILABLE), or a reply never comes (DEADLINE_EXCEEDED).
  const absl::StatusCode code = run.status().code();
  EXPECT_TRUE(code == absl::StatusCode::kUnavailable ||
              code == absl::StatusCode::kDeadlineExceeded)
      << run.status();
  std::fprintf(stderr, "after the kvservice died: %s\n", run.status().ToString().c_str());
  EXPECT_LT(absl::Now() - start, absl::Seconds(70)) << "the failure took too long";
  decoder.reset();
  alarm(0);
}

INSTANTIATE_TEST_SUITE_P(Policies, GpuDecoderTest,
                         ::testing::Values(GpuPolicy::kFreeKv, GpuPolicy::kBlocking),
                         [](const auto& info) { return GpuPolicyName(info.param); });

// The policies that keep every page on the GPU need no kvservice, nor do freekv and
// blocking with their recalls left out (the stream opens its own gates, and nothing is
// applied): the tiny model's steps run (graphs and all) and take time.
TEST(GpuDecoderLocal, DecodesWithoutASessionWhenNothingIsRecalled) {
  alarm(60);
  const ModelWeights weights = Must(RandomModelWeights(TinyConfig(), {}));
  auto model = Must(GpuLlama::Create(weights, kBatch));
  for (GpuPolicy policy :
       {GpuPolicy::kFull, GpuPolicy::kOracle, GpuPolicy::kFreeKv, GpuPolicy::kBlocking}) {
    GpuDecoderOptions options;
    options.policy = policy;
    options.skip_recall = Recalls(policy);
    options.batch = kBatch;
    options.layers = 2;
    options.context = int64_t{kPages} * 32;
    options.max_steps = 5;
    options.layout = kLayout;
    auto decoder = Must(GpuDecoder::Create(*model, options, nullptr));
    const GpuStepStats stats = Must(decoder->Run(/*warmup=*/1, /*steps=*/4));
    EXPECT_GT(stats.step_ms, 0) << GpuPolicyName(policy);
  }
  alarm(0);
}

TEST(GpuDecoderCreate, RefusesARecallingPolicyWithoutASession) {
  const ModelWeights weights = Must(RandomModelWeights(TinyConfig(), {}));
  auto model = Must(GpuLlama::Create(weights, 1));
  GpuDecoderOptions options;
  options.policy = GpuPolicy::kFreeKv;
  options.context = int64_t{kPages} * 32;
  options.layout = kLayout;
  EXPECT_EQ(GpuDecoder::Create(*model, options, nullptr).status().code(),
            absl::StatusCode::kInvalidArgument);
  options.policy = GpuPolicy::kOracle;
  options.batch = 2;  // over the model's max_batch
  EXPECT_EQ(GpuDecoder::Create(*model, options, nullptr).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// A resident cache is refused where it cannot work, before anything needs a session:
// a synthetic context with fewer candidates than the selection fills, more slots than
// the select kernel takes, a negative cache.
TEST(GpuDecoderCreate, RefusesAResidentCacheWhereItCannotServe) {
  const ModelWeights weights = Must(RandomModelWeights(TinyConfig(), {}));
  auto model = Must(GpuLlama::Create(weights, 1));
  GpuDecoderOptions options;
  options.policy = GpuPolicy::kFreeKv;
  options.skip_recall = true;
  options.context = int64_t{kPages} * 32;
  options.layout = kLayout;
  options.layout.cache = 4;
  options.max_steps = 4;
  auto expect_refused = [&](const GpuDecoderOptions& o, absl::string_view says) {
    const absl::Status s = GpuDecoder::Create(*model, o, nullptr).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_TRUE(absl::StrContains(s.message(), says)) << s;
  };
  GpuDecoderOptions huge = options;
  huge.layout.cache = 1025 - huge.layout.selected;
  expect_refused(huge, "at most 1024 slots");
  GpuDecoderOptions short_context = options;
  short_context.context = 8 * 32;  // 9 pages: 2 sinks, 2 window pages, 5 candidates
  short_context.layout.selected = 6;  // more than the 5
  expect_refused(short_context, "candidate pages");
  GpuDecoderOptions negative = options;
  negative.layout.cache = -1;
  expect_refused(negative, "cache >= 0");
  EXPECT_TRUE(GpuDecoder::Create(*model, options, nullptr).ok()) << "the valid cache";
}

}  // namespace
}  // namespace freekv::gpu
