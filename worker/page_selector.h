// FreeKV's page selection for one (sequence, layer), on the kernels' CPU references:
// digests of full pages (kernels/digest.h), scores of candidate pages against a query
// (score.h), group-consistent top-k per KV head and the diff with the resident slots
// (select.h), and the per-group query similarity that drives correction
// (similarity.h).
//
// SequenceLayer is the per (sequence, layer) state of a retrieval policy. Its
// `resident` rows say what each resident slot will hold once every recall issued so
// far has landed: Select commits a slot as soon as it decides to recall a page into
// it, so a later selection (a correction) diffs against pages still on their way, and
// the caller lands recalls in the order it issued them.
//
// PageSelector holds scratch buffers: one thread at a time.
#ifndef FREEKV_WORKER_PAGE_SELECTOR_H_
#define FREEKV_WORKER_PAGE_SELECTOR_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kernels/paged_kv.h"
#include "worker/model/model_config.h"
#include "worker/retrieval_config.h"

namespace freekv {

struct SequenceLayer {
  int32_t length = 0;
  std::vector<int32_t> local;  // per logical page: its pool page, or -1 (service only)
  std::vector<float> digests;  // [full pages][num_kv_heads][max|min][head_dim]
  std::vector<int32_t>
      slot_pool;                  // [k] pool pages of the resident slots (service-backed)
  std::vector<int32_t> resident;  // [num_kv_heads][k] logical page per slot, -1 empty
  std::vector<int32_t> selected;  // [num_kv_heads][k] selection, ascending, -1 padded
  std::vector<float> q_prev;      // [num_heads][head_dim] last query; empty before one
};

// A selected page that is not resident: recall it into slot `slot` of `kv_head`.
struct SlotFill {
  int32_t kv_head = 0;
  int32_t slot = 0;
  int32_t page = 0;
};

class PageSelector {
 public:
  PageSelector(const ModelConfig& model, const RetrievalConfig& config);

  // An empty state for a new sequence (no pages, empty slots, nothing selected).
  SequenceLayer NewState() const;

  // Appends the digest of full logical page `page`, stored at pool page `pool_page`.
  // Pages are digested in order: FAILED_PRECONDITION when `page` is not the next one.
  absl::Status AddDigest(SequenceLayer& state, const kernels::PagedKv<const float>& pool,
                         int32_t pool_page, int32_t page);

  // Selects for the KV heads whose mask byte is set (every head when `mask` is empty)
  // the top-k candidates of `ranges` under query `q` ([num_heads][head_dim]); rewrites
  // those heads' rows of state.selected, commits state.resident and appends the pages
  // to recall to `fills`.
  absl::Status Select(SequenceLayer& state, const PageRanges& ranges,
                      absl::Span<const float> q, absl::Span<const uint8_t> mask,
                      std::vector<SlotFill>& fills);

  // Correction flags for a batch of queries q and their predecessors q_prev, both
  // [n][num_heads][head_dim]: flags [n][num_kv_heads], 1 where the group's mean cosine
  // similarity is below tau. Returns the number of flags set.
  absl::StatusOr<int32_t> Flags(absl::Span<const float> q, absl::Span<const float> q_prev,
                                std::vector<uint8_t>& flags);

 private:
  ModelConfig model_;
  RetrievalConfig config_;
  float scale_;
  // Scratch, reused between calls.
  std::vector<float> scores_, group_scores_, similarity_;
  std::vector<int32_t> recall_pages_, recall_slots_, num_recall_;
};

}  // namespace freekv

#endif  // FREEKV_WORKER_PAGE_SELECTOR_H_
