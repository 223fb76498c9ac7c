// What a decode is asked to do, on any device: a batch of prompts, the number of
// logit rows per sequence, and optionally the tokens to feed (teacher forcing). The
// CPU loop (decode_loop.h) and the GPU generator (freekv_gpu/gpu_generator.h) take
// the same request and call the same sink, so the evaluation runs on either.
//
// Plain values and a stateless check; any thread.
#ifndef FREEKV_WORKER_DECODE_REQUEST_H_
#define FREEKV_WORKER_DECODE_REQUEST_H_

#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"

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

// INVALID_ARGUMENT for no prompts, an empty prompt, steps < 1 or forced rows of the
// wrong count or length.
absl::Status CheckDecodeRequest(const DecodeRequest& request);

}  // namespace freekv

#endif  // FREEKV_WORKER_DECODE_REQUEST_H_
