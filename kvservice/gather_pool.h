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
// They run at a lower priority (nice 5) and yield while they spin, so that a thread
// carrying a request or a reply, or a worker's, gets a contested CPU first.
//
// A job is cut into grains of about 128 KiB that the threads claim one at a time, so a
// thread that the OS descheduled (the service shares its cores with gRPC and the
// worker) delays nobody: the others take its share. The caller waits for the grains,
// never for every worker to check in.
//
// Streaming stores (the default): the bounce buffer is read next by the GPU's DMA, not
// by a CPU, so it is written with non-temporal stores, which leave no dirty lines in
// the caches for the DMA to snoop. Measured on the lent H100 hosts (bench/RESULTS.md,
// run 4): alone, plain stores were as fast or faster; beside the DMA of the other
// bounce buffer, streaming stores were 1.6 to 1.7 times faster.
//
// Each thread prefetches its grain's sources a few KiB ahead of its copy (see
// SourcePrefetcher in the .cc): per thread, DRAM latency bounds the gather otherwise.
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

#include "absl/functional/function_ref.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"

namespace freekv {

struct HostCopy {
  void* dst = nullptr;
  const void* src = nullptr;
  size_t bytes = 0;
};

struct GatherPoolOptions {
  int threads = 8;  // copying at once, the calling thread included; at least 1
  absl::Duration spin = absl::Microseconds(500);
  // Non-temporal stores for 16-byte-aligned ranges (x86-64); memcpy otherwise.
  bool streaming_stores = true;
  // Sources are prefetched this many bytes ahead of the copy (0: not at all).
  size_t prefetch_bytes = size_t{8} << 10;
};

class GatherPool {
 public:
  explicit GatherPool(const GatherPoolOptions& options);
  ~GatherPool();
  GatherPool(const GatherPool&) = delete;
  GatherPool& operator=(const GatherPool&) = delete;

  int threads() const { return static_cast<int>(workers_.size()) + 1; }
  bool streaming_stores() const { return streaming_; }
  size_t prefetch_bytes() const { return prefetch_bytes_; }

  // Copies every range (they must not overlap) and returns when all bytes are written
  // and visible to other threads and to devices.
  void Copy(absl::Span<const HostCopy> copies);

  // As Copy, but the calling thread first runs `meanwhile` (e.g. issuing other copies
  // to a GPU) while the other threads start on the ranges, then joins them.
  void Copy(absl::Span<const HostCopy> copies, absl::FunctionRef<void()> meanwhile);

 private:
  // state_ packs the job's grain count and the next unclaimed grain, so a claim
  // (compare-and-swap) can never take a grain of a job other than the current one.
  static constexpr int kGrainBits = 24;
  static constexpr uint64_t kGrainMask = (uint64_t{1} << kGrainBits) - 1;

  void Work();
  // Claims and copies grains of the current job until none is left.
  void RunGrains();
  void CopyGrain(size_t grain) const;
  // Splits `copies` into pieces_ and grain_ends_; returns the grain count.
  size_t Plan(absl::Span<const HostCopy> copies);
  // Waits for a job other than `seen` (or stop); returns the job's number.
  uint64_t AwaitJob(uint64_t seen);

  const absl::Duration spin_;
  const bool streaming_;
  const size_t prefetch_bytes_;
  absl::Mutex call_mu_;  // one job at a time
  // The job, written by Copy before it publishes state_, read by whoever claims a
  // grain; rewritten only once every grain of the previous job is done.
  std::vector<HostCopy> pieces_;
  std::vector<size_t> grain_ends_;  // grain g is pieces_[grain_ends_[g-1], grain_ends_[g])
  std::atomic<uint64_t> job_{0};    // bumped per job: wakes the workers
  std::atomic<uint64_t> state_{0};  // (grains << kGrainBits) | next grain
  std::atomic<size_t> grains_done_{0};
  std::atomic<bool> stopping_{false};
  absl::Mutex park_mu_;  // parked workers wait here for job_ to move
  std::vector<std::thread> workers_;
};

}  // namespace freekv

#endif  // FREEKV_KVSERVICE_GATHER_POOL_H_
