// How the kvservice listens: a unix socket with mode 0660 by default, TCP when asked,
// and flags documented by --help.
#include <sys/stat.h>

#include <cstdio>
#include <string>

#include "absl/strings/str_cat.h"
#include "client/kv_client.h"
#include "gtest/gtest.h"
#include "tests/integration/kvservice_process.h"

namespace freekv {
namespace {

using testing::KvServiceProcess;

TEST(ListeningTest, UnixSocketIsGroupReadableOnly) {
  absl::StatusOr<std::unique_ptr<KvServiceProcess>> service =
      KvServiceProcess::Start({"--capacity=16M", "--chunk_bytes=4M"});
  ASSERT_TRUE(service.ok()) << service.status();
  struct stat info;
  ASSERT_EQ(stat((*service)->socket().c_str(), &info), 0);
  EXPECT_TRUE(S_ISSOCK(info.st_mode));
  EXPECT_EQ(info.st_mode & 0777, 0660);
}

TEST(ListeningTest, TcpListenerServesSessionsToo) {
  const int port = testing::FreePort();
  absl::StatusOr<std::unique_ptr<KvServiceProcess>> service = KvServiceProcess::Start(
      {"--capacity=16M", "--chunk_bytes=4M", absl::StrCat("--listen=127.0.0.1:", port)});
  ASSERT_TRUE(service.ok()) << service.status();
  KvClientOptions options;
  options.target = absl::StrCat("127.0.0.1:", port);
  options.geometry = {1, 2, 64, 16, DType::kBFloat16};
  absl::StatusOr<std::unique_ptr<KvClient>> client = KvClient::Open(options);
  ASSERT_TRUE(client.ok()) << client.status();
  for (size_t i = 0; i < (*client)->geometry().block_bytes(); ++i) {
    (*client)->offload_region()[i] = std::byte(i * 13 + 1);
  }
  ASSERT_TRUE((*client)->Offload({{{4, 0, 0, 0}}}).ok());
  absl::StatusOr<RecallTicket> ticket = (*client)->Recall(0, 0, {{{4, 1, 0, 0}}});
  ASSERT_TRUE(ticket.ok());
  ASSERT_TRUE((*client)->Wait(*ticket, absl::Now() + absl::Seconds(10)).ok());
  const size_t slice = (*client)->geometry().head_slice_bytes();
  for (size_t i = 0; i < slice; ++i) {
    ASSERT_EQ((*client)->staging_slot(0, ticket->slot)[i], std::byte((slice + i) * 13 + 1));
  }
}

TEST(ListeningTest, HelpDocumentsTheFlagsOthersRelyOn) {
  const std::string command =
      testing::RunfilePath("kvservice/kvservice") + " --helpfull 2>&1";
  FILE* pipe = popen(command.c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  std::string help;
  char buffer[4096];
  while (size_t n = fread(buffer, 1, sizeof(buffer), pipe)) help.append(buffer, n);
  pclose(pipe);
  for (const char* flag : {"--socket", "--listen", "--metrics_address", "--capacity",
                           "--default_lease_ms", "--shutdown_grace_ms"}) {
    EXPECT_NE(help.find(flag), std::string::npos) << flag << " missing from --help";
  }
}

TEST(ListeningTest, BadFlagsStopStartUpWithAClearMessage) {
  absl::StatusOr<std::unique_ptr<KvServiceProcess>> service =
      KvServiceProcess::Start({"--capacity=12X"});
  ASSERT_FALSE(service.ok());
  EXPECT_NE(service.status().message().find("exited"), std::string::npos)
      << service.status();
}

}  // namespace
}  // namespace freekv
