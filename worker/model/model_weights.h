// The fp32 weights of a Llama-family decoder, in llama2.c's (Meta's) conventions:
// matrices are row-major [out][in], and the q/k projections produce RoPE pairs as
// adjacent channels (2i, 2i+1) within each head (the interleaved convention). Loaders
// of other conventions (Hugging Face safetensors) convert on load.
//
// ModelWeights owns its tensors; layers are shared_ptr<const> so that random-weight
// models of large geometry may reuse one layer's storage for many layers. Immutable
// after construction: safe to read from any number of threads.
#ifndef FREEKV_WORKER_MODEL_MODEL_WEIGHTS_H_
#define FREEKV_WORKER_MODEL_MODEL_WEIGHTS_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "worker/model/model_config.h"

namespace freekv {

struct LayerWeights {
  std::vector<float> attn_norm;  // [dim]
  std::vector<float> wq;         // [num_heads * head_dim][dim]
  std::vector<float> wk;         // [num_kv_heads * head_dim][dim]
  std::vector<float> wv;         // [num_kv_heads * head_dim][dim]
  std::vector<float> wo;         // [dim][num_heads * head_dim]
  std::vector<float> ffn_norm;   // [dim]
  std::vector<float> w1;         // gate: [hidden_dim][dim]
  std::vector<float> w2;         // down: [dim][hidden_dim]
  std::vector<float> w3;         // up:   [hidden_dim][dim]
};

struct ModelWeights {
  ModelConfig config;
  std::vector<float> embedding;  // [vocab_size][dim]
  std::vector<std::shared_ptr<const LayerWeights>> layers;  // num_layers entries
  std::vector<float> final_norm;  // [dim]
  // [vocab_size][dim]; empty when the classifier is tied to the embedding.
  std::vector<float> classifier;

  bool tied_classifier() const { return classifier.empty(); }
  const float* classifier_data() const {
    return tied_classifier() ? embedding.data() : classifier.data();
  }
};

// The element count every tensor of a layer must have under `config`, in the order of
// LayerWeights' fields; shared by the loaders and Validate.
struct LayerShapes {
  size_t norm, wq, wkv, wo, w_up, w_down;
};
LayerShapes LayerShapesOf(const ModelConfig& config);

// OK when the config is valid and every tensor has the size the config implies;
// otherwise INVALID_ARGUMENT naming the tensor.
absl::Status ValidateModelWeights(const ModelWeights& weights);

struct RandomWeightsOptions {
  uint64_t seed = 1;
  // How many distinct layers to draw; the rest alias them round-robin. 0 draws every
  // layer. Speed runs of an 8B geometry use 1-2 to stay within host memory.
  int distinct_layers = 0;
};

// Weights drawn uniformly with variance 1/fan_in (norm weights near 1), so activations
// keep unit scale through any depth. Deterministic in (config, options). For speed
// runs, shrink config.vocab_size: the classifier dominates memory, not decode time.
absl::StatusOr<ModelWeights> RandomModelWeights(const ModelConfig& config,
                                                const RandomWeightsOptions& options);

}  // namespace freekv

#endif  // FREEKV_WORKER_MODEL_MODEL_WEIGHTS_H_
