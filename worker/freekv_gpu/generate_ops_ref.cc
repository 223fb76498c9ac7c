// CPU references of generate_ops.h, and the size checks the CUDA launchers share.
#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "kernels/shape.h"
#include "worker/freekv_gpu/generate_ops.h"

namespace freekv::gpu {

using kernels::CheckPositive;
using kernels::CheckSize;

absl::Status CheckPickTokensShapes(size_t logits_size, int32_t vocab, size_t forced_size,
                                   size_t tokens_size, size_t host_out_size) {
  FREEKV_RETURN_IF_ERROR(CheckPositive("vocab", vocab));
  FREEKV_RETURN_IF_ERROR(CheckSize("logits", logits_size, tokens_size * vocab));
  if (forced_size != 0) {
    FREEKV_RETURN_IF_ERROR(CheckSize("forced", forced_size, tokens_size));
  }
  if (host_out_size != 0) {
    FREEKV_RETURN_IF_ERROR(CheckSize("host_out", host_out_size, tokens_size));
  }
  return absl::OkStatus();
}

absl::Status CheckCopyPagesShapes(const kernels::PagedKv<const BFloat16>& src,
                                  size_t src_pages_size,
                                  const kernels::PagedKv<BFloat16>& dst,
                                  size_t dst_pages_size) {
  FREEKV_RETURN_IF_ERROR(kernels::ValidatePagedKv(src));
  FREEKV_RETURN_IF_ERROR(kernels::ValidatePagedKv(dst));
  if (src.page_tokens != dst.page_tokens || src.num_kv_heads != dst.num_kv_heads ||
      src.head_dim != dst.head_dim) {
    return absl::InvalidArgumentError(absl::StrCat(
        "src pages (page_tokens/num_kv_heads/head_dim ", src.page_tokens, "/",
        src.num_kv_heads, "/", src.head_dim, ") differ from dst pages (", dst.page_tokens,
        "/", dst.num_kv_heads, "/", dst.head_dim, ")"));
  }
  return CheckSize("dst_pages", dst_pages_size, src_pages_size);
}

absl::Status CheckScatterWordsShapes(size_t indices_size, size_t values_size) {
  return CheckSize("values", values_size, indices_size);
}

absl::Status CheckSelectedToTableShapes(size_t selected_size, int32_t k,
                                        int32_t num_kv_heads, const SeqPages& pages,
                                        size_t starts_size) {
  FREEKV_RETURN_IF_ERROR(CheckPositive("k", k));
  FREEKV_RETURN_IF_ERROR(CheckPositive("num_kv_heads", num_kv_heads));
  FREEKV_RETURN_IF_ERROR(CheckPositive("pages.count", pages.count));
  if (pages.first < 0 || pages.first + pages.count > pages.pages_per_seq) {
    return absl::InvalidArgumentError(absl::StrCat(
        "pages [", pages.first, ", ", pages.first, " + ", pages.count,
        ") do not fit a sequence's ", pages.pages_per_seq, " pool pages"));
  }
  if (starts_size % num_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "starts has ", starts_size, " entries, not a multiple of ", num_kv_heads,
        " KV heads"));
  }
  return CheckSize("selected", selected_size, starts_size * k);
}

absl::Status PickTokensRef(absl::Span<const float> logits, int32_t vocab,
                           absl::Span<const int32_t> forced, absl::Span<int32_t> tokens,
                           absl::Span<int32_t> host_out) {
  FREEKV_RETURN_IF_ERROR(CheckPickTokensShapes(logits.size(), vocab, forced.size(),
                                               tokens.size(), host_out.size()));
  for (size_t b = 0; b < tokens.size(); ++b) {
    int32_t token = 0;
    {
      const float* row = logits.data() + b * vocab;
      float best = 0;
      int32_t at = -1;  // no non-NaN entry seen yet
      for (int32_t i = 0; i < vocab; ++i) {
        if (std::isnan(row[i])) continue;
        if (at < 0 || row[i] > best) best = row[i], at = i;
      }
      token = std::max(at, 0);
    }
    tokens[b] = !forced.empty() && forced[b] >= 0 ? forced[b] : token;
    if (!host_out.empty()) host_out[b] = token;
  }
  return absl::OkStatus();
}

