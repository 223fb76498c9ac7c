// CPU reference of decode_attention.h: each (sequence, query head) walks its page
// list in chunks of pages_per_split pages, one OnlineSoftmax per chunk, and merges the
// chunks' states with the same arithmetic as MergeStatesRef.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/decode_attention.h"
#include "kernels/online_softmax.h"

namespace freekv {
namespace kernels {

namespace {

// Host-side check of what ValidatePageTable cannot see: the contents.
absl::Status CheckTableContents(const PageTable& t, int32_t num_pages,
                                int32_t page_tokens) {
  if (t.indptr[0] != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("PageTable.indptr[0] must be 0, got ", t.indptr[0]));
  }
  for (int32_t i = 0; i < t.num_lists(); ++i) {
    if (t.indptr[i + 1] <= t.indptr[i]) {
      return absl::InvalidArgumentError(absl::StrCat("PageTable list ", i, " is empty"));
    }
    if (t.last_page_len[i] < 1 || t.last_page_len[i] > page_tokens) {
      return absl::InvalidArgumentError(absl::StrCat(
          "PageTable.last_page_len[", i, "] is ", t.last_page_len[i]));
    }
  }
  if (static_cast<size_t>(t.indptr[t.num_lists()]) != t.indices.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "PageTable.indices has ", t.indices.size(), " entries, indptr ends at ",
        t.indptr[t.num_lists()]));
  }
  for (size_t i = 0; i < t.indices.size(); ++i) {
    if (t.indices[i] < 0 || t.indices[i] >= num_pages) {
      return absl::InvalidArgumentError(
          absl::StrCat("PageTable.indices[", i, "] is ", t.indices[i]));
    }
  }
  return absl::OkStatus();
}

// out = sum_p w_p * o_p with w_p = exp(lse_p - lse); returns lse.
float MergeRow(const float* o_parts, const float* lse_parts, size_t num_parts,
               size_t part_stride, size_t lse_stride, size_t head_dim, float* out) {
  float max_lse = -std::numeric_limits<float>::infinity();
  for (size_t p = 0; p < num_parts; ++p) max_lse = std::max(max_lse, lse_parts[p * lse_stride]);
  std::fill(out, out + head_dim, 0.0f);
  if (std::isinf(max_lse)) return max_lse;
  float sum = 0.0f;
  for (size_t p = 0; p < num_parts; ++p) sum += std::exp(lse_parts[p * lse_stride] - max_lse);
  const float lse = max_lse + std::log(sum);
  for (size_t p = 0; p < num_parts; ++p) {
    const float w = std::exp(lse_parts[p * lse_stride] - lse);
    if (w == 0.0f) continue;
    for (size_t i = 0; i < head_dim; ++i) out[i] += w * o_parts[p * part_stride + i];
  }
  return lse;
}

}  // namespace

absl::Status MergeStatesRef(absl::Span<const float> o_parts,
                            absl::Span<const float> lse_parts, int32_t num_parts,
                            int32_t head_dim, absl::Span<float> out,
                            absl::Span<float> lse) {
  FREEKV_RETURN_IF_ERROR(CheckPositive("num_parts", num_parts));
  FREEKV_RETURN_IF_ERROR(CheckPositive("head_dim", head_dim));
  FREEKV_RETURN_IF_ERROR(CheckRows("lse_parts", lse_parts.size(), num_parts));
  const size_t rows = lse_parts.size() / num_parts;
  FREEKV_RETURN_IF_ERROR(CheckSize("o_parts", o_parts.size(), lse_parts.size() * head_dim));
  FREEKV_RETURN_IF_ERROR(CheckSize("out", out.size(), rows * head_dim));
  if (!lse.empty()) FREEKV_RETURN_IF_ERROR(CheckSize("lse", lse.size(), rows));
  for (size_t r = 0; r < rows; ++r) {
    const float row_lse =
        MergeRow(o_parts.data() + r * head_dim, lse_parts.data() + r, num_parts,
                 rows * head_dim, rows, head_dim, out.data() + r * head_dim);
    if (!lse.empty()) lse[r] = row_lse;
  }
  return absl::OkStatus();
}

