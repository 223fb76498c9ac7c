// worker: decodes a prompt (or a batch of prompts) with a Llama-family model under a
// decode policy and prints the text, the speed and the FreeKV statistics.
//
//   worker --policy=freekv --socket=/run/freekv/kvservice.sock --prompt="Once upon"
//
// freekv and blocking keep the KV pages in the kvservice at --socket; full and oracle
// need no service. --device=gpu decodes on the GPU (a build with --config=cuda). With
// --json the last line is one JSON object.
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "worker/backend_factory.h"
#include "worker/decode_stats.h"
#include "worker/model_source.h"
#include "worker/policy_kind.h"
#include "worker/retrieval_flags.h"

ABSL_FLAG(std::string, policy, "freekv",
          "Decode policy: full, freekv, blocking or oracle.");
ABSL_FLAG(std::string, device, "cpu",
          "Where the model runs: cpu (fp32) or gpu (bf16; a build with --config=cuda).");
ABSL_FLAG(std::string, model, "",
          "Model: a directory holding model.bin (llama2.c) or *.safetensors, or one such "
          "file. Default: the cached stories15M.");
ABSL_FLAG(std::string, tokenizer, "", "tokenizer.bin; default: beside the model.");
ABSL_FLAG(std::string, prompt, "", "Prompt text.");
ABSL_FLAG(std::string, prompt_file, "",
          "File whose text is the prompt (instead of --prompt).");
ABSL_FLAG(bool, batch_lines, false,
          "With --prompt_file: each non-empty line is one sequence of a batch.");
ABSL_FLAG(int32_t, steps, 128, "Tokens to generate per sequence.");
ABSL_FLAG(std::string, socket, "/run/freekv/kvservice.sock",
          "The kvservice's unix socket (freekv and blocking).");
ABSL_FLAG(bool, json, false, "End with one line holding a JSON object of the results.");

namespace freekv {
namespace {

absl::StatusOr<std::vector<std::string>> PromptsFromFlags() {
  const std::string text = absl::GetFlag(FLAGS_prompt);
  const std::string file = absl::GetFlag(FLAGS_prompt_file);
  if (!text.empty() && !file.empty()) {
    return absl::InvalidArgumentError("give --prompt or --prompt_file, not both");
  }
  if (text.empty() && file.empty()) {
    return absl::InvalidArgumentError(
        "give the prompt with --prompt=TEXT or --prompt_file=PATH");
  }
  if (file.empty()) return std::vector<std::string>{text};
  std::ifstream in(file);
  if (!in)
    return absl::NotFoundError(absl::StrCat("--prompt_file ", file, " cannot be read"));
  std::stringstream content;
  content << in.rdbuf();
  std::string all = content.str();
  if (!absl::GetFlag(FLAGS_batch_lines)) {
    return std::vector<std::string>{std::string(absl::StripTrailingAsciiWhitespace(all))};
  }
  std::vector<std::string> lines;
  for (absl::string_view line : absl::StrSplit(all, '\n')) {
    line = absl::StripAsciiWhitespace(line);
    if (!line.empty()) lines.emplace_back(line);
  }
  if (lines.empty())
    return absl::InvalidArgumentError(absl::StrCat("--prompt_file ", file, " is empty"));
  return lines;
}

// Everything main needs, checked before any work starts.
struct Setup {
  Device device;
  PolicyKind kind;
  LoadedModel model;
  RetrievalConfig config;
  std::vector<std::string> prompts;
  int steps = 0;
};

absl::StatusOr<Setup> SetupFromFlags(Device device) {
  absl::StatusOr<PolicyKind> kind = ParsePolicyKind(absl::GetFlag(FLAGS_policy));
  if (!kind.ok())
    return absl::InvalidArgumentError(absl::StrCat("--", kind.status().message()));
  const int steps = absl::GetFlag(FLAGS_steps);
  if (steps < 1)
    return absl::InvalidArgumentError(
        absl::StrCat("--steps is ", steps, "; it must be >= 1"));
  if (NeedsService(*kind) && absl::GetFlag(FLAGS_socket).empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--policy=", PolicyKindName(*kind),
                     " keeps pages in the kvservice: give --socket"));
  }
  absl::StatusOr<std::vector<std::string>> prompts = PromptsFromFlags();
  if (!prompts.ok()) return prompts.status();
  absl::StatusOr<LoadedModel> model =
      LoadModel(absl::GetFlag(FLAGS_model), absl::GetFlag(FLAGS_tokenizer));
  if (!model.ok()) return model.status();
  absl::StatusOr<RetrievalConfig> config =
      RetrievalConfigFromFlags(model->weights.config);
  if (!config.ok()) return config.status();
  config->max_sequences = static_cast<int32_t>(prompts->size());
  return Setup{device, *kind, *std::move(model), *std::move(config),
               *std::move(prompts), steps};
}

