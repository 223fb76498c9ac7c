// Builds a decode policy by name, with what it needs: `full` and `oracle` keep every
// page on the worker; `freekv` and `blocking` open a session with the kvservice.
// Used by the worker CLI and the evaluation.
//
// Functions are thread-safe; the objects they return follow their own headers.
#ifndef FREEKV_WORKER_POLICY_FACTORY_H_
#define FREEKV_WORKER_POLICY_FACTORY_H_

#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "worker/kv_service_link.h"
#include "worker/model/attention_policy.h"
#include "worker/model/full_attention.h"
#include "worker/policy_kind.h"
#include "worker/retrieval_policy.h"

namespace freekv {

// A policy and the link it recalls through. The link is declared first so that it
// outlives the policy (members are destroyed in reverse order).
struct PolicyBundle {
  std::unique_ptr<KvServiceLink> link;  // freekv and blocking only
  std::unique_ptr<AttentionPolicy> policy;
  RetrievalPolicy* retrieval = nullptr;  // `policy` when it is a retrieval policy
  FullAttention* full = nullptr;         // `policy` when it is full

  // Forgets a finished sequence (and frees its pages in the kvservice). A policy that
  // is neither (e.g. the evaluation's exact ceiling) frees its sequences when it is
  // destroyed.
  absl::Status Release(int64_t sequence);
  // The retrieval statistics; empty for full.
  std::optional<DecodeStats> stats() const;
};

// `target` is the kvservice's gRPC target ("unix:PATH"); unused for full and oracle.
// Full attention uses config.page_tokens for its cache pages too.
absl::StatusOr<PolicyBundle> MakePolicy(PolicyKind kind, const ModelConfig& model,
                                        const RetrievalConfig& config,
                                        const std::string& target,
                                        const std::string& client_name = "freekv-worker");

}  // namespace freekv

#endif  // FREEKV_WORKER_POLICY_FACTORY_H_
