// UcxEndpoint: owns one UCP endpoint (ucp_ep_create .. ucp_ep_close_nbx) from a worker
// to a peer worker. UcxRemoteKey: owns one unpacked remote key (ucp_ep_rkey_unpack ..
// ucp_rkey_destroy), which names a peer's mapped memory for puts and gets on one
// endpoint.
//
// Both are move-only and belong to the worker's thread: create, use and destroy them
// there (UcxEngine jobs), never from inside a UCX callback. Destroy remote keys before
// their endpoint, and endpoints before their worker.
//
// Endpoints use UCX's default error mode (none): asking for peer-failure detection
// would restrict UCX to transports that have it (tcp here), losing the shared-memory
// transports that make same-node RMA plain copies. A dead peer's lease lapses instead
// (the kvservice reclaims the session).
#ifndef FREEKV_TRANSPORT_UCX_ENDPOINT_H_
#define FREEKV_TRANSPORT_UCX_ENDPOINT_H_

#include <ucp/api/ucp.h>

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "transport/ucx_worker.h"

namespace freekv {

class UcxEndpoint {
 public:
  // `peer_address`: the peer's UcxWorker::address() bytes. Checked first
  // (ucx_blob_checks.h), then handed to UCX as a zero-padded copy, since UCX parses
  // it without a length.
  static absl::StatusOr<UcxEndpoint> Connect(UcxWorker& worker,
                                             absl::string_view peer_address);

  UcxEndpoint() = default;  // connects nothing
  ~UcxEndpoint() { Close(); }
  UcxEndpoint(UcxEndpoint&& other) noexcept;
  UcxEndpoint& operator=(UcxEndpoint&& other) noexcept;
  UcxEndpoint(const UcxEndpoint&) = delete;
  UcxEndpoint& operator=(const UcxEndpoint&) = delete;

  ucp_ep_h get() const { return ep_; }
  UcxWorker* worker() const { return worker_; }

  // Closes in flush mode and progresses the worker until the close completes or
  // `timeout` passes (a vanished peer on a connection-based transport); after the
  // timeout UCX finishes the close on its own. Idempotent.
  void Close(absl::Duration timeout = absl::Seconds(2));

  // ucp_ep_print_info's text: the transports and lanes UCX picked, for logs and tests.
  std::string Describe() const;

 private:
  UcxWorker* worker_ = nullptr;
  ucp_ep_h ep_ = nullptr;
};

class UcxRemoteKey {
 public:
  // `packed`: the peer's UcxMemory::PackRkey() bytes for its memory at
  // [address, address + length). Checked first (CheckRkeyReachable: well formed, and
  // any shared-memory segment it names can be attached and holds that range), then
  // handed to UCX zero-padded, as addresses are.
  static absl::StatusOr<UcxRemoteKey> Unpack(const UcxEndpoint& endpoint,
                                             absl::string_view packed, uint64_t address,
                                             uint64_t length);

  UcxRemoteKey() = default;
  ~UcxRemoteKey() { Reset(); }
  UcxRemoteKey(UcxRemoteKey&& other) noexcept;
  UcxRemoteKey& operator=(UcxRemoteKey&& other) noexcept;
  UcxRemoteKey(const UcxRemoteKey&) = delete;
  UcxRemoteKey& operator=(const UcxRemoteKey&) = delete;

  ucp_rkey_h get() const { return rkey_; }
  void Reset();

 private:
  ucp_rkey_h rkey_ = nullptr;
};

}  // namespace freekv

#endif  // FREEKV_TRANSPORT_UCX_ENDPOINT_H_
