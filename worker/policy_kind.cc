#include "worker/policy_kind.h"

#include "absl/strings/str_cat.h"

namespace freekv {

absl::StatusOr<PolicyKind> ParsePolicyKind(absl::string_view name) {
  for (PolicyKind kind : {PolicyKind::kFull, PolicyKind::kFreeKv, PolicyKind::kBlocking,
                          PolicyKind::kOracle}) {
    if (name == PolicyKindName(kind)) return kind;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "policy is \"", name, "\"; expected one of full, freekv, blocking, oracle"));
}

const char* PolicyKindName(PolicyKind kind) {
  switch (kind) {
    case PolicyKind::kFull:
      return "full";
    case PolicyKind::kFreeKv:
      return "freekv";
    case PolicyKind::kBlocking:
      return "blocking";
    case PolicyKind::kOracle:
      return "oracle";
  }
  return "?";
}

bool NeedsService(PolicyKind kind) {
  return kind == PolicyKind::kFreeKv || kind == PolicyKind::kBlocking;
}

}  // namespace freekv
