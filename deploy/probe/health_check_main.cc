// freekv_health_check: exits 0 when the kvservice answers SERVING to
// grpc.health.v1.Health/Check, 1 when it answers anything else, 2 when it cannot be
// reached. The Kubernetes DaemonSet runs it as the startup, readiness and liveness
// probe; its one line of output lands in the pod's events when a probe fails.
#include <cstdio>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "deploy/probe/health_check.h"

ABSL_FLAG(std::string, socket, "/run/freekv/kvservice.sock",
          "The kvservice's unix socket (its --socket).");
ABSL_FLAG(std::string, address, "",
          "A gRPC target to ask instead of --socket, e.g. 127.0.0.1:50051.");
ABSL_FLAG(std::string, service, "", "The service to ask about; \"\" is the server.");
ABSL_FLAG(int32_t, timeout_ms, 2000, "Give up after this long, connection included.");
ABSL_FLAG(bool, allow_not_serving, false,
          "Also exit 0 on NOT_SERVING: for liveness, where a draining server is alive.");

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Asks a gRPC server's health service; exit 0 SERVING, 1 otherwise, 2 unreachable.");
  absl::ParseCommandLine(argc, argv);
  freekv::HealthCheckOptions options;
  options.target = absl::GetFlag(FLAGS_address).empty()
                       ? "unix:" + absl::GetFlag(FLAGS_socket)
                       : absl::GetFlag(FLAGS_address);
  options.service = absl::GetFlag(FLAGS_service);
  options.timeout = absl::Milliseconds(absl::GetFlag(FLAGS_timeout_ms));

  const absl::StatusOr<freekv::ServingStatus> result = freekv::CheckHealth(options);
  const int code = freekv::ProbeExitCode(result, absl::GetFlag(FLAGS_allow_not_serving));
  if (result.ok()) {
    const std::string status =
        grpc::health::v1::HealthCheckResponse::ServingStatus_Name(*result);
    std::printf("%s: %s\n", options.target.c_str(), status.c_str());
  } else {
    std::printf("%s\n", result.status().ToString().c_str());
  }
  return code;
}
