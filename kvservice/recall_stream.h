// Serves one Recall stream. The handler thread reads requests in order and starts each
// recall on its session; completions arrive on the transport's thread, which must never
// block on a slow client, so replies go through an outbox to a writer thread of this
// stream. The stream's lifetime is owned here: Run returns only after every accepted
// recall has completed and its reply was written (or the client went away).
//
// One RecallStream per call; Run is called once, from the gRPC handler thread.
#ifndef FREEKV_KVSERVICE_RECALL_STREAM_H_
#define FREEKV_KVSERVICE_RECALL_STREAM_H_

#include <cstdint>
#include <functional>
#include <memory>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/support/sync_stream.h"
#include "kvservice/session.h"
#include "proto/freekv/v1/kvservice.grpc.pb.h"

namespace freekv {

class RecallStream {
 public:
  struct Hooks {
    // Finds the request's session and renews its lease.
    std::function<absl::StatusOr<std::shared_ptr<Session>>(uint64_t)> touch_session;
    // A request refused or failed (counted against method "Recall").
    std::function<void(const absl::Status&)> on_error;
    // A recall whose bytes all landed.
    std::function<void(const RecallResult&, absl::Duration latency)> on_recalled;
  };

  using Stream = grpc::ServerReaderWriter<v1::RecallReply, v1::RecallRequest>;

  RecallStream(Stream* stream, Hooks hooks);

  grpc::Status Run();

 private:
  class Outbox;

  // Validates and starts one request; errors are answered at once through the outbox.
  void Start(const v1::RecallRequest& request, absl::Time received,
             const std::shared_ptr<Outbox>& outbox);

  Stream* const stream_;
  const Hooks hooks_;
};

}  // namespace freekv

#endif  // FREEKV_KVSERVICE_RECALL_STREAM_H_
