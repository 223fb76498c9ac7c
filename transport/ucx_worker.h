// UcxWorker: owns one UCP worker (ucp_worker_create .. ucp_worker_destroy), with the
// packed address peers connect to and the event fd it can be slept on.
//
// Created in single-thread mode: exactly one thread may use it at a time (UcxEngine's
// thread). The exceptions, safe from any thread: address(), event_fd() and Signal().
// The context must outlive the worker; endpoints on the worker must be gone first.
#ifndef FREEKV_TRANSPORT_UCX_WORKER_H_
#define FREEKV_TRANSPORT_UCX_WORKER_H_

#include <ucp/api/ucp.h>

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "transport/ucx_context.h"

namespace freekv {

class UcxWorker {
 public:
  static absl::StatusOr<std::unique_ptr<UcxWorker>> Create(const UcxContext& context);
  ~UcxWorker();
  UcxWorker(const UcxWorker&) = delete;
  UcxWorker& operator=(const UcxWorker&) = delete;

  ucp_worker_h get() const { return worker_; }
  // ucp_worker_get_address's bytes: what a peer passes to UcxEndpoint::Connect.
  const std::string& address() const { return address_; }
  // Becomes readable when the armed worker has events (or Signal was called).
  int event_fd() const { return event_fd_; }

  // One ucp_worker_progress; returns how many events it processed.
  unsigned Progress() { return ucp_worker_progress(worker_); }
  // Arms the event fd. UCS_OK: safe to sleep on event_fd(); UCS_ERR_BUSY: events are
  // pending, Progress() first; anything else is an error.
  ucs_status_t Arm() { return ucp_worker_arm(worker_); }
  // Wakes a thread sleeping on event_fd(). Any thread.
  absl::Status Signal();

 private:
  UcxWorker(ucp_worker_h worker, std::string address, int event_fd)
      : worker_(worker), address_(std::move(address)), event_fd_(event_fd) {}

  const ucp_worker_h worker_;
  const std::string address_;
  const int event_fd_;  // owned by the worker
};

}  // namespace freekv

#endif  // FREEKV_TRANSPORT_UCX_WORKER_H_
