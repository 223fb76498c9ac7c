// The enqueueing of GpuDecoder's steps (decoder_impl.h).
#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "kernels/decode_attention.h"
#include "kernels/score.h"
#include "worker/freekv_gpu/decoder_impl.h"
#include "worker/freekv_gpu/generate_ops.h"
#include "worker/freekv_gpu/generation.h"

namespace freekv::gpu {

absl::Status GpuDecoder::Impl::Select(int layer, const StepInputs& in, const DiffSet* diff,
                                      absl::Span<const uint8_t> mask, cudaStream_t on) {
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
      c.num_heads, digests, cands, scale, mask, s, on));
  const bool with_diff = diff != nullptr;
  kernels::ResidentDiff out = with_diff ? diff->Diff() : kernels::ResidentDiff{};
  if (with_diff && Caches()) out.attend_slots = layers[layer].attend.span<int32_t>();
  return kernels::GroupSelectCuda(
      s, c.num_heads, c.num_kv_heads, cands, options.layout.selected,
      with_diff ? st.resident.span<const int32_t>() : absl::Span<const int32_t>(),
      options.layout.capacity(), mask,
      group_scores.span<float>().subspan(0, shape.lists() * n), selected.span<int32_t>(), out,
      on);
}

absl::Status GpuDecoder::Impl::TakeAttendSlots(int layer, const StepInputs& in) {
  const ResidentLayout& lay = options.layout;
  const absl::Span<int32_t> dev = inputs.span<int32_t>();
  const int32_t lists = in.num_lists();
  // A row may be a step old (the speculation's) and name one page fewer than the table
  // has places: the place it leaves keeps what the host or an earlier layer wrote.
  // That happens only while a sequence has at most `selected` candidates, which real
  // decoding keeps in slots by position (PromotionsAt): every layer's row then names
  // the same slots, 0 to candidates - 1, so whoever wrote the place wrote the newest
  // candidate's slot. The synthetic decode always has more candidates than `selected`.
  return SelectedToTableCuda(layers[layer].attend.span<const int32_t>(), lay.selected,
                             model->config().num_kv_heads,
                             {lay.pages_per_seq(), lay.sink, lay.capacity()},
                             dev.subspan(in.selected_start_at(), lists),
                             dev.subspan(in.indices_at(), in.indices_size()), stream);
}

