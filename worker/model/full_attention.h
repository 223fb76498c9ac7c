// The `full` decode policy: every KV page resident (PagedKvCache), exact causal
// attention over all of a sequence's tokens. It is the accuracy reference the other
// policies are measured against. Single-token entries (decode steps) go through the
// paged decode kernel in one batched call; multi-token entries (prefill chunks)
// through the dense causal kernel over the sequence's gathered cache, so the two CPU
// paths check each other in the model tests.
//
// Owns its cache. Not thread-safe: driven by one forward pass at a time.
#ifndef FREEKV_WORKER_MODEL_FULL_ATTENTION_H_
#define FREEKV_WORKER_MODEL_FULL_ATTENTION_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/model/attention_policy.h"
#include "worker/model/model_config.h"
#include "worker/model/paged_kv_cache.h"

namespace freekv {

class FullAttention : public AttentionPolicy {
 public:
  static absl::StatusOr<std::unique_ptr<FullAttention>> Create(const ModelConfig& config,
                                                              int32_t page_tokens);

  absl::Status Attend(int layer, absl::Span<const BatchEntry> batch,
                      absl::Span<const float> q, absl::Span<const float> k,
                      absl::Span<const float> v, absl::Span<float> out) override;

  const PagedKvCache& cache() const { return cache_; }
  // Drops a finished sequence's pages.
  void Release(int64_t sequence) { cache_.Release(sequence); }

 private:
  FullAttention(const ModelConfig& config, PagedKvCache cache)
      : config_(config), cache_(std::move(cache)) {}
  // Batched paged decode of the single-token entries; `rows` are their row indices.
  absl::Status DecodeRows(int layer, absl::Span<const BatchEntry> batch,
                          absl::Span<const size_t> entries, absl::Span<const size_t> rows,
                          absl::Span<const float> q, absl::Span<float> out);
  // Dense causal attention of one multi-token entry whose rows start at `row`.
  absl::Status PrefillRows(int layer, const BatchEntry& entry, size_t row,
                           absl::Span<const float> q, absl::Span<float> out);

  ModelConfig config_;
  PagedKvCache cache_;
  // Reused between calls to avoid reallocating per layer.
  std::vector<float> q_rows_, out_rows_, k_seq_, v_seq_;
  std::vector<int32_t> indptr_, indices_, last_len_;
};

}  // namespace freekv

#endif  // FREEKV_WORKER_MODEL_FULL_ATTENTION_H_
