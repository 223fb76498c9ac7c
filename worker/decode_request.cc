#include "worker/decode_request.h"

#include "absl/strings/str_cat.h"

namespace freekv {

absl::Status CheckDecodeRequest(const DecodeRequest& r) {
  if (r.prompts.empty()) return absl::InvalidArgumentError("no prompts to decode");
  if (r.steps < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("steps is ", r.steps, "; it must be >= 1"));
  }
  for (size_t b = 0; b < r.prompts.size(); ++b) {
    if (r.prompts[b].empty()) {
      return absl::InvalidArgumentError(absl::StrCat("prompt ", b, " is empty"));
    }
  }
  if (r.forced.empty()) return absl::OkStatus();
  if (r.forced.size() != r.prompts.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "forced has ", r.forced.size(), " rows for ", r.prompts.size(), " prompts"));
  }
  for (size_t b = 0; b < r.forced.size(); ++b) {
    if (r.forced[b].size() + 1 < static_cast<size_t>(r.steps)) {
      return absl::InvalidArgumentError(absl::StrCat("forced row ", b, " has ",
                                                     r.forced[b].size(), " tokens; ",
                                                     r.steps - 1, " are needed"));
    }
  }
  return absl::OkStatus();
}

}  // namespace freekv
