#include "kvservice/gather_pool.h"

#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <thread>

#if defined(__SSE2__)
#include <emmintrin.h>
#include <xmmintrin.h>
#endif

#include "absl/time/clock.h"
#include "common/thread_name.h"

namespace freekv {
namespace {

// Grains of about this many bytes: 32 per 4 MiB recall, so that 8 threads balance,
// each still long enough (several microseconds) that claiming one costs nothing.
constexpr size_t kGrainBytes = size_t{128} << 10;

void CpuRelax() {
#if defined(__SSE2__)
  _mm_pause();
#endif
}

// The workers' nice value. They spin between jobs, and on a busy host a spinning
// packer must not keep the threads that carry requests, replies and the workers' gate
// openings off a CPU: measured on the lent H100 host, 14 packers among 16 CPUs left
// the kvservice's issuing thread waiting for requests a third of the time (bench/
// RESULTS.md, GPU recall run 7d). Lower priority costs them nothing on an idle CPU.
constexpr int kWorkerNice = 5;

// memcpy, with non-temporal 16-byte stores for the part where both ends are aligned.
void StreamCopy(void* dst, const void* src, size_t bytes) {
  auto* d = static_cast<std::byte*>(dst);
  auto* s = static_cast<const std::byte*>(src);
#if defined(__SSE2__)
  if (((reinterpret_cast<uintptr_t>(d) | reinterpret_cast<uintptr_t>(s)) & 15) == 0) {
    const size_t body = bytes & ~size_t{63};
    for (size_t i = 0; i < body; i += 64) {
      const auto* from = reinterpret_cast<const __m128i*>(s + i);
      auto* to = reinterpret_cast<__m128i*>(d + i);
      const __m128i a = _mm_load_si128(from);
      const __m128i b = _mm_load_si128(from + 1);
      const __m128i c = _mm_load_si128(from + 2);
      const __m128i e = _mm_load_si128(from + 3);
      _mm_stream_si128(to, a);
      _mm_stream_si128(to + 1, b);
      _mm_stream_si128(to + 2, c);
      _mm_stream_si128(to + 3, e);
    }
    d += body;
    s += body;
    bytes -= body;
  }
#endif
  std::memcpy(d, s, bytes);
}

// Copies are made in steps of this many bytes, each after prefetching as many more
// source bytes ahead (SourcePrefetcher).
constexpr size_t kStepBytes = 1024;
constexpr size_t kLineBytes = 64;

// Walks a grain's sources a fixed distance in front of the copy and prefetches them
// into L2. Why: each 16 KiB block starts at a random place of the store, and the
// hardware prefetchers stop at every 4 KiB page, so a thread copying alone keeps few
// DRAM reads in flight and waits out the latency at each page. Measured on the lent
// H100 hosts (bench/RESULTS.md, GPU recall run 7): 8 KiB ahead took the CPU gather
// of 8 threads from 33-38 to 44-49 GB/s.
class SourcePrefetcher {
 public:
  SourcePrefetcher(const HostCopy* begin, const HostCopy* end, size_t ahead)
      : piece_(begin), end_(end) {
    Advance(ahead);
  }

  // Prefetches the next `bytes` of the grain's sources (nothing past its last piece).
  void Advance(size_t bytes) {
    for (size_t done = 0; done < bytes; done += kLineBytes) {
      while (piece_ != end_ && offset_ >= piece_->bytes) {
        ++piece_;
        offset_ = 0;
      }
      if (piece_ == end_) return;
#if defined(__SSE2__)
      _mm_prefetch(static_cast<const char*>(piece_->src) + offset_, _MM_HINT_T1);
#endif
      offset_ += kLineBytes;
    }
  }

