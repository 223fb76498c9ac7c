#include "kvservice/gather_pool.h"

#include <algorithm>
#include <cstring>

#include "absl/time/clock.h"

namespace freekv {

GatherPool::GatherPool(int threads, absl::Duration spin) : spin_(spin) {
  bounds_.assign(std::max(threads, 1) + 1, 0);
  for (int i = 1; i < std::max(threads, 1); ++i) {
    workers_.emplace_back([this, i] { Work(i); });
  }
}

GatherPool::~GatherPool() {
  {
    absl::MutexLock lock(&park_mu_);  // parked workers re-check under this lock
    stopping_.store(true);
  }
  for (std::thread& worker : workers_) worker.join();
}

void GatherPool::CopyPart(int index) {
  for (size_t i = bounds_[index]; i < bounds_[index + 1]; ++i) {
    std::memcpy(job_[i].dst, job_[i].src, job_[i].bytes);
  }
}

uint64_t GatherPool::AwaitJob(uint64_t seen) {
  const absl::Time spin_until = absl::Now() + spin_;
  for (int i = 0;; ++i) {
    const uint64_t now = generation_.load(std::memory_order_acquire);
    if (now != seen || stopping_.load()) return now;
    if (i % 1024 == 1023 && absl::Now() > spin_until) break;
  }
  absl::MutexLock lock(&park_mu_);
  auto moved = [this, seen]() {
    return generation_.load(std::memory_order_acquire) != seen || stopping_.load();
  };
  park_mu_.Await(absl::Condition(&moved));
  return generation_.load(std::memory_order_acquire);
}

void GatherPool::Work(int index) {
  uint64_t seen = 0;
  for (;;) {
    seen = AwaitJob(seen);
    if (stopping_.load()) return;
    CopyPart(index);
    remaining_.fetch_sub(1, std::memory_order_acq_rel);
  }
}

void GatherPool::Copy(absl::Span<const HostCopy> copies) {
  if (copies.empty()) return;
  absl::MutexLock call(&call_mu_);
  const size_t parts = std::min<size_t>(threads(), copies.size());
  size_t total = 0;
  for (const HostCopy& copy : copies) total += copy.bytes;
  // Part p ends where the running byte count first reaches its share; parts past
  // `parts` are empty so that every worker still reports in.
  job_ = copies;
  std::fill(bounds_.begin(), bounds_.end(), copies.size());
  bounds_[0] = 0;
  size_t running = 0;
  size_t next = 0;
  for (size_t part = 0; part + 1 < parts; ++part) {
    const size_t target = total / parts * (part + 1);
    while (next < copies.size() && running < target) running += copies[next++].bytes;
    bounds_[part + 1] = next;
  }
  remaining_.store(static_cast<int>(workers_.size()), std::memory_order_relaxed);
  {
    // Under park_mu_ so that a worker about to park sees the change (or is woken).
    absl::MutexLock lock(&park_mu_);
    generation_.fetch_add(1, std::memory_order_release);
  }
  CopyPart(0);
  while (remaining_.load(std::memory_order_acquire) != 0) {
  }
}

}  // namespace freekv
