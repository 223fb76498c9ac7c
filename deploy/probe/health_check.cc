#include "deploy/probe/health_check.h"

#include <memory>

#include "absl/strings/str_cat.h"
#include "grpcpp/grpcpp.h"
#include "proto/grpc/health/v1/health.grpc.pb.h"

namespace freekv {

absl::StatusOr<ServingStatus> CheckHealth(const HealthCheckOptions& options) {
  if (options.target.empty()) {
    return absl::InvalidArgumentError("health check target is empty");
  }
  if (options.timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat("health check timeout is ", absl::FormatDuration(options.timeout),
                     "; it must be positive"));
  }
  const std::shared_ptr<grpc::Channel> channel =
      grpc::CreateChannel(options.target, grpc::InsecureChannelCredentials());
  std::unique_ptr<grpc::health::v1::Health::Stub> stub =
      grpc::health::v1::Health::NewStub(channel);

  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + options.timeout));
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(options.service);
  grpc::health::v1::HealthCheckResponse response;
  const grpc::Status status = stub->Check(&context, request, &response);
  if (!status.ok()) {
    // grpc::StatusCode and absl::StatusCode share the canonical numbering.
    return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                        absl::StrCat("Health/Check of service \"", options.service,
                                     "\" at ", options.target, ": ",
                                     status.error_message()));
  }
  return response.status();
}

int ProbeExitCode(const absl::StatusOr<ServingStatus>& result, bool allow_not_serving) {
  if (!result.ok()) return kProbeUnreachable;
  switch (*result) {
    case grpc::health::v1::HealthCheckResponse::SERVING:
      return kProbeServing;
    case grpc::health::v1::HealthCheckResponse::NOT_SERVING:
      return allow_not_serving ? kProbeServing : kProbeNotServing;
    default:
      return kProbeNotServing;
  }
}

}  // namespace freekv
