#include "worker/model/full_attention.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "kernels/attention.h"
#include "kernels/decode_attention.h"

namespace freekv {

absl::StatusOr<std::unique_ptr<FullAttention>> FullAttention::Create(
    const ModelConfig& config, int32_t page_tokens) {
  absl::StatusOr<PagedKvCache> cache = PagedKvCache::Create(config, page_tokens);
  if (!cache.ok()) return cache.status();
  return std::unique_ptr<FullAttention>(new FullAttention(config, std::move(*cache)));
}

absl::Status FullAttention::Attend(int layer, absl::Span<const BatchEntry> batch,
                                   absl::Span<const float> q, absl::Span<const float> k,
                                   absl::Span<const float> v, absl::Span<float> out) {
  const size_t kv_row = config_.kv_width();
  size_t total = 0;
  for (const BatchEntry& e : batch) total += e.tokens.size();
  if (q.size() != total * config_.q_width() || k.size() != total * kv_row ||
      v.size() != k.size() || out.size() != q.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "attention inputs for ", total, " tokens have sizes q ", q.size(), ", k ", k.size(),
        ", v ", v.size(), ", out ", out.size()));
  }
  std::vector<size_t> decode_entries, decode_rows;
  size_t row = 0;
  for (size_t i = 0; i < batch.size(); ++i) {
    const BatchEntry& e = batch[i];
    const size_t n = e.tokens.size();
    if (auto s = cache_.Append(layer, e.sequence, e.start_pos, k.subspan(row * kv_row, n * kv_row),
                               v.subspan(row * kv_row, n * kv_row));
        !s.ok()) {
      return s;
    }
    if (n == 1) {
      decode_entries.push_back(i);
      decode_rows.push_back(row);
    }
    row += n;
  }
  row = 0;
  for (const BatchEntry& e : batch) {
    if (e.tokens.size() > 1) {
      if (auto s = PrefillRows(layer, e, row, q, out); !s.ok()) return s;
    }
    row += e.tokens.size();
  }
  if (decode_entries.empty()) return absl::OkStatus();
  return DecodeRows(layer, batch, decode_entries, decode_rows, q, out);
}

absl::Status FullAttention::DecodeRows(int layer, absl::Span<const BatchEntry> batch,
                                       absl::Span<const size_t> entries,
                                       absl::Span<const size_t> rows,
                                       absl::Span<const float> q, absl::Span<float> out) {
  const size_t q_row = config_.q_width();
  q_rows_.resize(rows.size() * q_row);
  out_rows_.resize(rows.size() * q_row);
  indptr_.assign(1, 0);
  indices_.clear();
  last_len_.clear();
  for (size_t i = 0; i < entries.size(); ++i) {
    std::copy_n(q.begin() + rows[i] * q_row, q_row, q_rows_.begin() + i * q_row);
    const int64_t sequence = batch[entries[i]].sequence;
    const absl::Span<const int32_t> pages = cache_.pages(layer, sequence);
    indices_.insert(indices_.end(), pages.begin(), pages.end());
    indptr_.push_back(static_cast<int32_t>(indices_.size()));
    last_len_.push_back(cache_.length(layer, sequence) -
                        (static_cast<int32_t>(pages.size()) - 1) * cache_.page_tokens());
  }
  kernels::PageTable table;
  table.indptr = indptr_;
  table.indices = indices_;
  table.last_page_len = last_len_;
  table.table_heads = 1;  // full attention: every head reads the same pages
  kernels::DecodeOptions options;
  options.num_q_heads = config_.num_heads;
  options.scale = 1.0f / std::sqrt(static_cast<float>(config_.head_dim));
  if (auto s = kernels::PagedDecodeAttentionRef<float>(q_rows_, cache_.pool(layer), table,
                                                       options, absl::MakeSpan(out_rows_));
      !s.ok()) {
    return s;
  }
  for (size_t i = 0; i < rows.size(); ++i) {
    std::copy_n(out_rows_.begin() + i * q_row, q_row, out.begin() + rows[i] * q_row);
  }
  return absl::OkStatus();
}

absl::Status FullAttention::PrefillRows(int layer, const BatchEntry& entry, size_t row,
                                        absl::Span<const float> q, absl::Span<float> out) {
  const size_t q_row = config_.q_width();
  const size_t n = entry.tokens.size();
  cache_.Gather(layer, entry.sequence, k_seq_, v_seq_);
  kernels::AttentionDims dims;
  dims.num_q_heads = config_.num_heads;
  dims.num_kv_heads = config_.num_kv_heads;
  dims.head_dim = config_.head_dim;
  dims.scale = 1.0f / std::sqrt(static_cast<float>(config_.head_dim));
  return kernels::CausalAttentionRef<float>(q.subspan(row * q_row, n * q_row), k_seq_,
                                            v_seq_, dims, out.subspan(row * q_row, n * q_row));
}

}  // namespace freekv
