#include "client/ucx_regions_child.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <random>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "client/ucx_regions.h"

namespace freekv {
namespace {

constexpr char kChildFlag[] = "--ucx_regions_child";
// The child's ends of the two pipes, moved to fixed numbers across exec.
constexpr int kChildCommandFd = 200;
constexpr int kChildReplyFd = 201;

bool WriteAll(int fd, const void* data, size_t bytes) {
  const char* p = static_cast<const char*>(data);
  while (bytes > 0) {
    const ssize_t n = write(fd, p, bytes);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    p += n;
    bytes -= static_cast<size_t>(n);
  }
  return true;
}

bool ReadAll(int fd, void* data, size_t bytes) {
  char* p = static_cast<char*>(data);
  while (bytes > 0) {
    const ssize_t n = read(fd, p, bytes);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    p += n;
    bytes -= static_cast<size_t>(n);
  }
  return true;
}

// A message is a 64-bit length and that many bytes.
bool SendMessage(int fd, absl::string_view message) {
  const uint64_t bytes = message.size();
  return WriteAll(fd, &bytes, sizeof(bytes)) && WriteAll(fd, message.data(), bytes);
}

absl::StatusOr<std::string> ReceiveMessage(int fd) {
  uint64_t bytes = 0;
  std::string message;
  if (ReadAll(fd, &bytes, sizeof(bytes))) {
    message.resize(bytes);
    if (ReadAll(fd, message.data(), bytes)) return message;
  }
  return absl::UnavailableError("the UCX regions child closed its pipe (did it exit?)");
}

std::string EncodeWord(uint64_t value) {
  return std::string(reinterpret_cast<char*>(&value), 8);
}

uint64_t DecodeWord(absl::string_view bytes) {
  uint64_t value = 0;
  std::memcpy(&value, bytes.data(), std::min<size_t>(bytes.size(), 8));
  return value;
}

[[noreturn]] void ChildMain(const UcxRegionsChildOptions& options) {
  auto regions = UcxRegions::Create(options.staging_bytes, options.offload_bytes,
                                    UcxRegionsOptions{options.transports});
  if (!regions.ok()) {
    SendMessage(kChildReplyFd, regions.status().ToString());
    _exit(2);
  }
  UcxRegions& r = **regions;
  FillPseudoRandom(r.staging(), options.seed);
  FillPseudoRandom(r.offload(), options.seed + 1);
  const std::string parts[] = {"OK",
                               r.worker_address(),
                               EncodeWord(reinterpret_cast<uint64_t>(r.staging().data())),
                               EncodeWord(r.staging().size()),
                               r.staging_rkey(),
                               EncodeWord(reinterpret_cast<uint64_t>(r.offload().data())),
                               EncodeWord(r.offload().size()),
                               r.offload_rkey()};
  for (const std::string& part : parts) {
    if (!SendMessage(kChildReplyFd, part)) _exit(3);
  }
  for (;;) {
    char command = 0;
    if (!ReadAll(kChildCommandFd, &command, 1)) _exit(3);  // the parent is gone
    bool sent = true;
    switch (command) {
      case 'S':
        sent = SendMessage(
            kChildReplyFd,
            absl::string_view(reinterpret_cast<const char*>(r.staging().data()),
                              r.staging().size()));
        break;
      case 'C':
        sent = SendMessage(kChildReplyFd,
                           EncodeWord(absl::ToInt64Nanoseconds(r.progress_cpu_time())));
        break;
      case 'Q':
        regions->reset();
        _exit(0);
      default:
        _exit(4);
    }
    if (!sent) _exit(3);
  }
}

}  // namespace

void FillPseudoRandom(absl::Span<std::byte> bytes, uint64_t seed) {
  std::mt19937_64 rng(seed);
  size_t i = 0;
  for (; i + 8 <= bytes.size(); i += 8) {
    const uint64_t v = rng();
    std::memcpy(bytes.data() + i, &v, 8);
  }
  for (; i < bytes.size(); ++i) bytes[i] = static_cast<std::byte>(rng());
}

void RunUcxRegionsChildIfAsked(int argc, char** argv) {
  if (argc != 6 || std::strcmp(argv[1], kChildFlag) != 0) return;
  UcxRegionsChildOptions options;
  if (!absl::SimpleAtoi(argv[2], &options.staging_bytes) ||
      !absl::SimpleAtoi(argv[3], &options.offload_bytes) ||
      !absl::SimpleAtoi(argv[4], &options.seed)) {
    _exit(5);
  }
  options.transports = argv[5];
  ChildMain(options);
}

absl::StatusOr<std::unique_ptr<UcxRegionsChild>> UcxRegionsChild::Spawn(
    const UcxRegionsChildOptions& options) {
  int to_child[2], from_child[2];
  if (pipe2(to_child, O_CLOEXEC) != 0) return absl::InternalError("pipe2 failed");
  if (pipe2(from_child, O_CLOEXEC) != 0) {
    close(to_child[0]);
    close(to_child[1]);
    return absl::InternalError("pipe2 failed");
  }
  // Everything the child needs is made before fork: after it, only exec-safe calls.
  const std::string args[] = {"/proc/self/exe",
                              kChildFlag,
                              absl::StrCat(options.staging_bytes),
                              absl::StrCat(options.offload_bytes),
                              absl::StrCat(options.seed),
                              options.transports};
  std::vector<char*> envp;
  for (char** e = environ; *e != nullptr; ++e) envp.push_back(*e);
  for (const std::string& e : options.environment) {
    envp.push_back(const_cast<char*>(e.c_str()));
  }
  envp.push_back(nullptr);
  char* argv[] = {const_cast<char*>(args[0].c_str()),
                  const_cast<char*>(args[1].c_str()),
                  const_cast<char*>(args[2].c_str()),
                  const_cast<char*>(args[3].c_str()),
                  const_cast<char*>(args[4].c_str()),
                  const_cast<char*>(args[5].c_str()),
                  nullptr};
  const pid_t pid = fork();
  if (pid < 0) return absl::InternalError(absl::StrCat("fork: ", std::strerror(errno)));
  if (pid == 0) {
    if (dup2(to_child[0], kChildCommandFd) < 0 ||
        dup2(from_child[1], kChildReplyFd) < 0) {
      _exit(6);
    }
    execve(argv[0], argv, envp.data());
    _exit(7);
  }
  close(to_child[0]);
  close(from_child[1]);
  std::unique_ptr<UcxRegionsChild> child(
      new UcxRegionsChild(pid, to_child[1], from_child[0]));
  std::string parts[8];
  for (std::string& part : parts) {
    absl::StatusOr<std::string> message = ReceiveMessage(child->from_child_);
    if (!message.ok()) return message.status();
    part = *std::move(message);
    if (&part == &parts[0] && part != "OK") {
      return absl::InternalError(absl::StrCat("UCX regions child: ", part));
    }
  }
  child->descriptor_ = {parts[1],
                        {DecodeWord(parts[2]), DecodeWord(parts[3]), parts[4]},
                        {DecodeWord(parts[5]), DecodeWord(parts[6]), parts[7]}};
  return child;
}

UcxRegionsChild::~UcxRegionsChild() {
  Kill();
  close(to_child_);
  close(from_child_);
}

absl::StatusOr<std::string> UcxRegionsChild::Ask(char command) {
  if (!WriteAll(to_child_, &command, 1)) {
    return absl::UnavailableError("the UCX regions child is gone");
  }
  return ReceiveMessage(from_child_);
}

absl::StatusOr<std::vector<std::byte>> UcxRegionsChild::ReadStaging() {
  absl::StatusOr<std::string> bytes = Ask('S');
  if (!bytes.ok()) return bytes.status();
  const auto* data = reinterpret_cast<const std::byte*>(bytes->data());
  return std::vector<std::byte>(data, data + bytes->size());
}

absl::StatusOr<absl::Duration> UcxRegionsChild::ProgressCpuTime() {
  absl::StatusOr<std::string> ns = Ask('C');
  if (!ns.ok()) return ns.status();
  return absl::Nanoseconds(static_cast<int64_t>(DecodeWord(*ns)));
}

absl::StatusOr<int> UcxRegionsChild::Quit() {
  const char command = 'Q';
  if (!WriteAll(to_child_, &command, 1)) {
    return absl::UnavailableError("the UCX regions child is gone");
  }
  return Wait();
}

void UcxRegionsChild::Kill() {
  if (pid_ <= 0) return;
  kill(pid_, SIGKILL);
  (void)Wait();
}

absl::StatusOr<int> UcxRegionsChild::Wait() {
  int status = 0;
  pid_t waited;
  do {
    waited = waitpid(pid_, &status, 0);
  } while (waited < 0 && errno == EINTR);
  pid_ = 0;
  if (waited < 0)
    return absl::InternalError(absl::StrCat("waitpid: ", std::strerror(errno)));
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  return 128 + WTERMSIG(status);
}

}  // namespace freekv
