// The accuracy evaluation: full attention decodes a batch of prompts greedily to a
// target context length (the reference); each retrieval policy is then teacher-forced
// on full's continuation and compared with it step by step (agreement.h). The decodes
// run on any DecodeBackend (decode_backend.h), so the same evaluation measures the
// CPU (fp32) and the GPU (bf16).
//
// Only decode steps are compared: a prefill attends densely under every policy, so
// its logits (step 0) are full's by construction.
//
// Functions are thread-safe for distinct backends.
#ifndef FREEKV_WORKER_EVAL_H_
#define FREEKV_WORKER_EVAL_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/agreement.h"
#include "worker/decode_backend.h"
#include "worker/retrieval_config.h"

namespace freekv {

// The evaluation's built-in prompts (three short stories in stories15M's style) for
// when no prompt file is given.
std::vector<std::string> BuiltInStories();

struct EvalContext {
  int32_t target_tokens = 0;  // final length of the longest sequence
  std::vector<std::vector<int32_t>> prompts;
  int steps = 0;  // logit rows per sequence: target_tokens - longest prompt

  bool within(int32_t trained_tokens) const { return target_tokens <= trained_tokens; }
};

// INVALID_ARGUMENT when a prompt is empty or leaves no room to decode.
absl::StatusOr<EvalContext> MakeEvalContext(std::vector<std::vector<int32_t>> prompts,
                                            int32_t target_tokens);

struct Reference {
  std::vector<std::vector<int32_t>> tokens;   // [sequence][step] full's greedy tokens
  std::vector<std::vector<float>> log_probs;  // [sequence][step * vocab]
};

// Decodes the context's prompts greedily on `full` (a backend under full attention;
// sequence ids 0..prompts-1, released afterwards).
absl::StatusOr<Reference> RunReference(DecodeBackend& full, const EvalContext& context);

// `base` with selected_pages set so that sinks + window + selected pages are
// `fraction` of the pages of the context's longest final sequence (at least one
// selected page).
RetrievalConfig BudgetFor(const RetrievalConfig& base, const EvalContext& context,
                          double fraction);

// Decodes the context's prompts on `backend`, feeding full's tokens, and compares
// every decode step with the reference. Sequence ids are 0..prompts-1, released
// afterwards.
absl::StatusOr<AgreementMeter> TeacherForce(DecodeBackend& backend,
                                            const EvalContext& context,
                                            const Reference& reference);

}  // namespace freekv

#endif  // FREEKV_WORKER_EVAL_H_
