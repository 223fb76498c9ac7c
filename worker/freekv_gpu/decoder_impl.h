// GpuDecoder's state and the enqueueing of its steps. Internal to worker/freekv_gpu:
// gpu_decoder.cc sets it up and reports, decoder_step.cc enqueues. One thread.
//
// A step's GPU work reads everything that changes from step to step (positions,
// tables, the step number the gates compare with, the input's seed) from one device
// buffer uploaded before it, so the work of a step is captured once as a CUDA graph
// and replayed until the step's sizes change (a new page). The priming step of freekv
// (a blocking step), steps that wait on the host, and runs with graphs off are enqueued
// directly.
#ifndef FREEKV_WORKER_FREEKV_GPU_DECODER_IMPL_H_
#define FREEKV_WORKER_FREEKV_GPU_DECODER_IMPL_H_

#include <array>
#include <functional>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "kernels/cuda_util.h"
#include "worker/freekv_gpu/generation.h"
#include "worker/freekv_gpu/gpu_decoder.h"
#include "worker/freekv_gpu/layer_state.h"
#include "worker/freekv_gpu/page_plan.h"
#include "worker/freekv_gpu/recall_driver.h"
#include "worker/freekv_gpu/step_inputs.h"

namespace freekv::gpu {

// *to = the value of `from`, or its error.
template <typename T>
absl::Status Assign(absl::StatusOr<T> from, T* to) {
  if (!from.ok()) return from.status();
  *to = *std::move(from);
  return absl::OkStatus();
}
// to->emplace(the value of `from`), or its error (for members that start empty).
template <typename T>
absl::Status Emplace(absl::StatusOr<T> from, std::optional<T>* to) {
  if (!from.ok()) return from.status();
  to->emplace(*std::move(from));
  return absl::OkStatus();
}

StateShape ShapeOf(const GpuDecoderOptions& o, const ModelConfig& c);

struct GpuDecoder::Impl {
  // Pinned buffers the step inputs rotate through while earlier copies may be pending.
  static constexpr int kInputRing = 3;

  // Checks the options against the model and the session, then allocates (Init).
  static absl::StatusOr<std::unique_ptr<Impl>> Create(GpuLlama& model,
                                                      const GpuDecoderOptions& options,
                                                      CudaKvClient* kv);

  GpuLlama* model = nullptr;
  GpuDecoderOptions options;
  StateShape shape;
  CudaKvClient* kv = nullptr;
  std::vector<kernels::CudaStream> stream_holder;  // the decode stream (one)
  cudaStream_t stream = nullptr;
  std::vector<LayerState> layers;
  std::unique_ptr<RecallDriver> driver;
  // freekv with a session: the stream its speculative applies run on, beside the
  // decode stream (ForkSpeculation), and the events that fork it at a step's start and
  // join each layer's apply before that layer selects.
  std::optional<kernels::CudaStream> spec_stream;
  std::optional<kernels::CudaEvent> spec_fork;
  std::vector<kernels::CudaEvent> spec_join;  // [layer]
  // freekv: the stream that selects the speculation's heads of a layer beside the
  // layer's attention, and the events that fork it after the correction point and join
  // it at the layer's end (the next layer rewrites q and the score buffers it reads).
  std::optional<kernels::CudaStream> select_stream;
  std::optional<kernels::CudaEvent> select_fork, select_join;
  // How long the host waits for the GPU to reach a point of the decode before it calls
  // the decode stalled (a step takes milliseconds; a hung recall never ends). Shorter
  // than the recall driver's own limits, so that the report shows the stall as it is.
  static constexpr absl::Duration kStallLimit = absl::Seconds(20);

