#include "worker/freekv_gpu/gpu_generator.h"

#include <algorithm>
#include <cstdlib>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/log.h"
#include "worker/freekv_gpu/decoder_impl.h"
#include "worker/freekv_gpu/generation.h"
#include "worker/model/model_config.h"

namespace freekv::gpu {
namespace {

// The session's offload region: two areas of at least 8 MiB in all, and at least one
// page of every layer per area (one decode step's filled pages of one sequence).
constexpr uint64_t kOffloadRegionBytes = 8 << 20;

absl::Status CheckTokens(const DecodeRequest& r, int32_t vocab) {
  auto check = [&](const std::vector<std::vector<int32_t>>& rows,
                   const char* what) -> absl::Status {
    for (size_t b = 0; b < rows.size(); ++b) {
      for (size_t i = 0; i < rows[b].size(); ++i) {
        if (rows[b][i] < 0 || rows[b][i] >= vocab) {
          return absl::InvalidArgumentError(absl::StrCat(what, " ", b, " token ", i, " is ",
                                                         rows[b][i], "; the vocabulary has ",
                                                         vocab));
        }
      }
    }
    return absl::OkStatus();
  };
  FREEKV_RETURN_IF_ERROR(check(r.prompts, "prompt"));
  return check(r.forced, "forced row");
}

// Lets the GPU finish whatever was enqueued (a stalled stream is let through every
// hold), so that nothing is freed under a running kernel, then hands the recall slots
// back: no further step will read them.
absl::Status Drain(GpuDecoder::Impl& m) {
  absl::Status status = m.WaitForStream("the end of the decode");
  if (absl::IsDeadlineExceeded(status) &&
      !m.WaitForStream("the end of the decode, every hold passing").ok()) {
    // Stuck on something no hold releases: freeing the decoder's memory under a kernel
    // that may still write it would corrupt whatever is allocated there next, and
    // waiting would hang the worker for ever. The reports are in the log.
    Log(LogLevel::kError, "the GPU did not drain with every hold passing; aborting");
    std::abort();
  }
  if (!status.ok()) status.Update(m.stream_holder[0].Synchronize());
  if (m.driver != nullptr) {
    status.Update(m.driver->Finish());
    m.driver->ReleaseAll();
  }
  if (m.generation != nullptr && m.generation->offloader != nullptr) {
    status.Update(m.generation->offloader->Finish());
  }
  return status;
}

absl::Status DeliverLogits(GpuDecoder::Impl& m, int step, int32_t first, int32_t rows,
                           const LogitsSink& sink) {
  const size_t vocab = m.model->config().vocab_size;
  const absl::Span<float> logits =
      m.generation->logits.span<float>().subspan(0, size_t(rows) * vocab);
  FREEKV_RETURN_IF_ERROR(kernels::CopyAsync(logits.data(), m.model->logits().data(),
                                            logits.size() * sizeof(float), m.stream));
  FREEKV_RETURN_IF_ERROR(m.WaitForStream(absl::StrCat("the logits of step ", step)));
  for (int32_t r = 0; r < rows; ++r) {
    FREEKV_RETURN_IF_ERROR(
        sink(step, size_t(first + r), absl::MakeConstSpan(logits).subspan(r * vocab, vocab)));
  }
  return absl::OkStatus();
}

}  // namespace

uint64_t GpuGenerator::SlotBytes(const GpuGenerateOptions& o, const ModelConfig& c,
                                 int32_t max_batch) {
  GpuDecoderOptions d;
  d.batch = max_batch;
  d.layout = o.layout;
  d.page_tokens = o.page_tokens;
  return GpuDecoder::SlotBytes(d, c);
}

uint64_t GpuGenerator::OffloadBytes(const GpuGenerateOptions& o, const ModelConfig& c) {
  const uint64_t block = KvGeometry(c, o.page_tokens, DType::kBFloat16).block_bytes();
  const uint64_t least = PageOffloader::kAreas * uint64_t(c.num_layers) * block;
  return std::max<uint64_t>(least, (kOffloadRegionBytes + block - 1) / block * block);
}

absl::StatusOr<std::unique_ptr<GpuGenerator>> GpuGenerator::Create(
    GpuLlama& model, const GpuGenerateOptions& options, CudaKvClient* kv) {
  const ModelConfig& c = model.config();
  if (options.page_tokens < 1 || options.layout.sink < 0 || options.layout.selected < 1 ||
      options.layout.window < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "page_tokens ", options.page_tokens, ", sink ", options.layout.sink, ", selected ",
        options.layout.selected, ", window ", options.layout.window,
        ": page_tokens, selected and window must be >= 1 and sink >= 0"));
  }
  if (Recalls(options.policy)) {
    if (kv == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          GpuPolicyName(options.policy), " keeps pages in the kvservice: it needs a session"));
    }
    const Geometry& g = kv->client().geometry();
    if (g.page_tokens != uint32_t(options.page_tokens) ||
        g.num_layers != uint32_t(c.num_layers) || g.num_kv_heads != uint32_t(c.num_kv_heads) ||
        g.head_dim != uint32_t(c.head_dim) ||
        kv->regions().offload_bytes() < OffloadBytes(options, c)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the session's geometry (", g.num_layers, " layers, ", g.num_kv_heads, " KV heads, ",
          "head_dim ", g.head_dim, ", ", g.page_tokens, "-token pages) or its offload region (",
          kv->regions().offload_bytes(), " bytes) does not fit the model (", c.num_layers,
          ", ", c.num_kv_heads, ", ", c.head_dim, ") and page_tokens ", options.page_tokens,
          " (", OffloadBytes(options, c), " bytes)"));
    }
  }
  return std::unique_ptr<GpuGenerator>(
      new GpuGenerator(model, options, Recalls(options.policy) ? kv : nullptr));
}

