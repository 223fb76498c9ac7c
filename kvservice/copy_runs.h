// Merging copy runs: the copy engines (and UCX) reach the link's ceiling only with
// large operations, so runs whose source and destination both continue each other
// become one operation (DESIGN.md: 16 KiB copies one by one reach 0.09 of PCIe).
#ifndef FREEKV_KVSERVICE_COPY_RUNS_H_
#define FREEKV_KVSERVICE_COPY_RUNS_H_

#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "kvservice/transport.h"

namespace freekv {

// Sorts runs by remote offset and merges each run into the previous one when both its
// local and its remote range start where the previous one's end. The bytes moved are
// the same; the number of runs can only go down.
std::vector<CopyRun> MergeAdjacentRuns(std::vector<CopyRun> runs);

// OK when no two runs write overlapping remote bytes; otherwise INVALID_ARGUMENT naming
// the two offsets. `runs` must be sorted by remote_offset (MergeAdjacentRuns's output,
// or any sorted list).
absl::Status CheckNoRemoteOverlap(absl::Span<const CopyRun> sorted_runs);

}  // namespace freekv

#endif  // FREEKV_KVSERVICE_COPY_RUNS_H_
