#include "worker/exact_selection.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "kernels/attention.h"

namespace freekv {

absl::StatusOr<std::unique_ptr<ExactSelection>> ExactSelection::Create(
    const ModelConfig& model, const RetrievalConfig& config) {
  if (auto s = ValidateRetrievalConfig(config, model); !s.ok()) return s;
  absl::StatusOr<PagedKvCache> cache = PagedKvCache::Create(model, config.page_tokens);
  if (!cache.ok()) return cache.status();
  return std::unique_ptr<ExactSelection>(
      new ExactSelection(model, config, *std::move(cache)));
}

absl::Status ExactSelection::Attend(int layer, absl::Span<const BatchEntry> batch,
                                    absl::Span<const float> q, absl::Span<const float> k,
                                    absl::Span<const float> v, absl::Span<float> out) {
  const size_t q_row = model_.q_width(), kv_row = model_.kv_width();
  const float scale = 1.0f / std::sqrt(static_cast<float>(model_.head_dim));
  decode_.Clear();
  std::vector<size_t> decode_rows;
  size_t row = 0;
  for (const BatchEntry& e : batch) {
    const size_t n = e.tokens.size();
    if (auto s = cache_.Append(layer, e.sequence, e.start_pos,
                               k.subspan(row * kv_row, n * kv_row),
                               v.subspan(row * kv_row, n * kv_row));
        !s.ok()) {
      return s;
    }
    cache_.Gather(layer, e.sequence, k_seq_, v_seq_);
    if (n > 1) {
      const kernels::AttentionDims dims{model_.num_heads, model_.num_kv_heads,
                                        model_.head_dim, scale};
      if (auto s = kernels::CausalAttentionRef<float>(
              q.subspan(row * q_row, n * q_row), k_seq_, v_seq_, dims,
              out.subspan(row * q_row, n * q_row));
          !s.ok()) {
        return s;
      }
    } else {
      const absl::Span<const float> q_t = q.subspan(row * q_row, q_row);
      decode_.AddQuery(q_t);
      decode_rows.push_back(row);
      const int32_t length = cache_.length(layer, e.sequence);
      for (int32_t h = 0; h < model_.num_kv_heads; ++h) {
        AppendList(layer, e.sequence, h, q_t);
        decode_.EndList(RangesFor(config_, length).last_page_len);
      }
    }
    row += n;
  }
  if (decode_rows.empty()) return absl::OkStatus();
  absl::StatusOr<absl::Span<const float>> rows = decode_.Attend(cache_.pool(layer), model_);
  if (!rows.ok()) return rows.status();
  for (size_t i = 0; i < decode_rows.size(); ++i) {
    std::copy_n(rows->begin() + i * q_row, q_row, out.begin() + decode_rows[i] * q_row);
  }
  return absl::OkStatus();
}

void ExactSelection::AppendList(int layer, int64_t sequence, int32_t kv_head,
                                absl::Span<const float> q) {
  const absl::Span<const int32_t> pages = cache_.pages(layer, sequence);
  const int32_t length = cache_.length(layer, sequence);
  const PageRanges r = RangesFor(config_, length);
  if (config_.IsFullLayer(layer) || r.candidate_count() <= config_.selected_pages) {
    decode_.indices().insert(decode_.indices().end(), pages.begin(), pages.end());
    return;
  }
  // The group's mean softmax mass per candidate page; k_seq_ holds this sequence.
  const int32_t d = model_.head_dim, group = model_.group_size();
  const size_t kv_row = model_.kv_width();
  mass_.assign(r.num_pages, 0.0);
  std::vector<double> logits(length);
  for (int32_t h = kv_head * group; h < (kv_head + 1) * group; ++h) {
    const float* qh = q.data() + static_cast<size_t>(h) * d;
    for (int32_t t = 0; t < length; ++t) {
      const float* key = k_seq_.data() + t * kv_row + static_cast<size_t>(kv_head) * d;
      logits[t] = std::inner_product(qh, qh + d, key, 0.0) / std::sqrt(double(d));
    }
    const double max = *std::max_element(logits.begin(), logits.end());
    double sum = 0;
    for (double& x : logits) sum += (x = std::exp(x - max));
    for (int32_t t = 0; t < length; ++t)
      mass_[t / config_.page_tokens] += logits[t] / sum / group;
  }
  std::vector<int32_t> order(r.candidate_count());
  std::iota(order.begin(), order.end(), r.sink_end);
  std::partial_sort(order.begin(), order.begin() + config_.selected_pages, order.end(),
                    [&](int32_t a, int32_t b) {
                      return mass_[a] > mass_[b] || (mass_[a] == mass_[b] && a < b);
                    });
  order.resize(config_.selected_pages);
  std::sort(order.begin(), order.end());
  std::vector<int32_t>& indices = decode_.indices();
  for (int32_t p = 0; p < r.sink_end; ++p) indices.push_back(pages[p]);
  for (int32_t p : order) indices.push_back(pages[p]);
  for (int32_t p = r.window_begin; p < r.num_pages; ++p) indices.push_back(pages[p]);
}

}  // namespace freekv
