// GpuGenerator: the worker's model on the GPU with real prompts and real weights. It
// decodes a DecodeRequest (worker/decode_request.h) exactly as the CPU loop does (one
// prefill per prompt, then single-token decode passes, greedy or teacher-forced) under
// one of GpuDecoder's policies, with real K and V:
//   prefill   each prompt in chunks through the GpuLlama with causal attention
//             (kernels/attention.h); its pages go where the policy keeps them: every
//             page on the GPU (full, oracle), or the sink and window pages on the GPU
//             and every page after the sinks offloaded to the kvservice as HND blocks
//             with its digest computed from the real keys (freekv, blocking);
//   decode    GpuDecoder's step (select, correct, recall, attend) with each sequence
//             at its own position; the next token is picked on the GPU (argmax, or
//             the forced token), so steps run back to back with no host round trip;
//             pages that fill during decode are digested and offloaded by a
//             background thread well before they leave the window.
// Sparse policies keep every page of a sequence that fits in the budget (sink +
// selected + window pages): until then they attend to all of them, as the CPU
// policies do.
//
// Borrows the model and the session (which must outlive it); one thread calls it.
#ifndef FREEKV_WORKER_FREEKV_GPU_GPU_GENERATOR_H_
#define FREEKV_WORKER_FREEKV_GPU_GPU_GENERATOR_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "client/cuda_kv_client.h"
#include "worker/decode_request.h"
#include "worker/freekv_gpu/gpu_decoder.h"
#include "worker/gpu/gpu_llama.h"

namespace freekv::gpu {

struct GpuGenerateOptions {
  GpuPolicy policy = GpuPolicy::kFreeKv;
  int32_t page_tokens = 8;
  ResidentLayout layout{1, 5, 2};  // sink, selected, window pages (the CPU defaults)
  float tau = 0.8f;                // correction threshold (freekv)
  bool graphs = true;              // replay steps as CUDA graphs
  int32_t prefill_chunk = 256;     // prompt tokens per prefill pass (<= max_batch rows)
};

// What the last Decode did (recall policies; zeros otherwise).
struct GpuGenerateStats {
  int32_t decode_steps = 0;
  double decode_seconds = 0;   // host wall time of the decode steps
  double stall_seconds = 0;    // the stream waiting at recall gates
  uint64_t recalls = 0;
  uint64_t slices = 0;         // (page, head) blocks recalled
  uint64_t offloaded_pages = 0;
  // freekv: the (step, layer, sequence, KV head) similarity checks made (steps with
  // candidates to select, after the priming step) and those that flagged the head.
  uint64_t checked_heads = 0;
  uint64_t flagged_heads = 0;

  double correction_rate() const {
    return checked_heads == 0 ? 0.0 : double(flagged_heads) / checked_heads;
  }
};

class GpuGenerator {
 public:
  // `kv` is required for freekv and blocking: a CUDA IPC session whose geometry has
  // options.page_tokens and the model's layers and heads, with slots of at least
  // SlotBytes(options, config, max_batch) and an offload region of at least
  // OffloadBytes(options, config); null otherwise. INVALID_ARGUMENT for options the
  // model or the session cannot serve.
  static absl::StatusOr<std::unique_ptr<GpuGenerator>> Create(
      GpuLlama& model, const GpuGenerateOptions& options, CudaKvClient* kv);
  static uint64_t SlotBytes(const GpuGenerateOptions& options, const ModelConfig& config,
                            int32_t max_batch);
  static uint64_t OffloadBytes(const GpuGenerateOptions& options, const ModelConfig& config);
  ~GpuGenerator();

  // Decodes the request (at most model.max_batch() prompts) and returns the token of
  // every step, [sequence][step], as DecodeBatch does; `sink` gets each step's logits
  // (then each step waits for the GPU: for evaluation, not for speed). The request's
  // sequences are freed in the kvservice when it returns. Errors: CheckDecodeRequest's,
  // INVALID_ARGUMENT for a batch over max_batch or a token outside the vocabulary, the
  // session's (UNAVAILABLE when the kvservice went away), CUDA errors as INTERNAL.
  absl::StatusOr<std::vector<std::vector<int32_t>>> Decode(const DecodeRequest& request,
                                                           const LogitsSink& sink = {});
  const GpuGenerateStats& stats() const { return stats_; }

 private:
  GpuGenerator(GpuLlama& model, const GpuGenerateOptions& options, CudaKvClient* kv)
      : model_(model), options_(options), kv_(kv) {}

  GpuLlama& model_;
  const GpuGenerateOptions options_;
  CudaKvClient* const kv_;
  GpuGenerateStats stats_;
};

}  // namespace freekv::gpu

#endif  // FREEKV_WORKER_FREEKV_GPU_GPU_GENERATOR_H_
