// A client of the standard gRPC health service (grpc.health.v1.Health/Check), for the
// kvservice's Kubernetes probes. The kubelet's built-in grpc probe dials the pod IP and
// cannot reach the kvservice's unix socket, so the DaemonSet runs this as an exec probe
// (deploy/kubernetes/20-daemonset.yaml).
//
// Stateless: CheckHealth opens a channel of its own for each call and may be called
// from any thread.
#ifndef FREEKV_DEPLOY_PROBE_HEALTH_CHECK_H_
#define FREEKV_DEPLOY_PROBE_HEALTH_CHECK_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "proto/grpc/health/v1/health.pb.h"

namespace freekv {

using ServingStatus = grpc::health::v1::HealthCheckResponse::ServingStatus;

struct HealthCheckOptions {
  // A gRPC target: "unix:/run/freekv/kvservice.sock" or "127.0.0.1:50051".
  std::string target;
  // The service whose health is asked; "" is the server as a whole.
  std::string service;
  // The whole call, connection included, ends by then.
  absl::Duration timeout = absl::Seconds(2);
};

// The status the server reports for options.service, or the call's error: UNAVAILABLE
// when nothing listens, DEADLINE_EXCEEDED when it does not answer in time, NOT_FOUND
// when the server does not know the service. INVALID_ARGUMENT for an empty target or a
// timeout that is not positive.
absl::StatusOr<ServingStatus> CheckHealth(const HealthCheckOptions& options);

// Exit codes of freekv_health_check: what the kubelet sees.
inline constexpr int kProbeServing = 0;
inline constexpr int kProbeNotServing = 1;
inline constexpr int kProbeUnreachable = 2;

// kProbeServing for SERVING; for NOT_SERVING too when allow_not_serving (a liveness
// probe: a draining server answers NOT_SERVING and is alive); kProbeNotServing for
// any other status; kProbeUnreachable when the call failed.
int ProbeExitCode(const absl::StatusOr<ServingStatus>& result, bool allow_not_serving);

}  // namespace freekv

#endif  // FREEKV_DEPLOY_PROBE_HEALTH_CHECK_H_