  // Shared scratch, in stream order; `inputs` holds the current StepInputs.
  kernels::DeviceBuffer scores, group_scores, selected, workspace, inputs, base;
  // freekv: each layer's head masks ([layer][flagged, unflagged][lists]: the flags of
  // its latest correction point, which the applies of its recalls read until the next
  // one) and the correction point's tally, zero between launches (PublishCorrectionCuda).
  kernels::DeviceBuffer head_masks, correction_tally;
  // Gates (resident_ops.h), pinned: [layer][speculation, correction], then the abort
  // word a stall report sets. `observed`, on the device: the word each hold passed on.
  kernels::PinnedBuffer gates;
  kernels::DeviceBuffer observed;
  kernels::DeviceBuffer zero;       // an int32 0 (a flag count that opens a gate)
  kernels::DeviceBuffer waited_ns;  // time the stream spent at gates (WaitGate)
  std::vector<kernels::PinnedBuffer> staged_inputs;  // kInputRing of them
  std::vector<kernels::CudaEvent> step_end;          // one per step run, timing
  std::vector<kernels::CudaEvent> drained;           // WaitForStream's (one)
  std::optional<kernels::CudaGraph> step_graph;      // the step, captured
  std::optional<StepInputs> graph_shape;             // what they were captured for
  int32_t steps_run = 0;
  int32_t steps_enqueued = 0;  // Step() calls that recorded their step_end event
  double enqueue_seconds = 0;
  // freekv: (layer, sequence, KV head) similarity checks enqueued (steps that select,
  // the priming step aside): the denominator of the correction rate.
  uint64_t checked_heads = 0;
  // Real decoding only (options.real(), generation.cc).
  std::unique_ptr<Generation> generation;

  int32_t L() const { return options.layers; }
  uint32_t* gate(int layer, bool correction) const {
    return gates.span<uint32_t>().data() + 2 * layer + (correction ? 1 : 0);
  }
  uint32_t* abort_word() const { return gates.span<uint32_t>().data() + 2 * L(); }
  // The kvservice's signal words (CudaRegions::signals, device memory), in the gates'
  // layout; null without a session or with options.signal_gates off.
  uint32_t* signals = nullptr;
  const uint32_t* signal_word(int layer, bool correction) const {
    return signals == nullptr ? nullptr : signals + 2 * layer + (correction ? 1 : 0);
  }
  // Without the kvservice's words, the decoder's own, in the same layout: the words the
  // GPU opens its gates with when it opens them itself, so that a hold on such a gate
  // reads device memory rather than the pinned word (GateHold::signal).
  kernels::DeviceBuffer own_signals;
  // The device word of a gate: the kvservice's signal word, or the decoder's own.
  uint32_t* device_word(int layer, bool correction) const {
    uint32_t* words = signals != nullptr ? signals : own_signals.span<uint32_t>().data();
    return words + 2 * layer + (correction ? 1 : 0);
  }
  uint32_t* observed_word(int layer, bool correction) const {
    return observed.span<uint32_t>().data() + 2 * layer + (correction ? 1 : 0);
  }
  // The layer's two staging slots, as this batch fills them.
  std::array<absl::Span<const BFloat16>, 2> Slots(int layer) const;
  const int32_t* step_number(const StepInputs& in) const {
    return inputs.span<int32_t>().data() + in.step_at();
  }
  absl::Status Init();
  ~Impl();
  // Waits (at most kStallLimit) until the stream has run everything enqueued so far,
  // or until `event` has; Stalled(what) past that.
  absl::Status WaitForStream(absl::string_view what);
  absl::Status WaitForEvent(const kernels::CudaEvent& event, absl::string_view what);
  // DEADLINE_EXCEEDED naming `what` and where the recall machinery stands (each
  // layer's gates and diff stamp, the driver's and the offloader's queues), also
  // logged. Sets the abort word, so every hold passes and the stream drains before the
  // decoder is freed.
  absl::Status Stalled(absl::string_view what);
  // Enqueues decode step t; real decoding also picks the next tokens and keeps the
  // pages that fill (generation.cc).
  absl::Status Step(int32_t t);
  // The pool the step's tables and the host's page plans (page_plan.h) are over.
  PagePlanShape PlanShape() const;
  // The shape of step t (its position is the context, or each prompt's length, plus t).
  StepShape ShapeAt(int32_t t) const;
  // The GPU work of a step, calling after_layer(l) once layer l is enqueued (graph
  // capture passes a no-op), or of one layer; `prime` for freekv's first step.
  absl::Status EnqueueStep(const StepInputs& in, bool prime,
                           const std::function<absl::Status(int)>& after_layer);
  absl::Status EnqueueLayer(bool prime, int layer, const StepInputs& in);
  // What the recall driver must do for (step, layer), in the order the GPU waits;
  // nothing when the step has no candidate to select.
  void PushLayerItems(int32_t t, int layer, bool selects);
  // Scores and selects the pages of every head (or of the heads `mask` sets: their
  // rows of the outputs alone are written), on `on`; with `diff`, also what the
  // resident set lacks (the diff's pinned block and its device copy, DiffSet).
  absl::Status Select(int layer, const StepInputs& in, const DiffSet* diff,
                      absl::Span<const uint8_t> mask, cudaStream_t on);
  // The layer's head masks, flagged then unflagged (CorrectionCheck::masks).
  absl::Span<uint8_t> MasksOf(int layer) const {
    return head_masks.span<uint8_t>().subspan(2 * size_t(layer) * shape.lists(),
                                              2 * size_t(shape.lists()));
  }
  absl::Span<const uint8_t> HeadMaskOf(int layer, bool flagged) const {
    return MasksOf(layer).subspan(flagged ? 0 : shape.lists(), shape.lists());
  }
  absl::Status Attend(int layer, const StepInputs& in);
  // A resident cache (layout.cache > 0) under a recall policy: each selection names the
  // slots its pages will be in (LayerState::attend), and TakeAttendSlots writes the
  // layer's into the step's page table on the decode stream, before its attention.
  bool Caches() const { return options.layout.cache > 0 && Recalls(options.policy); }
  absl::Status TakeAttendSlots(int layer, const StepInputs& in);
  // Applies the recall the gate of (layer, correction) published for step `in`, to
  // the heads `heads` covers (nothing when it published none).
  absl::Status ApplyPublished(int layer, const StepInputs& in, bool correction,
                              const HeadMask& heads, cudaStream_t on);
  // freekv: at the start of a step, forks spec_stream off the decode stream and
  // enqueues there, per layer, a hold at its speculation gate, the apply of what the
  // gate published, and the layer's join event. The hold waits only for the host
  // (which opens the gate after the last step's selection, enqueued earlier), so it
  // can share a queue with anything; the decode stream waits for the join right before
  // the layer's correction point (which then selects), and the apply runs beside the
  // layer's earlier work.
  absl::Status ForkSpeculation(const StepInputs& in);
  // The real oracle: the selection's pages into the step's page table (over_full).
  absl::Status WriteSelectedPages(const StepInputs& in);
  // The spec (or correction) gate of a layer, as step `in` waits for it; the hold
  // keeps the word it passed on for ApplyPublished.
  GateHold HoldAt(const StepInputs& in, int layer, bool correction) const;

