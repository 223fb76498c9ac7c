#include "worker/model/paged_kv_cache.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace freekv {

absl::StatusOr<PagedKvCache> PagedKvCache::Create(const ModelConfig& config,
                                                  int32_t page_tokens) {
  if (auto s = ValidateModelConfig(config); !s.ok()) return s;
  if (page_tokens < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("page_tokens is ", page_tokens, "; it must be >= 1"));
  }
  return PagedKvCache(page_tokens, config.num_kv_heads, config.head_dim, config.num_layers);
}

int32_t PagedKvCache::NewPage(Layer& layer) {
  if (!layer.free_pages.empty()) {
    const int32_t page = layer.free_pages.back();
    layer.free_pages.pop_back();
    return page;
  }
  const size_t stride = 2 * page_elems();
  const int32_t page = static_cast<int32_t>(layer.storage.size() / stride);
  layer.storage.resize(layer.storage.size() + stride);
  return page;
}

absl::Status PagedKvCache::Append(int layer, int64_t sequence, int32_t start_pos,
                                  absl::Span<const float> k, absl::Span<const float> v) {
  if (layer < 0 || layer >= static_cast<int>(layers_.size())) {
    return absl::InvalidArgumentError(absl::StrCat("layer ", layer, " is out of range"));
  }
  if (k.size() != v.size() || k.size() % row() != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "k has ", k.size(), " and v ", v.size(), " elements; both must be n * ", row()));
  }
  Layer& l = layers_[layer];
  SequencePages& seq = l.sequences[sequence];
  if (start_pos != seq.length) {
    return absl::InvalidArgumentError(absl::StrCat("sequence ", sequence, " layer ", layer,
                                                   " holds ", seq.length,
                                                   " tokens; append at start_pos ",
                                                   start_pos));
  }
  const size_t n = k.size() / row();
  for (size_t t = 0; t < n; ++t, ++seq.length) {
    const int32_t slot = seq.length % page_tokens_;
    if (slot == 0) seq.pages.push_back(NewPage(l));
    float* page = l.storage.data() + seq.pages.back() * 2 * page_elems();
    std::copy_n(k.data() + t * row(), row(), page + slot * row());
    std::copy_n(v.data() + t * row(), row(), page + page_elems() + slot * row());
  }
  return absl::OkStatus();
}

const PagedKvCache::SequencePages* PagedKvCache::Find(int layer, int64_t sequence) const {
  const auto& sequences = layers_[layer].sequences;
  const auto it = sequences.find(sequence);
  return it == sequences.end() ? nullptr : &it->second;
}

int32_t PagedKvCache::length(int layer, int64_t sequence) const {
  const SequencePages* seq = Find(layer, sequence);
  return seq == nullptr ? 0 : seq->length;
}

absl::Span<const int32_t> PagedKvCache::pages(int layer, int64_t sequence) const {
  const SequencePages* seq = Find(layer, sequence);
  return seq == nullptr ? absl::Span<const int32_t>() : absl::MakeConstSpan(seq->pages);
}

kernels::PagedKv<const float> PagedKvCache::pool(int layer) const {
  const std::vector<float>& storage = layers_[layer].storage;
  const int64_t stride = 2 * static_cast<int64_t>(page_elems());
  kernels::PagedKv<const float> kv;
  kv.k = storage.data();
  kv.v = storage.data() + page_elems();
  kv.page_stride = stride;
  kv.num_pages = static_cast<int32_t>(storage.size() / stride);
  kv.page_tokens = page_tokens_;
  kv.num_kv_heads = kv_heads_;
  kv.head_dim = head_dim_;
  return kv;
}

void PagedKvCache::Gather(int layer, int64_t sequence, std::vector<float>& k,
                          std::vector<float>& v) const {
  k.clear();
  v.clear();
  const SequencePages* seq = Find(layer, sequence);
  if (seq == nullptr) return;
  const float* storage = layers_[layer].storage.data();
  for (int32_t t = 0; t < seq->length; ++t) {
    const float* page = storage + seq->pages[t / page_tokens_] * 2 * page_elems();
    const float* key = page + (t % page_tokens_) * row();
    k.insert(k.end(), key, key + row());
    v.insert(v.end(), key + page_elems(), key + page_elems() + row());
  }
}

void PagedKvCache::Release(int64_t sequence) {
  for (Layer& l : layers_) {
    const auto it = l.sequences.find(sequence);
    if (it == l.sequences.end()) continue;
    l.free_pages.insert(l.free_pages.end(), it->second.pages.begin(), it->second.pages.end());
    l.sequences.erase(it);
  }
}

}  // namespace freekv
