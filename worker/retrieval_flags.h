// Command-line flags of the retrieval budget, shared by the worker CLI and the
// evaluation: --page_tokens, --sink_pages, --window_pages, --selected_pages, --tau,
// --full_layers, --stats_every. Read them in main only.
#ifndef FREEKV_WORKER_RETRIEVAL_FLAGS_H_
#define FREEKV_WORKER_RETRIEVAL_FLAGS_H_

#include <string>

#include "absl/flags/declare.h"
#include "absl/status/statusor.h"
#include "worker/model/model_config.h"
#include "worker/retrieval_config.h"

ABSL_DECLARE_FLAG(int32_t, page_tokens);
ABSL_DECLARE_FLAG(int32_t, sink_pages);
ABSL_DECLARE_FLAG(int32_t, window_pages);
ABSL_DECLARE_FLAG(int32_t, selected_pages);
ABSL_DECLARE_FLAG(float, tau);
ABSL_DECLARE_FLAG(std::string, full_layers);
ABSL_DECLARE_FLAG(int32_t, stats_every);

namespace freekv {

// The config the flags describe, validated against `model`; INVALID_ARGUMENT naming
// the flag otherwise.
absl::StatusOr<RetrievalConfig> RetrievalConfigFromFlags(const ModelConfig& model);

}  // namespace freekv

#endif  // FREEKV_WORKER_RETRIEVAL_FLAGS_H_
