#include "worker/page_selector.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "kernels/digest.h"
#include "kernels/score.h"
#include "kernels/select.h"
#include "kernels/similarity.h"

namespace freekv {

PageSelector::PageSelector(const ModelConfig& model, const RetrievalConfig& config)
    : model_(model),
      config_(config),
      scale_(1.0f / std::sqrt(static_cast<float>(model.head_dim))) {}

SequenceLayer PageSelector::NewState() const {
  SequenceLayer s;
  const size_t rows = static_cast<size_t>(model_.num_kv_heads) * config_.selected_pages;
  s.resident.assign(rows, -1);
  s.selected.assign(rows, -1);
  return s;
}

absl::Status PageSelector::AddDigest(SequenceLayer& state,
                                     const kernels::PagedKv<const float>& pool,
                                     int32_t pool_page, int32_t page) {
  const size_t per_page = 2 * static_cast<size_t>(model_.num_kv_heads) * model_.head_dim;
  if (static_cast<size_t>(page) != state.digests.size() / per_page) {
    return absl::FailedPreconditionError(
        absl::StrCat("digest of page ", page, " requested after ",
                     state.digests.size() / per_page, " digested pages"));
  }
  state.digests.resize(state.digests.size() + per_page);
  kernels::DigestTable<float> table;
  table.data = absl::MakeSpan(state.digests);
  table.num_seqs = 1;
  table.max_pages = page + 1;
  table.num_kv_heads = model_.num_kv_heads;
  table.head_dim = model_.head_dim;
  const int32_t seq = 0;
  kernels::DigestJobs jobs;
  jobs.pool_pages = absl::MakeConstSpan(&pool_page, 1);
  jobs.seqs = absl::MakeConstSpan(&seq, 1);
  jobs.logical_pages = absl::MakeConstSpan(&page, 1);
  return kernels::PageDigestRef<float>(pool, jobs, table);
}

absl::Status PageSelector::Select(SequenceLayer& state, const PageRanges& ranges,
                                  absl::Span<const float> q,
                                  absl::Span<const uint8_t> mask,
                                  std::vector<SlotFill>& fills) {
  const int32_t kv_heads = model_.num_kv_heads;
  const int32_t k = config_.selected_pages;
  const int32_t count = ranges.candidate_count();
  if (count == 0) {  // nothing between sinks and window: every selected row is empty
    for (int32_t h = 0; h < kv_heads; ++h) {
      if (mask.empty() || mask[h]) std::fill_n(state.selected.begin() + h * k, k, -1);
    }
    return absl::OkStatus();
  }
  kernels::DigestTable<const float> digests;
  digests.data = state.digests;
  digests.num_seqs = 1;
  digests.max_pages = static_cast<int32_t>(
      state.digests.size() / (2 * static_cast<size_t>(kv_heads) * model_.head_dim));
  digests.num_kv_heads = kv_heads;
  digests.head_dim = model_.head_dim;
  kernels::Candidates candidates;
  candidates.begin = absl::MakeConstSpan(&ranges.sink_end, 1);
  candidates.count = absl::MakeConstSpan(&count, 1);
  candidates.max_candidates = count;
  scores_.resize(static_cast<size_t>(model_.num_heads) * count);
  group_scores_.resize(static_cast<size_t>(kv_heads) * count);
  FREEKV_RETURN_IF_ERROR(kernels::PageScoreRef<float>(
      q, model_.num_heads, digests, candidates, scale_, mask, absl::MakeSpan(scores_)));
  FREEKV_RETURN_IF_ERROR(kernels::GroupSoftmaxRef(scores_, model_.num_heads, kv_heads,
                                                  candidates, mask,
                                                  absl::MakeSpan(group_scores_)));
  FREEKV_RETURN_IF_ERROR(kernels::TopKPagesRef(group_scores_, kv_heads, candidates, k,
                                               mask, absl::MakeSpan(state.selected)));
  recall_pages_.assign(static_cast<size_t>(kv_heads) * k, -1);
  recall_slots_.assign(recall_pages_.size(), -1);
  num_recall_.assign(kv_heads, 0);
  kernels::ResidentDiff diff{absl::MakeSpan(recall_pages_), absl::MakeSpan(recall_slots_),
                             absl::MakeSpan(num_recall_)};
  FREEKV_RETURN_IF_ERROR(kernels::ResidentDiffRef(state.selected, state.resident, k,
                                                  group_scores_, kv_heads, candidates, k,
                                                  mask, diff));
  for (int32_t h = 0; h < kv_heads; ++h) {
    for (int32_t i = 0; i < num_recall_[h]; ++i) {
      const SlotFill fill{h, recall_slots_[h * k + i], recall_pages_[h * k + i]};
      state.resident[h * k + fill.slot] = fill.page;
      fills.push_back(fill);
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<int32_t> PageSelector::Flags(absl::Span<const float> q,
                                            absl::Span<const float> q_prev,
                                            std::vector<uint8_t>& flags) {
  const size_t rows = q.size() /
                      (static_cast<size_t>(model_.num_heads) * model_.head_dim) *
                      model_.num_kv_heads;
  similarity_.resize(rows);
  flags.resize(rows);
  int32_t flagged = 0;
  kernels::SimilarityOutputs out{absl::MakeSpan(similarity_), absl::MakeSpan(flags),
                                 absl::MakeSpan(&flagged, 1)};
  FREEKV_RETURN_IF_ERROR(
      kernels::QuerySimilarityRef<float>(q, q_prev, model_.num_heads, model_.num_kv_heads,
                                         model_.head_dim, config_.tau, out));
  return flagged;
}

}  // namespace freekv
