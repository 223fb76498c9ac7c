// UcxSessionTransport: the kvservice's side of one UCX session -- an endpoint to the
// worker's UCX worker and the remote keys of its staging and offload regions -- and
// the copies over it (ucp_get_nbx for Pull, ucp_put_nbx for Push, then
// ucp_ep_flush_nbx before anything is reported complete).
//
// Every UCX call runs on the factory's UcxEngine thread; Pull and Push hand it a batch
// and return (Push) or wait (Pull). Push completions run on that thread in the order
// the pushes were made, whatever order UCX finishes them in.
//
// Thread-safety: Pull and Push from any thread, concurrently, except Pull from the
// engine thread (a done callback): it would wait on itself, so it fails with
// FAILED_PRECONDITION. Made by UcxTransportFactory::Connect, whose engine must
// outlive it.
#ifndef FREEKV_KVSERVICE_UCX_SESSION_TRANSPORT_H_
#define FREEKV_KVSERVICE_UCX_SESSION_TRANSPORT_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "kvservice/transport.h"
#include "transport/ucx_engine.h"

namespace freekv {

// OK when every run has a local buffer, at least one byte, and lies inside a region of
// `region_bytes` bytes; otherwise INVALID_ARGUMENT naming the run, e.g.
// "runs[3]: remote_offset 65536 + bytes 16384 is past the end of the staging region
// (65536 bytes)".
absl::Status CheckRunsInRegion(absl::Span<const CopyRun> runs, uint64_t region_bytes,
                               absl::string_view region_name);

class UcxSessionTransport final : public SessionTransport {
 public:
  // Connects to `peer` (UCX fields) on `engine`'s thread. Refuses a peer whose fields
  // are missing or malformed with INVALID_ARGUMENT naming the field.
  static absl::StatusOr<std::unique_ptr<UcxSessionTransport>> Connect(
      UcxEngine& engine, const SessionPeer& peer);

  // Lets the pushes in flight finish (their done callbacks run), then releases the
  // remote keys and closes the endpoint. Waits for that, except when called on the
  // engine thread (from a done callback), where the close happens after it returns.
  ~UcxSessionTransport() override;

  // Gets each run from the offload region (remote_offset into it) into run.local,
  // flushes, and returns once every byte is in store memory. Runs outside the region
  // are refused (INVALID_ARGUMENT) before anything moves.
  absl::Status Pull(absl::Span<const CopyRun> runs) override;

  // Puts each run into the staging region (remote_offset into it), flushes, then calls
  // `done` on the engine thread: OK once every byte has landed, or the first error
  // (runs outside the region: INVALID_ARGUMENT, nothing moved). `done` must be cheap
  // and must not call Pull; it may call Push. The store bytes must stay put until then.
  void Push(std::vector<CopyRun> runs,
            absl::AnyInvocable<void(absl::Status) &&> done) override;

  // The transports and lanes UCX chose for this endpoint (ucp_ep_print_info).
  std::string Describe() const;

 private:
  class Core;
  explicit UcxSessionTransport(std::shared_ptr<Core> core) : core_(std::move(core)) {}

  const std::shared_ptr<Core> core_;
};

}  // namespace freekv

#endif  // FREEKV_KVSERVICE_UCX_SESSION_TRANSPORT_H_
