// The CPU forward pass of a Llama-family decoder, llama2.c's `forward` over a batch of
// token runs: embedding, then per layer RMSNorm -> q,k,v -> RoPE (interleaved pairs,
// the ModelWeights convention) -> attention (the AttentionPolicy) -> wo -> residual ->
// RMSNorm -> SiLU-gated MLP -> residual; final RMSNorm and the classifier. Built on
// the CPU references in kernels/ (matmul, rmsnorm, rope, mlp).
//
// Borrows the weights, which must outlive it. Holds scratch buffers, so one thread at
// a time per Transformer; any number of Transformers may share one ModelWeights.
#ifndef FREEKV_WORKER_MODEL_TRANSFORMER_H_
#define FREEKV_WORKER_MODEL_TRANSFORMER_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "worker/model/attention_policy.h"
#include "worker/model/model_weights.h"

namespace freekv {

enum class LogitsFor {
  kLastToken,   // one row per batch entry: the logits after its last token
  kEveryToken,  // one row per new token (teacher-forced evaluation, tests)
};

class Transformer {
 public:
  // INVALID_ARGUMENT when the weights do not match their config.
  static absl::StatusOr<Transformer> Create(const ModelWeights& weights);

  const ModelConfig& config() const { return weights_->config; }

  // Runs the batch through every layer, attention through `policy`, and writes the
  // logits ([rows][vocab_size], rows per `which`) into `logits`. INVALID_ARGUMENT for
  // an empty entry or a token outside the vocabulary; policy errors pass through.
  absl::Status Forward(absl::Span<const BatchEntry> batch, AttentionPolicy& policy,
                       LogitsFor which, std::vector<float>& logits);

 private:
  explicit Transformer(const ModelWeights& weights, std::vector<float> inv_freq)
      : weights_(&weights), inv_freq_(std::move(inv_freq)) {}
  absl::Status Embed(absl::Span<const BatchEntry> batch);
  absl::Status AttentionBlock(int layer, absl::Span<const BatchEntry> batch,
                              AttentionPolicy& policy);
  absl::Status MlpBlock(int layer);
  absl::Status Classify(absl::Span<const BatchEntry> batch, LogitsFor which,
                        std::vector<float>& logits);

  const ModelWeights* weights_;
  std::vector<float> inv_freq_;  // RoPE frequencies, [head_dim / 2]
  // Activations of the current pass, [T][width] each; reused between passes.
  std::vector<int32_t> positions_;
  std::vector<float> x_, xb_, q_, k_, v_, att_, gate_, up_;
};

// Index of the largest logit (the first on ties, as llama2.c's argmax).
int32_t Argmax(absl::Span<const float> logits);

// Greedy decoding of one sequence from an empty cache: prefills `prompt` (which must
// be non-empty) in one pass, then runs `steps` single-token decode passes, each
// feeding the argmax of the previous logits. Returns the `steps` generated tokens.
absl::StatusOr<std::vector<int32_t>> GreedyDecode(Transformer& model,
                                                  AttentionPolicy& policy,
                                                  int64_t sequence,
                                                  absl::Span<const int32_t> prompt,
                                                  int steps);

}  // namespace freekv

#endif  // FREEKV_WORKER_MODEL_TRANSFORMER_H_
