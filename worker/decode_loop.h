// Batched decoding under any attention policy: one prefill pass over every prompt (a
// batch of sequences of different lengths), then single-token decode passes. The
// token fed after step t is the argmax of that step's logits (greedy), or, for
// teacher-forced evaluation, a given token.
//
// Stateless functions; the model and policy are driven from the calling thread.
#ifndef FREEKV_WORKER_DECODE_LOOP_H_
#define FREEKV_WORKER_DECODE_LOOP_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "worker/decode_request.h"
#include "worker/model/attention_policy.h"
#include "worker/model/transformer.h"

namespace freekv {

// Returns the argmax token of every step, [sequence][step]. INVALID_ARGUMENT for an
// empty prompt, steps < 1 or forced rows of the wrong length; model and policy errors
// pass through, as do the sink's.
absl::StatusOr<std::vector<std::vector<int32_t>>> DecodeBatch(
    Transformer& model, AttentionPolicy& policy, const DecodeRequest& request,
    const LogitsSink& sink = {});

}  // namespace freekv

#endif  // FREEKV_WORKER_DECODE_LOOP_H_
