#include "worker/freekv_gpu/gpu_decoder.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "kernels/decode_attention.h"
#include "kernels/score.h"
#include "worker/freekv_gpu/layer_state.h"
#include "worker/freekv_gpu/step_inputs.h"

namespace freekv::gpu {
namespace {

using kernels::CudaEvent;
using kernels::CudaGraph;
using kernels::CudaStream;
using kernels::DeviceBuffer;
using kernels::PinnedBuffer;

template <typename T>
absl::Status Assign(absl::StatusOr<T> from, T* to) {
  if (!from.ok()) return from.status();
  *to = *std::move(from);
  return absl::OkStatus();
}

// For the owners with no empty state (streams, events, graphs).
template <typename T>
absl::Status Append(absl::StatusOr<T> from, std::vector<T>* to) {
  if (!from.ok()) return from.status();
  to->push_back(*std::move(from));
  return absl::OkStatus();
}

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

StateShape ShapeOf(const GpuDecoderOptions& o, const ModelConfig& c) {
  StateShape s;
  s.batch = o.batch;
  s.q_heads = c.num_heads;
  s.kv_heads = c.num_kv_heads;
  s.head_dim = c.head_dim;
  s.page_tokens = 32;
  s.sparse = o.policy != GpuPolicy::kFull;
  s.layout = o.layout;
  const int32_t pages = static_cast<int32_t>((o.context + o.max_steps) / 32 + 1);
  s.digest_pages = pages;
  s.full_pages = pages;
  return s;
}

}  // namespace

absl::StatusOr<GpuPolicy> ParseGpuPolicy(absl::string_view name) {
  for (GpuPolicy p : {GpuPolicy::kFull, GpuPolicy::kOracle, GpuPolicy::kFreeKv,
                      GpuPolicy::kBlocking}) {
    if (GpuPolicyName(p) == name) return p;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown policy '", name, "'; expected full, oracle, freekv or blocking"));
}

std::string GpuPolicyName(GpuPolicy p) {
  switch (p) {
    case GpuPolicy::kFull: return "full";
    case GpuPolicy::kOracle: return "oracle";
    case GpuPolicy::kFreeKv: return "freekv";
    case GpuPolicy::kBlocking: return "blocking";
  }
  return "?";
}

struct GpuDecoder::Impl {
  GpuLlama* model = nullptr;
  GpuDecoderOptions options;
  StateShape shape;
  CudaKvClient* kv = nullptr;
  std::vector<CudaStream> stream_holder;  // the decode stream (one)
  cudaStream_t stream = nullptr;
  std::vector<LayerState> layers;
  std::vector<CudaGraph> pre, post;
  std::unique_ptr<RecallDriver> driver;
  // Shared scratch, in stream order.
  DeviceBuffer scores, group_scores, selected, workspace, inputs, base, gates;
  std::vector<PinnedBuffer> staged_inputs;  // a ring of DiffSet::kRing
  std::vector<CudaEvent> step_end;          // one per step run, timing
  std::vector<CudaEvent> gate_marks;        // per step, layer: 4 (two gates)
  int32_t steps_run = 0;
  double enqueue_seconds = 0;

  int32_t L() const { return options.layers; }
  uint32_t* gate(int layer, bool correction) const {
    return gates.span<uint32_t>().data() + 2 * layer + (correction ? 1 : 0);
  }
  absl::Status Init();
  absl::Status Step(int32_t t);
  absl::Status Layer(int32_t t, int layer, const StepInputs& in);
  absl::Status Select(int layer, const StepInputs& in, absl::Span<const uint8_t> mask,
                      bool with_diff, const DiffSet* diff);
  absl::Status Attend(int layer, const StepInputs& in);
  absl::Status WaitAt(int32_t t, int layer, bool correction, uint32_t value);
  absl::Status PushDiff(int32_t t, int layer, uint64_t serves, bool correction, bool masked);
};

uint64_t GpuDecoder::SlotBytes(const GpuDecoderOptions& o, const ModelConfig& c) {
  return uint64_t(o.batch) * c.num_kv_heads * o.layout.selected * 2 * 32 * c.head_dim *
         sizeof(BFloat16);
}

uint64_t GpuDecoder::DeviceBytes(const GpuDecoderOptions& o, const ModelConfig& c) {
  const StateShape s = ShapeOf(o, c);
  const uint64_t cands = s.digest_pages;
  const uint64_t scratch = uint64_t(o.batch) * (c.num_heads + c.num_kv_heads) * cands * 4 +
                           kernels::DecodeWorkspaceBytes(o.batch, c.num_heads, c.head_dim,
                                                         std::max(s.full_pages, 64));
  const uint64_t slots = Recalls(o.policy) ? 2 * SlotBytes(o, c) : 0;
  return o.layers * (LayerStateBytes(s, Recalls(o.policy)) + slots) + scratch;
}

absl::Status GpuDecoder::Impl::Init() {
  const ModelConfig& c = model->config();
  FREEKV_RETURN_IF_ERROR(Append(CudaStream::Create(), &stream_holder));
  stream = stream_holder[0].get();
  for (int l = 0; l < L(); ++l) {
    LayerState state;
    FREEKV_RETURN_IF_ERROR(
        Assign(LayerState::Create(shape, Recalls(options.policy), 1000 + l, stream),
               &state));
    layers.push_back(std::move(state));
  }
  const size_t cands = shape.digest_pages;
  FREEKV_RETURN_IF_ERROR(
      Assign(DeviceBuffer::Allocate(size_t(options.batch) * c.num_heads * cands * 4), &scores));
  FREEKV_RETURN_IF_ERROR(Assign(
      DeviceBuffer::Allocate(size_t(shape.lists()) * cands * 4), &group_scores));
  FREEKV_RETURN_IF_ERROR(Assign(
      DeviceBuffer::Allocate(size_t(shape.lists()) * options.layout.selected * 4), &selected));
  FREEKV_RETURN_IF_ERROR(Assign(
      DeviceBuffer::Allocate(kernels::DecodeWorkspaceBytes(
          options.batch, c.num_heads, c.head_dim, std::max(shape.full_pages, 64))),
      &workspace));
  FREEKV_RETURN_IF_ERROR(workspace.Zero());
  FREEKV_RETURN_IF_ERROR(Assign(DeviceBuffer::Allocate(size_t(L()) * 2 * 4), &gates));
  FREEKV_RETURN_IF_ERROR(gates.Zero());
  StepShape probe{options.batch, c.num_kv_heads, 32, options.context + options.max_steps,
                  shape.sparse, options.layout, shape.full_pages};
  auto largest = StepInputs::Build(probe);  // the inputs only grow with the position
  if (!largest.ok()) return largest.status();
  const size_t input_bytes = largest->all().size() * 4;
  FREEKV_RETURN_IF_ERROR(Assign(DeviceBuffer::Allocate(input_bytes), &inputs));
  for (int i = 0; i < DiffSet::kRing; ++i) {
    PinnedBuffer b;
    FREEKV_RETURN_IF_ERROR(Assign(PinnedBuffer::Allocate(input_bytes), &b));
    staged_inputs.push_back(std::move(b));
  }
  FREEKV_RETURN_IF_ERROR(Assign(
      DeviceBuffer::Allocate(size_t(options.batch) * c.dim * sizeof(BFloat16)), &base));
  FREEKV_RETURN_IF_ERROR(FillUniformCuda(base.span<BFloat16>(), 7, 1.0f, stream));
  for (int32_t i = 0; i < options.max_steps; ++i) {
    FREEKV_RETURN_IF_ERROR(Append(CudaEvent::Create(), &step_end));
    for (int g = 0; g < 4 * L(); ++g) {
      FREEKV_RETURN_IF_ERROR(Append(CudaEvent::Create(), &gate_marks));
    }
  }
  if (options.graphs) {
    for (int l = 0; l < L(); ++l) {
      FREEKV_RETURN_IF_ERROR(Append(CudaGraph::Capture(stream, [&] {
        return model->PreAttention(l, options.batch, stream);
      }), &pre));
      FREEKV_RETURN_IF_ERROR(Append(CudaGraph::Capture(stream, [&] {
        return model->PostAttention(l, options.batch, stream);
      }), &post));
    }
  }
  if (NeedsSession(options)) {
    std::vector<LayerResidency> residency;
    for (const LayerState& l : layers) residency.push_back(l.Residency());
    auto side = CudaStream::Create();
    if (!side.ok()) return side.status();
    driver = std::make_unique<RecallDriver>(*kv, std::move(residency), options.sequence_ids,
                                            c.num_kv_heads, options.layout, *std::move(side));
  }
  // Zero() and Poison() above run on the legacy stream, which a non-blocking stream
  // does not wait for: finish everything before the first step.
  return kernels::DeviceSynchronize();
}

absl::Status GpuDecoder::Impl::Select(int layer, const StepInputs& in,
                                      absl::Span<const uint8_t> mask, bool with_diff,
                                      const DiffSet* diff) {
  const ModelConfig& c = model->config();
  const LayerState& st = layers[layer];
  const absl::Span<const int32_t> dev = inputs.span<int32_t>();
  const kernels::Candidates cands{dev.subspan(in.candidate_begin_at(), options.batch),
                                  dev.subspan(in.candidate_count_at(), options.batch),
                                  in.max_candidates()};
  const size_t n = size_t(in.max_candidates());
  const kernels::DigestTable<const BFloat16> digests{
      st.digests.span<const BFloat16>(), options.batch, shape.digest_pages, c.num_kv_heads,
      c.head_dim};
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  const absl::Span<float> s = scores.span<float>().subspan(0, options.batch * c.num_heads * n);
  FREEKV_RETURN_IF_ERROR(kernels::PageScoreCuda<BFloat16>(
      model->q().subspan(0, size_t(options.batch) * c.num_heads * c.head_dim),
      c.num_heads, digests, cands, scale, mask, s, stream));
  return kernels::GroupSelectCuda(
      s, c.num_heads, c.num_kv_heads, cands, options.layout.selected,
      with_diff ? st.resident.span<const int32_t>() : absl::Span<const int32_t>(),
      options.layout.selected, mask, group_scores.span<float>().subspan(0, shape.lists() * n),
      selected.span<int32_t>(), with_diff ? diff->Diff() : kernels::ResidentDiff{},
      stream);
}

absl::Status GpuDecoder::Impl::Attend(int layer, const StepInputs& in) {
  const ModelConfig& c = model->config();
  const kernels::PagedKv<BFloat16>& v = layers[layer].view;
  const kernels::PagedKv<const BFloat16> pool{v.k, v.v, v.page_stride, v.num_pages,
                                              v.page_tokens, v.num_kv_heads, v.head_dim};
  const absl::Span<const int32_t> dev = inputs.span<int32_t>();
  const int32_t lists = in.num_lists();
  const kernels::PageTable table{dev.subspan(in.indptr_at(), lists + 1),
                                 dev.subspan(in.indices_at(), size_t(lists) * in.max_pages()),
                                 dev.subspan(in.last_len_at(), lists),
                                 shape.sparse ? c.num_kv_heads : 1};
  kernels::DecodeOptions opt;
  opt.num_q_heads = c.num_heads;
  opt.scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  const size_t rows = size_t(options.batch) * c.num_heads * c.head_dim;
  return kernels::PagedDecodeAttentionCuda<BFloat16>(
      model->q().subspan(0, rows), pool, table, opt, in.max_pages(),
      model->attn_out().subspan(0, rows), {}, workspace.span<uint8_t>(), stream);
}

absl::Status GpuDecoder::Impl::WaitAt(int32_t t, int layer, bool correction,
                                      uint32_t value) {
  CudaEvent* marks = &gate_marks[(size_t(t) * L() + layer) * 4 + (correction ? 2 : 0)];
  FREEKV_RETURN_IF_ERROR(marks[0].Record(stream));
  FREEKV_RETURN_IF_ERROR(WaitGate(gate(layer, correction), value, stream));
  return marks[1].Record(stream);
}

absl::Status GpuDecoder::Impl::PushDiff(int32_t t, int layer, uint64_t serves,
                                        bool correction, bool masked) {
  if (options.skip_recall) return SetGate(gate(layer, correction), t + 1, stream);
  const DiffSet& d = correction ? layers[layer].corr : layers[layer].spec;
  RecallItem item;
  item.step = serves;
  item.layer = layer;
  item.diff_ready = &d.ready[t % DiffSet::kRing];
  item.host_pages = d.mirror();
  item.host_counts = d.host_counts();
  if (masked) {
    item.host_flags = d.host_flags();
    item.host_num_flagged = d.host_num_flagged();
    item.device_flags = d.flags();
  }
  item.device_diff = d.ReadOnlyDiff();
  item.gate = gate(layer, correction);
  item.gate_value = static_cast<uint32_t>(t + 1);
  driver->Push(item);
  return absl::OkStatus();
}

absl::Status GpuDecoder::Impl::Layer(int32_t t, int layer, const StepInputs& in) {
  const ModelConfig& c = model->config();
  LayerState& st = layers[layer];
  cudaStream_t s = stream;
  FREEKV_RETURN_IF_ERROR(options.graphs ? pre[layer].Launch(s)
                                        : model->PreAttention(layer, options.batch, s));
  const size_t kv_rows = size_t(options.batch) * c.num_kv_heads * c.head_dim;
  const absl::Span<const int32_t> dev = inputs.span<int32_t>();
  FREEKV_RETURN_IF_ERROR(AppendKvCuda(model->k().subspan(0, kv_rows),
                                      model->v().subspan(0, kv_rows),
                                      dev.subspan(in.append_pages_at(), options.batch),
                                      dev.subspan(in.append_tokens_at(), options.batch),
                                      st.view, s));
  const GpuPolicy p = options.policy;
  const uint32_t t_next = static_cast<uint32_t>(t + 1);
  if (p == GpuPolicy::kOracle) FREEKV_RETURN_IF_ERROR(Select(layer, in, {}, false, nullptr));
  if (p == GpuPolicy::kBlocking || (p == GpuPolicy::kFreeKv && t == 0)) {
    // Select with the current query, recall what is missing, wait for it.
    FREEKV_RETURN_IF_ERROR(Select(layer, in, {}, true, &st.corr));
    FREEKV_RETURN_IF_ERROR(st.corr.CopyToHost(s));
    FREEKV_RETURN_IF_ERROR(st.corr.ready[t % DiffSet::kRing].Record(s));
    FREEKV_RETURN_IF_ERROR(PushDiff(t, layer, t, /*correction=*/true, /*masked=*/false));
    if (options.host_wait && driver != nullptr) FREEKV_RETURN_IF_ERROR(driver->Finish());
    FREEKV_RETURN_IF_ERROR(WaitAt(t, layer, true, t_next));
  } else if (p == GpuPolicy::kFreeKv) {
    // The speculative recall made at step t - 1, then correction of moved heads.
    FREEKV_RETURN_IF_ERROR(WaitAt(t, layer, false, static_cast<uint32_t>(t)));
    const size_t q_rows = size_t(options.batch) * c.num_heads * c.head_dim;
    const kernels::SimilarityOutputs sim{st.similarity.span<float>(), st.corr.flags(),
                                         {st.corr.num_flagged(), 1}};
    FREEKV_RETURN_IF_ERROR(kernels::QuerySimilarityCuda<BFloat16>(
        model->q().subspan(0, q_rows), st.q_prev.span<const BFloat16>(), c.num_heads,
        c.num_kv_heads, c.head_dim, options.tau, sim, s));
    FREEKV_RETURN_IF_ERROR(Select(layer, in, st.corr.flags(), true, &st.corr));
    FREEKV_RETURN_IF_ERROR(st.corr.CopyToHost(s));
    FREEKV_RETURN_IF_ERROR(st.corr.ready[t % DiffSet::kRing].Record(s));
    FREEKV_RETURN_IF_ERROR(OpenGateIfNone(st.corr.num_flagged(), gate(layer, true), t_next, s));
    FREEKV_RETURN_IF_ERROR(PushDiff(t, layer, t, /*correction=*/true, /*masked=*/true));
    FREEKV_RETURN_IF_ERROR(WaitAt(t, layer, true, t_next));
  }
  if (p == GpuPolicy::kFreeKv) {
    FREEKV_RETURN_IF_ERROR(kernels::CopyAsync(
        st.q_prev.data(), model->q().data(), st.q_prev.bytes(), s));
  }
  FREEKV_RETURN_IF_ERROR(Attend(layer, in));
  if (p == GpuPolicy::kFreeKv) {
    // Speculation: select for step t + 1 with q_t and recall while the step goes on.
    FREEKV_RETURN_IF_ERROR(Select(layer, in, {}, true, &st.spec));
    FREEKV_RETURN_IF_ERROR(st.spec.CopyToHost(s));
    FREEKV_RETURN_IF_ERROR(st.spec.ready[t % DiffSet::kRing].Record(s));
    FREEKV_RETURN_IF_ERROR(PushDiff(t, layer, t + 1, /*correction=*/false, /*masked=*/false));
  }
  return options.graphs ? post[layer].Launch(s)
                        : model->PostAttention(layer, options.batch, s);
}

absl::Status GpuDecoder::Impl::Step(int32_t t) {
  const ModelConfig& c = model->config();
  // Run at most two steps ahead of the GPU: the pinned input ring and the diff
  // events are three deep.
  if (t >= 2) FREEKV_RETURN_IF_ERROR(step_end[t - 2].Synchronize());
  const absl::Time start = absl::Now();
  const StepShape step{options.batch, c.num_kv_heads, 32, options.context + t,
                       shape.sparse, options.layout, shape.full_pages};
  auto in = StepInputs::Build(step);
  if (!in.ok()) return in.status();
  const PinnedBuffer& staged = staged_inputs[t % DiffSet::kRing];
  const size_t bytes = in->all().size() * sizeof(int32_t);
  std::copy(in->all().begin(), in->all().end(), staged.span<int32_t>().begin());
  cudaStream_t s = stream;
  FREEKV_RETURN_IF_ERROR(kernels::CopyAsync(inputs.data(), staged.data(), bytes, s));
  FREEKV_RETURN_IF_ERROR(kernels::CopyAsync(model->positions().data(), inputs.data(),
                                            options.batch * sizeof(int32_t), s));
  FREEKV_RETURN_IF_ERROR(DriftCuda(base.span<const BFloat16>(), options.drift, t + 1,
                                   model->hidden().subspan(0, size_t(options.batch) * c.dim),
                                   s));
  for (int l = 0; l < L(); ++l) FREEKV_RETURN_IF_ERROR(Layer(t, l, *in));
  FREEKV_RETURN_IF_ERROR(step_end[t].Record(s));
  enqueue_seconds += absl::ToDoubleSeconds(absl::Now() - start);
  return absl::OkStatus();
}

GpuDecoder::GpuDecoder(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

GpuDecoder::~GpuDecoder() {
  if (impl_->driver != nullptr) impl_->driver->Finish().IgnoreError();
  impl_->stream_holder[0].Synchronize().IgnoreError();
}

absl::StatusOr<std::unique_ptr<GpuDecoder>> GpuDecoder::Create(
    GpuLlama& model, const GpuDecoderOptions& options, CudaKvClient* kv) {
  const ModelConfig& c = model.config();
  if (options.batch < 1 || options.batch > model.max_batch()) {
    return absl::InvalidArgumentError(absl::StrCat("batch ", options.batch, " outside [1, ",
                                                   model.max_batch(), "]"));
  }
  if (options.layers < 1 || options.layers > c.num_layers || options.max_steps < 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        "layers ", options.layers, " outside [1, ", c.num_layers, "] or max_steps ",
        options.max_steps, " below 2"));
  }
  if (NeedsSession(options)) {
    if (kv == nullptr || options.sequence_ids.size() != size_t(options.batch)) {
      return absl::InvalidArgumentError(absl::StrCat(
          GpuPolicyName(options.policy), " needs a CUDA IPC session and ", options.batch,
          " sequence ids; got ", options.sequence_ids.size()));
    }
    if (kv->regions().slot_bytes() != SlotBytes(options, c) ||
        kv->regions().num_layers() < uint32_t(options.layers)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the session's slots hold ", kv->regions().slot_bytes(), " bytes for ",
          kv->regions().num_layers(), " layers; this decoder needs ", SlotBytes(options, c),
          " for ", options.layers));
    }
  }
  auto impl = std::make_unique<Impl>();
  impl->model = &model;
  impl->options = options;
  impl->shape = ShapeOf(options, c);
  impl->kv = kv;
  FREEKV_RETURN_IF_ERROR(impl->Init());
  return std::unique_ptr<GpuDecoder>(new GpuDecoder(std::move(impl)));
}

