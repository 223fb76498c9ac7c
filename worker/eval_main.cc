// eval: accuracy of the retrieval policies against full attention on real prompts.
// For each context length, full attention decodes a batch of story prompts greedily
// to that length; every (policy, budget, tau) cell is then teacher-forced on full's
// continuation (eval.h). Prints one table row per cell and, last, one JSON line whose
// `agreement` and `mean_kl` are freekv's at the budget nearest 1/4 and tau nearest
// 0.8, pooled over the contexts within the model's trained length.
//
//   eval --socket=/run/freekv/kvservice.sock [--contexts=256,512] [--budgets=...]
//        [--device=gpu]
//
// --device picks where every decode runs (decode_backend.h): the CPU's fp32 model or
// the GPU's bf16 one; the reference and the cells then run on the same device.
#include <atomic>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "worker/backend_factory.h"
#include "worker/cpu_backend.h"
#include "worker/eval.h"
#include "worker/eval_report.h"
#include "worker/exact_selection.h"
#include "worker/model_source.h"
#include "worker/policy_factory.h"
#include "worker/retrieval_flags.h"

ABSL_FLAG(std::string, device, "cpu",
          "Where the model runs: cpu (fp32) or gpu (bf16; a build with --config=cuda).");
ABSL_FLAG(std::string, model, "", "Model path (see worker --help); default: stories15M.");
ABSL_FLAG(std::string, socket, "/run/freekv/kvservice.sock",
          "The kvservice's unix socket (freekv and blocking).");
ABSL_FLAG(
    std::string, prompt_file, "",
    "One prompt per non-empty line, decoded as one batch; default: built-in stories.");
ABSL_FLAG(std::string, contexts, "256,512",
          "Context lengths (tokens of the longest sequence at the end) to evaluate.");
ABSL_FLAG(std::string, budgets, "0.125,0.25,0.5",
          "Budgets as fractions of the context's pages (sinks + window + selected).");
ABSL_FLAG(std::string, taus, "0.8,0.9",
          "Correction thresholds for freekv and oracle (the grid sets tau and "
          "selected_pages: --tau and --selected_pages are not read).");
ABSL_FLAG(
    std::string, policies, "",
    "Policies to compare with full: freekv, blocking, oracle, and exact (the ceiling "
    "of page selection: pages picked by their true attention mass; CPU only). Default: "
    "freekv,blocking,exact on the CPU, freekv,blocking on the GPU.");
ABSL_FLAG(int32_t, threads, 2, "Cells evaluated at once on the CPU (the GPU runs one).");

namespace freekv {
namespace {

template <typename T>
absl::StatusOr<std::vector<T>> ParseList(absl::string_view flag, absl::string_view text) {
  std::vector<T> out;
  for (absl::string_view item : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    item = absl::StripAsciiWhitespace(item);
    T value;
    bool ok;
    if constexpr (std::is_same_v<T, std::string>) {
      value = std::string(item);
      ok = !item.empty();
    } else if constexpr (std::is_integral_v<T>) {
      ok = absl::SimpleAtoi(item, &value) && value > 0;
    } else {
      ok = absl::SimpleAtod(item, &value) && std::isfinite(value);
    }
    if (!ok) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--", flag, " has item \"", item, "\"; expected a comma-separated list"));
    }
    out.push_back(value);
  }
  if (out.empty())
    return absl::InvalidArgumentError(absl::StrCat("--", flag, " is empty"));
  return out;
}

absl::StatusOr<std::vector<std::string>> PromptTexts() {
  const std::string file = absl::GetFlag(FLAGS_prompt_file);
  if (file.empty())
    return BuiltInStories();
  std::ifstream in(file);
  if (!in)
    return absl::NotFoundError(absl::StrCat("--prompt_file ", file, " cannot be read"));
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) {
    if (!absl::StripAsciiWhitespace(line).empty()) lines.push_back(line);
  }
  if (lines.empty())
    return absl::InvalidArgumentError(absl::StrCat("--prompt_file ", file, " is empty"));
  return lines;
}

