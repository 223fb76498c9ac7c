// RetrievalPolicy: attention. Decode steps go through the sparse paged decode kernel
// with one page list per (sequence, KV head): sinks, the selected pages (from the
// resident slots, or for the oracle straight from its full cache), then the window,
// in ascending logical order so that a list covering every page computes exactly what
// full attention computes. Prefills attend densely.
#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "kernels/attention.h"
#include "worker/retrieval_policy.h"

namespace freekv {

absl::Status RetrievalPolicy::AttendDecode(int layer, absl::Span<const BatchEntry> batch,
                                           absl::Span<const size_t> rows,
                                           absl::Span<const float> q,
                                           absl::Span<float> out) {
  const size_t q_row = model_.q_width();
  decode_.Clear();
  for (size_t i = 0; i < batch.size(); ++i) {
    if (batch[i].tokens.size() != 1) continue;
    decode_.AddQuery(q.subspan(rows[i] * q_row, q_row));
    const SequenceLayer& s = State(batch[i].sequence, layer);
    const int32_t last_len = RangesFor(config_, s.length).last_page_len;
    for (int32_t h = 0; h < model_.num_kv_heads; ++h) {
      if (auto st = AppendList(layer, s, h); !st.ok()) {
        return absl::InternalError(absl::StrCat("sequence ", batch[i].sequence, " layer ",
                                                layer, ": ", st.message()));
      }
      decode_.EndList(last_len);
    }
  }
  if (decode_.empty()) return absl::OkStatus();
  absl::StatusOr<absl::Span<const float>> attended =
      decode_.Attend(pools_[layer].const_view(), model_);
  if (!attended.ok()) return attended.status();
  size_t next = 0;
  for (size_t i = 0; i < batch.size(); ++i) {
    if (batch[i].tokens.size() != 1) continue;
    std::copy_n(attended->begin() + next * q_row, q_row, out.begin() + rows[i] * q_row);
    ++next;
  }
  return absl::OkStatus();
}

absl::Status RetrievalPolicy::AppendList(int layer, const SequenceLayer& s,
                                         int32_t kv_head) {
  const PageRanges r = RangesFor(config_, s.length);
  std::vector<int32_t>& indices = decode_.indices();
  const bool full = config_.IsFullLayer(layer);
  const int32_t sink_end = full ? r.num_pages : r.sink_end;
  for (int32_t p = 0; p < sink_end; ++p) indices.push_back(s.local[p]);
  if (full) return absl::OkStatus();
  const int32_t k = config_.selected_pages;
  const absl::Span<const int32_t> selected =
      absl::MakeConstSpan(s.selected).subspan(kv_head * k, k);
  const absl::Span<const int32_t> resident =
      absl::MakeConstSpan(s.resident).subspan(kv_head * k, k);
  for (int32_t page : selected) {
    if (page < 0) continue;
    if (!r.is_candidate(page)) {
      return absl::InternalError(absl::StrCat("selected page ", page, " of KV head ",
                                              kv_head, " is not a candidate"));
    }
    if (!service()) {
      indices.push_back(s.local[page]);
      continue;
    }
    const auto slot = std::find(resident.begin(), resident.end(), page);
    if (slot == resident.end()) {
      return absl::InternalError(absl::StrCat("selected page ", page, " of KV head ",
                                              kv_head, " is in no resident slot"));
    }
    indices.push_back(s.slot_pool[slot - resident.begin()]);
  }
  for (int32_t p = r.window_begin; p < r.num_pages; ++p) indices.push_back(s.local[p]);
  return absl::OkStatus();
}

absl::Status RetrievalPolicy::AttendPrefill(const BatchEntry& entry, size_t row,
                                            absl::Span<const float> q,
                                            absl::Span<const float> k,
                                            absl::Span<const float> v,
                                            absl::Span<float> out) {
  // Append() admitted this multi-token entry only at position 0, so its own keys and
  // values are the whole sequence.
  const size_t n = entry.tokens.size();
  const size_t q_row = model_.q_width(), kv_row = model_.kv_width();
  kernels::AttentionDims dims;
  dims.num_q_heads = model_.num_heads;
  dims.num_kv_heads = model_.num_kv_heads;
  dims.head_dim = model_.head_dim;
  dims.scale = 1.0f / std::sqrt(static_cast<float>(model_.head_dim));
  return kernels::CausalAttentionRef<float>(
      q.subspan(row * q_row, n * q_row), k.subspan(row * kv_row, n * kv_row),
      v.subspan(row * kv_row, n * kv_row), dims, out.subspan(row * q_row, n * q_row));
}

}  // namespace freekv