absl::StatusOr<GpuStepStats> GpuDecoder::Run(int32_t warmup, int32_t steps) {
  Impl& m = *impl_;
  if (warmup < 1 || steps < 2 || m.steps_run + warmup + steps > m.options.max_steps) {
    return absl::InvalidArgumentError(absl::StrCat(
        "warmup ", warmup, " (>= 1) + steps ", steps, " (>= 2) exceed the ",
        m.options.max_steps - m.steps_run, " steps left"));
  }
  auto drain = [&]() -> absl::Status {
    FREEKV_RETURN_IF_ERROR(m.stream_holder[0].Synchronize());
    return m.driver != nullptr ? m.driver->Finish() : absl::OkStatus();
  };
  for (int32_t i = 0; i < warmup; ++i) FREEKV_RETURN_IF_ERROR(m.Step(m.steps_run++));
  FREEKV_RETURN_IF_ERROR(drain());
  const RecallDriverStats before = m.driver ? m.driver->stats() : RecallDriverStats{};
  m.enqueue_seconds = 0;
  const int32_t first = m.steps_run;
  const absl::Time start = absl::Now();
  for (int32_t i = 0; i < steps; ++i) FREEKV_RETURN_IF_ERROR(m.Step(m.steps_run++));
  FREEKV_RETURN_IF_ERROR(drain());
  GpuStepStats out;
  out.wall_ms = absl::ToDoubleMilliseconds(absl::Now() - start) / steps;
  std::vector<double> step_ms, stall_ms;
  for (int32_t t = first; t < m.steps_run; ++t) {
    if (t > first) {  // the step before `first` ended before the drain
      auto ms = m.step_end[t].ElapsedMsSince(m.step_end[t - 1]);
      if (!ms.ok()) return ms.status();
      step_ms.push_back(*ms);
    }
    double stalled = 0;
    for (int l = 0; l < m.L() && Recalls(m.options.policy); ++l) {
      for (int g = 0; g < 2; ++g) {
        const bool waited = g == 1 || m.options.policy == GpuPolicy::kFreeKv;
        if (!waited) continue;
        const CudaEvent* marks = &m.gate_marks[(size_t(t) * m.L() + l) * 4 + 2 * g];
        auto ms = marks[1].ElapsedMsSince(marks[0]);
        if (!ms.ok()) return ms.status();
        stalled += *ms;
      }
    }
    stall_ms.push_back(stalled);
  }
  out.step_ms = Median(step_ms);
  out.stall_ms = Median(stall_ms);
  out.enqueue_ms = 1e3 * m.enqueue_seconds / steps;
  if (m.driver != nullptr) {
    const RecallDriverStats after = m.driver->stats();
    out.recall_host_ms = 1e3 * (after.host_work_seconds - before.host_work_seconds) / steps;
    out.slices_per_step = double(after.slices - before.slices) / steps;
    const uint64_t recalls = after.recalls - before.recalls;
    out.reply_ms = recalls == 0 ? 0 : 1e3 * (after.reply_seconds - before.reply_seconds) / recalls;
    const double checks = double(steps) * m.L() * m.shape.lists();
    out.corrected = m.options.policy == GpuPolicy::kFreeKv
                        ? (after.flagged_heads - before.flagged_heads) / checks
                        : 1.0;
  }
  return out;
}

}  // namespace freekv::gpu