template <typename T>
absl::Status PagedDecodeAttentionRef(absl::Span<const T> q, const PagedKv<const T>& kv,
                                     const PageTable& table, const DecodeOptions& options,
                                     absl::Span<T> out, absl::Span<float> lse) {
  FREEKV_RETURN_IF_ERROR(ValidatePagedKv(kv));
  FREEKV_RETURN_IF_ERROR(CheckGqa(options.num_q_heads, kv.num_kv_heads));
  if (options.pages_per_split < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("pages_per_split must be >= 0, got ", options.pages_per_split));
  }
  const size_t d = kv.head_dim;
  const size_t hq = options.num_q_heads;
  FREEKV_RETURN_IF_ERROR(CheckRows("q", q.size(), hq * d));
  const int32_t num_seqs = static_cast<int32_t>(q.size() / (hq * d));
  FREEKV_RETURN_IF_ERROR(CheckSize("out", out.size(), q.size()));
  if (!lse.empty()) FREEKV_RETURN_IF_ERROR(CheckSize("lse", lse.size(), num_seqs * hq));
  FREEKV_RETURN_IF_ERROR(ValidatePageTable(table, num_seqs, kv.num_kv_heads));
  FREEKV_RETURN_IF_ERROR(CheckTableContents(table, kv.num_pages, kv.page_tokens));

  const int32_t group = options.num_q_heads / kv.num_kv_heads;
  std::vector<float> o_parts, lse_parts;
  for (int32_t b = 0; b < num_seqs; ++b) {
    for (int32_t h = 0; h < options.num_q_heads; ++h) {
      const int32_t kvh = h / group;
      const int32_t list = b * table.table_heads + (table.table_heads == 1 ? 0 : kvh);
      const int32_t first = table.indptr[list];
      const int32_t n = table.indptr[list + 1] - first;
      const int32_t chunk = options.pages_per_split > 0 ? options.pages_per_split : n;
      const int32_t num_parts = (n + chunk - 1) / chunk;
      o_parts.assign(size_t{static_cast<uint32_t>(num_parts)} * d, 0.0f);
      lse_parts.assign(num_parts, 0.0f);
      const T* qh = q.data() + (b * hq + h) * d;
      for (int32_t part = 0; part < num_parts; ++part) {
        OnlineSoftmax state(d);
        for (int32_t e = part * chunk; e < std::min(n, (part + 1) * chunk); ++e) {
          const int32_t page = table.indices[first + e];
          const int32_t tokens = e == n - 1 ? table.last_page_len[list] : kv.page_tokens;
          for (int32_t t = 0; t < tokens; ++t) {
            const int64_t off = kv.offset(page, t, kvh);
            state.Add(options.scale * DotAsFloat(qh, kv.k + off, d), kv.v + off);
          }
        }
        state.Write(o_parts.data() + part * d);
        lse_parts[part] = state.lse();
      }
      std::vector<float> merged(d);
      const float row_lse = MergeRow(o_parts.data(), lse_parts.data(), num_parts, d, 1, d,
                                     merged.data());
      for (size_t i = 0; i < d; ++i) out[(b * hq + h) * d + i] = FromFloat<T>(merged[i]);
      if (!lse.empty()) lse[b * hq + h] = row_lse;
    }
  }
  return absl::OkStatus();
}

#define FREEKV_INSTANTIATE(T)                                                        \
  template absl::Status PagedDecodeAttentionRef<T>(                                  \
      absl::Span<const T>, const PagedKv<const T>&, const PageTable&,                \
      const DecodeOptions&, absl::Span<T>, absl::Span<float>);
FREEKV_INSTANTIATE(float)
FREEKV_INSTANTIATE(BFloat16)
#undef FREEKV_INSTANTIATE

}  // namespace kernels
}  // namespace freekv