  // Real decoding (generation.cc, generation_step.cc).
  // `first_forced`: per sequence the token fed to decode step 0, or -1 (the argmax).
  absl::Status InitGeneration(absl::Span<const int32_t> first_forced);
  // Prefills sequence b (the model's rows are its prompt's tokens, chunk by chunk),
  // places its pages where the policy keeps them and picks its first token.
  absl::Status Prefill(int32_t b, absl::Span<const int32_t> prompt);
  absl::Status PlacePrefill(int32_t b, int64_t tokens);
  // Layer `layer`'s part of the prefill K and V, as a pool of pages.
  kernels::PagedKv<BFloat16> PrefillView(int layer) const;
  // After every prefill: the slots' residency, the first tokens.
  absl::Status StartDecode();
  // Before step t: promotions into slots (after the pages leaving the window are
  // stored); after it: the next tokens, and the filled pages kept. `device_jobs` is
  // the uploaded copy of jobs.flat().
  absl::Status BeforeRealStep(int32_t t, const StepJobs& jobs,
                              absl::Span<const int32_t> device_jobs);
  absl::Status AfterRealStep(int32_t t, const StepInputs& in, const StepJobs& jobs,
                             absl::Span<const int32_t> device_jobs);
  // Digests (sparse) and offloads (recalls) of `pages` of every layer; the lists are
  // device memory. Offloads go through the offloader and are recorded per page.
  absl::Status KeepPages(const std::vector<const kernels::PagedKv<BFloat16>*>& views,
                         absl::Span<const int32_t> pool_pages, absl::Span<const int32_t> seqs,
                         absl::Span<const int32_t> logical,
                         const std::vector<std::pair<int32_t, int64_t>>& pages);
  // Copies `host` into `uploads` on the stream (after waiting for the stream).
  absl::StatusOr<absl::Span<const int32_t>> Upload(absl::Span<const int32_t> host);
};

}  // namespace freekv::gpu

#endif  // FREEKV_WORKER_FREEKV_GPU_DECODER_IMPL_H_
