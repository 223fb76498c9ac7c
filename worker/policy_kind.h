// The decode policies by name, as the worker's --policy flag spells them. Stateless;
// any thread.
#ifndef FREEKV_WORKER_POLICY_KIND_H_
#define FREEKV_WORKER_POLICY_KIND_H_

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace freekv {

enum class PolicyKind { kFull, kFreeKv, kBlocking, kOracle };

// "full", "freekv", "blocking" or "oracle"; INVALID_ARGUMENT listing them otherwise.
absl::StatusOr<PolicyKind> ParsePolicyKind(absl::string_view name);
const char* PolicyKindName(PolicyKind kind);
// freekv and blocking keep their pages in the kvservice.
bool NeedsService(PolicyKind kind);

}  // namespace freekv

#endif  // FREEKV_WORKER_POLICY_KIND_H_
