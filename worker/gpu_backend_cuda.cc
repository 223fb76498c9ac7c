// The GPU backend (gpu_backend.h): GpuGenerator over a GpuLlama, with a CUDA IPC
// session with the kvservice for the policies that recall.
#include "worker/gpu_backend.h"

#include <algorithm>
#include <limits>
#include <optional>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "client/cuda_kv_client.h"
#include "worker/freekv_gpu/gpu_generator.h"
#include "worker/freekv_gpu/resident_ops.h"
#include "worker/gpu/gpu_llama.h"
#include "worker/model/model_config.h"

namespace freekv {
namespace {

using gpu::GpuGenerateOptions;
using gpu::GpuGenerateStats;
using gpu::GpuGenerator;
using gpu::GpuPolicy;

constexpr int kDevice = 0;

GpuPolicy GpuPolicyFor(PolicyKind kind) {
  switch (kind) {
    case PolicyKind::kFull:
      return GpuPolicy::kFull;
    case PolicyKind::kOracle:
      return GpuPolicy::kOracle;
    case PolicyKind::kBlocking:
      return GpuPolicy::kBlocking;
    case PolicyKind::kFreeKv:
      return GpuPolicy::kFreeKv;
  }
  return GpuPolicy::kFreeKv;  // unreachable: every kind is named above
}

absl::StatusOr<GpuGenerateOptions> GenerateOptionsFor(const BackendOptions& options) {
  const RetrievalConfig& c = options.config;
  if (!c.full_layers.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "full_layers is ", absl::StrJoin(c.full_layers, ","),
        ": exempt layers are not supported on the GPU yet (leave --full_layers empty "
        "with --device=gpu)"));
  }
  if (c.max_sequences < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_sequences is ", c.max_sequences, "; it must be >= 1"));
  }
  GpuGenerateOptions o;
  o.policy = GpuPolicyFor(options.policy);
  o.page_tokens = c.page_tokens;
  o.layout.sink = c.sink_pages;
  o.layout.selected = c.selected_pages;
  o.layout.window = c.window_pages;
  o.layout.cache = c.gpu_cache_pages();
  o.tau = c.tau;
  return o;
}

// A CUDA IPC session on device 0 sized for the generator: staging slots for
// max_sequences sequences, an offload region of whole blocks.
absl::StatusOr<std::unique_ptr<CudaKvClient>> OpenSession(const BackendOptions& options,
                                                          const GpuGenerateOptions& go,
                                                          const ModelConfig& config) {
  KvClientOptions ko;
  ko.target = options.target;
  ko.client_name = options.client_name;
  ko.geometry =
      KvGeometry(config, static_cast<uint32_t>(go.page_tokens), DType::kBFloat16);
  ko.slot_bytes = GpuGenerator::SlotBytes(go, config, options.config.max_sequences);
  const uint64_t block = ko.geometry.block_bytes();
  const uint64_t blocks = (GpuGenerator::OffloadBytes(go, config) + block - 1) / block;
  if (blocks > std::numeric_limits<uint32_t>::max()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the offload region needs ", blocks, " blocks of ", block, " bytes; too many"));
  }
  ko.offload_blocks = static_cast<uint32_t>(std::max<uint64_t>(blocks, 1));
  return CudaKvClient::Open(ko, kDevice);
}

std::string Percent(std::optional<double> v) {
  return v ? absl::StrFormat("%.1f%%", 100 * *v) : "-";
}

