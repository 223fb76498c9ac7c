// `exact`: the ceiling of page selection, for the evaluation only. Under the same
// budget as the retrieval policies (sinks + window + k selected pages per KV head), it
// selects the k candidate pages that carry the most true attention mass: softmax of
// the current query against every cached key, summed per page, averaged over the
// query heads of each KV head group. Digest-based selection (freekv, blocking) can
// at best match it; the gap between them is what the page digests lose.
//
// It keeps every page resident and reads every key each step, so it is no decode
// method. Owns its cache. Not thread-safe: one forward pass at a time.
#ifndef FREEKV_WORKER_EXACT_SELECTION_H_
#define FREEKV_WORKER_EXACT_SELECTION_H_

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/model/attention_policy.h"
#include "worker/model/model_config.h"
#include "worker/model/paged_kv_cache.h"
#include "worker/paged_decode_batch.h"
#include "worker/retrieval_config.h"

namespace freekv {

class ExactSelection : public AttentionPolicy {
 public:
  static absl::StatusOr<std::unique_ptr<ExactSelection>> Create(
      const ModelConfig& model, const RetrievalConfig& config);

  // Prefills (multi-token entries, from position 0) attend densely; decode steps over
  // the exact selection. Layers in config.full_layers attend fully.
  absl::Status Attend(int layer, absl::Span<const BatchEntry> batch,
                      absl::Span<const float> q, absl::Span<const float> k,
                      absl::Span<const float> v, absl::Span<float> out) override;

 private:
  ExactSelection(const ModelConfig& model, const RetrievalConfig& config,
                 PagedKvCache cache)
      : model_(model), config_(config), cache_(std::move(cache)) {}
  // Appends the page list of (sequence, kv_head) for query rows q ([num_heads][dim]).
  void AppendList(int layer, int64_t sequence, int32_t kv_head,
                  absl::Span<const float> q);

  const ModelConfig model_;
  const RetrievalConfig config_;
  PagedKvCache cache_;
  std::vector<float> k_seq_, v_seq_;
  PagedDecodeBatch decode_;
  std::vector<double> mass_;
};

}  // namespace freekv

#endif  // FREEKV_WORKER_EXACT_SELECTION_H_
