// CPU references of select.h.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/select.h"

namespace freekv {
namespace kernels {

namespace {

bool Masked(absl::Span<const uint8_t> mask, size_t row) {
  return !mask.empty() && mask[row] == 0;
}

// Shape checks shared by the three steps: [num_seqs][num_kv_heads] rows.
absl::Status CheckRowsAndMask(const Candidates& c, int32_t num_kv_heads,
                              absl::Span<const uint8_t> head_mask) {
  FREEKV_RETURN_IF_ERROR(ValidateCandidates(c));
  FREEKV_RETURN_IF_ERROR(CheckPositive("num_kv_heads", num_kv_heads));
  FREEKV_RETURN_IF_ERROR(CheckCandidateContents(c, std::numeric_limits<int32_t>::max()));
  if (head_mask.empty()) return absl::OkStatus();
  return CheckSize("head_mask", head_mask.size(), c.num_seqs() * size_t{static_cast<uint32_t>(num_kv_heads)});
}

// One (sequence, KV head) of ResidentDiffRef; returns the number of recalls.
template <typename ScoreFn>
int32_t DiffRow(absl::Span<const int32_t> sel, absl::Span<const int32_t> res,
                ScoreFn score, absl::Span<int32_t> pages, absl::Span<int32_t> slots,
                absl::Span<int32_t> attend) {
  auto contains = [](absl::Span<const int32_t> set, int32_t page) {
    return std::find(set.begin(), set.end(), page) != set.end();
  };
  std::vector<int32_t> missing;
  for (int32_t page : sel) {
    if (page >= 0 && !contains(res, page)) missing.push_back(page);
  }
  std::sort(missing.begin(), missing.end());
  std::vector<int32_t> victims;  // empty slots first, then unselected by score
  for (int32_t slot = 0; slot < static_cast<int32_t>(res.size()); ++slot) {
    if (res[slot] < 0 || !contains(sel, res[slot])) victims.push_back(slot);
  }
  std::stable_sort(victims.begin(), victims.end(), [&](int32_t a, int32_t c) {
    const bool empty_a = res[a] < 0, empty_c = res[c] < 0;
    if (empty_a != empty_c) return empty_a;
    return !empty_a && score(res[a]) < score(res[c]);
  });
  for (size_t i = 0; i < pages.size(); ++i) {
    const bool used = i < missing.size();
    pages[i] = used ? missing[i] : -1;
    slots[i] = used ? victims[i] : -1;
  }
  for (size_t i = 0; i < attend.size(); ++i) {  // where each selected page will be
    const int32_t page = sel[i];
    attend[i] = -1;
    if (page < 0) continue;
    const auto held = std::find(res.begin(), res.end(), page);
    attend[i] = held != res.end()
                    ? static_cast<int32_t>(held - res.begin())
                    : victims[std::find(missing.begin(), missing.end(), page) - missing.begin()];
  }
  return static_cast<int32_t>(missing.size());
}

}  // namespace

absl::Status GroupSoftmaxRef(absl::Span<const float> scores, int32_t num_q_heads,
                             int32_t num_kv_heads, const Candidates& candidates,
                             absl::Span<const uint8_t> head_mask,
                             absl::Span<float> group_scores) {
  FREEKV_RETURN_IF_ERROR(CheckRowsAndMask(candidates, num_kv_heads, head_mask));
  FREEKV_RETURN_IF_ERROR(CheckGqa(num_q_heads, num_kv_heads));
  const size_t n = candidates.max_candidates;
  const size_t seqs = candidates.num_seqs();
  FREEKV_RETURN_IF_ERROR(CheckSize("scores", scores.size(), seqs * num_q_heads * n));
  FREEKV_RETURN_IF_ERROR(CheckSize("group_scores", group_scores.size(), seqs * num_kv_heads * n));
  const int32_t group = num_q_heads / num_kv_heads;
  for (size_t b = 0; b < seqs; ++b) {
    const size_t count = candidates.count[b];
    for (int32_t g = 0; g < num_kv_heads; ++g) {
      if (Masked(head_mask, b * num_kv_heads + g)) continue;
      float* out = group_scores.data() + (b * num_kv_heads + g) * n;
      std::fill(out, out + n, 0.0f);
      for (int32_t h = g * group; h < (g + 1) * group; ++h) {
        const float* s = scores.data() + (b * num_q_heads + h) * n;
        if (count == 0) break;
        const float max = *std::max_element(s, s + count);
        float sum = 0.0f;
        for (size_t j = 0; j < count; ++j) sum += std::exp(s[j] - max);
        const float w = 1.0f / (sum * group);
        for (size_t j = 0; j < count; ++j) out[j] += std::exp(s[j] - max) * w;
      }
    }
  }
  return absl::OkStatus();
}

absl::Status TopKPagesRef(absl::Span<const float> group_scores, int32_t num_kv_heads,
                          const Candidates& candidates, int32_t k,
                          absl::Span<const uint8_t> head_mask,
                          absl::Span<int32_t> selected) {
  FREEKV_RETURN_IF_ERROR(CheckRowsAndMask(candidates, num_kv_heads, head_mask));
  FREEKV_RETURN_IF_ERROR(CheckPositive("k", k));
  const size_t n = candidates.max_candidates;
  const size_t rows = candidates.num_seqs() * size_t{static_cast<uint32_t>(num_kv_heads)};
  FREEKV_RETURN_IF_ERROR(CheckSize("group_scores", group_scores.size(), rows * n));
  FREEKV_RETURN_IF_ERROR(CheckSize("selected", selected.size(), rows * k));
  std::vector<int32_t> order;
  for (size_t row = 0; row < rows; ++row) {
    if (Masked(head_mask, row)) continue;
    const size_t b = row / num_kv_heads;
    const float* s = group_scores.data() + row * n;
    order.resize(candidates.count[b]);
    std::iota(order.begin(), order.end(), 0);
    const size_t take = std::min<size_t>(k, order.size());
    // Highest score first; ties to the lower page.
    std::partial_sort(order.begin(), order.begin() + take, order.end(),
                      [s](int32_t a, int32_t c) { return s[a] > s[c] || (s[a] == s[c] && a < c); });
    std::sort(order.begin(), order.begin() + take);
    int32_t* out = selected.data() + row * k;
    for (size_t i = 0; i < static_cast<size_t>(k); ++i) {
      out[i] = i < take ? candidates.begin[b] + order[i] : -1;
    }
  }
  return absl::OkStatus();
}

absl::Status ResidentDiffRef(absl::Span<const int32_t> selected,
                             absl::Span<const int32_t> resident, int32_t capacity,
                             absl::Span<const float> group_scores, int32_t num_kv_heads,
                             const Candidates& candidates, int32_t k,
                             absl::Span<const uint8_t> head_mask,
                             const ResidentDiff& diff) {
  FREEKV_RETURN_IF_ERROR(CheckRowsAndMask(candidates, num_kv_heads, head_mask));
  FREEKV_RETURN_IF_ERROR(CheckPositive("k", k));
  if (capacity < k) {
    return absl::InvalidArgumentError(
        absl::StrCat("capacity ", capacity, " is below k ", k));
  }
  const size_t n = candidates.max_candidates;
  const size_t rows = candidates.num_seqs() * size_t{static_cast<uint32_t>(num_kv_heads)};
  FREEKV_RETURN_IF_ERROR(CheckSize("selected", selected.size(), rows * k));
  FREEKV_RETURN_IF_ERROR(CheckSize("resident", resident.size(), rows * capacity));
  FREEKV_RETURN_IF_ERROR(CheckSize("group_scores", group_scores.size(), rows * n));
  FREEKV_RETURN_IF_ERROR(CheckSize("diff.recall_pages", diff.recall_pages.size(), rows * k));
  FREEKV_RETURN_IF_ERROR(CheckSize("diff.recall_slots", diff.recall_slots.size(), rows * k));
  FREEKV_RETURN_IF_ERROR(CheckSize("diff.num_recall", diff.num_recall.size(), rows));
  if (!diff.attend_slots.empty()) {
    FREEKV_RETURN_IF_ERROR(CheckSize("diff.attend_slots", diff.attend_slots.size(), rows * k));
  }
  if (!diff.copy.empty()) {
    FREEKV_RETURN_IF_ERROR(CheckSize("diff.copy", diff.copy.size(), DiffCopyInts(rows, k)));
  }
  for (size_t row = 0; row < rows; ++row) {
    if (Masked(head_mask, row)) continue;
    const size_t b = row / num_kv_heads;
    const int32_t begin = candidates.begin[b];
    const int32_t count = candidates.count[b];
    const float* scores = group_scores.data() + row * n;
    diff.num_recall[row] = DiffRow(
        selected.subspan(row * k, k), resident.subspan(row * capacity, capacity),
        [=](int32_t page) {
          const int64_t j = int64_t{page} - begin;
          return j >= 0 && j < count ? scores[j] : -std::numeric_limits<float>::infinity();
        },
        diff.recall_pages.subspan(row * k, k), diff.recall_slots.subspan(row * k, k),
        diff.attend_slots.empty() ? absl::Span<int32_t>() : diff.attend_slots.subspan(row * k, k));
    if (!diff.copy.empty()) {
      const DiffBlockParts<int32_t> copy = SplitDiffBlock(diff.copy, rows, k);
      std::copy_n(diff.recall_pages.begin() + row * k, k, copy.pages.begin() + row * k);
      std::copy_n(diff.recall_slots.begin() + row * k, k, copy.slots.begin() + row * k);
      copy.counts[row] = diff.num_recall[row];
    }
  }
  return absl::OkStatus();
}

}  // namespace kernels
}  // namespace freekv
