// Batched decoding under any attention policy: one prefill pass over every prompt (a
// batch of sequences of different lengths), then single-token decode passes. The
// token fed after step t is the argmax of that step's logits (greedy), or, for
// teacher-forced evaluation, a given token.
//
// Stateless functions; the model and policy are driven from the calling thread.
#ifndef FREEKV_WORKER_DECODE_LOOP_H_
#define FREEKV_WORKER_DECODE_LOOP_H_

#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "worker/model/attention_policy.h"
#include "worker/model/transformer.h"

namespace freekv {

struct DecodeRequest {
  // Sequence b gets id first_sequence + b and prompt prompts[b] (non-empty).
  std::vector<std::vector<int32_t>> prompts;
  int64_t first_sequence = 0;
  // Logit rows produced per sequence: step 0 comes from the prefill, each later step
  // from one decode pass, so there are steps - 1 decode passes.
  int steps = 0;
  // When non-empty, forced[b][t] is fed after step t instead of the argmax
  // (teacher forcing); forced[b] needs steps - 1 tokens.
  std::vector<std::vector<int32_t>> forced;
};

// Called with each step's logits row of each sequence, in step order.
using LogitsSink = std::function<absl::Status(int step, size_t sequence,
                                              absl::Span<const float> logits)>;

// Returns the argmax token of every step, [sequence][step]. INVALID_ARGUMENT for an
// empty prompt, steps < 1 or forced rows of the wrong length; model and policy errors
// pass through, as do the sink's.
absl::StatusOr<std::vector<std::vector<int32_t>>> DecodeBatch(
    Transformer& model, AttentionPolicy& policy, const DecodeRequest& request,
    const LogitsSink& sink = {});

}  // namespace freekv

#endif  // FREEKV_WORKER_DECODE_LOOP_H_
