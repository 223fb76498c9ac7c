// CPU reference of score.h.
#include <algorithm>
#include <limits>

#include "absl/strings/str_cat.h"
#include "kernels/score.h"

namespace freekv {
namespace kernels {

absl::Status ValidateCandidates(const Candidates& c) {
  FREEKV_RETURN_IF_ERROR(CheckPositive("Candidates.begin size", c.begin.size()));
  FREEKV_RETURN_IF_ERROR(CheckSize("Candidates.count", c.count.size(), c.begin.size()));
  return CheckPositive("Candidates.max_candidates", c.max_candidates);
}

absl::Status CheckCandidateContents(const Candidates& c, int32_t max_pages) {
  for (int32_t b = 0; b < c.num_seqs(); ++b) {
    if (c.count[b] < 0 || c.count[b] > c.max_candidates || c.begin[b] < 0 ||
        c.begin[b] + c.count[b] > max_pages) {
      return absl::InvalidArgumentError(
          absl::StrCat("candidates of sequence ", b, " (begin ", c.begin[b], ", count ",
                       c.count[b], ") exceed max_candidates ", c.max_candidates,
                       " or max_pages ", max_pages));
    }
  }
  return absl::OkStatus();
}

template <typename T>
absl::Status PageScoreRef(absl::Span<const T> q, int32_t num_q_heads,
                          const DigestTable<const T>& digests,
                          const Candidates& candidates, float scale,
                          absl::Span<const uint8_t> head_mask, absl::Span<float> scores) {
  FREEKV_RETURN_IF_ERROR(ValidateDigestTable(digests));
  FREEKV_RETURN_IF_ERROR(ValidateCandidates(candidates));
  FREEKV_RETURN_IF_ERROR(CheckGqa(num_q_heads, digests.num_kv_heads));
  const int32_t num_seqs = candidates.num_seqs();
  const size_t d = digests.head_dim;
  FREEKV_RETURN_IF_ERROR(CheckSize("q", q.size(), size_t{static_cast<uint32_t>(num_seqs)} *
                                                      num_q_heads * d));
  FREEKV_RETURN_IF_ERROR(CheckSize(
      "scores", scores.size(),
      size_t{static_cast<uint32_t>(num_seqs)} * num_q_heads * candidates.max_candidates));
  if (!head_mask.empty()) {
    FREEKV_RETURN_IF_ERROR(
        CheckSize("head_mask", head_mask.size(), num_seqs * digests.num_kv_heads));
  }
  FREEKV_RETURN_IF_ERROR(CheckCandidateContents(candidates, digests.max_pages));
  if (num_seqs > digests.num_seqs) {
    return absl::InvalidArgumentError(absl::StrCat(
        num_seqs, " sequences of candidates, digest table holds ", digests.num_seqs));
  }
  const int32_t group = num_q_heads / digests.num_kv_heads;
  for (int32_t b = 0; b < num_seqs; ++b) {
    for (int32_t h = 0; h < num_q_heads; ++h) {
      const int32_t kvh = h / group;
      if (!head_mask.empty() && head_mask[b * digests.num_kv_heads + kvh] == 0) continue;
      const T* qh = q.data() + (size_t{static_cast<uint32_t>(b)} * num_q_heads + h) * d;
      float* row = scores.data() +
                   (size_t{static_cast<uint32_t>(b)} * num_q_heads + h) *
                       candidates.max_candidates;
      for (int32_t j = 0; j < candidates.max_candidates; ++j) {
        if (j >= candidates.count[b]) {
          row[j] = -std::numeric_limits<float>::infinity();
          continue;
        }
        const T* kmax = digests.data.data() + digests.offset(b, candidates.begin[b] + j, kvh);
        const T* kmin = kmax + d;
        float s = 0.0f;
        for (size_t c = 0; c < d; ++c) {
          const float qc = ToFloat(qh[c]);
          s += std::max(qc * ToFloat(kmax[c]), qc * ToFloat(kmin[c]));
        }
        row[j] = scale * s;
      }
    }
  }
  return absl::OkStatus();
}

#define FREEKV_INSTANTIATE(T)                                                        \
  template absl::Status PageScoreRef<T>(absl::Span<const T>, int32_t,                \
                                        const DigestTable<const T>&, const Candidates&, \
                                        float, absl::Span<const uint8_t>,            \
                                        absl::Span<float>);
FREEKV_INSTANTIATE(float)
FREEKV_INSTANTIATE(BFloat16)
#undef FREEKV_INSTANTIATE

}  // namespace kernels
}  // namespace freekv
