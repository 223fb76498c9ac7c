#include "worker/paged_decode_batch.h"

#include <cmath>

#include "kernels/decode_attention.h"

namespace freekv {

void PagedDecodeBatch::Clear() {
  q_rows_.clear();
  indptr_.assign(1, 0);
  indices_.clear();
  last_len_.clear();
}

void PagedDecodeBatch::AddQuery(absl::Span<const float> q) {
  q_rows_.insert(q_rows_.end(), q.begin(), q.end());
}

void PagedDecodeBatch::EndList(int32_t last_page_len) {
  indptr_.push_back(static_cast<int32_t>(indices_.size()));
  last_len_.push_back(last_page_len);
}

absl::StatusOr<absl::Span<const float>> PagedDecodeBatch::Attend(
    const kernels::PagedKv<const float>& pool, const ModelConfig& model) {
  kernels::PageTable table;
  table.indptr = indptr_;
  table.indices = indices_;
  table.last_page_len = last_len_;
  table.table_heads = model.num_kv_heads;
  kernels::DecodeOptions options;
  options.num_q_heads = model.num_heads;
  options.scale = 1.0f / std::sqrt(static_cast<float>(model.head_dim));
  out_rows_.resize(q_rows_.size());
  if (absl::Status s = kernels::PagedDecodeAttentionRef<float>(q_rows_, pool, table, options,
                                                               absl::MakeSpan(out_rows_));
      !s.ok()) {
    return s;
  }
  return absl::Span<const float>(out_rows_);
}

}  // namespace freekv
