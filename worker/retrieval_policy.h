// The retrieval decode policies: each sequence attends, per KV head, over its sink
// pages, k selected pages and its window pages (retrieval_config.h).
//
//   kFreeKv    speculative retrieval: after attention of step t, pages for step t+1
//              are selected with q_t and their recall is sent at once, not waited for.
//              At step t+1, KV head groups whose query moved (mean cos(q_{t+1}, q_t) <
//              tau) are selected again with q_{t+1} and recalled urgently into the
//              layer's second staging slot; both recalls are waited for only then,
//              just before attention.
//   kBlocking  selects with the current query, recalls, waits, attends: what
//              retrieval without speculation costs. No correction.
//   kOracle    kFreeKv's selection, step for step, with every page kept on the worker:
//              nothing is recalled, so it bounds freekv's speed; its logits equal
//              freekv's exactly.
//
// kFreeKv and kBlocking keep only sinks, window and k resident slots per (sequence,
// layer, KV head) on the worker; every full page is stored in the kvservice through
// the PageLink when it fills (prefill stores them all) and dropped from the worker once
// it leaves the window. Layers in config.full_layers keep every page and attend fully.
// A sequence's multi-token pass (prefill) must start at position 0 and attends
// densely; later passes are single-token decode steps. Batches may mix sequences of
// different lengths and prefills with decode steps.
//
// Owns its pools and selection state; borrows the link, which must outlive it. Not
// thread-safe: driven by one forward pass at a time.
#ifndef FREEKV_WORKER_RETRIEVAL_POLICY_H_
#define FREEKV_WORKER_RETRIEVAL_POLICY_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "worker/decode_stats.h"
#include "worker/model/attention_policy.h"
#include "worker/model/model_config.h"
#include "worker/page_link.h"
#include "worker/page_pool.h"
#include "worker/page_selector.h"
#include "worker/paged_decode_batch.h"
#include "worker/retrieval_config.h"

namespace freekv {

enum class RetrievalMode { kFreeKv, kBlocking, kOracle };
const char* RetrievalModeName(RetrievalMode mode);

class RetrievalPolicy : public AttentionPolicy {
 public:
  // `link` is required for kFreeKv and kBlocking and must be null for kOracle.
  // INVALID_ARGUMENT for a bad config or a link that does not fit the mode.
  static absl::StatusOr<std::unique_ptr<RetrievalPolicy>> Create(
      const ModelConfig& model, const RetrievalConfig& config, RetrievalMode mode,
      PageLink* link);
  ~RetrievalPolicy() override;

  absl::Status BeginForward(absl::Span<const BatchEntry> batch) override;
  absl::Status Attend(int layer, absl::Span<const BatchEntry> batch,
                      absl::Span<const float> q, absl::Span<const float> k,
                      absl::Span<const float> v, absl::Span<float> out) override;
  absl::Status EndForward() override;

  // Lands outstanding speculative recalls, then forgets the sequence here and in the
  // kvservice.
  absl::Status Release(int64_t sequence);
  // Waits for and lands every outstanding recall.
  absl::Status Drain();
  // Sends the statistics gathered since the last report to the kvservice (no-op for
  // kOracle). EndForward calls it every config.stats_every decode steps.
  absl::Status ReportStats();

  RetrievalMode mode() const { return mode_; }
  const DecodeStats& stats() const { return stats_; }
  // Pool pages held on the worker at `layer`.
  int32_t worker_pages(int layer) const { return pools_[layer].in_use(); }
  // The current selection of (sequence, layer) as [num_kv_heads][k] logical pages,
  // ascending, -1 padded; empty for an unknown sequence. For tests and tools.
  absl::Span<const int32_t> selected(int64_t sequence, int layer) const;

 private:
  // One recall in flight for a layer: its ticket and what it brings.
  struct PendingRecall {
    bool active = false;
    RecallTicket ticket;
    std::vector<SliceToRecall> slices;
  };

  RetrievalPolicy(const ModelConfig& model, const RetrievalConfig& config,
                  RetrievalMode mode, PageLink* link);
  bool service() const { return link_ != nullptr; }
  bool keeps_all(int layer) const { return !service() || config_.IsFullLayer(layer); }
  SequenceLayer& State(int64_t sequence, int layer);

  // retrieval_policy.cc: the cache.
  absl::Status Append(int layer, const BatchEntry& entry, absl::Span<const float> k,
                      absl::Span<const float> v);
  absl::Status StoreFilled(int layer, absl::Span<const BatchEntry> batch);

  // retrieval_recall.cc: selection, correction and recalls.
  absl::Status PrepareDecode(int layer, absl::Span<const BatchEntry> batch,
                             absl::Span<const size_t> rows, absl::Span<const float> q);
  absl::Status Correct(int layer, absl::Span<const BatchEntry> batch,
                       absl::Span<const size_t> rows, absl::Span<const float> q,
                       std::vector<SliceToRecall>& urgent);
  absl::Status Speculate(int layer, absl::Span<const BatchEntry> batch,
                         absl::Span<const size_t> rows, absl::Span<const float> q);
  // Turns fills of (sequence, layer) into slices headed for its resident slots.
  void AddSlices(int64_t sequence, const SequenceLayer& state,
                 absl::Span<const SlotFill> fills, std::vector<SliceToRecall>& slices);
  absl::StatusOr<PendingRecall> StartRecall(uint64_t step, int layer,
                                            std::vector<SliceToRecall> slices);
  absl::Status FinishRecall(int layer, PendingRecall& recall);

  // retrieval_attend.cc: attention.
  absl::Status AttendDecode(int layer, absl::Span<const BatchEntry> batch,
                            absl::Span<const size_t> rows, absl::Span<const float> q,
                            absl::Span<float> out);
  absl::Status AppendList(int layer, const SequenceLayer& state, int32_t kv_head);
  absl::Status AttendPrefill(const BatchEntry& entry, size_t row,
                             absl::Span<const float> q, absl::Span<const float> k,
                             absl::Span<const float> v, absl::Span<float> out);

  const ModelConfig model_;
  const RetrievalConfig config_;
  const RetrievalMode mode_;
  PageLink* const link_;
  PageSelector selector_;
  std::vector<PagePool> pools_;  // per layer
  absl::flat_hash_map<int64_t, std::vector<SequenceLayer>> sequences_;
  std::vector<PendingRecall> speculative_;  // per layer: recall for the next step
  std::vector<PageToStore> to_store_;
  uint64_t step_ = 0;
  bool decoding_ = false;  // the current pass has single-token entries
  absl::Time pass_start_;
  DecodeStats stats_;
  DecodeStats reported_;
  // Scratch: the layer step's page lists, and the rows the correction check compares.
  PagedDecodeBatch decode_;
  std::vector<float> q_rows_, q_prev_rows_;  // the correction check's queries
  std::vector<uint8_t> flags_;
};

}  // namespace freekv

#endif  // FREEKV_WORKER_RETRIEVAL_POLICY_H_
