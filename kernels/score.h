// Page scoring: how much each candidate page may matter to each query head,
//   score[b][h][j] = scale * sum_i max(q[b][h][i] * kmax[i], q[b][h][i] * kmin[i])
// with (kmax, kmin) the digest of logical page candidates.begin[b] + j for KV head
// h / (num_q_heads / num_kv_heads). Candidates are the pages between the sinks and the
// window; the caller chooses them per sequence (variable lengths in one batch).
//
// Shapes:
//   q:      [num_seqs][num_q_heads][head_dim]
//   digests: digest.h's table
//   scores: [num_seqs][num_q_heads][max_candidates] float32; entries
//           j >= candidates.count[b] are set to -inf
//   head_mask: optional [num_seqs][num_kv_heads]; when given, only the query heads of
//           KV heads whose mask byte is non-zero are scored, the others' rows are left
//           untouched (fine-grained correction re-scores flagged heads only, with no
//           host round trip).
// Accumulates in float32. Dtypes: q and digests float32 or both bf16.
//
// Thread safety: stateless; concurrent calls on disjoint outputs are safe.
#ifndef FREEKV_KERNELS_SCORE_H_
#define FREEKV_KERNELS_SCORE_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "kernels/bf16.h"
#include "kernels/cuda_fwd.h"
#include "kernels/digest.h"

namespace freekv {
namespace kernels {

// Candidate pages of each sequence: logical pages [begin[b], begin[b] + count[b]),
// 0 <= count[b] <= max_candidates, all below the digest table's max_pages.
struct Candidates {
  absl::Span<const int32_t> begin;  // [num_seqs]
  absl::Span<const int32_t> count;  // [num_seqs]
  int32_t max_candidates = 0;

  int32_t num_seqs() const { return static_cast<int32_t>(begin.size()); }
};

// Sizes only (the spans may be device memory).
absl::Status ValidateCandidates(const Candidates& c);
// Host memory only: every count in [0, max_candidates], every range below max_pages.
absl::Status CheckCandidateContents(const Candidates& c, int32_t max_pages);

// CPU reference.
template <typename T>
absl::Status PageScoreRef(absl::Span<const T> q, int32_t num_q_heads,
                          const DigestTable<const T>& digests,
                          const Candidates& candidates, float scale,
                          absl::Span<const uint8_t> head_mask, absl::Span<float> scores);

// CUDA (score.cu): device memory, asynchronous on `stream`.
template <typename T>
absl::Status PageScoreCuda(absl::Span<const T> q, int32_t num_q_heads,
                           const DigestTable<const T>& digests,
                           const Candidates& candidates, float scale,
                           absl::Span<const uint8_t> head_mask, absl::Span<float> scores,
                           cudaStream_t stream);

}  // namespace kernels
}  // namespace freekv

#endif  // FREEKV_KERNELS_SCORE_H_
