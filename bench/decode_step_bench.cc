// Decode-step latency on the GPU at Llama-3.1-8B geometry (random bf16 weights), page
// 32, budget 2048 tokens (16 sink + 32 selected + 16 window pages), for the policies
// full, oracle, freekv and blocking (worker/freekv_gpu/gpu_decoder.h) over contexts
// and batches. freekv and blocking recall from the real kvservice process over CUDA
// IPC; its pinned store holds every page of every (sequence, layer) of the row.
// A policy labelled -cache (freekv-cache, blocking-cache) keeps --resident_cache pages
// per head resident beyond the 32 it attends (gpu::ResidentLayout::cache).
//
// Layers: as many of the model's 32 as the host store (--store_gib) holds for the
// row's batch x context, the same for every policy of the row (the table says how
// many); `full` runs where its whole cache fits in GPU memory. The step time is the
// decoder layers only: the classifier is policy-independent and is left out (vocab
// 1024), which makes no ratio look better than with it.
//
// Prints one markdown table (bench/RESULTS.md keeps it): per row the median GPU step
// time, the ratio to oracle, the time the stream stalled at recall gates, the host
// time spent on recall requests and their bookkeeping by the recall driver's threads
// and the decode thread's own time per step (building the step's inputs, launching
// its graph, handing recalls to the driver), all as shares of the step,
// blocks recalled per step, the share of heads corrected, and for capacity the
// row's KV cache (every layer run, in the kvservice's store) against the GPU memory
// the worker has (--gpu_gib, or the device's), and the tokens per second.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "client/cuda_kv_client.h"
#include "kernels/cuda_util.h"
#include "tests/integration/kvservice_process.h"
#include "worker/freekv_gpu/gpu_decoder.h"
#include "worker/freekv_gpu/resident_ops.h"
#include "worker/model/model_weights.h"

ABSL_FLAG(std::string, contexts, "32768,131072", "Context lengths (tokens).");
ABSL_FLAG(std::string, batches, "1,4,16", "Batch sizes.");
ABSL_FLAG(std::string, policies, "full,oracle,freekv,blocking", "Policies per row.");
ABSL_FLAG(int32_t, max_layers, 32, "Layers at most (the model has 32).");
ABSL_FLAG(int32_t, store_gib, 72, "GiB of pinned kvservice store (bounds the layers).");
ABSL_FLAG(int32_t, warmup, 4, "Untimed steps per policy (the first primes the cache).");
ABSL_FLAG(int32_t, steps, 16, "Timed steps per policy.");
ABSL_FLAG(double, tau, 0.8, "Correction threshold.");
ABSL_FLAG(double, drift, 0.05, "Step-to-step change of the decode input.");
ABSL_FLAG(bool, graphs, true, "Replay each layer's dense parts as CUDA graphs.");
ABSL_FLAG(int32_t, resident_cache, 32,
          "Slots per (sequence, KV head) a policy labelled -cache keeps beyond the 32 it "
          "attends (gpu::ResidentLayout::cache).");
ABSL_FLAG(int32_t, gpu_gib, 0,
          "GiB of GPU memory the worker may use, weights included (0: the device's). It "
          "sizes the layers; run under an MPS limit (CUDA_MPS_PINNED_DEVICE_MEM_LIMIT) so "
          "that the device enforces it (the capacity run, bench/RESULTS.md).");
ABSL_FLAG(std::string, service_flags, "",
          "Extra kvservice flags, space-separated (e.g. --cuda_copy_method=gather).");

