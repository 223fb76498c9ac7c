#include "worker/freekv_gpu/gpu_decoder.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "kernels/decode_attention.h"
#include "kernels/score.h"
#include "worker/freekv_gpu/decoder_impl.h"
#include "worker/model/model_config.h"

namespace freekv::gpu {
namespace {

using kernels::CudaEvent;
using kernels::CudaStream;
using kernels::DeviceBuffer;
using kernels::PinnedBuffer;

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

}  // namespace

StateShape ShapeOf(const GpuDecoderOptions& o, const ModelConfig& c) {
  StateShape s;
  s.batch = o.batch;
  s.q_heads = c.num_heads;
  s.kv_heads = c.num_kv_heads;
  s.head_dim = c.head_dim;
  s.page_tokens = o.page_tokens;
  s.sparse = o.policy != GpuPolicy::kFull;
  s.over_full = o.real() && o.policy == GpuPolicy::kOracle;
  s.layout = o.layout;
  int64_t longest = o.context;
  for (int64_t len : o.prompt_lengths) longest = std::max(longest, len);
  const int32_t pages = static_cast<int32_t>((longest + o.max_steps) / o.page_tokens + 1);
  s.digest_pages = pages;
  s.full_pages = pages;
  return s;
}

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

uint64_t GpuDecoder::SlotBytes(const GpuDecoderOptions& o, const ModelConfig& c) {
  // A slot holds every (sequence, selected page) block of one layer.
  return uint64_t(o.batch) * o.layout.selected *
         KvGeometry(c, o.page_tokens, DType::kBFloat16).block_bytes();
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
  FREEKV_RETURN_IF_ERROR(Assign(PinnedBuffer::Allocate((2 * size_t(L()) + 1) * 4), &gates));
  std::fill(gates.span<uint32_t>().begin(), gates.span<uint32_t>().end(), 0u);
  FREEKV_RETURN_IF_ERROR(Assign(DeviceBuffer::Allocate(2 * size_t(L()) * 4), &observed));
  FREEKV_RETURN_IF_ERROR(observed.Zero());
  FREEKV_RETURN_IF_ERROR(Assign(DeviceBuffer::Allocate(2 * size_t(L()) * 4), &own_signals));
  FREEKV_RETURN_IF_ERROR(own_signals.Zero());  // shut, as the pinned words
  // The inputs only grow with the position: size the buffers for the last step.
  auto largest = StepInputs::Build(ShapeAt(options.max_steps));
  if (!largest.ok()) return largest.status();
  const size_t input_bytes =
      (largest->all().size() +
       (options.real() ? StepJobs::Capacity(options.batch, c.num_kv_heads) : 0)) * 4;
  FREEKV_RETURN_IF_ERROR(Assign(DeviceBuffer::Allocate(input_bytes), &inputs));
  for (int i = 0; i < kInputRing; ++i) {
    PinnedBuffer b;
    FREEKV_RETURN_IF_ERROR(Assign(PinnedBuffer::Allocate(input_bytes), &b));
    staged_inputs.push_back(std::move(b));
  }
  FREEKV_RETURN_IF_ERROR(Assign(
      DeviceBuffer::Allocate(size_t(options.batch) * c.dim * sizeof(BFloat16)), &base));
  FREEKV_RETURN_IF_ERROR(FillUniformCuda(base.span<BFloat16>(), 7, 1.0f, stream));
  for (int32_t i = 0; i < options.max_steps; ++i) {
    FREEKV_RETURN_IF_ERROR(Append(CudaEvent::Create(), &step_end));
  }
  FREEKV_RETURN_IF_ERROR(Append(CudaEvent::Create(/*timing=*/false), &drained));
  FREEKV_RETURN_IF_ERROR(Assign(DeviceBuffer::Allocate(sizeof(int32_t)), &zero));
  FREEKV_RETURN_IF_ERROR(zero.Zero());
  FREEKV_RETURN_IF_ERROR(Assign(DeviceBuffer::Allocate(sizeof(uint64_t)), &waited_ns));
  FREEKV_RETURN_IF_ERROR(waited_ns.Zero());
  if (options.policy == GpuPolicy::kFreeKv) {
    FREEKV_RETURN_IF_ERROR(Emplace(CudaStream::Create(), &select_stream));
    FREEKV_RETURN_IF_ERROR(Emplace(CudaEvent::Create(/*timing=*/false), &select_fork));
    FREEKV_RETURN_IF_ERROR(Emplace(CudaEvent::Create(/*timing=*/false), &select_join));
    FREEKV_RETURN_IF_ERROR(
        Assign(DeviceBuffer::Allocate(2 * size_t(L()) * shape.lists()), &head_masks));
    FREEKV_RETURN_IF_ERROR(head_masks.Zero());
    FREEKV_RETURN_IF_ERROR(
        Assign(DeviceBuffer::Allocate(2 * sizeof(int32_t)), &correction_tally));
    FREEKV_RETURN_IF_ERROR(correction_tally.Zero());
  }
  if (NeedsSession(options)) {
    driver = std::make_unique<RecallDriver>(*kv, options.sequence_ids, c.num_kv_heads,
                                            options.layout);
    if (options.signal_gates) {
      // This decoder numbers its steps from 0: an earlier decoder's words would open
      // its gates before their recalls land.
      FREEKV_RETURN_IF_ERROR(kv->regions().ResetSignals());
      signals = kv->regions().signals().data();
    }
    if (options.policy == GpuPolicy::kFreeKv) {
      FREEKV_RETURN_IF_ERROR(Emplace(CudaStream::Create(), &spec_stream));
      FREEKV_RETURN_IF_ERROR(Emplace(CudaEvent::Create(/*timing=*/false), &spec_fork));
      for (int l = 0; l < L(); ++l) {
        FREEKV_RETURN_IF_ERROR(Append(CudaEvent::Create(/*timing=*/false), &spec_join));
      }
    }
  }
  // Zero() and Poison() above run on the legacy stream, which a non-blocking stream
  // does not wait for: finish everything before the first step.
  return kernels::DeviceSynchronize();
}

GpuDecoder::GpuDecoder(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

GpuDecoder::~GpuDecoder() {
  if (impl_->driver != nullptr) impl_->driver->Finish().IgnoreError();
  // The driver hands its slots back when destroyed: after the streams have read them.
  impl_->stream_holder[0].Synchronize().IgnoreError();
  if (impl_->spec_stream.has_value()) impl_->spec_stream->Synchronize().IgnoreError();
  if (impl_->select_stream.has_value()) impl_->select_stream->Synchronize().IgnoreError();
}

std::array<absl::Span<const BFloat16>, 2> GpuDecoder::Impl::Slots(int layer) const {
  // This batch's slice places; the session's slots may be sized for a larger batch.
  const size_t elems = size_t(shape.lists()) * options.layout.selected *
                       kv->client().geometry().head_slice_bytes() / sizeof(BFloat16);
  std::array<absl::Span<const BFloat16>, 2> out;
  for (uint32_t s = 0; s < 2; ++s) {
    out[s] = {reinterpret_cast<const BFloat16*>(kv->regions().staging_slot(layer, s)), elems};
  }
  return out;
}

absl::StatusOr<std::unique_ptr<GpuDecoder::Impl>> GpuDecoder::Impl::Create(
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
  if (options.page_tokens < 1 ||
      (options.real() && options.prompt_lengths.size() != size_t(options.batch))) {
    return absl::InvalidArgumentError(absl::StrCat(
        "page_tokens ", options.page_tokens, " below 1 or ", options.prompt_lengths.size(),
        " prompt lengths for a batch of ", options.batch));
  }
  FREEKV_RETURN_IF_ERROR(CheckResidentLayout(options.layout));
  if (options.layout.cache > 0 && Recalls(options.policy)) {
    // The select kernel's limit (kernels/select.h), checked here to fail early.
    if (options.layout.capacity() > 1024) {
      return absl::InvalidArgumentError(absl::StrCat(
          "a resident cache allows at most 1024 slots per head; the layout has ",
          options.layout.capacity()));
    }
    // Real decoding promotes each page leaving the window into its slot by position
    // while every candidate fits the slots (PromotionsAt), so a sequence with at most
    // `selected` candidates finds them all by position. The synthetic decode promotes
    // nothing: its pages come by recall alone, so it starts with every place of the
    // selection filled.
    const PageSplit first = SplitAt(options.context, options.page_tokens, options.layout);
    if (!options.real() && first.candidates < options.layout.selected) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the synthetic decode with a resident cache needs at least ",
          options.layout.selected, " candidate pages from the first step; context ",
          options.context, " gives ", first.candidates));
    }
  }
  if (NeedsSession(options)) {
    if (kv == nullptr || options.sequence_ids.size() != size_t(options.batch)) {
      return absl::InvalidArgumentError(absl::StrCat(
          GpuPolicyName(options.policy), " needs a CUDA IPC session and ", options.batch,
          " sequence ids; got ", options.sequence_ids.size()));
    }
    if (kv->regions().slot_bytes() < SlotBytes(options, c) ||
        kv->regions().num_layers() < uint32_t(options.layers)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the session's slots hold ", kv->regions().slot_bytes(), " bytes for ",
          kv->regions().num_layers(), " layers; this decoder needs at least ",
          SlotBytes(options, c),
          " for ", options.layers));
    }
  }
  auto impl = std::make_unique<Impl>();
  impl->model = &model;
  impl->options = options;
  impl->shape = ShapeOf(options, c);
  impl->kv = kv;
  FREEKV_RETURN_IF_ERROR(impl->Init());
  return impl;
}

