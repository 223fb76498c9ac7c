#include "worker/cpu_backend.h"

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "worker/decode_loop.h"

namespace freekv {

absl::StatusOr<std::unique_ptr<CpuBackend>> CpuBackend::Create(
    const ModelWeights& weights, const BackendOptions& options) {
  if (options.config.resident_cache_pages > 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "resident_cache_pages is ", options.config.resident_cache_pages,
        ": the resident cache is on the GPU only (use --device=gpu, or leave it -1 or 0)"));
  }
  absl::StatusOr<PolicyBundle> bundle =
      MakePolicy(options.policy, weights.config, options.config, options.target,
                 options.client_name);
  if (!bundle.ok()) return bundle.status();
  return Create(weights, *std::move(bundle));
}

absl::StatusOr<std::unique_ptr<CpuBackend>> CpuBackend::Create(
    const ModelWeights& weights, PolicyBundle bundle) {
  if (bundle.policy == nullptr) {
    return absl::InvalidArgumentError("CpuBackend needs a policy; the bundle has none");
  }
  absl::StatusOr<Transformer> model = Transformer::Create(weights);
  if (!model.ok()) return model.status();
  return std::unique_ptr<CpuBackend>(
      new CpuBackend(*std::move(model), std::move(bundle)));
}

absl::StatusOr<std::vector<std::vector<int32_t>>> CpuBackend::Decode(
    const DecodeRequest& request, const LogitsSink& sink) {
  const absl::Time start = absl::Now();
  absl::Time prefilled = start;  // when the prefill's last logits row arrived
  absl::StatusOr<std::vector<std::vector<int32_t>>> tokens =
      DecodeBatch(model_, *bundle_.policy, request,
                  [&](int step, size_t b, absl::Span<const float> logits) {
                    if (step == 0) prefilled = absl::Now();
                    return sink ? sink(step, b, logits) : absl::OkStatus();
                  });
  if (!tokens.ok()) return tokens.status();
  prefill_seconds_ += absl::ToDoubleSeconds(prefilled - start);
  decode_seconds_ += absl::ToDoubleSeconds(absl::Now() - prefilled);
  if (bundle_.retrieval != nullptr) {
    if (auto s = bundle_.retrieval->ReportStats(); !s.ok()) return s;
  }
  return tokens;
}

absl::Status CpuBackend::Release(int64_t sequence) { return bundle_.Release(sequence); }

BackendStats CpuBackend::stats() const {
  BackendStats s;
  s.device = Device::kCpu;
  s.prefill_seconds = prefill_seconds_;
  s.decode_seconds = decode_seconds_;
  s.layer_corrections.emplace();
  const std::optional<DecodeStats> d = bundle_.stats();
  if (!d) return s;  // full, exact: nothing selected or recalled
  const LayerStats total = d->Total();
  s.decode_steps = d->decode_steps;
  s.recall_requests = d->recall_requests;
  s.pages_recalled = total.recalled_pages;
  s.stall_seconds = d->stall_seconds;
  s.corrections = Tally{total.corrections, total.correction_checks};
  s.speculation_hits = Tally{total.hit_pages, total.needed_pages};
  for (const LayerStats& layer : d->layers) {
    s.layer_corrections->push_back(Tally{layer.corrections, layer.correction_checks});
  }
  s.text = FormatStats(*d);
  return s;
}

}  // namespace freekv
