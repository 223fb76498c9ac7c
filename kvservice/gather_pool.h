// GatherPool: threads that copy many host byte ranges at once.
//
// Why: the copy engines pay a fixed cost per copy, so 16 KiB (page, head) blocks
// scattered over the store reach a fraction of PCIe however they are batched
// (bench/RESULTS.md). Gathering them with the CPU into a pinned bounce buffer first
// turns a recall into one large host-to-device copy, which runs at the link's ceiling;
// a few threads of memcpy keep up with PCIe where one cannot.
//
// A job is a few hundred microseconds, so waking sleeping threads (tens of
// microseconds each, one after the other) would cost as much as the copying: workers
// spin on an atomic for `spin` after each job, and only then park on a mutex. A burst
// of recalls (one decode step's) thus costs no wake-ups; an idle service burns no CPU.
//
// Owns its threads (threads - 1 of them: the caller works too). Copy may be called
// from any thread; concurrent calls take turns.
#ifndef FREEKV_KVSERVICE_GATHER_POOL_H_
#define FREEKV_KVSERVICE_GATHER_POOL_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"

namespace freekv {

struct HostCopy {
  void* dst = nullptr;
  const void* src = nullptr;
  size_t bytes = 0;
};

class GatherPool {
 public:
  // `threads` >= 1 copy at once, the calling thread included.
  explicit GatherPool(int threads, absl::Duration spin = absl::Microseconds(500));
  ~GatherPool();
  GatherPool(const GatherPool&) = delete;
  GatherPool& operator=(const GatherPool&) = delete;

  int threads() const { return static_cast<int>(workers_.size()) + 1; }

  // memcpy of every copy, split over the threads in contiguous parts of about equal
  // bytes; returns when all are done. Ranges must not overlap.
  void Copy(absl::Span<const HostCopy> copies);

 private:
  void Work(int index);
  void CopyPart(int index);
  // Waits for a generation other than `seen` (or stop); returns it.
  uint64_t AwaitJob(uint64_t seen);

  const absl::Duration spin_;
  absl::Mutex call_mu_;  // one job at a time
  // The job: written by Copy before it bumps generation_, read by workers after.
  absl::Span<const HostCopy> job_;
  std::vector<size_t> bounds_;  // part i is [bounds_[i], bounds_[i + 1])
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> remaining_{0};
  std::atomic<bool> stopping_{false};
  absl::Mutex park_mu_;  // parked workers wait here for generation_ to move
  std::vector<std::thread> workers_;
};

}  // namespace freekv

#endif  // FREEKV_KVSERVICE_GATHER_POOL_H_
