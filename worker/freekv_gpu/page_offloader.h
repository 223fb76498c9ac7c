// PageOffloader: sends the pages that fill during GPU decoding to the kvservice off the
// decode thread. The decode thread writes a job's HND blocks into one area of the
// session's offload region on its stream, records MarkWritten and pushes the job; a
// thread of its own waits on the host until the stream has written the job's blocks,
// records the region's MarkOffloadWritten on a stream of its own (where it completes
// at once), then calls KvClient::Offload for it (jobs in order). Waiting here rather
// than in the kvservice matters: the kvservice would otherwise hold the session while
// the worker's stream waits at a gate for a recall of that same session (measured:
// the offload's deadline expired), and the region's one event, recorded on the decode
// stream, would name the writes of later jobs too. Offload replies only once the pages
// are stored, so a finished job's pages can be recalled.
//
// Areas: the region is split into kAreas equal areas used in turn, job j in area
// j % kAreas; AreaFor(j) waits until the job that last used that area is done, so
// the stream never overwrites blocks the kvservice has not copied yet.
//
// Thread safety: Push, AreaFor, WaitDone and Finish from the decode thread only.
#ifndef FREEKV_WORKER_FREEKV_GPU_PAGE_OFFLOADER_H_
#define FREEKV_WORKER_FREEKV_GPU_PAGE_OFFLOADER_H_

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "client/cuda_kv_client.h"
#include "kernels/cuda_util.h"

namespace freekv::gpu {

class PageOffloader {
 public:
  static constexpr int kAreas = 2;
  // How long the thread waits for the stream to write a job's blocks (a decode step
  // takes milliseconds; past this the stream is stuck and the job fails).
  static constexpr absl::Duration kWriteLimit = absl::Seconds(60);

  // `kv` must outlive the offloader. Creates the events and starts the thread.
  static absl::StatusOr<std::unique_ptr<PageOffloader>> Create(CudaKvClient& kv);
  ~PageOffloader();
  PageOffloader(const PageOffloader&) = delete;
  PageOffloader& operator=(const PageOffloader&) = delete;

  // Blocks one area holds.
  uint64_t area_blocks() const { return area_blocks_; }
  // The id the next pushed job will get, and the byte offset of its area in the
  // offload region once the area is free (waits for the job that used it last).
  int64_t next_job() const { return pushed_; }
  absl::StatusOr<uint64_t> AreaFor(int64_t job);
  // Records on `stream` that job `job`'s blocks are written (after its writes).
  absl::Status MarkWritten(int64_t job, cudaStream_t stream);
  // Queues the next job: `pages` (offload_offset inside its area, set by the caller)
  // were written and MarkWritten was recorded. Returns its id.
  int64_t Push(std::vector<OffloadPageRef> pages);
  // Waits until job `job` (and every earlier one) is stored; the first error so far.
  absl::Status WaitDone(int64_t job);
  // Waits for every pushed job; the first error, if any.
  absl::Status Finish() { return WaitDone(pushed_ - 1); }
  uint64_t pages_offloaded() const;
  // Jobs pushed, done and queued, for a stall report.
  std::string Describe() const;

 private:
  PageOffloader(CudaKvClient& kv, std::vector<kernels::CudaEvent> written,
                kernels::CudaStream idle);
  void Loop();

  CudaKvClient& kv_;
  const uint64_t area_blocks_;
  std::vector<kernels::CudaEvent> written_;  // per area: its last job's blocks written
  const kernels::CudaStream idle_;            // the thread's: records the region's event
  int64_t pushed_ = 0;  // decode thread only

  mutable absl::Mutex mu_;
  absl::CondVar changed_;  // a job pushed or done, or stopping
  std::deque<std::vector<OffloadPageRef>> queue_ ABSL_GUARDED_BY(mu_);
  int64_t done_ ABSL_GUARDED_BY(mu_) = 0;  // jobs [0, done_) are finished
  uint64_t pages_ ABSL_GUARDED_BY(mu_) = 0;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status first_error_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;
};

}  // namespace freekv::gpu

#endif  // FREEKV_WORKER_FREEKV_GPU_PAGE_OFFLOADER_H_
