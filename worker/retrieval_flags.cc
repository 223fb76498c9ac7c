#include "worker/retrieval_flags.h"

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"

ABSL_FLAG(int32_t, page_tokens, 8, "Tokens per KV page.");
ABSL_FLAG(int32_t, sink_pages, 1,
          "Attention-sink pages (the first pages) kept per sequence.");
ABSL_FLAG(int32_t, window_pages, 2,
          "Local-window pages (the last pages, with the partial one) kept per sequence.");
ABSL_FLAG(
    int32_t, selected_pages, 5,
    "Pages selected per sequence and KV head among those between sinks and window.");
ABSL_FLAG(int32_t, resident_cache_pages, -1,
          "--device=gpu: pages per sequence and KV head kept on the GPU beyond the selected "
          "ones, so that a page that leaves the selection and comes back is not recalled "
          "again (attention reads the same pages; costs GPU memory). -1: as many as "
          "--selected_pages on the GPU, none on the CPU (which has no cache).");
ABSL_FLAG(float, tau, 0.8f,
          "Correction threshold: KV head groups whose query similarity to the previous "
          "step falls below it are selected again before attention.");
ABSL_FLAG(std::string, full_layers, "",
          "Comma-separated layers exempt from retrieval (they keep every page and attend "
          "fully), e.g. 0,1.");
ABSL_FLAG(
    int32_t, stats_every, 16,
    "Report statistics to the kvservice every this many decode steps (0: at the end "
    "only).");

namespace freekv {

absl::StatusOr<RetrievalConfig> RetrievalConfigFromFlags(const ModelConfig& model) {
  RetrievalConfig c;
  c.page_tokens = absl::GetFlag(FLAGS_page_tokens);
  c.sink_pages = absl::GetFlag(FLAGS_sink_pages);
  c.window_pages = absl::GetFlag(FLAGS_window_pages);
  c.selected_pages = absl::GetFlag(FLAGS_selected_pages);
  c.resident_cache_pages = absl::GetFlag(FLAGS_resident_cache_pages);
  c.tau = absl::GetFlag(FLAGS_tau);
  c.stats_every = absl::GetFlag(FLAGS_stats_every);
  absl::StatusOr<std::vector<int>> layers =
      ParseLayerList(absl::GetFlag(FLAGS_full_layers));
  if (!layers.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--full_layers: ", layers.status().message()));
  }
  c.full_layers = *std::move(layers);
  if (absl::Status s = ValidateRetrievalConfig(c, model); !s.ok()) {
    // The config's field names are the flags' names.
    return absl::InvalidArgumentError(absl::StrCat("--", s.message()));
  }
  return c;
}

}  // namespace freekv
