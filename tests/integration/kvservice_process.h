// Starts the real kvservice binary as a child process for integration tests, on a
// private unix socket and a free metrics port, and waits until it answers gRPC's
// health check with SERVING.
//
// Owns the child: the destructor stops it (SIGTERM, then SIGKILL after a grace).
// Not thread-safe; one test thread drives it.
#ifndef FREEKV_TESTS_INTEGRATION_KVSERVICE_PROCESS_H_
#define FREEKV_TESTS_INTEGRATION_KVSERVICE_PROCESS_H_

#include <sys/types.h>

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace freekv::testing {

class KvServiceProcess {
 public:
  // Extra flags are appended to --socket and --metrics_address.
  static absl::StatusOr<std::unique_ptr<KvServiceProcess>> Start(
      std::vector<std::string> extra_flags = {});
  // As Start, in `dir` (which the caller made; removed with the process) on
  // SocketIn(dir): a client can be pointed at the socket before the service exists.
  static absl::StatusOr<std::unique_ptr<KvServiceProcess>> StartIn(
      const std::string& dir, std::vector<std::string> extra_flags = {});
  static std::string SocketIn(const std::string& dir) { return dir + "/kv.sock"; }
  ~KvServiceProcess();

  // gRPC target for clients: "unix:<socket>".
  std::string target() const { return "unix:" + socket_; }
  const std::string& socket() const { return socket_; }
  int metrics_port() const { return metrics_port_; }

  // SIGTERM and wait; returns the exit status (or an error if it did not exit).
  absl::StatusOr<int> Stop(absl::Duration grace = absl::Seconds(10));
  bool running() const { return pid_ > 0; }

 private:
  KvServiceProcess() = default;
  absl::Status WaitServing(absl::Duration timeout);

  pid_t pid_ = -1;
  std::string dir_;
  std::string socket_;
  int metrics_port_ = 0;
};

// Path of a binary built by Bazel and listed in the test's data, e.g.
// "kvservice/kvservice".
std::string RunfilePath(const std::string& relative);

// A TCP port on 127.0.0.1 that was free a moment ago.
int FreePort();

// GET http://127.0.0.1:<port><path>; returns the body.
absl::StatusOr<std::string> HttpGet(int port, const std::string& path);

// Value of one sample in a Prometheus text exposition, e.g.
// MetricValue(text, "freekv_recall_bytes_total") or with labels
// MetricValue(text, "freekv_request_errors_total{code=\"NOT_FOUND\",method=\"Offload\"}").
// Labels must be given in the order the exposition prints them. NOT_FOUND if absent.
absl::StatusOr<double> MetricValue(const std::string& exposition,
                                   const std::string& sample);

}  // namespace freekv::testing

#endif  // FREEKV_TESTS_INTEGRATION_KVSERVICE_PROCESS_H_
