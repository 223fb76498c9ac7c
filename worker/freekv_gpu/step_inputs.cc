#include "worker/freekv_gpu/step_inputs.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace freekv::gpu {

PageSplit SplitAt(int64_t position, int32_t page_tokens, const ResidentLayout& layout) {
  PageSplit s;
  s.pages = position / page_tokens + 1;
  s.token = static_cast<int32_t>(position % page_tokens);
  s.sink_end = static_cast<int32_t>(std::min<int64_t>(layout.sink, s.pages));
  s.window_begin = std::max<int64_t>(s.sink_end, s.pages - layout.window);
  s.candidates = static_cast<int32_t>(s.window_begin - s.sink_end);
  s.slots = std::min(layout.selected, s.candidates);
  return s;
}

int32_t PoolPageOf(bool resident, const ResidentLayout& layout, int32_t full_pages_per_seq,
                   int32_t b, int64_t p) {
  if (!resident) return static_cast<int32_t>(b * full_pages_per_seq + p);
  return p < layout.sink ? static_cast<int32_t>(b * layout.pages_per_seq() + p)
                         : layout.window_page(b, p);
}

std::vector<int64_t> PromotionsAt(absl::Span<const int64_t> positions, int32_t page_tokens,
                                  const ResidentLayout& layout) {
  std::vector<int64_t> out(positions.size(), -1);
  for (size_t b = 0; b < positions.size(); ++b) {
    if (positions[b] % page_tokens != 0) continue;  // no page starts: none leaves
    const int64_t leaving = positions[b] / page_tokens - layout.window;
    if (leaving >= layout.sink && leaving - layout.sink < layout.capacity()) out[b] = leaving;
  }
  return out;
}

namespace {

absl::Status CheckShape(const StepShape& shape) {
  if (shape.positions.empty() || shape.num_kv_heads <= 0 || shape.page_tokens <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "StepShape needs sequences and positive heads and page_tokens; got ",
        shape.positions.size(), "/", shape.num_kv_heads, "/", shape.page_tokens));
  }
  if (!shape.next_forced.empty() && shape.next_forced.size() != shape.positions.size()) {
    return absl::InvalidArgumentError(absl::StrCat("next_forced has ",
                                                   shape.next_forced.size(), " entries for ",
                                                   shape.positions.size(), " sequences"));
  }
  for (size_t b = 0; b < shape.positions.size(); ++b) {
    const int64_t pos = shape.positions[b];
    if (pos < 0) {
      return absl::InvalidArgumentError(absl::StrCat("sequence ", b, " position ", pos));
    }
    if (shape.kind != TableKind::kResident &&
        pos / shape.page_tokens >= shape.full_pages_per_seq) {
      return absl::InvalidArgumentError(absl::StrCat(
          "sequence ", b, " at position ", pos, " needs ", pos / shape.page_tokens + 1,
          " pages; the full pool has ", shape.full_pages_per_seq, " per sequence"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<StepInputs> StepInputs::Build(const StepShape& shape) {
  FREEKV_RETURN_IF_ERROR(CheckShape(shape));
  const ResidentLayout& lay = shape.layout;
  const int32_t batch = shape.batch();
  const bool per_head = shape.kind != TableKind::kFull;
  const int32_t heads = per_head ? shape.num_kv_heads : 1;
  StepInputs in;
  in.batch_ = batch;
  in.lists_ = batch * heads;
  std::vector<PageSplit> splits;
  std::vector<int32_t> lengths;  // per sequence: the pages each of its lists reads
  for (int64_t pos : shape.positions) {
    const PageSplit s = SplitAt(pos, shape.page_tokens, lay);
    splits.push_back(s);
    const int64_t n = per_head ? s.sink_end + s.slots + (s.pages - s.window_begin) : s.pages;
    lengths.push_back(static_cast<int32_t>(n));
    in.max_pages_ = std::max(in.max_pages_, lengths.back());
    if (per_head) in.max_candidates_ = std::max(in.max_candidates_, s.candidates);
  }
  std::vector<int32_t>& d = in.data_;
  int64_t total = 0;
  for (int32_t n : lengths) total += int64_t{n} * heads;
  d.assign(in.indices_at() + total, 0);
  auto pool_page = [&](int32_t b, int64_t p) {
    return PoolPageOf(shape.kind == TableKind::kResident, lay, shape.full_pages_per_seq, b, p);
  };
  int32_t at = 0;  // next free place in the indices
  for (int32_t b = 0; b < batch; ++b) {
    const PageSplit& s = splits[b];
    d[in.positions_at() + b] = static_cast<int32_t>(shape.positions[b]);
    d[in.append_pages_at() + b] = pool_page(b, s.pages - 1);
    d[in.append_tokens_at() + b] = s.token;
    d[in.candidate_begin_at() + b] = s.sink_end;
    d[in.candidate_count_at() + b] = per_head ? s.candidates : 0;
    d[in.next_forced_at() + b] = shape.next_forced.empty() ? -1 : shape.next_forced[b];
    for (int32_t h = 0; h < heads; ++h) {
      const int32_t list = b * heads + h;
      d[in.indptr_at() + list] = at;
      d[in.last_len_at() + list] = s.token + 1;
      int32_t* out = d.data() + in.indices_at() + at;
      if (!per_head) {
        for (int64_t p = 0; p < s.pages; ++p) out[p] = pool_page(b, p);
        at += lengths[b];
        continue;
      }
      for (int32_t p = 0; p < s.sink_end; ++p) *out++ = pool_page(b, p);
      d[in.selected_start_at() + list] = static_cast<int32_t>(out - d.data() - in.indices_at());
      for (int32_t j = 0; j < s.slots; ++j) {
        // kSelectedOverFull: the device writes these from the selection.
        *out++ = shape.kind == TableKind::kResident ? lay.selected_page(b, j) : -1;
      }
      for (int64_t p = s.window_begin; p < s.pages; ++p) *out++ = pool_page(b, p);
      at += lengths[b];
    }
  }
  d[in.indptr_at() + in.lists_] = at;
  d[in.step_at()] = shape.step;
  return in;
}

}  // namespace freekv::gpu