absl::StatusOr<std::vector<EvalCell>> PlanCells(
    Device device, const ModelConfig& model, const std::vector<EvalContext>& contexts) {
  absl::StatusOr<RetrievalConfig> base = RetrievalConfigFromFlags(model);
  if (!base.ok()) return base.status();
  auto budgets = ParseList<double>("budgets", absl::GetFlag(FLAGS_budgets));
  auto taus = ParseList<double>("taus", absl::GetFlag(FLAGS_taus));
  std::string policies = absl::GetFlag(FLAGS_policies);
  if (policies.empty())
    policies = device == Device::kGpu ? "freekv,blocking" : "freekv,blocking,exact";
  auto names = ParseList<std::string>("policies", policies);
  for (const absl::Status& s : {budgets.status(), taus.status(), names.status()}) {
    if (!s.ok()) return s;
  }
  std::vector<EvalCell> cells;
  for (size_t c = 0; c < contexts.size(); ++c) {
    for (const std::string& name : *names) {
      if (name != "freekv" && name != "blocking" && name != "oracle" && name != "exact") {
        return absl::InvalidArgumentError(
            absl::StrCat("--policies names \"", name,
                         "\"; expected freekv, blocking, oracle or exact"));
      }
      if (name == "exact" && device == Device::kGpu) {
        return absl::InvalidArgumentError(
            "--policies names \"exact\", which runs on the CPU only; leave it out with "
            "--device=gpu");
      }
      for (double budget : *budgets) {
        // Only freekv and oracle correct with tau; the others get one cell per budget.
        const bool speculative = name == "freekv" || name == "oracle";
        const std::vector<double> cell_taus =
            speculative ? *taus : std::vector<double>{taus->front()};
        for (double tau : cell_taus) {
          EvalCell cell;
          cell.context = c;
          cell.policy = name;
          cell.budget_fraction = budget;
          cell.config = BudgetFor(*base, contexts[c], budget);
          cell.config.tau = static_cast<float>(tau);
          cells.push_back(cell);
        }
      }
    }
  }
  return cells;
}

// The backend of a cell: the ceiling policy (CPU), or one the worker runs.
absl::StatusOr<std::unique_ptr<DecodeBackend>> CellBackend(Device device,
                                                           const ModelWeights& weights,
                                                           const EvalCell& cell) {
  if (cell.policy == "exact") {
    absl::StatusOr<std::unique_ptr<ExactSelection>> exact =
        ExactSelection::Create(weights.config, cell.config);
    if (!exact.ok()) return exact.status();
    PolicyBundle bundle;
    bundle.policy = *std::move(exact);
    absl::StatusOr<std::unique_ptr<CpuBackend>> cpu =
        CpuBackend::Create(weights, std::move(bundle));
    if (!cpu.ok()) return cpu.status();
    return std::unique_ptr<DecodeBackend>(*std::move(cpu));
  }
  absl::StatusOr<PolicyKind> kind = ParsePolicyKind(cell.policy);
  if (!kind.ok()) return kind.status();
  BackendOptions options;
  options.policy = *kind;
  options.config = cell.config;
  options.target = "unix:" + absl::GetFlag(FLAGS_socket);
  options.client_name = absl::StrCat("eval-", cell.policy);
  return MakeBackend(device, weights, options);
}

absl::Status RunCell(Device device, const ModelWeights& weights,
                     const EvalContext& context, const Reference& reference,
                     EvalCell& cell) {
  const absl::Time start = absl::Now();
  absl::StatusOr<std::unique_ptr<DecodeBackend>> backend =
      CellBackend(device, weights, cell);
  if (!backend.ok()) return backend.status();
  absl::StatusOr<AgreementMeter> meter = TeacherForce(**backend, context, reference);
  if (!meter.ok()) return meter.status();
  cell.meter = *meter;
  cell.stats = (*backend)->stats();
  cell.seconds = absl::ToDoubleSeconds(absl::Now() - start);
  return absl::OkStatus();
}

// Full attention's greedy continuation of the context, on the device.
absl::StatusOr<Reference> ContextReference(Device device, const ModelWeights& weights,
                                           const RetrievalConfig& config,
                                           const EvalContext& context) {
  BackendOptions options;
  options.policy = PolicyKind::kFull;
  options.config = config;
  options.config.max_sequences = static_cast<int32_t>(context.prompts.size());
  absl::StatusOr<std::unique_ptr<DecodeBackend>> full =
      MakeBackend(device, weights, options);
  if (!full.ok()) return full.status();
  return RunReference(**full, context);
}