GpuGenerator::~GpuGenerator() = default;

absl::StatusOr<std::vector<std::vector<int32_t>>> GpuGenerator::Decode(
    const DecodeRequest& request, const LogitsSink& sink) {
  FREEKV_RETURN_IF_ERROR(CheckDecodeRequest(request));
  const ModelConfig& c = model_.config();
  const int32_t B = static_cast<int32_t>(request.prompts.size());
  if (B > model_.max_batch()) {
    return absl::InvalidArgumentError(absl::StrCat(B, " prompts; the GPU model was built for ",
                                                   model_.max_batch(), " at most"));
  }
  FREEKV_RETURN_IF_ERROR(CheckTokens(request, c.vocab_size));
  GpuDecoderOptions o;
  o.policy = options_.policy;
  o.batch = B;
  o.layers = c.num_layers;
  o.max_steps = std::max(2, request.steps);
  o.layout = options_.layout;
  o.tau = options_.tau;
  o.graphs = options_.graphs;
  o.page_tokens = options_.page_tokens;
  std::vector<int32_t> first_forced(B, -1);
  for (int32_t b = 0; b < B; ++b) {
    o.prompt_lengths.push_back(static_cast<int64_t>(request.prompts[b].size()));
    if (kv_ != nullptr) o.sequence_ids.push_back(uint64_t(request.first_sequence + b));
    if (!request.forced.empty() && !request.forced[b].empty()) {
      first_forced[b] = request.forced[b][0];
    }
  }
  auto impl = GpuDecoder::Impl::Create(model_, o, kv_);
  if (!impl.ok()) return impl.status();
  GpuDecoder::Impl& m = **impl;
  absl::Status status = m.InitGeneration(first_forced);
  if (status.ok()) m.generation->forced = request.forced;
  for (int32_t b = 0; status.ok() && b < B; ++b) {
    status = m.Prefill(b, request.prompts[b]);
    if (status.ok() && sink) status = DeliverLogits(m, 0, b, 1, sink);
  }
  if (status.ok()) status = m.StartDecode();
  const absl::Time start = absl::Now();
  for (int32_t t = 0; status.ok() && t + 1 < request.steps; ++t) {
    status = m.Step(t);
    if (status.ok() && sink) status = DeliverLogits(m, t + 1, 0, B, sink);
  }
  status.Update(Drain(m));
  stats_ = {};
  stats_.decode_steps = request.steps - 1;
  stats_.decode_seconds = absl::ToDoubleSeconds(absl::Now() - start);
  std::vector<std::vector<int32_t>> tokens(B);
  if (status.ok()) {
    uint64_t waited_ns = 0;
    status.Update(m.waited_ns.CopyToHost(&waited_ns, sizeof(waited_ns)));
    stats_.stall_seconds = waited_ns / 1e9;
    const absl::Span<const int32_t> picked = m.generation->picked.span<const int32_t>();
    for (int32_t b = 0; b < B; ++b) {
      for (int s = 0; s < request.steps; ++s) tokens[b].push_back(picked[size_t(s) * B + b]);
    }
  }
  if (m.driver != nullptr) {
    const RecallDriverStats d = m.driver->stats();
    stats_.recalls = d.recalls;
    stats_.slices = d.slices;
    if (o.policy == GpuPolicy::kFreeKv) {
      stats_.checked_heads = m.checked_heads;
      stats_.flagged_heads = d.flagged_heads;
    }
  }
  if (m.generation != nullptr && m.generation->offloader != nullptr) {
    stats_.offloaded_pages = m.generation->offloader->pages_offloaded();
  }
  // The request's pages leave the kvservice whatever happened.
  for (uint64_t seq : o.sequence_ids) status.Update(kv_->client().FreeSequence(seq).status());
  if (!status.ok()) return status;
  return tokens;
}

}  // namespace freekv::gpu