 private:
  const HostCopy* piece_;
  const HostCopy* end_;
  size_t offset_ = 0;
};

// Non-temporal stores are weakly ordered: fence them before reporting a grain done, so
// that whoever sees the report (and the DMA it then starts) sees the bytes.
void StoreFence() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

}  // namespace

GatherPool::GatherPool(const GatherPoolOptions& options)
    : spin_(options.spin),
      streaming_(options.streaming_stores),
      prefetch_bytes_(options.prefetch_bytes) {
  for (int i = 1; i < std::max(options.threads, 1); ++i) {
    workers_.emplace_back([this] { Work(); });
  }
}

GatherPool::~GatherPool() {
  {
    absl::MutexLock lock(&park_mu_);  // parked workers re-check under this lock
    stopping_.store(true);
  }
  for (std::thread& worker : workers_) worker.join();
}

size_t GatherPool::Plan(absl::Span<const HostCopy> copies) {
  size_t total = 0;
  for (const HostCopy& copy : copies) total += copy.bytes;
  size_t grain = kGrainBytes;
  while (total / grain >= (kGrainMask >> 1)) grain *= 2;  // the count fits state_
  pieces_.clear();
  grain_ends_.clear();
  size_t in_grain = 0;
  for (const HostCopy& copy : copies) {
    auto* dst = static_cast<std::byte*>(copy.dst);
    auto* src = static_cast<const std::byte*>(copy.src);
    for (size_t done = 0; done < copy.bytes;) {
      const size_t n = std::min(copy.bytes - done, grain - in_grain);
      pieces_.push_back(HostCopy{dst + done, src + done, n});
      done += n;
      in_grain += n;
      if (in_grain == grain) {
        grain_ends_.push_back(pieces_.size());
        in_grain = 0;
      }
    }
  }
  if (in_grain > 0) grain_ends_.push_back(pieces_.size());
  return grain_ends_.size();
}

void GatherPool::CopyGrain(size_t grain) const {
  const HostCopy* begin = pieces_.data() + (grain == 0 ? 0 : grain_ends_[grain - 1]);
  const HostCopy* end = pieces_.data() + grain_ends_[grain];
  SourcePrefetcher prefetcher(begin, end, prefetch_bytes_);
  for (const HostCopy* piece = begin; piece != end; ++piece) {
    auto* dst = static_cast<std::byte*>(piece->dst);
    auto* src = static_cast<const std::byte*>(piece->src);
    for (size_t done = 0; done < piece->bytes; done += kStepBytes) {
      const size_t n = std::min(kStepBytes, piece->bytes - done);
      if (prefetch_bytes_ > 0) prefetcher.Advance(n);
      if (streaming_) {
        StreamCopy(dst + done, src + done, n);
      } else {
        std::memcpy(dst + done, src + done, n);
      }
    }
  }
}

void GatherPool::RunGrains() {
  uint64_t state = state_.load(std::memory_order_acquire);
  for (;;) {
    if ((state & kGrainMask) >= (state >> kGrainBits)) return;
    // A successful claim also acquires the job's tables that Copy wrote before it
    // published state_; they stay put until this grain is reported done.
    if (!state_.compare_exchange_weak(state, state + 1, std::memory_order_acq_rel,
                                      std::memory_order_acquire)) {
      continue;
    }
    CopyGrain(state & kGrainMask);
    if (streaming_) StoreFence();
    grains_done_.fetch_add(1, std::memory_order_release);
    state = state_.load(std::memory_order_acquire);
  }
}

uint64_t GatherPool::AwaitJob(uint64_t seen) {
  const absl::Time spin_until = absl::Now() + spin_;
  for (int i = 0;; ++i) {
    const uint64_t now = job_.load(std::memory_order_acquire);
    if (now != seen || stopping_.load()) return now;
    if (i % 1024 == 1023 && absl::Now() > spin_until) break;
    // Every few microseconds, let a thread waiting for this CPU run.
    if (i % 64 == 63) {
      std::this_thread::yield();
    } else {
      CpuRelax();
    }
  }
  absl::MutexLock lock(&park_mu_);
  auto moved = [this, seen]() {
    return job_.load(std::memory_order_acquire) != seen || stopping_.load();
  };
  park_mu_.Await(absl::Condition(&moved));
  return job_.load(std::memory_order_acquire);
}

void GatherPool::Work() {
  NameThisThread("kv-packer");
  // Best effort: a refusal leaves the thread at its inherited priority.
  setpriority(PRIO_PROCESS, static_cast<id_t>(syscall(SYS_gettid)), kWorkerNice);
  uint64_t seen = 0;
  for (;;) {
    seen = AwaitJob(seen);
    if (stopping_.load()) return;
    RunGrains();
  }
}

void GatherPool::Copy(absl::Span<const HostCopy> copies) {
  Copy(copies, [] {});
}

void GatherPool::Copy(absl::Span<const HostCopy> copies,
                      absl::FunctionRef<void()> meanwhile) {
  absl::MutexLock call(&call_mu_);
  const size_t grains = Plan(copies);
  if (grains == 0) {
    meanwhile();
    return;
  }
  grains_done_.store(0, std::memory_order_relaxed);
  state_.store(uint64_t{grains} << kGrainBits, std::memory_order_release);
  {
    // Under park_mu_ so that a worker about to park sees the change (or is woken).
    absl::MutexLock lock(&park_mu_);
    job_.fetch_add(1, std::memory_order_release);
  }
  meanwhile();
  RunGrains();
  while (grains_done_.load(std::memory_order_acquire) != grains) CpuRelax();
}

}  // namespace freekv
