// A fully resident KV cache in host memory for a batch of sequences, in pages of
// page_tokens tokens: per layer one NHD pool (kernels/paged_kv.h) whose pages are
// [K|V][token][kv_head][head_dim] (page_stride = 2 * page_tokens * kv_heads *
// head_dim), and per (sequence, layer) the pool pages of the sequence in logical
// order. Pages of released sequences are reused.
//
// Owns the pools. Not thread-safe: one thread at a time (the forward pass). Views
// (pool(), pages()) are invalidated by the next Append or Release.
#ifndef FREEKV_WORKER_MODEL_PAGED_KV_CACHE_H_
#define FREEKV_WORKER_MODEL_PAGED_KV_CACHE_H_

#include <cstdint>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kernels/paged_kv.h"
#include "worker/model/model_config.h"

namespace freekv {

class PagedKvCache {
 public:
  // INVALID_ARGUMENT for an invalid config or page_tokens < 1.
  static absl::StatusOr<PagedKvCache> Create(const ModelConfig& config,
                                             int32_t page_tokens);

  int32_t page_tokens() const { return page_tokens_; }

  // Appends k and v, each [n][num_kv_heads][head_dim], to `sequence` at `layer`.
  // INVALID_ARGUMENT when start_pos is not the cached length or the sizes disagree.
  absl::Status Append(int layer, int64_t sequence, int32_t start_pos,
                      absl::Span<const float> k, absl::Span<const float> v);

  // Cached tokens of (layer, sequence); 0 for a sequence never appended.
  int32_t length(int layer, int64_t sequence) const;
  // The pool pages of (layer, sequence) in logical order; every one full except the
  // last, which holds length - (pages - 1) * page_tokens tokens.
  absl::Span<const int32_t> pages(int layer, int64_t sequence) const;
  // The layer's pool as the kernels read it.
  kernels::PagedKv<const float> pool(int layer) const;

  // Copies the sequence's cached keys and values into [length][num_kv_heads][head_dim].
  void Gather(int layer, int64_t sequence, std::vector<float>& k,
              std::vector<float>& v) const;

  // Forgets the sequence and frees its pages.
  void Release(int64_t sequence);

 private:
  struct SequencePages {
    std::vector<int32_t> pages;  // pool page ids in logical order
    int32_t length = 0;
  };
  struct Layer {
    std::vector<float> storage;  // num_pages * page_stride floats
    std::vector<int32_t> free_pages;
    absl::flat_hash_map<int64_t, SequencePages> sequences;
  };

  PagedKvCache(int32_t page_tokens, int32_t kv_heads, int32_t head_dim, int layers)
      : page_tokens_(page_tokens), kv_heads_(kv_heads), head_dim_(head_dim),
        layers_(layers) {}
  size_t row() const { return static_cast<size_t>(kv_heads_) * head_dim_; }
  size_t page_elems() const { return page_tokens_ * row(); }
  int32_t NewPage(Layer& layer);
  const SequencePages* Find(int layer, int64_t sequence) const;

  int32_t page_tokens_;
  int32_t kv_heads_;
  int32_t head_dim_;
  std::vector<Layer> layers_;
};

}  // namespace freekv

#endif  // FREEKV_WORKER_MODEL_PAGED_KV_CACHE_H_
