#include "kvservice/copy_runs.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace freekv {

std::vector<CopyRun> MergeAdjacentRuns(std::vector<CopyRun> runs) {
  std::sort(runs.begin(), runs.end(), [](const CopyRun& a, const CopyRun& b) {
    return a.remote_offset < b.remote_offset;
  });
  std::vector<CopyRun> merged;
  merged.reserve(runs.size());
  for (const CopyRun& run : runs) {
    if (!merged.empty()) {
      CopyRun& last = merged.back();
      if (last.local + last.bytes == run.local &&
          last.remote_offset + last.bytes == run.remote_offset) {
        last.bytes += run.bytes;
        continue;
      }
    }
    merged.push_back(run);
  }
  return merged;
}

absl::Status CheckNoRemoteOverlap(absl::Span<const CopyRun> sorted_runs) {
  for (size_t i = 1; i < sorted_runs.size(); ++i) {
    const CopyRun& prev = sorted_runs[i - 1];
    const CopyRun& run = sorted_runs[i];
    if (prev.remote_offset + prev.bytes > run.remote_offset) {
      return absl::InvalidArgumentError(absl::StrCat(
          "destinations overlap: the block at slot offset ", prev.remote_offset,
          " (", prev.bytes, " bytes) runs into the block at slot offset ",
          run.remote_offset));
    }
  }
  return absl::OkStatus();
}

}  // namespace freekv
