// Translation between the v1 protos and the service's domain types. The domain
// (sessions, store, transports) never sees a protobuf; the service edge calls these.
// Pure functions; safe from any thread.
#ifndef FREEKV_KVSERVICE_PROTO_CONVERT_H_
#define FREEKV_KVSERVICE_PROTO_CONVERT_H_

#include <vector>

#include "absl/status/statusor.h"
#include "common/geometry.h"
#include "common/geometry_proto.h"
#include "kvservice/session.h"
#include "kvservice/transport.h"
#include "proto/freekv/v1/kvservice.pb.h"

namespace freekv {

// The session's configuration; the lease is the request's, or `default_lease` when
// 0, clamped to `max_lease`.
absl::StatusOr<SessionConfig> SessionConfigFromProto(
    const v1::OpenSessionRequest& request, absl::Duration default_lease,
    absl::Duration max_lease, uint32_t max_request_blocks);

// The worker's transport endpoints as the transport needs them.
absl::StatusOr<SessionPeer> SessionPeerFromProto(const v1::OpenSessionRequest& request);

std::vector<OffloadItem> OffloadItemsFromProto(const v1::OffloadRequest& request);
std::vector<RecallItem> RecallItemsFromProto(const v1::RecallRequest& request);
RecallSpec RecallSpecFromProto(const v1::RecallRequest& request);

}  // namespace freekv

#endif  // FREEKV_KVSERVICE_PROTO_CONVERT_H_
