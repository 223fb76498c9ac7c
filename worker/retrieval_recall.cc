// RetrievalPolicy: selection, correction and recalls (steps 2-4 of the hot path in
// DESIGN.md). Before attention, PrepareDecode makes every page the step needs
// resident; after attention, Speculate selects for the next step and sends its recall.
#include <algorithm>

#include "absl/time/clock.h"
#include "worker/retrieval_policy.h"

namespace freekv {

absl::Status RetrievalPolicy::PrepareDecode(int layer, absl::Span<const BatchEntry> batch,
                                            absl::Span<const size_t> rows,
                                            absl::Span<const float> q) {
  const size_t q_row = model_.q_width();
  std::vector<SliceToRecall> slices;
  std::vector<SlotFill> fills;
  if (mode_ == RetrievalMode::kBlocking) {
    for (size_t i = 0; i < batch.size(); ++i) {
      if (batch[i].tokens.size() != 1) continue;
      SequenceLayer& s = State(batch[i].sequence, layer);
      fills.clear();
      if (auto st = selector_.Select(s, RangesFor(config_, s.length),
                                     q.subspan(rows[i] * q_row, q_row), {}, fills);
          !st.ok()) {
        return st;
      }
      AddSlices(batch[i].sequence, s, fills, slices);
    }
    if (slices.empty()) return absl::OkStatus();
    absl::StatusOr<PendingRecall> recall = StartRecall(step_, layer, std::move(slices));
    if (!recall.ok()) return recall.status();
    return FinishRecall(layer, *recall);
  }
  if (auto s = Correct(layer, batch, rows, q, slices); !s.ok()) return s;
  // The urgent recall goes into the layer's other staging slot while the speculative
  // one may still be landing; they are landed in the order they were issued.
  PendingRecall urgent;
  if (!slices.empty()) {
    absl::StatusOr<PendingRecall> recall = StartRecall(step_, layer, std::move(slices));
    if (!recall.ok()) return recall.status();
    urgent = std::move(*recall);
  }
  if (speculative_[layer].active) {
    if (auto s = FinishRecall(layer, speculative_[layer]); !s.ok()) return s;
  }
  return urgent.active ? FinishRecall(layer, urgent) : absl::OkStatus();
}

absl::Status RetrievalPolicy::Correct(int layer, absl::Span<const BatchEntry> batch,
                                      absl::Span<const size_t> rows,
                                      absl::Span<const float> q,
                                      std::vector<SliceToRecall>& urgent) {
  const size_t q_row = model_.q_width();
  const int32_t kv_heads = model_.num_kv_heads;
  std::vector<size_t> checked;  // entries with a previous query to compare with
  q_rows_.clear();
  q_prev_rows_.clear();
  for (size_t i = 0; i < batch.size(); ++i) {
    if (batch[i].tokens.size() != 1) continue;
    const SequenceLayer& s = State(batch[i].sequence, layer);
    if (s.q_prev.empty()) continue;
    checked.push_back(i);
    q_rows_.insert(q_rows_.end(), q.begin() + rows[i] * q_row,
                   q.begin() + (rows[i] + 1) * q_row);
    q_prev_rows_.insert(q_prev_rows_.end(), s.q_prev.begin(), s.q_prev.end());
  }
  if (checked.empty()) return absl::OkStatus();
  absl::StatusOr<int32_t> flagged = selector_.Flags(q_rows_, q_prev_rows_, flags_);
  if (!flagged.ok()) return flagged.status();
  LayerStats& stats = stats_.layers[layer];
  std::vector<SlotFill> fills;
  for (size_t j = 0; j < checked.size(); ++j) {
    const size_t i = checked[j];
    SequenceLayer& s = State(batch[i].sequence, layer);
    const absl::Span<const uint8_t> mask =
        absl::MakeConstSpan(flags_).subspan(j * kv_heads, kv_heads);
    const int64_t corrections = std::count(mask.begin(), mask.end(), 1);
    stats.correction_checks += kv_heads;
    stats.corrections += corrections;
    fills.clear();
    if (corrections > 0) {
      if (auto st = selector_.Select(s, RangesFor(config_, s.length),
                                     q.subspan(rows[i] * q_row, q_row), mask, fills);
          !st.ok()) {
        return st;
      }
    }
    const int64_t needed = std::count_if(s.selected.begin(), s.selected.end(),
                                         [](int32_t p) { return p >= 0; });
    stats.needed_pages += needed;
    stats.hit_pages += needed - static_cast<int64_t>(fills.size());
    AddSlices(batch[i].sequence, s, fills, urgent);
  }
  return absl::OkStatus();
}

absl::Status RetrievalPolicy::Speculate(int layer, absl::Span<const BatchEntry> batch,
                                        absl::Span<const size_t> rows,
                                        absl::Span<const float> q) {
  const size_t q_row = model_.q_width();
  std::vector<SliceToRecall> slices;
  std::vector<SlotFill> fills;
  for (size_t i = 0; i < batch.size(); ++i) {
    SequenceLayer& s = State(batch[i].sequence, layer);
    // The entry's last query stands in for the next step's.
    const absl::Span<const float> q_t =
        q.subspan((rows[i] + batch[i].tokens.size() - 1) * q_row, q_row);
    fills.clear();
    if (auto st = selector_.Select(s, RangesFor(config_, s.length + 1), q_t, {}, fills);
        !st.ok()) {
      return st;
    }
    AddSlices(batch[i].sequence, s, fills, slices);
    s.q_prev.assign(q_t.begin(), q_t.end());
  }
  if (slices.empty()) return absl::OkStatus();
  absl::StatusOr<PendingRecall> recall = StartRecall(step_ + 1, layer, std::move(slices));
  if (!recall.ok()) return recall.status();
  speculative_[layer] = std::move(*recall);
  return absl::OkStatus();
}

void RetrievalPolicy::AddSlices(int64_t sequence, const SequenceLayer& state,
                                absl::Span<const SlotFill> fills,
                                std::vector<SliceToRecall>& slices) {
  if (!service()) return;  // the oracle's pages are all on the worker already
  for (const SlotFill& f : fills) {
    slices.push_back(SliceToRecall{sequence, f.kv_head, f.page, state.slot_pool[f.slot]});
  }
}

absl::StatusOr<RetrievalPolicy::PendingRecall> RetrievalPolicy::StartRecall(
    uint64_t step, int layer, std::vector<SliceToRecall> slices) {
  absl::StatusOr<RecallTicket> ticket = link_->StartRecall(step, layer, slices);
  if (!ticket.ok()) return ticket.status();
  stats_.layers[layer].recalled_pages += slices.size();
  ++stats_.recall_requests;
  PendingRecall recall;
  recall.active = true;
  recall.ticket = *ticket;
  recall.slices = std::move(slices);
  return recall;
}

absl::Status RetrievalPolicy::FinishRecall(int layer, PendingRecall& recall) {
  const absl::Time start = absl::Now();
  absl::Status waited = link_->WaitRecall(recall.ticket);
  stats_.stall_seconds += absl::ToDoubleSeconds(absl::Now() - start);
  recall.active = false;
  if (!waited.ok()) return waited;
  return link_->LandRecall(recall.ticket, recall.slices, pools_[layer].view());
}

absl::Status RetrievalPolicy::Drain() {
  absl::Status first;
  for (int l = 0; l < model_.num_layers; ++l) {
    if (speculative_[l].active) first.Update(FinishRecall(l, speculative_[l]));
  }
  return first;
}

}  // namespace freekv
