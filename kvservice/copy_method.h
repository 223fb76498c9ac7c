// How a CopyStreams (kvservice/cuda_copy.h) moves bytes, and the names the kvservice's
// flags give the methods. CUDA-free, so that a kvservice built without CUDA checks its
// flags the same way. Safe from any thread.
#ifndef FREEKV_KVSERVICE_COPY_METHOD_H_
#define FREEKV_KVSERVICE_COPY_METHOD_H_

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace freekv {

enum class CopyMethod {
  kBatch,   // one cudaMemcpyBatchAsync per stream per Enqueue
  kPerRun,  // one cudaMemcpyAsync per copy (the reference system's way, for benches)
  kGather,  // host-to-device only: CPU gather into pinned bounce buffers, large copies
  kSplit,   // host-to-device only: kGather, with direct_share of each piece's copies
            // batched straight from their sources meanwhile
  kAuto,    // host-to-device only: an Enqueue of at most direct_max_copies copies as
            // kBatch, a larger one as kGather
};

// "batch", "per_run", "gather", "split" or "auto"; INVALID_ARGUMENT naming the value
// otherwise.
absl::StatusOr<CopyMethod> ParseCopyMethod(absl::string_view name);
const char* CopyMethodName(CopyMethod method);

// True for the methods that may pack on the host (a GatherPool) into bounce buffers.
bool UsesBounce(CopyMethod method);

}  // namespace freekv

#endif  // FREEKV_KVSERVICE_COPY_METHOD_H_
