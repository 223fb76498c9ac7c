// DecodeBackend: one model on one device under one decode policy, as the worker CLI
// and the evaluation drive it. It decodes a DecodeRequest (decode_request.h) with a
// LogitsSink, reports its statistics in device-neutral form, and frees finished
// sequences. Implementations:
//   cpu_backend.h  the CPU Transformer under a PolicyBundle (fp32; every policy,
//                  and any other AttentionPolicy, e.g. the evaluation's exact ceiling);
//   gpu_backend.h  freekv_gpu's GpuGenerator over a GpuLlama (bf16), recalling through
//                  a CUDA IPC session with the kvservice (built with --config=cuda).
// backend_factory.h picks one by Device.
//
// One thread at a time calls a backend. Distinct backends may run on distinct threads.
#ifndef FREEKV_WORKER_DECODE_BACKEND_H_
#define FREEKV_WORKER_DECODE_BACKEND_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "worker/decode_request.h"
#include "worker/policy_kind.h"
#include "worker/retrieval_config.h"

namespace freekv {

enum class Device { kCpu, kGpu };

// "cpu" or "gpu"; INVALID_ARGUMENT naming the value otherwise.
absl::StatusOr<Device> ParseDevice(absl::string_view name);
const char* DeviceName(Device device);

// A rate with the counts behind it, so that rates pool over runs by adding counts.
struct Tally {
  uint64_t count = 0;    // events: corrections, speculation hits
  uint64_t chances = 0;  // checks, pages needed

  void Add(const Tally& other) {
    count += other.count;
    chances += other.chances;
  }
  // nullopt when there was no chance (JSON null, "-" in tables).
  std::optional<double> rate() const;
};

// What a backend's decodes did, cumulative since it was created. A figure a device
// does not measure stays at its empty value: a zero Tally (rate nullopt) or nullopt.
struct BackendStats {
  Device device = Device::kCpu;
  // Wall time of Decode: up to the prefill's logits, and the decode steps after them.
  double prefill_seconds = 0;
  double decode_seconds = 0;
  uint64_t decode_steps = 0;  // single-token passes of the retrieval policies
  uint64_t recall_requests = 0;
  uint64_t pages_recalled = 0;  // (page, KV head) slices brought back from the kvservice
  double stall_seconds = 0;     // waiting for recalls to land
  // (sequence, KV head group) similarity checks that fell below tau (freekv, oracle).
  Tally corrections;
  // Slices attention read at step t+1 that the speculative recall had brought
  // (decode_stats.h). The CPU counts them; the GPU does not.
  Tally speculation_hits;
  // Corrections per layer: the CPU's (empty for full); nullopt on the GPU.
  std::optional<std::vector<Tally>> layer_corrections;
  // Pages offloaded to the kvservice: the GPU's count; nullopt on the CPU.
  std::optional<uint64_t> offloaded_pages;
  // Human-readable lines for the CLI; empty when the policy has nothing to report.
  std::string text;

  double pages_recalled_per_step() const {
    return decode_steps == 0 ? 0.0 : static_cast<double>(pages_recalled) / decode_steps;
  }
};

// What to build: the policy and its budget. freekv and blocking keep pages in the
// kvservice at `target`.
struct BackendOptions {
  PolicyKind policy = PolicyKind::kFull;
  // Budget and tau of the retrieval policies (page_tokens sizes full's pages too);
  // max_sequences is the most prompts one Decode may carry.
  RetrievalConfig config;
  std::string target;  // the kvservice's gRPC target, "unix:PATH"
  std::string client_name = "freekv-worker";
};

class DecodeBackend {
 public:
  virtual ~DecodeBackend() = default;

  virtual Device device() const = 0;

  // Decodes the request and returns the token of every step, [sequence][step]: the
  // argmax, as DecodeBatch (decode_loop.h) does; `sink` gets each step's logits row of
  // each sequence in step order. Errors: CheckDecodeRequest's, INVALID_ARGUMENT for a
  // request the backend was not sized for, model, policy, kvservice and sink errors.
  virtual absl::StatusOr<std::vector<std::vector<int32_t>>> Decode(
      const DecodeRequest& request, const LogitsSink& sink = {}) = 0;

  // Forgets a finished sequence and frees its pages, in the kvservice too. The GPU
  // frees a request's sequences when its Decode returns, so there this is a no-op.
  virtual absl::Status Release(int64_t sequence) = 0;

  virtual BackendStats stats() const = 0;
};

}  // namespace freekv

#endif  // FREEKV_WORKER_DECODE_BACKEND_H_
