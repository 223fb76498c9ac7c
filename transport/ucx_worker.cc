#include "transport/ucx_worker.h"

#include "transport/ucx_status.h"

namespace freekv {

absl::StatusOr<std::unique_ptr<UcxWorker>> UcxWorker::Create(const UcxContext& context) {
  ucp_worker_params_t params = {};
  params.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
  params.thread_mode = UCS_THREAD_MODE_SINGLE;
  ucp_worker_h worker = nullptr;
  if (ucs_status_t s = ucp_worker_create(context.get(), &params, &worker); s != UCS_OK) {
    return UcxStatus(s, "ucp_worker_create");
  }
  ucp_address_t* packed = nullptr;
  size_t packed_bytes = 0;
  if (ucs_status_t s = ucp_worker_get_address(worker, &packed, &packed_bytes);
      s != UCS_OK) {
    ucp_worker_destroy(worker);
    return UcxStatus(s, "ucp_worker_get_address");
  }
  std::string address(reinterpret_cast<const char*>(packed), packed_bytes);
  ucp_worker_release_address(worker, packed);
  int event_fd = -1;
  if (ucs_status_t s = ucp_worker_get_efd(worker, &event_fd); s != UCS_OK) {
    ucp_worker_destroy(worker);
    return UcxStatus(s, "ucp_worker_get_efd");
  }
  return std::unique_ptr<UcxWorker>(new UcxWorker(worker, std::move(address), event_fd));
}

UcxWorker::~UcxWorker() { ucp_worker_destroy(worker_); }

absl::Status UcxWorker::Signal() {
  return UcxStatus(ucp_worker_signal(worker_), "ucp_worker_signal");
}

}  // namespace freekv
