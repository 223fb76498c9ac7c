#include "kvservice/copy_method.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace freekv {

absl::StatusOr<CopyMethod> ParseCopyMethod(absl::string_view name) {
  if (name == "batch") return CopyMethod::kBatch;
  if (name == "per_run") return CopyMethod::kPerRun;
  if (name == "gather") return CopyMethod::kGather;
  if (name == "split") return CopyMethod::kSplit;
  if (name == "auto") return CopyMethod::kAuto;
  return absl::InvalidArgumentError(absl::StrCat(
      "copy method is '", name, "'; use 'batch', 'per_run', 'gather', 'split' or 'auto'"));
}

const char* CopyMethodName(CopyMethod method) {
  switch (method) {
    case CopyMethod::kBatch:
      return "batch";
    case CopyMethod::kPerRun:
      return "per_run";
    case CopyMethod::kGather:
      return "gather";
    case CopyMethod::kSplit:
      return "split";
    case CopyMethod::kAuto:
      return "auto";
  }
  return "?";
}

bool UsesBounce(CopyMethod method) {
  return method == CopyMethod::kGather || method == CopyMethod::kSplit ||
         method == CopyMethod::kAuto;
}

}  // namespace freekv
