// Test helpers: a small GQA model (test_configs.h) with random weights, random prompts of given
// lengths, and decoding a batch under a policy while keeping every logit row.
// Test-only; each call is independent and any thread may call it.
#ifndef FREEKV_WORKER_TEST_MODELS_H_
#define FREEKV_WORKER_TEST_MODELS_H_

#include <cstdint>
#include <random>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/decode_loop.h"
#include "worker/model/model_weights.h"
#include "worker/model/test_configs.h"
#include "worker/model/transformer.h"

namespace freekv::testing {

inline std::vector<std::vector<int32_t>> RandomPrompts(const std::vector<int>& lengths,
                                                       int vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<std::vector<int32_t>> prompts;
  for (int n : lengths) {
    std::vector<int32_t> p(n);
    for (int32_t& t : p) t = static_cast<int32_t>(rng() % vocab);
    prompts.push_back(std::move(p));
  }
  return prompts;
}

// Every logit row of a decode, [sequence][step][vocab], and the argmax tokens.
struct Decoded {
  std::vector<std::vector<int32_t>> tokens;
  std::vector<std::vector<std::vector<float>>> logits;
};

inline absl::StatusOr<Decoded> DecodeKeepingLogits(Transformer& model,
                                                   AttentionPolicy& policy,
                                                   const DecodeRequest& request) {
  Decoded out;
  out.logits.resize(request.prompts.size());
  absl::StatusOr<std::vector<std::vector<int32_t>>> tokens = DecodeBatch(
      model, policy, request, [&](int, size_t b, absl::Span<const float> row) {
        out.logits[b].emplace_back(row.begin(), row.end());
        return absl::OkStatus();
      });
  if (!tokens.ok()) return tokens.status();
  out.tokens = std::move(*tokens);
  return out;
}

}  // namespace freekv::testing

#endif  // FREEKV_WORKER_TEST_MODELS_H_
