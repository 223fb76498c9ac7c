#include "tests/integration/kvservice_process.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "grpcpp/grpcpp.h"
#include "proto/grpc/health/v1/health.grpc.pb.h"

namespace freekv::testing {

std::string RunfilePath(const std::string& relative) {
  const char* srcdir = getenv("TEST_SRCDIR");
  const char* workspace = getenv("TEST_WORKSPACE");
  if (srcdir == nullptr) return relative;
  return absl::StrCat(srcdir, "/", workspace ? workspace : "freekv", "/", relative);
}

int FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

absl::StatusOr<std::string> HttpGet(int port, const std::string& path) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(port);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return absl::UnavailableError(absl::StrCat("connect to port ", port, " failed"));
  }
  const std::string request = absl::StrCat("GET ", path,
                                           " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
  if (write(fd, request.data(), request.size()) != static_cast<ssize_t>(request.size())) {
    close(fd);
    return absl::UnavailableError("short write");
  }
  std::string response;
  char buffer[65536];
  ssize_t n;
  while ((n = read(fd, buffer, sizeof(buffer))) > 0) response.append(buffer, n);
  close(fd);
  const size_t body = response.find("\r\n\r\n");
  if (body == std::string::npos) return absl::DataLossError("no HTTP body");
  return response.substr(body + 4);
}

absl::StatusOr<double> MetricValue(const std::string& exposition,
                                   const std::string& sample) {
  for (absl::string_view line : absl::StrSplit(exposition, '\n')) {
    if (line.empty() || line[0] == '#') continue;
    if (!absl::StartsWith(line, sample)) continue;
    absl::string_view rest = line.substr(sample.size());
    if (rest.empty() || rest[0] != ' ') continue;
    double value = 0;
    if (absl::SimpleAtod(absl::StripAsciiWhitespace(rest), &value)) return value;
  }
  return absl::NotFoundError(absl::StrCat("no sample ", sample));
}

absl::StatusOr<std::unique_ptr<KvServiceProcess>> KvServiceProcess::Start(
    std::vector<std::string> extra_flags) {
  // Not TEST_TMPDIR: a unix socket path must stay under 108 bytes, and Bazel's
  // sandbox paths are longer than that.
  std::string dir_template = "/tmp/freekv-test-XXXXXX";
  if (mkdtemp(dir_template.data()) == nullptr) {
    return absl::InternalError("mkdtemp failed");
  }
  return StartIn(dir_template, std::move(extra_flags));
}

absl::StatusOr<std::unique_ptr<KvServiceProcess>> KvServiceProcess::StartIn(
    const std::string& dir, std::vector<std::string> extra_flags) {
  std::unique_ptr<KvServiceProcess> process(new KvServiceProcess());
  process->dir_ = dir;
  process->socket_ = SocketIn(dir);
  process->metrics_port_ = FreePort();
  std::vector<std::string> args = {
      RunfilePath("kvservice/kvservice"),
      "--socket=" + process->socket_,
      absl::StrCat("--metrics_address=127.0.0.1:", process->metrics_port_),
  };
  args.insert(args.end(), extra_flags.begin(), extra_flags.end());
  std::vector<char*> argv;
  for (std::string& arg : args) argv.push_back(arg.data());
  argv.push_back(nullptr);
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) return absl::InternalError("fork failed");
  if (pid == 0) {
    // A test that dies (a crash, a watchdog's SIGALRM) takes its kvservice with it:
    // an orphan would keep the test's output pipe open and hold its pinned store.
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);
    execv(argv[0], argv.data());
    _exit(127);
  }
  process->pid_ = pid;
  if (absl::Status s = process->WaitServing(absl::Seconds(30)); !s.ok()) return s;
  return process;
}

absl::Status KvServiceProcess::WaitServing(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    // A channel per check: the first checks come before the socket exists, and a
    // channel that failed to connect waits out gRPC's reconnect backoff (1 s, growing)
    // before it tries again, which kept every test about 5 s longer than the start.
    auto channel = grpc::CreateChannel(target(), grpc::InsecureChannelCredentials());
    auto health = grpc::health::v1::Health::NewStub(channel);
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return absl::InternalError(
          absl::StrCat("kvservice exited during start-up with status ", status));
    }
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Milliseconds(500)));
    grpc::health::v1::HealthCheckRequest request;
    grpc::health::v1::HealthCheckResponse response;
    if (health->Check(&context, request, &response).ok() &&
        response.status() == grpc::health::v1::HealthCheckResponse::SERVING) {
      return absl::OkStatus();
    }
    absl::SleepFor(absl::Milliseconds(50));
  }
  return absl::DeadlineExceededError("kvservice did not become SERVING in time");
}

absl::StatusOr<int> KvServiceProcess::Stop(absl::Duration grace) {
  if (pid_ <= 0) return absl::FailedPreconditionError("not running");
  kill(pid_, SIGTERM);
  const absl::Time deadline = absl::Now() + grace;
  int status = 0;
  while (absl::Now() < deadline) {
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return status;
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  kill(pid_, SIGKILL);
  waitpid(pid_, &status, 0);
  pid_ = -1;
  return absl::DeadlineExceededError("kvservice ignored SIGTERM; killed");
}

KvServiceProcess::~KvServiceProcess() {
  if (pid_ > 0) Stop(absl::Seconds(5)).IgnoreError();
  std::error_code ignored;
  std::filesystem::remove_all(dir_, ignored);
}

}  // namespace freekv::testing
