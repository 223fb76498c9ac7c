#include "worker/policy_factory.h"

#include "absl/strings/str_cat.h"

namespace freekv {

absl::Status PolicyBundle::Release(int64_t sequence) {
  if (retrieval != nullptr) return retrieval->Release(sequence);
  if (full != nullptr) full->Release(sequence);
  return absl::OkStatus();
}

std::optional<DecodeStats> PolicyBundle::stats() const {
  if (retrieval == nullptr) return std::nullopt;
  return retrieval->stats();
}

absl::StatusOr<PolicyBundle> MakePolicy(PolicyKind kind, const ModelConfig& model,
                                        const RetrievalConfig& config,
                                        const std::string& target,
                                        const std::string& client_name) {
  PolicyBundle bundle;
  if (kind == PolicyKind::kFull) {
    absl::StatusOr<std::unique_ptr<FullAttention>> full =
        FullAttention::Create(model, config.page_tokens);
    if (!full.ok()) return full.status();
    bundle.full = full->get();
    bundle.policy = *std::move(full);
    return bundle;
  }
  if (NeedsService(kind)) {
    KvServiceLinkOptions options;
    options.target = target;
    options.client_name = client_name;
    absl::StatusOr<std::unique_ptr<KvServiceLink>> link =
        KvServiceLink::Open(options, model, config);
    if (!link.ok()) return link.status();
    bundle.link = *std::move(link);
  }
  const RetrievalMode mode = kind == PolicyKind::kFreeKv     ? RetrievalMode::kFreeKv
                             : kind == PolicyKind::kBlocking ? RetrievalMode::kBlocking
                                                             : RetrievalMode::kOracle;
  absl::StatusOr<std::unique_ptr<RetrievalPolicy>> policy =
      RetrievalPolicy::Create(model, config, mode, bundle.link.get());
  if (!policy.ok()) return policy.status();
  bundle.retrieval = policy->get();
  bundle.policy = *std::move(policy);
  return bundle;
}

}  // namespace freekv
