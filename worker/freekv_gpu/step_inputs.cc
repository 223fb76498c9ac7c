#include "worker/freekv_gpu/step_inputs.h"

#include "absl/strings/str_cat.h"

namespace freekv::gpu {

absl::StatusOr<StepInputs> StepInputs::Build(const StepShape& shape) {
  if (shape.batch <= 0 || shape.num_kv_heads <= 0 || shape.page_tokens <= 0 ||
      shape.position < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "StepShape needs positive batch, heads and page_tokens and a position >= 0; got ",
        shape.batch, "/", shape.num_kv_heads, "/", shape.page_tokens, "/",
        shape.position));
  }
  const ResidentLayout& lay = shape.layout;
  const int64_t page = shape.position / shape.page_tokens;  // the new token's page
  const int32_t token = shape.position % shape.page_tokens;
  const int64_t pages = page + 1;  // including the partial one
  StepInputs in;
  in.batch_ = shape.batch;
  if (shape.sparse) {
    if (pages < int64_t{lay.sink} + lay.window + 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          "position ", shape.position, " spans ", pages, " pages; a sparse step needs ",
          lay.sink + lay.window + 1, " (sink + window + one candidate)"));
    }
    in.lists_ = shape.batch * shape.num_kv_heads;
    in.max_pages_ = lay.pages_per_seq();
    in.max_candidates_ = static_cast<int32_t>(pages - lay.sink - lay.window);
  } else {
    if (pages > shape.full_pages_per_seq) {
      return absl::InvalidArgumentError(absl::StrCat(
          "position ", shape.position, " needs ", pages, " pages; the full pool has ",
          shape.full_pages_per_seq, " per sequence"));
    }
    in.lists_ = shape.batch;
    in.max_pages_ = static_cast<int32_t>(pages);
  }
  std::vector<int32_t>& d = in.data_;
  d.resize(in.indices_at() + size_t(in.lists_) * in.max_pages_);
  for (int32_t b = 0; b < shape.batch; ++b) {
    d[in.positions_at() + b] = static_cast<int32_t>(shape.position);
    d[in.append_pages_at() + b] = shape.sparse
                                      ? lay.window_page(b, page)
                                      : static_cast<int32_t>(b * shape.full_pages_per_seq + page);
    d[in.append_tokens_at() + b] = token;
    d[in.candidate_begin_at() + b] = shape.sparse ? lay.sink : 0;
    d[in.candidate_count_at() + b] = in.max_candidates_;
  }
  d[in.step_at()] = shape.step;
  int32_t* indices = d.data() + in.indices_at();
  for (int32_t list = 0; list < in.lists_; ++list) {
    d[in.indptr_at() + list] = list * in.max_pages_;
    d[in.last_len_at() + list] = token + 1;
    int32_t* out = indices + size_t(list) * in.max_pages_;
    if (!shape.sparse) {
      for (int64_t p = 0; p < pages; ++p) out[p] = list * shape.full_pages_per_seq + p;
      continue;
    }
    const int32_t seq = list / shape.num_kv_heads;
    const int32_t base = seq * lay.pages_per_seq();
    for (int32_t p = 0; p < lay.sink + lay.selected; ++p) out[p] = base + p;
    for (int32_t w = 0; w < lay.window; ++w) {  // oldest first; the partial page last
      out[lay.sink + lay.selected + w] = lay.window_page(seq, pages - lay.window + w);
    }
  }
  d[in.indptr_at() + in.lists_] = in.lists_ * in.max_pages_;
  return in;
}

}  // namespace freekv::gpu
