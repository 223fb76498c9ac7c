#include "transport/ucx_endpoint.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "transport/ucx_blob_checks.h"
#include "transport/ucx_status.h"

namespace freekv {
namespace {

// UCX parses packed addresses and rkeys without being told their length; a copy with
// this many zero bytes after the blob keeps a truncated one from reading past it.
constexpr size_t kParsePadding = 4096;

std::string Padded(absl::string_view blob) {
  std::string copy(blob);
  copy.append(kParsePadding, '\0');
  return copy;
}

}  // namespace

absl::StatusOr<UcxEndpoint> UcxEndpoint::Connect(UcxWorker& worker,
                                                 absl::string_view peer_address) {
  if (absl::Status s = CheckPackedAddress(peer_address); !s.ok()) return s;
  const std::string address = Padded(peer_address);
  ucp_ep_params_t params = {};
  params.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS;
  params.address = reinterpret_cast<const ucp_address_t*>(address.data());
  ucp_ep_h ep = nullptr;
  if (ucs_status_t s = ucp_ep_create(worker.get(), &params, &ep); s != UCS_OK) {
    return UcxStatus(s, absl::StrCat("ucp_ep_create to a peer address of ",
                                     peer_address.size(), " bytes"));
  }
  UcxEndpoint endpoint;
  endpoint.worker_ = &worker;
  endpoint.ep_ = ep;
  return endpoint;
}

UcxEndpoint::UcxEndpoint(UcxEndpoint&& other) noexcept
    : worker_(std::exchange(other.worker_, nullptr)),
      ep_(std::exchange(other.ep_, nullptr)) {}

UcxEndpoint& UcxEndpoint::operator=(UcxEndpoint&& other) noexcept {
  if (this != &other) {
    Close();
    worker_ = std::exchange(other.worker_, nullptr);
    ep_ = std::exchange(other.ep_, nullptr);
  }
  return *this;
}

void UcxEndpoint::Close(absl::Duration timeout) {
  if (ep_ == nullptr) return;
  ucp_request_param_t param = {};
  ucs_status_ptr_t request = ucp_ep_close_nbx(std::exchange(ep_, nullptr), &param);
  if (!UCS_PTR_IS_PTR(request)) return;  // closed at once, or failed (nothing to wait)
  const absl::Time deadline = absl::Now() + timeout;
  while (ucp_request_check_status(request) == UCS_INPROGRESS && absl::Now() < deadline) {
    worker_->Progress();
  }
  if (ucp_request_check_status(request) == UCS_INPROGRESS) {
    Log(LogLevel::kWarning, "UCX endpoint close still in progress after %s; left to UCX",
        absl::FormatDuration(timeout));
  }
  ucp_request_free(request);  // released now, or by UCX once the close completes
}

std::string UcxEndpoint::Describe() const {
  if (ep_ == nullptr) return "(no endpoint)";
  char* text = nullptr;
  size_t bytes = 0;
  FILE* stream = open_memstream(&text, &bytes);
  if (stream == nullptr) return "(open_memstream failed)";
  ucp_ep_print_info(ep_, stream);
  std::fclose(stream);
  std::string result(text, bytes);
  std::free(text);
  return result;
}

absl::StatusOr<UcxRemoteKey> UcxRemoteKey::Unpack(const UcxEndpoint& endpoint,
                                                  absl::string_view packed,
                                                  uint64_t address, uint64_t length) {
  if (absl::Status s = CheckRkeyReachable(packed, address, length); !s.ok()) return s;
  if (endpoint.get() == nullptr) {
    return absl::FailedPreconditionError("UcxRemoteKey::Unpack on a closed endpoint");
  }
  const std::string buffer = Padded(packed);
  UcxRemoteKey key;
  if (ucs_status_t s = ucp_ep_rkey_unpack(endpoint.get(), buffer.data(), &key.rkey_);
      s != UCS_OK) {
    return UcxStatus(s, absl::StrCat("ucp_ep_rkey_unpack of ", packed.size(), " bytes"));
  }
  return key;
}

UcxRemoteKey::UcxRemoteKey(UcxRemoteKey&& other) noexcept
    : rkey_(std::exchange(other.rkey_, nullptr)) {}

UcxRemoteKey& UcxRemoteKey::operator=(UcxRemoteKey&& other) noexcept {
  if (this != &other) {
    Reset();
    rkey_ = std::exchange(other.rkey_, nullptr);
  }
  return *this;
}

void UcxRemoteKey::Reset() {
  if (rkey_ != nullptr) ucp_rkey_destroy(std::exchange(rkey_, nullptr));
}

}  // namespace freekv