absl::StatusOr<std::unique_ptr<GpuDecoder>> GpuDecoder::Create(
    GpuLlama& model, const GpuDecoderOptions& options, CudaKvClient* kv) {
  auto impl = Impl::Create(model, options, kv);
  if (!impl.ok()) return impl.status();
  return std::unique_ptr<GpuDecoder>(new GpuDecoder(*std::move(impl)));
}

absl::StatusOr<GpuStepStats> GpuDecoder::Run(int32_t warmup, int32_t steps) {
  Impl& m = *impl_;
  if (warmup < 1 || steps < 2 || m.steps_run + warmup + steps > m.options.max_steps) {
    return absl::InvalidArgumentError(absl::StrCat(
        "warmup ", warmup, " (>= 1) + steps ", steps, " (>= 2) exceed the ",
        m.options.max_steps - m.steps_run, " steps left"));
  }
  // Bounded: a recall that never lands would hold the stream, and the host, for ever.
  auto drain = [&](absl::string_view what) -> absl::Status {
    FREEKV_RETURN_IF_ERROR(m.WaitForStream(what));
    return m.driver != nullptr ? m.driver->Finish() : absl::OkStatus();
  };
  for (int32_t i = 0; i < warmup; ++i) FREEKV_RETURN_IF_ERROR(m.Step(m.steps_run++));
  FREEKV_RETURN_IF_ERROR(drain("the end of the warmup steps"));
  const RecallDriverStats before = m.driver ? m.driver->stats() : RecallDriverStats{};
  uint64_t waited_before = 0;
  FREEKV_RETURN_IF_ERROR(m.waited_ns.CopyToHost(&waited_before, sizeof(waited_before)));
  m.enqueue_seconds = 0;
  const int32_t first = m.steps_run;
  const absl::Time start = absl::Now();
  for (int32_t i = 0; i < steps; ++i) FREEKV_RETURN_IF_ERROR(m.Step(m.steps_run++));
  FREEKV_RETURN_IF_ERROR(drain("the end of the timed steps"));
  GpuStepStats out;
  out.wall_ms = absl::ToDoubleMilliseconds(absl::Now() - start) / steps;
  std::vector<double> step_ms;
  for (int32_t t = first + 1; t < m.steps_run; ++t) {  // `first - 1` ended before the drain
    auto ms = m.step_end[t].ElapsedMsSince(m.step_end[t - 1]);
    if (!ms.ok()) return ms.status();
    step_ms.push_back(*ms);
  }
  uint64_t waited_after = 0;
  FREEKV_RETURN_IF_ERROR(m.waited_ns.CopyToHost(&waited_after, sizeof(waited_after)));
  out.step_ms = Median(step_ms);
  out.stall_ms = (waited_after - waited_before) / 1e6 / steps;
  out.enqueue_ms = 1e3 * m.enqueue_seconds / steps;
  if (m.driver != nullptr) {
    const RecallDriverStats after = m.driver->stats();
    out.recall_host_ms = 1e3 * (after.host_work_seconds - before.host_work_seconds) / steps;
    out.slices_per_step = double(after.slices - before.slices) / steps;
    const uint64_t recalls = after.recalls - before.recalls;
    out.reply_ms = recalls == 0 ? 0 : 1e3 * (after.reply_seconds - before.reply_seconds) / recalls;
    const uint64_t corrections = after.corrections - before.corrections;
    auto per_correction = [&](double RecallDriverStats::*sum) {
      return corrections == 0 ? 0 : 1e3 * (after.*sum - before.*sum) / corrections;
    };
    out.correction_reply_ms = per_correction(&RecallDriverStats::correction_reply_seconds);
    out.correction_service_ms = per_correction(&RecallDriverStats::correction_service_seconds);
    const double checks = double(steps) * m.L() * m.shape.lists();
    out.corrected = m.options.policy == GpuPolicy::kFreeKv
                        ? (after.flagged_heads - before.flagged_heads) / checks
                        : 1.0;
  }
  return out;
}

absl::StatusOr<GpuDecoder::ResidentSnapshot> GpuDecoder::Snapshot(int layer) const {
  Impl& m = *impl_;  // the wait records an event
  if (!m.shape.sparse || layer < 0 || layer >= m.L()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Snapshot needs a sparse policy and a layer in [0, ", m.L(), "); got ", layer));
  }
  FREEKV_RETURN_IF_ERROR(m.WaitForStream("a snapshot of the resident pages"));
  if (m.driver != nullptr) FREEKV_RETURN_IF_ERROR(m.driver->Finish());
  const LayerState& st = m.layers[layer];
  ResidentSnapshot out;
  out.resident.resize(st.resident.bytes() / sizeof(int32_t));
  FREEKV_RETURN_IF_ERROR(st.resident.Download(absl::MakeSpan(out.resident)));
  out.pool_data.resize(st.pool.bytes() / sizeof(BFloat16));
  FREEKV_RETURN_IF_ERROR(st.pool.Download(absl::MakeSpan(out.pool_data)));
  out.pool = st.view;
  out.pool.k = out.pool_data.data();
  out.pool.v = out.pool_data.data() + (st.view.v - st.view.k);
  return out;
}

}  // namespace freekv::gpu