absl::Status GpuDecoder::Impl::Attend(int layer, const StepInputs& in) {
  const ModelConfig& c = model->config();
  const kernels::PagedKv<const BFloat16> pool = ConstView(layers[layer].view);
  const absl::Span<const int32_t> dev = inputs.span<int32_t>();
  const int32_t lists = in.num_lists();
  const kernels::PageTable table{dev.subspan(in.indptr_at(), lists + 1),
                                 dev.subspan(in.indices_at(), in.indices_size()),
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

// Spec gates open at the step they serve, correction gates at step + 1: the values
// RecallItem::gate_value carries (PushLayerItems).
GateHold GpuDecoder::Impl::HoldAt(const StepInputs& in, int layer, bool correction) const {
  GateHold hold{gate(layer, correction),   step_number(in),
                correction ? 1 : 0,        waited_ns.span<unsigned long long>().data(),
                abort_word(),              observed_word(layer, correction)};
  hold.signal = device_word(layer, correction);
  return hold;
}

absl::Status GpuDecoder::Impl::ApplyPublished(int layer, const StepInputs& in,
                                              bool correction, const HeadMask& heads,
                                              cudaStream_t on) {
  // Without a session (recalls left out) the stream opens every gate itself, naming
  // no slot: there is nothing to apply.
  if (driver == nullptr) return absl::OkStatus();
  LayerState& st = layers[layer];
  return ApplyPublishedCuda(HoldAt(in, layer, correction), Slots(layer),
                            st.diff.DeviceDiff(), heads, st.view, options.layout,
                            st.resident.span<int32_t>(), on);
}

absl::Status GpuDecoder::Impl::ForkSpeculation(const StepInputs& in) {
  const cudaStream_t side = spec_stream->get();
  FREEKV_RETURN_IF_ERROR(spec_fork->Record(stream));
  FREEKV_RETURN_IF_ERROR(spec_fork->MakeStreamWait(side));
  for (int l = 0; l < L(); ++l) {
    GateHold hold = HoldAt(in, l, false);
    hold.waited_ns = nullptr;  // the decode stream's own hold (the append's) counts stalls
    FREEKV_RETURN_IF_ERROR(WaitGate(hold, side));
    // The heads the last step did not correct, from its diff (this step's selection and
    // correction point of the layer come after the join).
    FREEKV_RETURN_IF_ERROR(ApplyPublished(l, in, false, HeadMask{HeadMaskOf(l, false)}, side));
    FREEKV_RETURN_IF_ERROR(spec_join[l].Record(side));
  }
  return absl::OkStatus();
}

absl::Status GpuDecoder::Impl::EnqueueLayer(bool prime, int layer, const StepInputs& in) {
  const ModelConfig& c = model->config();
  LayerState& st = layers[layer];
  cudaStream_t s = stream;
  FREEKV_RETURN_IF_ERROR(model->PreAttention(layer, options.batch, s));
  const size_t kv_rows = size_t(options.batch) * c.num_kv_heads * c.head_dim;
  const absl::Span<const int32_t> dev = inputs.span<int32_t>();
  const GpuPolicy p = options.policy;
  const bool speculates = p == GpuPolicy::kFreeKv && !prime;
  // freekv: the append also holds the stream until the speculative recall made for
  // this layer at step t - 1 has landed (one launch, not two; what the stall counts).
  // spec_stream applies it (ForkSpeculation) and observes the word.
  GateHold spec_hold = speculates ? HoldAt(in, layer, false) : GateHold{};
  spec_hold.observed = nullptr;
  FREEKV_RETURN_IF_ERROR(AppendKvCuda(model->k().subspan(0, kv_rows),
                                      model->v().subspan(0, kv_rows),
                                      dev.subspan(in.append_pages_at(), options.batch),
                                      dev.subspan(in.append_tokens_at(), options.batch),
                                      st.view, s, spec_hold));
  // The speculation's pages are in before this step selects; after the last step's
  // attention read the slots' old pages, since the fork follows it.
  if (speculates && spec_stream.has_value()) {
    FREEKV_RETURN_IF_ERROR(spec_join[layer].MakeStreamWait(s));
  }
  // Opens a gate from the stream, to the value a recall of this step would set (step
  // + 1): with recalls left out (skip_recall), or when there is nothing to recall.
  auto open_now = [&](bool correction) {
    return OpenGateIfNone({zero.span<int32_t>().data(), gate(layer, correction),
                           step_number(in), 1, device_word(layer, correction)},
                          s);
  };
  // Nothing to select (every sequence fits in its sinks and window): the stream opens
  // the recall gates itself, as when recalls are left out.
  const bool selects = in.max_candidates() > 0;
  const bool own = options.skip_recall || !selects;
  if (p == GpuPolicy::kOracle && selects) {
    FREEKV_RETURN_IF_ERROR(Select(layer, in, nullptr, {}, s));
    if (shape.over_full) FREEKV_RETURN_IF_ERROR(WriteSelectedPages(in));
  }
  if (!selects && Recalls(p)) {
    FREEKV_RETURN_IF_ERROR(open_now(true));
    if (p == GpuPolicy::kFreeKv) FREEKV_RETURN_IF_ERROR(open_now(false));
  } else if (p == GpuPolicy::kBlocking || prime) {
    // Select with the current query, recall what is missing, wait for it.
    FREEKV_RETURN_IF_ERROR(Select(layer, in, &st.diff, {}, s));
    if (Caches()) FREEKV_RETURN_IF_ERROR(TakeAttendSlots(layer, in));
    FREEKV_RETURN_IF_ERROR(st.diff.Publish(step_number(in), s));
    if (own) FREEKV_RETURN_IF_ERROR(open_now(true));
    FREEKV_RETURN_IF_ERROR(WaitGate(HoldAt(in, layer, true), s));
    FREEKV_RETURN_IF_ERROR(ApplyPublished(layer, in, true, HeadMask{}, s));
    // The next step's speculation would select with this same query: nothing is left
    // to recall, so its gate opens here.
    if (prime) FREEKV_RETURN_IF_ERROR(open_now(false));
  } else if (p == GpuPolicy::kFreeKv) {
    // The speculative recall made at step t - 1 has landed. The correction point then
    // compares q_t with q_{t-1} per (sequence, KV head), flags the heads whose query
    // moved (similarity below tau), and opens the correction gate in the same launch
    // when none did. A flagged head is corrected now: selected with q_t on this
    // stream, recalled, and waited for below. The other heads' selection with q_t is
    // the speculation for step t + 1: it runs beside the layer's attention on
    // select_stream (its stamp lets the host recall it while the step goes on), so
    // with no head flagged the decode stream never waits for a selection. The
    // speculation's branch holds nothing, and everything the host needs before it
    // opens this layer's correction gate is enqueued ahead of that gate's hold in this
    // stream: no queue the branches share can deadlock (resident_ops.h).
    const size_t q_rows = size_t(options.batch) * c.num_heads * c.head_dim;
    const CorrectionCheck check{model->q().subspan(0, q_rows),
                                st.q_prev.span<const BFloat16>(),
                                c.num_heads,
                                c.num_kv_heads,
                                c.head_dim,
                                options.tau,
                                {st.similarity.span<float>(), st.diff.flags(),
                                 {st.diff.num_flagged(), 1}},
                                MasksOf(layer),
                                correction_tally.span<int32_t>()};
    FREEKV_RETURN_IF_ERROR(PublishCorrectionCuda(check, step_number(in), gate(layer, true),
                                                 device_word(layer, true), 1, s));
    // The flagged heads' rows of the same buffers (none: the kernels return at once).
    // With a resident cache the page table then takes every head's latest selection
    // (this step's for the flagged heads, the last step's speculation for the others)
    // before the speculation below, beside the attention, writes the next one.
    if (Caches()) {
      FREEKV_RETURN_IF_ERROR(Select(layer, in, &st.diff, HeadMaskOf(layer, true), s));
      FREEKV_RETURN_IF_ERROR(TakeAttendSlots(layer, in));
    }
    const cudaStream_t side = select_stream->get();
    FREEKV_RETURN_IF_ERROR(select_fork->Record(s));
    FREEKV_RETURN_IF_ERROR(select_fork->MakeStreamWait(side));
    FREEKV_RETURN_IF_ERROR(Select(layer, in, &st.diff, HeadMaskOf(layer, false), side));
    FREEKV_RETURN_IF_ERROR(StampCuda(st.diff.spec_stamp(), step_number(in), side));
    FREEKV_RETURN_IF_ERROR(select_join->Record(side));
    if (!Caches()) {
      FREEKV_RETURN_IF_ERROR(Select(layer, in, &st.diff, HeadMaskOf(layer, true), s));
    }
    if (own) {
      FREEKV_RETURN_IF_ERROR(open_now(true));
      FREEKV_RETURN_IF_ERROR(open_now(false));
    }
  }
  if (p == GpuPolicy::kFreeKv) {
    // q_t becomes the next step's q_prev; the copy also stamps the correction's part of
    // the diff and then holds the stream until the correction has landed.
    GateHold hold = speculates ? HoldAt(in, layer, true) : GateHold{};
    if (speculates && selects) hold.stamp = st.diff.stamp();
    const size_t words = st.q_prev.bytes() / sizeof(int32_t);
    FREEKV_RETURN_IF_ERROR(CopyWordsCuda(
        st.q_prev.span<int32_t>().subspan(0, words),
        absl::MakeConstSpan(reinterpret_cast<const int32_t*>(model->q().data()), words), s,
        hold));
    if (speculates) {
      FREEKV_RETURN_IF_ERROR(
          ApplyPublished(layer, in, true, HeadMask{HeadMaskOf(layer, true)}, s));
    }
  }
  FREEKV_RETURN_IF_ERROR(Attend(layer, in));
  FREEKV_RETURN_IF_ERROR(model->PostAttention(layer, options.batch, s));
  return speculates && selects ? select_join->MakeStreamWait(s) : absl::OkStatus();
}

void GpuDecoder::Impl::PushLayerItems(int32_t t, int layer, bool selects) {
  if (driver == nullptr || !selects) return;
  const bool prime = options.policy == GpuPolicy::kFreeKv && t == 0;
  const DiffSet& d = layers[layer].diff;
  auto push = [&](bool correction, HeadMask heads, uint64_t serves) {
    RecallItem item;
    item.step = serves;
    item.layer = layer;
    // freekv's speculation is selected and stamped beside the decode stream.
    item.stamp = correction || prime ? d.stamp() : d.spec_stamp();
    item.stamp_value = t;
    item.diff = d.HostDiff();
    item.heads = heads;
    if (correction && !heads.flags.empty()) item.num_flagged = d.num_flagged();
    item.gate = gate(layer, correction);
    item.signal = signal_word(layer, correction);
    item.gate_value = static_cast<uint32_t>(t + 1);
    driver->Push(item);
  };
  if (options.policy == GpuPolicy::kBlocking || prime) {
    push(true, HeadMask{}, t);
  } else if (options.policy == GpuPolicy::kFreeKv) {
    push(true, HeadMask{d.flags(), false}, t);
    push(false, HeadMask{d.flags(), true}, t + 1);
  }
}

PagePlanShape GpuDecoder::Impl::PlanShape() const {
  PagePlanShape p;
  p.page_tokens = shape.page_tokens;
  p.num_kv_heads = model->config().num_kv_heads;
  p.layout = options.layout;
  p.sparse = shape.sparse;
  p.over_full = shape.over_full;
  p.full_pages = shape.full_pages;
  return p;
}

StepShape GpuDecoder::Impl::ShapeAt(int32_t t) const {
  std::vector<int64_t> positions;
  for (int32_t b = 0; b < options.batch; ++b) {
    positions.push_back((options.real() ? options.prompt_lengths[b] : options.context) + t);
  }
  StepShape step = StepShapeAt(PlanShape(), std::move(positions), t);
  if (generation != nullptr && !generation->forced.empty()) {
    for (const std::vector<int32_t>& row : generation->forced) {
      step.next_forced.push_back(size_t(t) + 1 < row.size() ? row[t + 1] : -1);
    }
  }
  return step;
}

absl::Status GpuDecoder::Impl::EnqueueStep(
    const StepInputs& in, bool prime, const std::function<absl::Status(int)>& after_layer) {
  const ModelConfig& c = model->config();
  if (options.real()) {
    FREEKV_RETURN_IF_ERROR(model->Embed(options.batch, stream));  // the picked tokens
  } else {
    FREEKV_RETURN_IF_ERROR(DriftCuda(base.span<const BFloat16>(), options.drift,
                                     step_number(in),
                                     model->hidden().subspan(0, size_t(options.batch) * c.dim),
                                     stream));
  }
  if (options.policy == GpuPolicy::kFreeKv && !prime && spec_stream.has_value()) {
    FREEKV_RETURN_IF_ERROR(ForkSpeculation(in));
  }
  for (int l = 0; l < L(); ++l) {
    FREEKV_RETURN_IF_ERROR(EnqueueLayer(prime, l, in));
    FREEKV_RETURN_IF_ERROR(after_layer(l));
  }
  return absl::OkStatus();
}

absl::Status GpuDecoder::Impl::Step(int32_t t) {
  // Run at most two steps ahead of the GPU: the pinned input ring is three deep.
  if (t >= 2) {
    FREEKV_RETURN_IF_ERROR(
        WaitForEvent(step_end[t - 2], absl::StrCat("the end of decode step ", t - 2)));
  }
  const absl::Time start = absl::Now();
  const StepShape step_shape = ShapeAt(t);
  auto in = StepInputs::Build(step_shape);
  if (!in.ok()) return in.status();
  const StepJobs jobs =
      options.real() ? StepJobs::Plan(PlanShape(), step_shape.positions) : StepJobs{};
  const kernels::PinnedBuffer& staged = staged_inputs[t % kInputRing];
  const size_t n = in->all().size();
  std::copy(in->all().begin(), in->all().end(), staged.span<int32_t>().begin());
  std::copy(jobs.flat().begin(), jobs.flat().end(), staged.span<int32_t>().begin() + n);
  FREEKV_RETURN_IF_ERROR(kernels::CopyAsync(inputs.data(), staged.data(),
                                            (n + jobs.flat().size()) * sizeof(int32_t), stream));
  const absl::Span<const int32_t> device_jobs =
      inputs.span<const int32_t>().subspan(n, jobs.flat().size());
  FREEKV_RETURN_IF_ERROR(CopyWordsCuda(model->positions().subspan(0, options.batch),
                                       inputs.span<const int32_t>().subspan(0, options.batch),
                                       stream));
  if (options.real()) FREEKV_RETURN_IF_ERROR(BeforeRealStep(t, jobs, device_jobs));
  const bool prime = options.policy == GpuPolicy::kFreeKv && t == 0;
  const bool selects = in->max_candidates() > 0;
  if (options.policy == GpuPolicy::kFreeKv && !prime && selects) {
    checked_heads += uint64_t(L()) * in->num_lists();
  }
  if (options.graphs && !prime && !options.host_wait) {
    if (!graph_shape.has_value() || !graph_shape->SameShape(*in)) {
      step_graph.reset();
      FREEKV_RETURN_IF_ERROR(Emplace(kernels::CudaGraph::Capture(stream, [&] {
        return EnqueueStep(*in, false, [](int) { return absl::OkStatus(); });
      }), &step_graph));
      graph_shape = *in;
    }
    FREEKV_RETURN_IF_ERROR(step_graph->Launch(stream));
    for (int l = 0; l < L(); ++l) PushLayerItems(t, l, selects);
  } else if (options.host_wait) {
    // Each layer's recalls are waited for from the host before the next is enqueued.
    FREEKV_RETURN_IF_ERROR(EnqueueStep(*in, prime, [&](int l) {
      PushLayerItems(t, l, selects);
      return driver != nullptr ? driver->Finish() : absl::OkStatus();
    }));
  } else {
    // The driver has the step's items before the host enqueues any of its work, as
    // when a graph runs it. A launch may block the host: cuBLAS loads a kernel the
    // first time it runs it (cuLibraryLoadData), which waits for the GPU, while the
    // stream is held at a gate that only the driver opens. Pushed after that launch,
    // the item the driver needed never came (the first freekv step hung so).
    for (int l = 0; l < L(); ++l) PushLayerItems(t, l, selects);
    FREEKV_RETURN_IF_ERROR(
        EnqueueStep(*in, prime, [](int) { return absl::OkStatus(); }));
  }
  if (options.real()) FREEKV_RETURN_IF_ERROR(AfterRealStep(t, *in, jobs, device_jobs));
  FREEKV_RETURN_IF_ERROR(step_end[t].Record(stream));
  steps_enqueued = std::max(steps_enqueued, t + 1);
  enqueue_seconds += absl::ToDoubleSeconds(absl::Now() - start);
  return absl::OkStatus();
}

}  // namespace freekv::gpu
