// GpuDecoder's state and the enqueueing of its steps. Internal to worker/freekv_gpu:
// gpu_decoder.cc sets it up and reports, decoder_step.cc enqueues. One thread.
//
// A step's GPU work reads everything that changes from step to step (positions,
// tables, the step number the gates compare with, the input's seed) from one device
// buffer uploaded before it, so the work of a step is captured once as a CUDA graph
// and replayed until the step's sizes change (a new page). The priming step of freekv (a blocking step), steps that wait
// on the host, and runs with graphs off are enqueued directly.
#ifndef FREEKV_WORKER_FREEKV_GPU_DECODER_IMPL_H_
#define FREEKV_WORKER_FREEKV_GPU_DECODER_IMPL_H_

#include <functional>
#include <memory>
#include <optional>
#include <vector>

#include "kernels/cuda_util.h"
#include "worker/freekv_gpu/gpu_decoder.h"
#include "worker/freekv_gpu/layer_state.h"
#include "worker/freekv_gpu/recall_driver.h"
#include "worker/freekv_gpu/step_inputs.h"

namespace freekv::gpu {

StateShape ShapeOf(const GpuDecoderOptions& o, const ModelConfig& c);

struct GpuDecoder::Impl {
  // Pinned buffers the step inputs rotate through while earlier copies may be pending.
  static constexpr int kInputRing = 3;

  GpuLlama* model = nullptr;
  GpuDecoderOptions options;
  StateShape shape;
  CudaKvClient* kv = nullptr;
  std::vector<kernels::CudaStream> stream_holder;  // the decode stream (one)
  cudaStream_t stream = nullptr;
  std::vector<LayerState> layers;
  std::unique_ptr<RecallDriver> driver;
  // Shared scratch, in stream order; `inputs` holds the current StepInputs.
  kernels::DeviceBuffer scores, group_scores, selected, workspace, inputs, base, gates;
  kernels::DeviceBuffer zero;       // an int32 0 (a flag count that opens a gate)
  kernels::DeviceBuffer waited_ns;  // time the stream spent at gates (WaitGate)
  std::vector<kernels::PinnedBuffer> staged_inputs;  // kInputRing of them
  std::vector<kernels::CudaEvent> step_end;          // one per step run, timing
  std::optional<kernels::CudaGraph> step_graph;      // the step, captured
  std::optional<StepInputs> graph_shape;             // what they were captured for
  int32_t steps_run = 0;
  double enqueue_seconds = 0;

  int32_t L() const { return options.layers; }
  uint32_t* gate(int layer, bool correction) const {
    return gates.span<uint32_t>().data() + 2 * layer + (correction ? 1 : 0);
  }
  const int32_t* step_number(const StepInputs& in) const {
    return inputs.span<int32_t>().data() + in.step_at();
  }
  absl::Status Init();
  absl::Status Step(int32_t t);
  // The shape of step t (its position is the context plus t).
  StepShape ShapeAt(int32_t t) const;
  // The GPU work of a step, calling after_layer(l) once layer l is enqueued (graph
  // capture passes a no-op), or of one layer; `prime` for freekv's first step.
  absl::Status EnqueueStep(const StepInputs& in, bool prime,
                           const std::function<absl::Status(int)>& after_layer);
  absl::Status EnqueueLayer(bool prime, int layer, const StepInputs& in);
  // What the recall driver must do for (step, layer), in the order the GPU waits.
  void PushLayerItems(int32_t t, int layer);
  // Scores and selects the pages of every head; with `diff`, also what the resident
  // set lacks (the diff's block, in pinned memory).
  absl::Status Select(int layer, const StepInputs& in, const DiffSet* diff);
  absl::Status Attend(int layer, const StepInputs& in);
  // The spec (or correction) gate of a layer, as step `in` waits for it.
  GateHold HoldAt(const StepInputs& in, int layer, bool correction) const;
};

}  // namespace freekv::gpu

#endif  // FREEKV_WORKER_FREEKV_GPU_DECODER_IMPL_H_
