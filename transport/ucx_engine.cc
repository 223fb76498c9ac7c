#include "transport/ucx_engine.h"

#include <poll.h>
#include <pthread.h>
#include <time.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "common/log.h"
#include "common/thread_name.h"

namespace freekv {

absl::StatusOr<std::unique_ptr<UcxEngine>> UcxEngine::Start(const UcxContext& context,
                                                            std::string name) {
  absl::StatusOr<std::unique_ptr<UcxWorker>> worker = UcxWorker::Create(context);
  if (!worker.ok()) return worker.status();
  std::unique_ptr<UcxEngine> engine(new UcxEngine(*std::move(worker)));
  absl::Notification started;
  engine->thread_ = std::thread([raw = engine.get(), &started, name = std::move(name)] {
    raw->thread_id_.store(std::this_thread::get_id());
    started.Notify();
    raw->Loop(name);
  });
  engine->native_thread_ = engine->thread_.native_handle();
  started.WaitForNotification();  // OnEngineThread() is meaningful from here on
  return engine;
}

UcxEngine::~UcxEngine() {
  Post([this] { stopping_ = true; });
  thread_.join();
}

void UcxEngine::Post(absl::AnyInvocable<void() &&> job) {
  {
    absl::MutexLock lock(&mu_);
    jobs_.push_back(std::move(job));
  }
  // The engine thread looks at the queue before it sleeps; only others must wake it.
  if (OnEngineThread()) return;
  if (absl::Status s = worker_->Signal(); !s.ok()) {
    Log(LogLevel::kError, "UCX engine wake-up failed: %s", s.ToString());
  }
}

absl::Duration UcxEngine::CpuTime() const {
  clockid_t clock;
  timespec now = {};
  if (pthread_getcpuclockid(native_thread_, &clock) != 0 ||
      clock_gettime(clock, &now) != 0) {
    return absl::ZeroDuration();
  }
  return absl::DurationFromTimespec(now);
}

void UcxEngine::Loop(std::string name) {
  NameThisThread(name);
  while (RunJobs()) {
    if (worker_->Progress() != 0 || HasJobs()) continue;
    const ucs_status_t armed = worker_->Arm();
    if (armed == UCS_ERR_BUSY) continue;  // events arrived meanwhile: progress them
    // Arming drains the wake-up fd, so a job posted between HasJobs above and Arm
    // would sleep unnoticed: look again now that the fd is armed.
    if (HasJobs()) continue;
    if (armed != UCS_OK && !arm_error_logged_) {
      arm_error_logged_ = true;
      Log(LogLevel::kError, "ucp_worker_arm: %s; polling every millisecond from now on",
          ucs_status_string(armed));
    }
    pollfd fd = {worker_->event_fd(), POLLIN, 0};
    if (poll(&fd, 1, armed == UCS_OK ? -1 : 1) < 0 && errno != EINTR) {
      Log(LogLevel::kError, "poll on the UCX event fd: %s", std::strerror(errno));
    }
  }
}

bool UcxEngine::RunJobs() {
  std::vector<absl::AnyInvocable<void() &&>> jobs;
  {
    absl::MutexLock lock(&mu_);
    jobs.swap(jobs_);
  }
  for (auto& job : jobs) std::move(job)();
  return !stopping_ || HasJobs();
}

bool UcxEngine::HasJobs() {
  absl::MutexLock lock(&mu_);
  return !jobs_.empty();
}

}  // namespace freekv
