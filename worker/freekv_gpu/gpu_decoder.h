// GpuDecoder: decode steps of a GpuLlama batch under one KV policy, all on the GPU:
//   full      dense attention over every page of a GPU-resident cache;
//   oracle    per KV head, select the top pages with the current query and attend to
//             sink + selected + window as if the selected pages were resident (the
//             compute of sparse attention with recall for free: the floor);
//   freekv    FreeKV: each layer selects once per step, with q_t, once the pages
//             recalled for it at step t-1 have landed. Heads whose query moved
//             (cos(q_t, q_{t-1}) < tau) have their part of that diff recalled at once
//             and waited for before attention (correction); the other heads' part is
//             recalled while the step goes on and serves step t+1 (speculation: both
//             would select with q_t, so one selection serves both);
//   blocking  select with the current query, recall the missing pages, wait, attend
//             (ArkVale-style retrieval; the same recall path as freekv).
// Recalls go through a CUDA IPC session (CudaKvClient) and a RecallDriver; the decode
// thread enqueues a whole step without waiting for the GPU, and the stream waits for
// recalls at gates (resident_ops.h). The KV cache content and the page digests are
// random (the benchmark's inputs); the decode input drifts slowly from a random base,
// so that adjacent queries are similar as in a trained model (options.drift).
//
// Owns the per-layer device state, the streams, the events and the driver. Borrows
// the model and the session, which must outlive it. One thread drives it.
#ifndef FREEKV_WORKER_FREEKV_GPU_GPU_DECODER_H_
#define FREEKV_WORKER_FREEKV_GPU_GPU_DECODER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "client/cuda_kv_client.h"
#include "worker/freekv_gpu/resident_ops.h"
#include "worker/gpu/gpu_llama.h"

namespace freekv::gpu {

// Tokens per page: FreeKV's (and the kvservice sessions' the decoder opens).
constexpr int32_t kPageTokens = 32;

enum class GpuPolicy { kFull, kOracle, kFreeKv, kBlocking };
absl::StatusOr<GpuPolicy> ParseGpuPolicy(absl::string_view name);
std::string GpuPolicyName(GpuPolicy policy);
inline bool Recalls(GpuPolicy p) { return p == GpuPolicy::kFreeKv || p == GpuPolicy::kBlocking; }
struct GpuDecoderOptions;
bool NeedsSession(const GpuDecoderOptions& options);

struct GpuDecoderOptions {
  GpuPolicy policy = GpuPolicy::kFreeKv;
  int32_t batch = 1;
  int32_t layers = 1;           // the model's first `layers` layers
  int64_t context = 0;          // tokens before the first decode step
  int32_t max_steps = 64;       // sizes the digest tables and the full pool
  // 16 sink + 32 selected + 16 window pages; layout.cache > 0 (freekv and blocking)
  // keeps that many more pages per head resident.
  ResidentLayout layout;
  float tau = 0.8f;             // correction threshold
  float drift = 0.05f;          // step-to-step change of the decode input
  bool graphs = true;           // replay each layer's dense parts as CUDA graphs
  // freekv/blocking for measuring only: every step's work but no recall (the stream
  // opens its own gates), to separate the policy's compute from its recalls.
  bool skip_recall = false;
  // blocking only: the decode thread waits on the host for each layer's recall (the
  // GPU idles meanwhile) instead of leaving the wait to a gate on the stream.
  bool host_wait = false;
  // With a session: the kvservice opens a recall's gate itself, writing a signal word
  // right behind the bytes on its copy stream (RecallOptions::Signal), and no host
  // thread stands between the copies and the decode stream. False: the recall driver
  // opens the gate from the host once the reply arrived (for comparison).
  bool signal_gates = true;
  std::vector<uint64_t> sequence_ids;  // one per batch row (freekv, blocking)
  int32_t page_tokens = kPageTokens;
  // Real decoding (GpuGenerator, gpu_generator.h): each row's prompt length, the
  // position of its first decode step; the input is the tokens the previous step
  // picked, and the oracle attends over every page kept on the GPU. Empty for the
  // benchmark: every row at `context`, random K, V and digests, a drifting input.
  std::vector<int64_t> prompt_lengths;

  bool real() const { return !prompt_lengths.empty(); }
};

struct GpuStepStats {
  double step_ms = 0;          // median GPU time between the ends of adjacent steps
  double wall_ms = 0;          // host wall time per step over the timed steps
  double stall_ms = 0;         // mean per step: the stream waiting at recall gates
  double enqueue_ms = 0;       // decode thread's time per step to enqueue it
  double recall_host_ms = 0;   // per step: building, sending and applying recalls
  double slices_per_step = 0;  // 16 KiB (page, head) blocks recalled per step
  double reply_ms = 0;         // mean per recall: request sent -> reply read
  double correction_reply_ms = 0;  // the same, over freekv's corrections only (urgent)
  double correction_service_ms = 0;  // of which the kvservice's own (arrival to last byte)
  double corrected = 0;        // share of (layer, sequence, KV head) corrected
};

inline bool NeedsSession(const GpuDecoderOptions& o) {
  return Recalls(o.policy) && !o.skip_recall;
}

class GpuDecoder {
 public:
  // `kv` is required for freekv and blocking: a CUDA IPC session of `layers` layers
  // whose slots hold SlotBytes(options) and whose store holds pages [0, context / page)
  // of every (sequence, layer); null otherwise.
  static absl::StatusOr<std::unique_ptr<GpuDecoder>> Create(GpuLlama& model,
                                                            const GpuDecoderOptions& options,
                                                            CudaKvClient* kv);
  // Staging slot bytes a session needs: one 16 KiB slice place per (sequence, head,
  // selected page).
  static uint64_t SlotBytes(const GpuDecoderOptions& options, const ModelConfig& config);
  // Device bytes Create will allocate beyond the model (to check it fits first).
  static uint64_t DeviceBytes(const GpuDecoderOptions& options, const ModelConfig& config);
  ~GpuDecoder();

  // Decodes warmup + steps steps (at most max_steps in the decoder's life) and times
  // the last `steps`.
  absl::StatusOr<GpuStepStats> Run(int32_t warmup, int32_t steps);

  // Host copies of one layer's resident set after the last Run: for each (sequence,
  // KV head, selected slot) the logical page it holds (-1: empty), and the NHD pool
  // (K and V interleaved per page, as `pool` describes with host pointers into
  // `pool_data`). For tests; synchronises. Sparse policies only.
  struct ResidentSnapshot {
    std::vector<int32_t> resident;
    std::vector<BFloat16> pool_data;
    kernels::PagedKv<BFloat16> pool;
  };
  absl::StatusOr<ResidentSnapshot> Snapshot(int layer) const;

  // The state and the step machinery (decoder_impl.h), internal to worker/freekv_gpu:
  // GpuGenerator drives one directly for real decoding.
  struct Impl;

 private:
  explicit GpuDecoder(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace freekv::gpu

#endif  // FREEKV_WORKER_FREEKV_GPU_GPU_DECODER_H_