namespace freekv {
namespace {

using gpu::GpuDecoder;
using gpu::GpuDecoderOptions;
using gpu::GpuPolicy;

// Failures end the process at once: a decoder's threads may be waiting on a GPU
// that will not finish, so destructors could hang.
[[noreturn]] void Fail(const char* what, const absl::Status& s) {
  std::fprintf(stderr, "%s failed: %s\n", what, s.ToString().c_str());
  std::fflush(nullptr);
  std::_Exit(1);
}

template <typename T>
T Unwrap(absl::StatusOr<T> value, const char* what) {
  if (!value.ok()) Fail(what, value.status());
  return *std::move(value);
}

void Check(const absl::Status& s, const char* what) {
  if (!s.ok()) Fail(what, s);
}

std::vector<int64_t> Ints(const std::string& list) {
  std::vector<int64_t> out;
  for (absl::string_view s : absl::StrSplit(list, ',', absl::SkipEmpty())) {
    int64_t v = 0;
    if (!absl::SimpleAtoi(s, &v) || v <= 0) {
      std::fprintf(stderr, "bad number '%s' in '%s'\n", std::string(s).c_str(), list.c_str());
      std::exit(1);
    }
    out.push_back(v);
  }
  return out;
}

using gpu::kPageTokens;

struct Row {
  int64_t context = 0;
  int32_t batch = 0, layers = 0;
  std::string policy;
  gpu::GpuStepStats stats;
  double kv_bytes = 0;  // the row's KV cache, every layer run
};

// Stores pages [0, context / 32) of every (sequence, layer) through the session's
// offload region (random bytes, written once: recall speed does not depend on them).
void FillStore(CudaKvClient& kv, const std::vector<uint64_t>& sequences, int32_t layers,
               int64_t context) {
  const size_t block = kv.client().geometry().block_bytes();
  const size_t per_call = kv.regions().offload_bytes() / block;
  auto stream = Unwrap(kernels::CudaStream::Create(), "stream");
  Check(gpu::FillUniformCuda(absl::Span<kernels::BFloat16>(
                                 reinterpret_cast<kernels::BFloat16*>(kv.regions().offload()),
                                 kv.regions().offload_bytes() / 2),
                             99, 1.0f, stream.get()),
        "fill offload region");
  Check(stream.Synchronize(), "fill sync");
  std::vector<OffloadPageRef> refs;
  auto flush = [&] {
    if (refs.empty()) return;
    Check(kv.regions().MarkOffloadWritten(stream.get()), "MarkOffloadWritten");
    Unwrap(kv.client().Offload(refs), "Offload");
    refs.clear();
  };
  for (uint64_t seq : sequences) {
    for (int32_t l = 0; l < layers; ++l) {
      for (int64_t p = 0; p < context / kPageTokens; ++p) {
        refs.push_back({seq, uint32_t(l), uint32_t(p), refs.size() * block});
        if (refs.size() == per_call) flush();
      }
    }
  }
  flush();
}

// The GPU memory the worker has: --gpu_gib, or the device's.
double GpuBytes() {
  const int32_t cap = absl::GetFlag(FLAGS_gpu_gib);
  if (cap > 0) return double(cap) * (1 << 30);
  return double(Unwrap(kernels::GetDeviceMemory(), "device memory").total_bytes);
}

// Device bytes a decoder may still allocate (90%, for the CUDA context and cuBLAS).
double DecoderBytes(const gpu::GpuLlama& model) {
  const auto memory = Unwrap(kernels::GetDeviceMemory(), "device memory");
  double free = memory.free_bytes;
  if (absl::GetFlag(FLAGS_gpu_gib) > 0) {
    free = std::min(free, GpuBytes() - double(model.weight_bytes()));
  }
  return 0.9 * free;
}

// Bytes of KV cache (K and V of every token) of `layers` layers of a batch.
double KvBytes(const ModelConfig& c, int64_t context, int32_t batch, int32_t layers) {
  return double(batch) * context * layers * c.num_kv_heads * c.head_dim * 2 *
         sizeof(kernels::BFloat16);
}

// The layers a row runs with: what the store and the GPU hold, at most --max_layers.
int32_t LayersFor(int64_t context, int32_t batch, const gpu::GpuLlama& model,
                  GpuDecoderOptions probe) {
  const ModelConfig& config = model.config();
  const double per_layer = KvBytes(config, context, batch, 1);
  int32_t layers = std::min<int32_t>(absl::GetFlag(FLAGS_max_layers),
                                     (double(absl::GetFlag(FLAGS_store_gib)) * (1 << 30) * 0.95) /
                                         per_layer);
  const double room = DecoderBytes(model);
  for (; layers > 0; --layers) {
    probe.layers = layers;
    if (GpuDecoder::DeviceBytes(probe, config) < room) break;
  }
  return layers;
}

std::vector<Row> RunRow(gpu::GpuLlama& model, testing::KvServiceProcess& service,
                        int64_t context, int32_t batch, uint64_t first_sequence) {
  const ModelConfig& c = model.config();
  GpuDecoderOptions base;
  base.batch = batch;
  base.context = context;
  base.max_steps = absl::GetFlag(FLAGS_warmup) + absl::GetFlag(FLAGS_steps);
  base.tau = absl::GetFlag(FLAGS_tau);
  base.drift = absl::GetFlag(FLAGS_drift);
  base.graphs = absl::GetFlag(FLAGS_graphs);
  base.policy = GpuPolicy::kFreeKv;
  // Sized for the largest pool a row's policies use.
  GpuDecoderOptions probe = base;
  if (absl::StrContains(absl::GetFlag(FLAGS_policies), "-cache")) {
    probe.layout.cache = absl::GetFlag(FLAGS_resident_cache);
  }
  const int32_t layers = LayersFor(context, batch, model, probe);
  if (layers == 0) {
    std::fprintf(stderr, "context %ld batch %d: no layer fits; skipped\n", long(context), batch);
    return {};
  }
  base.layers = layers;
  for (int32_t b = 0; b < batch; ++b) base.sequence_ids.push_back(first_sequence + b);
  std::unique_ptr<CudaKvClient> kv;
  std::vector<Row> rows;
  for (absl::string_view label : absl::StrSplit(absl::GetFlag(FLAGS_policies), ',')) {
    absl::string_view name = label;
    GpuDecoderOptions options = base;
    // "freekv-norecall": freekv's work with the recalls left out (what they cost).
    // "blocking-hostwait": the decode thread waits for each recall on the host.
    // "...-cache": with a resident cache of --resident_cache slots.
    // "...-hostgate": the recall driver opens the gates from the host once a reply
    // arrived, instead of the kvservice's signal words (GpuDecoderOptions::signal_gates).
    if (absl::ConsumeSuffix(&name, "-cache")) {
      options.layout.cache = absl::GetFlag(FLAGS_resident_cache);
    }
    options.signal_gates = !absl::ConsumeSuffix(&name, "-hostgate");
    options.skip_recall = absl::ConsumeSuffix(&name, "-norecall");
    options.host_wait = absl::ConsumeSuffix(&name, "-hostwait");
    options.policy = Unwrap(gpu::ParseGpuPolicy(name), "policy");
    if (options.policy == GpuPolicy::kFull) {
      if (GpuDecoder::DeviceBytes(options, c) > DecoderBytes(model)) {
        std::fprintf(stderr, "context %ld batch %d: full does not fit; skipped\n",
                     long(context), batch);
        continue;
      }
    }
    if (gpu::NeedsSession(options) && kv == nullptr) {
      KvClientOptions ko;
      ko.target = service.target();
      ko.geometry = KvGeometry(c, kPageTokens, DType::kBFloat16);
      ko.geometry.num_layers = layers;
      ko.slot_bytes = GpuDecoder::SlotBytes(options, c);
      ko.offload_blocks = 2048;
      ko.client_name = "decode_step_bench";
      kv = Unwrap(CudaKvClient::Open(ko, 0), "CudaKvClient::Open");
      const absl::Time start = absl::Now();
      FillStore(*kv, base.sequence_ids, layers, context);
      std::fprintf(stderr, "context %ld batch %d: stored %d layers in %.1f s\n",
                   long(context), batch, layers, absl::ToDoubleSeconds(absl::Now() - start));
    }
    auto decoder = Unwrap(
        GpuDecoder::Create(model, options, gpu::NeedsSession(options) ? kv.get() : nullptr),
        "GpuDecoder::Create");
    Row row{context, batch, layers, std::string(label),
            Unwrap(decoder->Run(absl::GetFlag(FLAGS_warmup), absl::GetFlag(FLAGS_steps)),
                   "Run"),
            KvBytes(c, context, batch, layers)};
    std::fprintf(stderr, "context %ld batch %d %s: %.3f ms/step\n", long(context), batch,
                 row.policy.c_str(), row.stats.step_ms);
    rows.push_back(row);
  }
  if (kv != nullptr) {
    for (uint64_t seq : base.sequence_ids) Unwrap(kv->client().FreeSequence(seq), "Free");
  }
  return rows;
}

void PrintTable(const std::vector<Row>& rows) {
  // blocking/freekv compares the rows whose labels differ only there ("blocking-cache"
  // with "freekv-cache").
  std::map<std::pair<int64_t, int32_t>, double> oracle;
  std::map<std::tuple<int64_t, int32_t, std::string>, double> freekv;
  for (const Row& r : rows) {
    if (r.policy == "oracle") oracle[{r.context, r.batch}] = r.stats.step_ms;
    absl::string_view rest = r.policy;
    if (absl::ConsumePrefix(&rest, "freekv")) {
      freekv[{r.context, r.batch, std::string(rest)}] = r.stats.step_ms;
    }
  }
  std::printf(
      "\n| context | batch | layers | policy | step ms | ms/layer | vs oracle | "
      "blocking/freekv | stall | recall host | blocks/step | reply ms | corrected | "
      "correction reply ms (service) | wall ms | KV GiB | KV / GPU | tok/s | decode host |\n| ---: | "
      "---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
      "| ---: | ---: | ---: | ---: | ---: |\n");
  const double gpu_bytes = GpuBytes();
  for (const Row& r : rows) {
    const auto key = std::make_pair(r.context, r.batch);
    const gpu::GpuStepStats& s = r.stats;
    const std::string vs_oracle =
        oracle.count(key) ? absl::StrFormat("%.2f", s.step_ms / oracle[key]) : "-";
    absl::string_view rest = r.policy;
    std::string over_freekv = "-";
    if (absl::ConsumePrefix(&rest, "blocking")) {
      const auto pair = std::make_tuple(r.context, r.batch, std::string(rest));
      if (freekv.count(pair)) over_freekv = absl::StrFormat("%.2f", s.step_ms / freekv[pair]);
    }
    const bool recalls = absl::StartsWith(r.policy, "freekv") ||
                         absl::StartsWith(r.policy, "blocking");
    // Only a freekv row that recalls counts its corrections (the driver does).
    const bool corrects =
        absl::StartsWith(r.policy, "freekv") && !absl::StrContains(r.policy, "-norecall");
    std::printf("| %ldK | %d | %d | %s | %.3f | %.3f | %s | %s | %s | %s | %s | %s | %s | %s "
                "| %.3f | %.1f | %.2f | %.0f | %.1f%% |\n",
                long(r.context / 1024), r.batch, r.layers, r.policy.c_str(), s.step_ms,
                s.step_ms / r.layers, vs_oracle.c_str(), over_freekv.c_str(),
                recalls ? absl::StrFormat("%.1f%%", 100 * s.stall_ms / s.step_ms).c_str() : "-",
                recalls ? absl::StrFormat("%.1f%%", 100 * s.recall_host_ms / s.step_ms).c_str()
                        : "-",
                recalls ? absl::StrFormat("%.0f", s.slices_per_step).c_str() : "-",
                recalls ? absl::StrFormat("%.3f", s.reply_ms).c_str() : "-",
                corrects ? absl::StrFormat("%.1f%%", 100 * s.corrected).c_str() : "-",
                corrects && s.correction_reply_ms > 0
                    ? absl::StrFormat("%.3f (%.3f)", s.correction_reply_ms,
                                      s.correction_service_ms)
                          .c_str()
                    : "-",
                s.wall_ms, r.kv_bytes / (1 << 30), r.kv_bytes / gpu_bytes,
                1e3 * r.batch / s.step_ms, 100 * s.enqueue_ms / s.step_ms);
  }
}

int Main() {
  // FillStore stores the context's pages only, and the synthetic decode offloads none
  // of the pages it appends: once one leaves the window it is a candidate that no
  // recall could find.
  const int64_t step_limit = int64_t{gpu::ResidentLayout{}.window} * kPageTokens;
  if (absl::GetFlag(FLAGS_warmup) + absl::GetFlag(FLAGS_steps) > step_limit) {
    std::fprintf(stderr,
                 "--warmup + --steps is %d, over %ld: after that many steps the pages this "
                 "benchmark appends (it stores none) leave the window and are selected; "
                 "run fewer steps\n",
                 absl::GetFlag(FLAGS_warmup) + absl::GetFlag(FLAGS_steps), long(step_limit));
    return 2;
  }
  const auto info = Unwrap(kernels::GetDeviceInfo(), "GetDeviceInfo");
  const std::vector<int64_t> contexts = Ints(absl::GetFlag(FLAGS_contexts));
  const std::vector<int64_t> batches = Ints(absl::GetFlag(FLAGS_batches));
  ModelConfig config = Llama31_8BConfig();
  config.vocab_size = 1024;  // the classifier is not timed (see the top of this file)
  config.num_layers = absl::GetFlag(FLAGS_max_layers);
  RandomWeightsOptions wo;
  wo.distinct_layers = 1;
  const absl::Time start = absl::Now();
  const ModelWeights weights = Unwrap(RandomModelWeights(config, wo), "weights");
  auto model = Unwrap(
      gpu::GpuLlama::Create(weights, *std::max_element(batches.begin(), batches.end())),
      "GpuLlama::Create");
  std::fprintf(stderr, "model: %d layers, %.1f GiB of bf16 weights on %s in %.1f s\n",
               config.num_layers, model->weight_bytes() / double(1 << 30), info.name.c_str(),
               absl::ToDoubleSeconds(absl::Now() - start));
  // Under an MPS memory limit the device reports the limit as its total.
  const auto memory = Unwrap(kernels::GetDeviceMemory(), "device memory");
  std::fprintf(stderr, "device memory as this process sees it: %.1f GiB total, %.1f free\n",
               memory.total_bytes / double(1 << 30), memory.free_bytes / double(1 << 30));
  std::vector<std::string> service_flags = {
      absl::StrFormat("--capacity=%dG", absl::GetFlag(FLAGS_store_gib) + 1),
      "--chunk_bytes=1G", "--pin_store=true", "--max_request_blocks=1000000"};
  for (absl::string_view f : absl::StrSplit(absl::GetFlag(FLAGS_service_flags), ' ',
                                            absl::SkipEmpty())) {
    service_flags.emplace_back(f);
  }
  auto service = Unwrap(testing::KvServiceProcess::Start(service_flags), "kvservice");
  std::vector<Row> rows;
  uint64_t sequence = 1;
  for (int64_t context : contexts) {
    for (int64_t batch : batches) {
      for (Row& r : RunRow(*model, *service, context, batch, sequence)) rows.push_back(r);
      sequence += batch;
    }
  }
  std::printf("\nDecode step on %s, Llama-3.1-8B geometry (random bf16 weights), page 32, "
              "budget 16+32+16 pages, tau %.2f, drift %.3f, median of %d steps%s; GPU "
              "memory for the worker %.1f GiB%s.\n",
              info.name.c_str(), absl::GetFlag(FLAGS_tau), absl::GetFlag(FLAGS_drift),
              absl::GetFlag(FLAGS_steps),
              absl::GetFlag(FLAGS_graphs) ? ", dense parts as CUDA graphs" : "",
              GpuBytes() / (1 << 30),
              absl::GetFlag(FLAGS_gpu_gib) > 0 ? " (--gpu_gib)" : " (the device's)");
  PrintTable(rows);
  return 0;
}

}  // namespace
}  // namespace freekv

int main(int argc, char** argv) {
  freekv::gpu::RequireEagerLoading();  // before any CUDA call: the gates need it
  absl::ParseCommandLine(argc, argv);
  return freekv::Main();
}
