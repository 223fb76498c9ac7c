// The worker binary as a user runs it: bad flags (or a prompt or model they name that
// cannot be read) give exit code 2 and a message that names the flag; runs on stories15M
// print the text and, with --json, a last line carrying the fields others rely on; freekv
// through a real kvservice with a budget covering the context generates exactly full
// attention's tokens. A worker built without CUDA refuses --device=gpu and says how to
// build one that does (worker/gpu_backend_cuda_test.cc tests the GPU).
#include <sys/wait.h>

#include <cstdio>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "tests/integration/kvservice_process.h"

namespace freekv {
namespace {

using testing::KvServiceProcess;
using testing::RunfilePath;

struct Result {
  int exit_code = -1;
  std::string output;  // stdout and stderr

  std::string last_line() const {
    std::vector<std::string> lines = absl::StrSplit(output, '\n', absl::SkipEmpty());
    return lines.empty() ? "" : lines.back();
  }
  // The value of "key": in the last line, up to the next comma (numbers, null).
  std::string field(const std::string& key) const {
    const std::string line = last_line();
    const size_t at = line.find("\"" + key + "\":");
    if (at == std::string::npos) return "<missing>";
    const size_t begin = at + key.size() + 3;
    const size_t end =
        line[begin] == '[' ? line.find(']', begin) + 1 : line.find_first_of(",}", begin);
    return line.substr(begin, end - begin);
  }
};

Result RunWorker(const std::string& flags) {
  const std::string command =
      absl::StrCat(RunfilePath("worker/worker"), " ", flags, " 2>&1");
  Result r;
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return r;
  char buffer[4096];
  size_t n;
  while ((n = fread(buffer, 1, sizeof(buffer), pipe)) > 0) r.output.append(buffer, n);
  const int status = pclose(pipe);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

TEST(WorkerCliTest, BadFlagsGiveClearErrors) {
  const std::pair<std::string, std::string> cases[] = {
      {"--policy=sparse --prompt=x",
       "policy is \"sparse\"; expected one of full, freekv, blocking, oracle"},
      {"--policy=full --prompt=x --steps=0", "--steps is 0; it must be >= 1"},
      {"--policy=full", "give the prompt with --prompt=TEXT or --prompt_file=PATH"},
      {"--policy=full --prompt=x --prompt_file=/etc/hostname", "not both"},
      {"--policy=full --prompt_file=/nonexistent/prompt",
       "--prompt_file /nonexistent/prompt"},
      {"--policy=oracle --prompt=x --window_pages=0",
       "--window_pages is 0; it must be >= 1"},
      {"--policy=oracle --prompt=x --full_layers=9", "--full_layers names layer 9"},
      {"--policy=oracle --prompt=x --full_layers=1,b", "--full_layers: layer list"},
      {"--policy=oracle --prompt=x --tau=nan", "--tau is nan"},
      {"--policy=oracle --prompt=x --resident_cache_pages=-2",
       "--resident_cache_pages is -2; it must be >= 0, or -1 for as many as "
       "selected_pages on the GPU"},
      {"--policy=freekv --prompt=x --socket=",
       "keeps pages in the kvservice: give --socket"},
      {"--device=tpu --policy=full --prompt=x",
       "--device is \"tpu\"; expected cpu or gpu"},
  };
  for (const auto& [flags, message] : cases) {
    const Result r = RunWorker(flags);
    EXPECT_EQ(r.exit_code, 2) << flags << "\n" << r.output;
    EXPECT_NE(r.output.find(message), std::string::npos) << flags << "\n" << r.output;
  }
  // The device's backend refuses what it cannot serve, as the run's error (exit 1).
  const Result cache = RunWorker("--policy=oracle --prompt=x --resident_cache_pages=4");
  EXPECT_EQ(cache.exit_code, 1) << cache.output;
  EXPECT_NE(cache.output.find("INVALID_ARGUMENT: resident_cache_pages is 4: the resident "
                              "cache is on the GPU only"),
            std::string::npos)
      << cache.output;
  const Result model =
      RunWorker("--policy=full --prompt=x --model=/nonexistent/model.bin");
  EXPECT_EQ(model.exit_code, 2) << model.output;
  EXPECT_NE(model.output.find("/nonexistent/model.bin does not exist"), std::string::npos)
      << model.output;
}

TEST(WorkerCliTest, GpuNeedsACudaBuild) {
#ifdef FREEKV_WORKER_HAS_CUDA
  GTEST_SKIP() << "this worker was built with CUDA";
#endif
  const Result r = RunWorker("--device=gpu --policy=full --prompt=x");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("this worker was built without CUDA; build with --config=cuda "
                          "(see README: ./freekv gpu)"),
            std::string::npos)
      << r.output;
}

TEST(WorkerCliTest, OracleRunPrintsTextAndJson) {
  const Result r = RunWorker(
      "--policy=oracle --prompt='Once upon a time' --steps=12 --page_tokens=4 "
      "--selected_pages=1 --json");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("== sequence 0 (5 prompt tokens)\nOnce upon a time"),
            std::string::npos)
      << r.output;
  EXPECT_EQ(r.last_line().front(), '{') << r.output;
  EXPECT_EQ(r.field("policy"), "\"oracle\"");
  EXPECT_EQ(r.field("device"), "\"cpu\"");
  EXPECT_EQ(r.field("tokens"), "12");
  EXPECT_EQ(r.field("resident_cache_pages"), "0");  // the default (-1) is GPU only
  EXPECT_EQ(r.field("offloaded_pages"), "null");  // the CPU does not count them
  EXPECT_NE(r.field("correction_rate_per_layer"), "null");
  EXPECT_EQ(r.field("pages_recalled"), "0");  // the oracle keeps every page
  for (const char* key :
       {"tokens_per_s", "correction_rate", "speculation_hit_rate", "stall_s"}) {
    EXPECT_NE(r.field(key), "<missing>") << key;
    EXPECT_NE(r.field(key), "null") << key;  // 17 tokens = 5 pages: corrections happen
  }
}

TEST(WorkerCliTest, FreekvThroughTheServiceMatchesFull) {
  absl::StatusOr<std::unique_ptr<KvServiceProcess>> service =
      KvServiceProcess::Start({"--capacity=64M", "--chunk_bytes=4M"});
  ASSERT_TRUE(service.ok()) << service.status();
  const std::string common = absl::StrCat(
      "--prompt='Lily and Tom went to the park' --steps=24 --json --page_tokens=4 "
      "--socket=",
      (*service)->socket());
  const Result full = RunWorker("--policy=full " + common);
  ASSERT_EQ(full.exit_code, 0) << full.output;
  // 9 prompt tokens + 24 = 33 tokens = 9 pages: 1 sink + 2 window + 6 selected hold all.
  const Result freekv = RunWorker("--policy=freekv --selected_pages=6 " + common);
  ASSERT_EQ(freekv.exit_code, 0) << freekv.output;
  EXPECT_EQ(freekv.field("token_ids"), full.field("token_ids"));
  EXPECT_NE(freekv.field("pages_recalled"), "0") << freekv.output;
  EXPECT_EQ(full.field("pages_recalled"), "0");
  EXPECT_EQ(full.field("correction_rate"), "null");
  // A budget of a quarter still decodes, recalling more.
  const Result quarter = RunWorker("--policy=freekv --selected_pages=1 " + common);
  ASSERT_EQ(quarter.exit_code, 0) << quarter.output;
  EXPECT_NE(quarter.output.find("speculation hit rate"), std::string::npos)
      << quarter.output;
}

}  // namespace
}  // namespace freekv
