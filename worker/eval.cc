#include "worker/eval.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"

namespace freekv {
namespace {

size_t Longest(const std::vector<std::vector<int32_t>>& prompts) {
  size_t n = 0;
  for (const auto& p : prompts) n = std::max(n, p.size());
  return n;
}

// Decodes the context's prompts (ids 0..n-1) on `backend`, feeding `forced` when it is
// not empty, then releases the sequences.
absl::Status DecodeContext(DecodeBackend& backend, const EvalContext& context,
                           const std::vector<std::vector<int32_t>>& forced,
                           const LogitsSink& sink,
                           std::vector<std::vector<int32_t>>* tokens) {
  DecodeRequest request;
  request.prompts = context.prompts;
  request.steps = context.steps;
  request.forced = forced;
  absl::StatusOr<std::vector<std::vector<int32_t>>> decoded =
      backend.Decode(request, sink);
  if (!decoded.ok()) return decoded.status();
  for (size_t b = 0; b < context.prompts.size(); ++b) {
    if (auto s = backend.Release(static_cast<int64_t>(b)); !s.ok()) return s;
  }
  if (tokens != nullptr) *tokens = *std::move(decoded);
  return absl::OkStatus();
}

}  // namespace

std::vector<std::string> BuiltInStories() {
  return {
      "Once upon a time, there was a little girl named Lily. She loved to play outside "
      "in the park with her friends.",
      "Tom had a red ball. One day he went to the garden with his dog Max and",
      "The sun was shining and the birds were singing. Mia and her mom went to the "
      "market to buy some fruit. Mia saw a big, shiny apple and",
  };
}

absl::StatusOr<EvalContext> MakeEvalContext(std::vector<std::vector<int32_t>> prompts,
                                            int32_t target_tokens) {
  if (prompts.empty()) return absl::InvalidArgumentError("no prompts to evaluate");
  for (size_t b = 0; b < prompts.size(); ++b) {
    if (prompts[b].empty())
      return absl::InvalidArgumentError(absl::StrCat("prompt ", b, " is empty"));
  }
  const size_t longest = Longest(prompts);
  // Two rows at least: the prefill's and one decode step's.
  if (target_tokens < static_cast<int64_t>(longest) + 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        "context of ", target_tokens,
        " tokens leaves no room to decode after a prompt of ", longest, " tokens"));
  }
  EvalContext c;
  c.target_tokens = target_tokens;
  c.steps = target_tokens - static_cast<int>(longest);
  c.prompts = std::move(prompts);
  return c;
}

absl::StatusOr<Reference> RunReference(DecodeBackend& full, const EvalContext& context) {
  Reference ref;
  ref.log_probs.resize(context.prompts.size());
  if (auto s = DecodeContext(full, context, /*forced=*/{},
                             [&](int, size_t b, absl::Span<const float> logits) {
                               const std::vector<float> lp = LogSoftmax(logits);
                               ref.log_probs[b].insert(ref.log_probs[b].end(), lp.begin(),
                                                       lp.end());
                               return absl::OkStatus();
                             },
                             &ref.tokens);
      !s.ok()) {
    return s;
  }
  return ref;
}

RetrievalConfig BudgetFor(const RetrievalConfig& base, const EvalContext& context,
                          double fraction) {
  const int32_t pages = (context.target_tokens + base.page_tokens - 1) / base.page_tokens;
  const int32_t budget = static_cast<int32_t>(std::lround(fraction * pages));
  RetrievalConfig c = base;
  c.selected_pages = std::max(1, budget - base.sink_pages - base.window_pages);
  c.max_sequences = static_cast<int32_t>(context.prompts.size());
  return c;
}

absl::StatusOr<AgreementMeter> TeacherForce(DecodeBackend& backend,
                                            const EvalContext& context,
                                            const Reference& reference) {
  AgreementMeter meter;
  if (auto s = DecodeContext(
          backend, context, reference.tokens,
          [&](int step, size_t b, absl::Span<const float> logits) {
            if (step == 0) return absl::OkStatus();  // the dense prefill
            const size_t vocab = logits.size();
            return meter.Add(
                absl::MakeConstSpan(reference.log_probs[b]).subspan(step * vocab, vocab),
                reference.tokens[b][step], logits);
          },
          /*tokens=*/nullptr);
      !s.ok()) {
    return s;
  }
  return meter;
}

}  // namespace freekv
