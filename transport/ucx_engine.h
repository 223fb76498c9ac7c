// UcxEngine: one UCX worker and the one thread that owns it.
//
// Everything that touches the worker -- endpoints, remote keys, puts and gets, their
// completion callbacks, progress -- runs on the engine's thread; other threads hand it
// jobs (Post, Call). Between jobs the thread progresses the worker until nothing is
// left, then arms the worker and sleeps in poll() on its event fd, so an idle engine
// costs no CPU (the development machines have 2 cores) and RMA aimed at this worker
// by a peer that needs target-side progress (tcp) still completes: the peer's traffic
// wakes the fd. The kvservice runs one engine for all sessions; a worker process runs
// one as the progress thread behind its registered regions (client/ucx_regions.h).
//
// Jobs run in the order posted, never inside a UCX callback, so a job may progress
// the worker itself (UcxEndpoint::Close does). UCX callbacks must not call back into
// UCX; they Post the follow-up instead (cheap on the engine thread: no wake-up).
//
// Thread-safety: Post, Call, OnEngineThread, worker_address and CpuTime from any
// thread; worker() only from the engine thread.
#ifndef FREEKV_TRANSPORT_UCX_ENGINE_H_
#define FREEKV_TRANSPORT_UCX_ENGINE_H_

#include <pthread.h>

#include <atomic>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "transport/ucx_context.h"
#include "transport/ucx_worker.h"

namespace freekv {

class UcxEngine {
 public:
  // Creates a worker on `context` (which must outlive the engine) and starts the
  // thread, named `name` (at most 15 characters are kept) for debuggers and top.
  static absl::StatusOr<std::unique_ptr<UcxEngine>> Start(const UcxContext& context,
                                                          std::string name);
  // Runs the jobs already posted, stops the thread, destroys the worker. Everything
  // made on the worker (endpoints, keys, requests) must be gone by then.
  ~UcxEngine();
  UcxEngine(const UcxEngine&) = delete;
  UcxEngine& operator=(const UcxEngine&) = delete;

  // Queues `job` to run on the engine thread after the jobs posted before it.
  void Post(absl::AnyInvocable<void() &&> job);

  // Runs `fn` on the engine thread and returns its result: at once when called there,
  // otherwise via Post, blocking the caller until it ran.
  template <typename Fn>
  std::invoke_result_t<Fn&> Call(Fn fn);

  bool OnEngineThread() const { return std::this_thread::get_id() == thread_id_.load(); }

  // The engine thread's worker. Engine thread only.
  UcxWorker& worker() { return *worker_; }
  // The worker's packed address, for peers to connect to.
  const std::string& worker_address() const { return worker_->address(); }

  // CPU time the engine thread has used so far (CLOCK_THREAD_CPUTIME of the thread):
  // how tests and benchmarks see that an idle engine sleeps.
  absl::Duration CpuTime() const;

 private:
  explicit UcxEngine(std::unique_ptr<UcxWorker> worker) : worker_(std::move(worker)) {}
  void Loop(std::string name);
  // Runs the queued jobs; false once the stop job ran and nothing is queued.
  bool RunJobs();
  bool HasJobs();

  const std::unique_ptr<UcxWorker> worker_;
  std::thread thread_;
  pthread_t native_thread_{};
  std::atomic<std::thread::id> thread_id_{};
  absl::Mutex mu_;
  std::vector<absl::AnyInvocable<void() &&>> jobs_ ABSL_GUARDED_BY(mu_);
  bool stopping_ = false;          // engine thread only
  bool arm_error_logged_ = false;  // engine thread only
};

template <typename Fn>
std::invoke_result_t<Fn&> UcxEngine::Call(Fn fn) {
  using Result = std::invoke_result_t<Fn&>;
  if (OnEngineThread()) return fn();
  absl::Notification done;
  if constexpr (std::is_void_v<Result>) {
    Post([&] {
      fn();
      done.Notify();
    });
    done.WaitForNotification();
  } else {
    std::optional<Result> result;
    Post([&] {
      result.emplace(fn());
      done.Notify();
    });
    done.WaitForNotification();
    return *std::move(result);
  }
}

}  // namespace freekv

#endif  // FREEKV_TRANSPORT_UCX_ENGINE_H_