absl::Status CopyPagesRef(const kernels::PagedKv<const BFloat16>& src,
                          absl::Span<const int32_t> src_pages,
                          const kernels::PagedKv<BFloat16>& dst,
                          absl::Span<const int32_t> dst_pages) {
  FREEKV_RETURN_IF_ERROR(
      CheckCopyPagesShapes(src, src_pages.size(), dst, dst_pages.size()));
  for (size_t i = 0; i < src_pages.size(); ++i) {
    if (src_pages[i] < 0 || src_pages[i] >= src.num_pages) {
      return absl::InvalidArgumentError(absl::StrCat(
          "src_pages[", i, "] = ", src_pages[i], " is outside the ", src.num_pages,
          " pages of src"));
    }
    if (dst_pages[i] < 0 || dst_pages[i] >= dst.num_pages) {
      return absl::InvalidArgumentError(absl::StrCat(
          "dst_pages[", i, "] = ", dst_pages[i], " is outside the ", dst.num_pages,
          " pages of dst"));
    }
  }
  const int64_t elems = src.page_elems();
  for (size_t i = 0; i < src_pages.size(); ++i) {
    const int64_t from = src_pages[i] * src.page_stride;
    const int64_t to = dst_pages[i] * dst.page_stride;
    std::copy_n(src.k + from, elems, dst.k + to);
    std::copy_n(src.v + from, elems, dst.v + to);
  }
  return absl::OkStatus();
}

absl::Status ScatterWordsRef(absl::Span<int32_t> dst, absl::Span<const int32_t> indices,
                             absl::Span<const int32_t> values) {
  FREEKV_RETURN_IF_ERROR(CheckScatterWordsShapes(indices.size(), values.size()));
  for (size_t i = 0; i < indices.size(); ++i) {
    if (indices[i] < 0 || static_cast<size_t>(indices[i]) >= dst.size()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "indices[", i, "] = ", indices[i], " is outside dst of ", dst.size(), " words"));
    }
  }
  for (size_t i = 0; i < indices.size(); ++i) dst[indices[i]] = values[i];
  return absl::OkStatus();
}

absl::Status SelectedToTableRef(absl::Span<const int32_t> selected, int32_t k,
                                int32_t num_kv_heads, const SeqPages& pages,
                                absl::Span<const int32_t> starts,
                                absl::Span<int32_t> indices) {
  FREEKV_RETURN_IF_ERROR(CheckSelectedToTableShapes(selected.size(), k, num_kv_heads,
                                                    pages, starts.size()));
  // Check everything first, so that a refused call writes nothing.
  for (size_t e = 0; e < selected.size(); ++e) {
    const size_t i = e / k, j = e % k;
    if (selected[e] < 0) continue;
    if (selected[e] >= pages.count) {
      return absl::InvalidArgumentError(absl::StrCat(
          "selected[", e, "] = ", selected[e], " is not below pages.count ", pages.count));
    }
    const int64_t to = int64_t{starts[i]} + j;
    if (to < 0 || to >= static_cast<int64_t>(indices.size())) {
      return absl::InvalidArgumentError(absl::StrCat(
          "starts[", i, "] = ", starts[i], " puts entry ", j, " outside indices of ",
          indices.size()));
    }
  }
  for (size_t e = 0; e < selected.size(); ++e) {
    if (selected[e] < 0) continue;
    const size_t i = e / k, j = e % k;
    indices[starts[i] + j] = static_cast<int32_t>(i / num_kv_heads) * pages.pages_per_seq +
                             pages.first + selected[e];
  }
  return absl::OkStatus();
}

}  // namespace freekv::gpu
