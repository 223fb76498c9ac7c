// Test oracle: llama2.c's run.c `forward` (master), transcribed loop for loop over
// ModelWeights, with its own contiguous KV cache, its own RoPE (powf of theta, pairs
// rotated in place), two-pass softmax and plain matmul loops. It shares no code with
// Transformer or kernels/, so agreement checks the conventions (RoPE pairing,
// normalisation, GQA head mapping) as well as the arithmetic. Test-only.
#ifndef FREEKV_WORKER_MODEL_LLAMA2C_REFERENCE_H_
#define FREEKV_WORKER_MODEL_LLAMA2C_REFERENCE_H_

#include <vector>

#include "worker/model/model_weights.h"

namespace freekv {

class Llama2cReference {
 public:
  // Borrows the weights; one sequence, positions 0, 1, 2, ... in order.
  explicit Llama2cReference(const ModelWeights& weights);

  // Logits after `token` at position `pos` (pos must be the number of earlier calls).
  std::vector<float> Forward(int token, int pos);

 private:
  const ModelWeights& w_;
  std::vector<std::vector<float>> key_cache_, value_cache_;  // [layer][pos * kv_dim]
};

}  // namespace freekv

#endif  // FREEKV_WORKER_MODEL_LLAMA2C_REFERENCE_H_