class GpuBackend : public DecodeBackend {
 public:
  static absl::StatusOr<std::unique_ptr<DecodeBackend>> Create(
      const ModelWeights& weights, const BackendOptions& options) {
    absl::StatusOr<GpuGenerateOptions> go = GenerateOptionsFor(options);
    if (!go.ok()) return go.status();
    const int32_t sequences = options.config.max_sequences;
    std::unique_ptr<GpuBackend> backend(new GpuBackend(*go, sequences));
    // Prefill chunks and the decode batch share the model's activation rows.
    absl::StatusOr<std::unique_ptr<gpu::GpuLlama>> model =
        gpu::GpuLlama::Create(weights, std::max(sequences, go->prefill_chunk));
    if (!model.ok()) return model.status();
    backend->model_ = *std::move(model);
    if (gpu::Recalls(go->policy)) {
      absl::StatusOr<std::unique_ptr<CudaKvClient>> kv =
          OpenSession(options, *go, weights.config);
      if (!kv.ok()) return kv.status();
      backend->kv_ = *std::move(kv);
    }
    absl::StatusOr<std::unique_ptr<GpuGenerator>> generator =
        GpuGenerator::Create(*backend->model_, *go, backend->kv_.get());
    if (!generator.ok()) return generator.status();
    backend->generator_ = *std::move(generator);
    return std::unique_ptr<DecodeBackend>(std::move(backend));
  }

  Device device() const override { return Device::kGpu; }

  absl::StatusOr<std::vector<std::vector<int32_t>>> Decode(
      const DecodeRequest& request, const LogitsSink& sink) override {
    if (request.prompts.size() > static_cast<size_t>(max_sequences_)) {
      return absl::InvalidArgumentError(
          absl::StrCat("the request has ", request.prompts.size(),
                       " prompts; this GPU backend's "
                       "staging slots were sized for max_sequences ",
                       max_sequences_));
    }
    const absl::Time start = absl::Now();
    absl::StatusOr<std::vector<std::vector<int32_t>>> tokens =
        generator_->Decode(request, sink);
    if (!tokens.ok()) return tokens.status();
    Add(generator_->stats(), absl::ToDoubleSeconds(absl::Now() - start));
    return tokens;
  }

  // GpuGenerator::Decode frees the request's sequences before it returns.
  absl::Status Release(int64_t) override { return absl::OkStatus(); }

  BackendStats stats() const override { return stats_; }

 private:
  GpuBackend(const GpuGenerateOptions& options, int32_t max_sequences)
      : options_(options), max_sequences_(max_sequences) {
    stats_.device = Device::kGpu;
    stats_.offloaded_pages = 0;
  }

  // Adds one Decode's figures; `wall` is its host wall time.
  void Add(const GpuGenerateStats& s, double wall) {
    stats_.decode_steps += s.decode_steps;
    stats_.decode_seconds += s.decode_seconds;
    stats_.prefill_seconds += std::max(0.0, wall - s.decode_seconds);
    stats_.stall_seconds += s.stall_seconds;
    stats_.recall_requests += s.recalls;
    stats_.pages_recalled += s.slices;
    *stats_.offloaded_pages += s.offloaded_pages;
    if (options_.policy == GpuPolicy::kFreeKv) {
      // Counts, not the rate, so that rates pool over decodes and evaluation cells.
      stats_.corrections.Add(Tally{s.flagged_heads, s.checked_heads});
    }
    if (gpu::Recalls(options_.policy)) stats_.text = Text();
  }

  std::string Text() const {
    return absl::StrFormat(
        "decode steps %d, pages recalled %d (%.1f per step, %d requests), %d pages "
        "offloaded, stalled %.3f s at recall gates of %.3f s decoding\n"
        "correction rate %s\n",
        stats_.decode_steps, stats_.pages_recalled, stats_.pages_recalled_per_step(),
        stats_.recall_requests, *stats_.offloaded_pages, stats_.stall_seconds,
        stats_.decode_seconds, Percent(stats_.corrections.rate()));
  }

  const GpuGenerateOptions options_;
  const int32_t max_sequences_;
  // The generator borrows the model and the session: declared after them, it is
  // destroyed first.
  std::unique_ptr<CudaKvClient> kv_;
  std::unique_ptr<gpu::GpuLlama> model_;
  std::unique_ptr<GpuGenerator> generator_;
  BackendStats stats_;
};

}  // namespace

absl::Status PrepareGpuProcess() {
  gpu::RequireEagerLoading();
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<DecodeBackend>> MakeGpuBackend(
    const ModelWeights& weights, const BackendOptions& options) {
  return GpuBackend::Create(weights, options);
}

}  // namespace freekv