// The statistics' JSON fields; a figure the device does not measure is null.
std::string StatsJson(const BackendStats& stats) {
  std::string per_layer = "null";
  if (stats.layer_corrections) {
    std::vector<std::string> rates;
    for (const Tally& t : *stats.layer_corrections) rates.push_back(JsonNumber(t.rate()));
    per_layer = absl::StrCat("[", absl::StrJoin(rates, ","), "]");
  }
  return absl::StrFormat(
      "\"pages_recalled\":%d,\"pages_recalled_per_step\":%s,\"correction_rate\":%s,"
      "\"correction_rate_per_layer\":%s,\"speculation_hit_rate\":%s,\"stall_s\":%s,"
      "\"offloaded_pages\":%s",
      stats.pages_recalled, JsonNumber(stats.pages_recalled_per_step()),
      JsonNumber(stats.corrections.rate()), per_layer,
      JsonNumber(stats.speculation_hits.rate()), JsonNumber(stats.stall_seconds),
      stats.offloaded_pages ? absl::StrCat(*stats.offloaded_pages) : "null");
}

absl::Status Run(Setup& setup) {
  const Tokenizer& tokenizer = *setup.model.tokenizer;
  DecodeRequest request;
  for (const std::string& p : setup.prompts) {
    request.prompts.push_back(tokenizer.Encode(p, /*bos=*/true, /*eos=*/false));
  }
  request.steps = setup.steps;
  BackendOptions options;
  options.policy = setup.kind;
  options.config = setup.config;
  options.target = "unix:" + absl::GetFlag(FLAGS_socket);
  options.client_name =
      setup.device == Device::kGpu ? "freekv-worker-gpu" : "freekv-worker";
  absl::StatusOr<std::unique_ptr<DecodeBackend>> backend =
      MakeBackend(setup.device, setup.model.weights, options);
  if (!backend.ok()) return backend.status();
  absl::StatusOr<std::vector<std::vector<int32_t>>> tokens = (*backend)->Decode(request);
  if (!tokens.ok()) return tokens.status();
  std::vector<std::string> ids;
  for (size_t b = 0; b < tokens->size(); ++b) {
    absl::StatusOr<std::string> text = tokenizer.Decode((*tokens)[b]);
    if (!text.ok()) return text.status();
    std::printf("== sequence %zu (%zu prompt tokens)\n%s%s\n", b,
                request.prompts[b].size(), setup.prompts[b].c_str(), text->c_str());
    ids.push_back(absl::StrCat("[", absl::StrJoin((*tokens)[b], ","), "]"));
    if (auto s = (*backend)->Release(static_cast<int64_t>(b)); !s.ok()) return s;
  }
  const BackendStats stats = (*backend)->stats();
  const size_t n = tokens->size();
  const double decode_tokens = static_cast<double>(n) * (setup.steps - 1);
  const double tokens_per_s =
      stats.decode_seconds > 0 ? decode_tokens / stats.decode_seconds : 0.0;
  const char* device = DeviceName(setup.device);
  std::printf(
      "== %s on the %s: %zu sequences x %d tokens; prefill %.3f s, decode %.3f s, "
      "%.1f tokens/s\n",
      PolicyKindName(setup.kind), device, n, setup.steps, stats.prefill_seconds,
      stats.decode_seconds, tokens_per_s);
  std::printf("%s", stats.text.c_str());
  if (absl::GetFlag(FLAGS_json)) {
    const std::string json = absl::StrFormat(
        "{\"policy\":\"%s\",\"device\":\"%s\",\"sequences\":%d,\"tokens\":%d,"
        "\"tokens_per_s\":%s,\"prefill_s\":%s,\"decode_s\":%s,\"budget_tokens\":%d,"
        "\"resident_cache_pages\":%d,%s,"
        "\"token_ids\":[%s]}",
        PolicyKindName(setup.kind), device, n, n * setup.steps, JsonNumber(tokens_per_s),
        JsonNumber(stats.prefill_seconds), JsonNumber(stats.decode_seconds),
        setup.config.budget_tokens(),
        setup.device == Device::kGpu ? setup.config.gpu_cache_pages() : 0, StatsJson(stats),
        absl::StrJoin(ids, ","));
    std::printf("%s\n", json.c_str());
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace freekv

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "decodes a prompt with a Llama-family model under a FreeKV decode policy.\n"
      "  worker --policy=freekv --socket=PATH --prompt=TEXT [--steps=N] [--json] "
      "[--device=cpu|gpu]");
  absl::ParseCommandLine(argc, argv);
  absl::StatusOr<freekv::Device> device =
      freekv::ParseDevice(absl::GetFlag(FLAGS_device));
  if (!device.ok()) {
    std::fprintf(stderr, "worker: --%s\n",
                 std::string(device.status().message()).c_str());
    return 2;
  }
  // Before anything touches CUDA (the GPU's recall gates need eager loading); a build
  // without CUDA cannot serve the flag.
  if (absl::Status s = freekv::PrepareDevice(*device); !s.ok()) {
    std::fprintf(stderr, "worker: --device=gpu: %s\n", std::string(s.message()).c_str());
    return 2;
  }
  absl::StatusOr<freekv::Setup> setup = freekv::SetupFromFlags(*device);
  if (!setup.ok()) {
    // Flags, prompt, model and tokenizer are all named on the command line.
    std::fprintf(stderr, "worker: %s\n", std::string(setup.status().message()).c_str());
    return 2;
  }
  if (absl::Status s = freekv::Run(*setup); !s.ok()) {
    std::fprintf(stderr, "worker: %s\n", s.ToString().c_str());
    return 1;
  }
  return 0;
}
