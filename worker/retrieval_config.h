// The knobs of the retrieval policies (freekv, blocking, oracle) and the page
// arithmetic they share: which logical pages of a sequence are attention sinks, which
// are the local window, and which are candidates for selection.
//
// For a sequence of `length` tokens in pages of page_tokens tokens (the last page may
// be partial), with n = ceil(length / page_tokens) pages:
//   sinks       [0, sink_end)              sink_end = min(sink_pages, n)
//   window      [window_begin, n)          window_begin = max(sink_end, n - window_pages)
//   candidates  [sink_end, window_begin)   top-selected_pages of them per KV head
// Sinks and window always stay on the worker; candidates are full pages and live in
// the kvservice, selected ones being recalled into resident slots.
//
// Plain value types; safe to copy between threads.
#ifndef FREEKV_WORKER_RETRIEVAL_CONFIG_H_
#define FREEKV_WORKER_RETRIEVAL_CONFIG_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "worker/model/model_config.h"

namespace freekv {

struct RetrievalConfig {
  int32_t page_tokens = 8;
  int32_t sink_pages = 1;
  int32_t window_pages = 2;    // includes the partial last page
  int32_t selected_pages = 5;  // k: selected pages per (sequence, KV head)
  // GPU only: pages per (sequence, KV head) kept resident beyond the selected ones, so
  // that a page that drops out of the selection and comes back needs no recall. What
  // is attended does not change (worker/freekv_gpu/resident_ops.h). kAutoCache: as
  // many as selected_pages on the GPU, none on the CPU.
  static constexpr int32_t kAutoCache = -1;
  int32_t resident_cache_pages = kAutoCache;
  // Correction threshold: a KV head group whose mean cos(q_t, q_{t-1}) falls below tau
  // is selected again with q_t before attention. Values above 1 flag every group,
  // values below -1 none.
  float tau = 0.8f;
  // Layers that keep every page on the worker and attend fully (exempt layers).
  std::vector<int> full_layers;
  // Sequences decoded at once at most; sizes the staging slots of the service link.
  int32_t max_sequences = 8;
  // freekv and blocking report their statistics to the kvservice every this many
  // decode steps (0: only when asked).
  int32_t stats_every = 16;

  bool IsFullLayer(int layer) const;
  // The resident cache a GPU decode keeps (resident_cache_pages, kAutoCache resolved).
  int32_t gpu_cache_pages() const {
    return resident_cache_pages == kAutoCache ? selected_pages : resident_cache_pages;
  }
  // Tokens of attention budget per (sequence, KV head) once the context is long.
  int32_t budget_tokens() const {
    return (sink_pages + window_pages + selected_pages) * page_tokens;
  }
};

// OK, or INVALID_ARGUMENT naming the first field out of range for `model`.
absl::Status ValidateRetrievalConfig(const RetrievalConfig& config,
                                     const ModelConfig& model);

// Parses a comma-separated list of layer indices ("" is the empty list), e.g. "0,1".
// INVALID_ARGUMENT naming the bad item.
absl::StatusOr<std::vector<int>> ParseLayerList(absl::string_view text);

struct PageRanges {
  int32_t num_pages = 0;
  int32_t sink_end = 0;
  int32_t window_begin = 0;
  int32_t last_page_len = 0;  // tokens in page num_pages - 1 (0 for an empty sequence)

  int32_t candidate_count() const { return window_begin - sink_end; }
  bool is_candidate(int32_t page) const {
    return page >= sink_end && page < window_begin;
  }
  bool is_local(int32_t page) const {
    return page >= 0 && page < num_pages && !is_candidate(page);
  }
};

PageRanges RangesFor(const RetrievalConfig& config, int32_t length);

}  // namespace freekv

#endif  // FREEKV_WORKER_RETRIEVAL_CONFIG_H_
