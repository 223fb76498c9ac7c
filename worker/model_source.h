// Loads a model and its tokenizer from a --model path. Thread-safe (reads files).
#ifndef FREEKV_WORKER_MODEL_SOURCE_H_
#define FREEKV_WORKER_MODEL_SOURCE_H_

#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "worker/model/model_weights.h"
#include "worker/model/tokenizer.h"

namespace freekv {

// A model and its tokenizer. `path` is a directory holding model.bin (llama2.c) or
// *.safetensors, or one such file; the tokenizer is `tokenizer_path`, or
// tokenizer.bin beside the model when that is empty.
struct LoadedModel {
  ModelWeights weights;
  std::optional<Tokenizer> tokenizer;
};
absl::StatusOr<LoadedModel> LoadModel(const std::string& path,
                                      const std::string& tokenizer_path = "");

}  // namespace freekv

#endif  // FREEKV_WORKER_MODEL_SOURCE_H_
