#include "worker/retrieval_config.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace freekv {

bool RetrievalConfig::IsFullLayer(int layer) const {
  return std::find(full_layers.begin(), full_layers.end(), layer) != full_layers.end();
}

absl::Status ValidateRetrievalConfig(const RetrievalConfig& config,
                                     const ModelConfig& model) {
  auto at_least = [](absl::string_view field, int64_t value, int64_t min) {
    return value >= min ? absl::OkStatus()
                        : absl::InvalidArgumentError(absl::StrCat(
                              field, " is ", value, "; it must be >= ", min));
  };
  for (const absl::Status& s :
       {at_least("page_tokens", config.page_tokens, 1),
        at_least("sink_pages", config.sink_pages, 0),
        // The window holds the partial page, so every attention list ends with it.
        at_least("window_pages", config.window_pages, 1),
        at_least("selected_pages", config.selected_pages, 1),
        at_least("max_sequences", config.max_sequences, 1),
        at_least("stats_every", config.stats_every, 0)}) {
    if (!s.ok()) return s;
  }
  if (config.resident_cache_pages < RetrievalConfig::kAutoCache) {
    return absl::InvalidArgumentError(absl::StrCat(
        "resident_cache_pages is ", config.resident_cache_pages,
        "; it must be >= 0, or -1 for as many as selected_pages on the GPU"));
  }
  if (config.page_tokens > 4096) {
    return absl::InvalidArgumentError(
        absl::StrCat("page_tokens is ", config.page_tokens, "; at most 4096"));
  }
  if (!std::isfinite(config.tau)) {
    return absl::InvalidArgumentError(
        absl::StrCat("tau is ", config.tau, "; it must be finite"));
  }
  for (int layer : config.full_layers) {
    if (layer < 0 || layer >= model.num_layers) {
      return absl::InvalidArgumentError(absl::StrCat("full_layers names layer ", layer,
                                                     "; the model has layers 0..",
                                                     model.num_layers - 1));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<int>> ParseLayerList(absl::string_view text) {
  std::vector<int> layers;
  if (absl::StripAsciiWhitespace(text).empty()) return layers;
  for (absl::string_view item : absl::StrSplit(text, ',')) {
    int layer = 0;
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(item), &layer) || layer < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("layer list \"", text, "\" has item \"", item,
                       "\"; expected non-negative integers separated by commas"));
    }
    layers.push_back(layer);
  }
  return layers;
}

PageRanges RangesFor(const RetrievalConfig& config, int32_t length) {
  PageRanges r;
  r.num_pages = (length + config.page_tokens - 1) / config.page_tokens;
  r.sink_end = std::min(config.sink_pages, r.num_pages);
  r.window_begin = std::max(r.sink_end, r.num_pages - config.window_pages);
  r.last_page_len = length - std::max(0, r.num_pages - 1) * config.page_tokens;
  return r;
}

}  // namespace freekv
