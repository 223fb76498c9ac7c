// CheckHealth and the probe's exit codes against a real gRPC server with gRPC's own
// health service, on a unix socket as in the DaemonSet.
#include "deploy/probe/health_check.h"

#include <stdlib.h>
#include <unistd.h>

#include <memory>
#include <string>

#include "absl/time/clock.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "gtest/gtest.h"

namespace freekv {
namespace {

using Response = grpc::health::v1::HealthCheckResponse;

// A gRPC server with only the default health service, listening on a unix socket in
// a directory of its own under /tmp (a socket path must fit in 108 bytes, which
// Bazel's test directories may not). Stops the server and removes both on destruction.
class HealthServer {
 public:
  HealthServer() {
    char dir[] = "/tmp/freekv-probe-XXXXXX";
    dir_ = mkdtemp(dir);
    socket_ = dir_ + "/health.sock";
    grpc::EnableDefaultHealthCheckService(true);
    grpc::ServerBuilder builder;
    builder.AddListeningPort("unix:" + socket_, grpc::InsecureServerCredentials());
    server_ = builder.BuildAndStart();
  }
  ~HealthServer() {
    Stop();
    unlink(socket_.c_str());
    rmdir(dir_.c_str());
  }
  bool started() const { return server_ != nullptr; }
  std::string target() const { return "unix:" + socket_; }
  void SetServing(bool serving) {
    server_->GetHealthCheckService()->SetServingStatus(serving);
  }
  void Stop() {
    if (server_ != nullptr) server_->Shutdown(std::chrono::system_clock::now());
    server_.reset();
  }

 private:
  std::string dir_;
  std::string socket_;
  std::unique_ptr<grpc::Server> server_;
};

HealthCheckOptions Options(const std::string& target) {
  HealthCheckOptions options;
  options.target = target;
  options.timeout = absl::Seconds(5);
  return options;
}

TEST(CheckHealthTest, ServingServerAnswersServing) {
  HealthServer server;
  ASSERT_TRUE(server.started());
  const absl::StatusOr<ServingStatus> result = CheckHealth(Options(server.target()));
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(*result, Response::SERVING);
  EXPECT_EQ(ProbeExitCode(result, /*allow_not_serving=*/false), kProbeServing);
}

TEST(CheckHealthTest, DrainingServerIsNotReadyButAlive) {
  HealthServer server;
  ASSERT_TRUE(server.started());
  server.SetServing(false);
  const absl::StatusOr<ServingStatus> result = CheckHealth(Options(server.target()));
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(*result, Response::NOT_SERVING);
  EXPECT_EQ(ProbeExitCode(result, /*allow_not_serving=*/false), kProbeNotServing);
  EXPECT_EQ(ProbeExitCode(result, /*allow_not_serving=*/true), kProbeServing);

  server.SetServing(true);
  EXPECT_EQ(ProbeExitCode(CheckHealth(Options(server.target())), false), kProbeServing);
}

TEST(CheckHealthTest, UnknownServiceIsNotFound) {
  HealthServer server;
  ASSERT_TRUE(server.started());
  HealthCheckOptions options = Options(server.target());
  options.service = "freekv.v1.NoSuchService";
  const absl::StatusOr<ServingStatus> result = CheckHealth(options);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kNotFound) << result.status();
  EXPECT_EQ(ProbeExitCode(result, /*allow_not_serving=*/true), kProbeUnreachable);
}

TEST(CheckHealthTest, StoppedServerIsUnreachableWithinTheTimeout) {
  HealthServer server;
  ASSERT_TRUE(server.started());
  const std::string target = server.target();
  server.Stop();
  HealthCheckOptions options = Options(target);
  options.timeout = absl::Milliseconds(500);
  const absl::Time start = absl::Now();
  const absl::StatusOr<ServingStatus> result = CheckHealth(options);
  EXPECT_LT(absl::Now() - start, absl::Seconds(3));
  ASSERT_FALSE(result.ok());
  EXPECT_TRUE(result.status().code() == absl::StatusCode::kUnavailable ||
              result.status().code() == absl::StatusCode::kDeadlineExceeded)
      << result.status();
  EXPECT_NE(result.status().message().find(target), std::string::npos);
  EXPECT_EQ(ProbeExitCode(result, /*allow_not_serving=*/true), kProbeUnreachable);
}

TEST(CheckHealthTest, RejectsBadOptionsNamingTheField) {
  HealthCheckOptions options = Options("");
  EXPECT_EQ(CheckHealth(options).status().code(), absl::StatusCode::kInvalidArgument);
  options = Options("unix:/tmp/none.sock");
  options.timeout = absl::ZeroDuration();
  const absl::Status status = CheckHealth(options).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("timeout"), std::string::npos) << status;
}

TEST(ProbeExitCodeTest, OnlyServingPassesReadiness) {
  EXPECT_EQ(ProbeExitCode(Response::SERVING, false), kProbeServing);
  EXPECT_EQ(ProbeExitCode(Response::UNKNOWN, true), kProbeNotServing);
  EXPECT_EQ(ProbeExitCode(Response::SERVICE_UNKNOWN, true), kProbeNotServing);
  EXPECT_EQ(ProbeExitCode(absl::UnavailableError("down"), false), kProbeUnreachable);
}

}  // namespace
}  // namespace freekv