// Runs fn(0..n-1) on `threads` threads; returns the first error.
absl::Status ParallelFor(size_t n, int threads,
                         const std::function<absl::Status(size_t)>& fn) {
  std::atomic<size_t> next{0};
  std::vector<absl::Status> errors(std::max(1, threads));
  std::vector<std::thread> pool;
  for (int t = 0; t < std::max(1, threads); ++t) {
    pool.emplace_back([&, t] {
      for (size_t i = next++; i < n && errors[t].ok(); i = next++) errors[t] = fn(i);
    });
  }
  for (std::thread& t : pool) t.join();
  for (const absl::Status& s : errors) {
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status Run(Device device) {
  absl::StatusOr<LoadedModel> model = LoadModel(absl::GetFlag(FLAGS_model));
  if (!model.ok()) return model.status();
  const ModelWeights& weights = model->weights;
  absl::StatusOr<std::vector<std::string>> texts = PromptTexts();
  auto lengths = ParseList<int32_t>("contexts", absl::GetFlag(FLAGS_contexts));
  if (!texts.ok()) return texts.status();
  if (!lengths.ok()) return lengths.status();
  std::vector<std::vector<int32_t>> prompts;
  for (const std::string& t : *texts)
    prompts.push_back(model->tokenizer->Encode(t, true, false));
  std::vector<EvalContext> contexts;
  for (int32_t length : *lengths) {
    absl::StatusOr<EvalContext> c = MakeEvalContext(prompts, length);
    if (!c.ok()) return c.status();
    contexts.push_back(*std::move(c));
  }
  absl::StatusOr<std::vector<EvalCell>> cells =
      PlanCells(device, weights.config, contexts);
  if (!cells.ok()) return cells.status();
  // One GPU: its cells take turns rather than time-slice it.
  const int threads = device == Device::kGpu ? 1 : absl::GetFlag(FLAGS_threads);
  std::vector<Reference> references(contexts.size());
  if (auto s = ParallelFor(contexts.size(), threads,
                           [&](size_t c) {
                             absl::StatusOr<Reference> r = ContextReference(
                                 device, weights, cells->front().config, contexts[c]);
                             if (!r.ok()) return r.status();
                             references[c] = *std::move(r);
                             return absl::OkStatus();
                           });
      !s.ok()) {
    return s;
  }
  if (auto s = ParallelFor(cells->size(), threads,
                           [&](size_t i) {
                             EvalCell& cell = (*cells)[i];
                             return RunCell(device, weights, contexts[cell.context],
                                            references[cell.context], cell);
                           });
      !s.ok()) {
    return s;
  }
  std::printf("%s",
              FormatEvalTable(*cells, contexts, weights.config.max_seq_len).c_str());
  std::printf("%s\n", EvalJson(*cells, contexts, weights.config.max_seq_len).c_str());
  return absl::OkStatus();
}

}  // namespace
}  // namespace freekv

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "teacher-forces the retrieval policies on full attention's continuation and "
      "reports top-1 agreement and KL divergence.\n  eval --socket=PATH "
      "[--contexts=256,512] [--device=cpu|gpu]");
  absl::ParseCommandLine(argc, argv);
  absl::StatusOr<freekv::Device> device =
      freekv::ParseDevice(absl::GetFlag(FLAGS_device));
  if (!device.ok()) {
    std::fprintf(stderr, "eval: --%s\n", std::string(device.status().message()).c_str());
    return 2;
  }
  // Before anything touches CUDA (the GPU's recall gates need eager loading).
  if (absl::Status s = freekv::PrepareDevice(*device); !s.ok()) {
    std::fprintf(stderr, "eval: %s\n", s.ToString().c_str());
    return 1;
  }
  if (absl::Status s = freekv::Run(*device); !s.ok()) {
    std::fprintf(stderr, "eval: %s\n", s.ToString().c_str());
    return s.code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
  }
  return 0;
}
