#include "worker/freekv_gpu/page_offloader.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/thread_name.h"
#include "kernels/shape.h"

namespace freekv::gpu {

absl::StatusOr<std::unique_ptr<PageOffloader>> PageOffloader::Create(CudaKvClient& kv) {
  std::vector<kernels::CudaEvent> written;
  for (int a = 0; a < kAreas; ++a) {
    auto event = kernels::CudaEvent::Create(/*timing=*/false);
    if (!event.ok()) return event.status();
    written.push_back(*std::move(event));
  }
  auto idle = kernels::CudaStream::Create();
  if (!idle.ok()) return idle.status();
  return std::unique_ptr<PageOffloader>(
      new PageOffloader(kv, std::move(written), *std::move(idle)));
}

PageOffloader::PageOffloader(CudaKvClient& kv, std::vector<kernels::CudaEvent> written,
                             kernels::CudaStream idle)
    : kv_(kv),
      area_blocks_(kv.regions().offload_bytes() / kv.client().geometry().block_bytes() /
                   kAreas),
      written_(std::move(written)),
      idle_(std::move(idle)),
      thread_([this] { Loop(); }) {}

absl::Status PageOffloader::MarkWritten(int64_t job, cudaStream_t stream) {
  return written_[job % kAreas].Record(stream);
}

PageOffloader::~PageOffloader() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
    changed_.SignalAll();
  }
  thread_.join();
}

absl::StatusOr<uint64_t> PageOffloader::AreaFor(int64_t job) {
  if (area_blocks_ == 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the session's offload region (", kv_.regions().offload_bytes(),
        " bytes) holds no block per area; open it with more offload_blocks"));
  }
  FREEKV_RETURN_IF_ERROR(WaitDone(job - kAreas));
  return uint64_t(job % kAreas) * area_blocks_ * kv_.client().geometry().block_bytes();
}

int64_t PageOffloader::Push(std::vector<OffloadPageRef> pages) {
  absl::MutexLock lock(&mu_);
  queue_.push_back(std::move(pages));
  changed_.SignalAll();
  return pushed_++;
}

absl::Status PageOffloader::WaitDone(int64_t job) {
  absl::MutexLock lock(&mu_);
  while (done_ <= job && first_error_.ok()) changed_.Wait(&mu_);
  return first_error_;
}

std::string PageOffloader::Describe() const {
  absl::MutexLock lock(&mu_);
  return absl::StrCat("offloader: ", pushed_, " jobs pushed, ", done_, " done, ",
                      queue_.size(), " queued", first_error_.ok() ? "" : ", failed: ",
                      first_error_.message());
}

uint64_t PageOffloader::pages_offloaded() const {
  absl::MutexLock lock(&mu_);
  return pages_;
}

void PageOffloader::Loop() {
  NameThisThread("page-offload");
  for (int64_t id = 0;; ++id) {
    std::vector<OffloadPageRef> job;
    {
      absl::MutexLock lock(&mu_);
      while (!stop_ && queue_.empty()) changed_.Wait(&mu_);
      if (queue_.empty()) return;  // stopping, nothing left
      job = std::move(queue_.front());
      queue_.pop_front();
    }
    // The area's event names this job's writes: AreaFor let the decode thread record
    // it again only after this job is done.
    absl::Status status = written_[id % kAreas].WaitFor(kWriteLimit);
    if (status.ok()) status = kv_.regions().MarkOffloadWritten(idle_.get());
    if (status.ok()) status = kv_.client().Offload(job).status();
    absl::MutexLock lock(&mu_);
    if (!status.ok() && first_error_.ok()) {
      first_error_ = absl::Status(status.code(),
                                  absl::StrCat("offloading filled pages: ", status.message()));
    }
    pages_ += status.ok() ? job.size() : 0;
    ++done_;
    changed_.SignalAll();
  }
}

}  // namespace freekv::gpu
