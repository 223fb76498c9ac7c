#include "worker/decode_loop.h"

#include "absl/strings/str_cat.h"

namespace freekv {

absl::StatusOr<std::vector<std::vector<int32_t>>> DecodeBatch(
    Transformer& model, AttentionPolicy& policy, const DecodeRequest& request,
    const LogitsSink& sink) {
  if (auto s = CheckDecodeRequest(request); !s.ok()) return s;
  const size_t n = request.prompts.size();
  const size_t vocab = model.config().vocab_size;
  std::vector<BatchEntry> batch(n);
  for (size_t b = 0; b < n; ++b) {
    batch[b] = BatchEntry{request.first_sequence + static_cast<int64_t>(b), 0,
                          request.prompts[b]};
  }
  std::vector<std::vector<int32_t>> argmax(n);
  std::vector<int32_t> fed(n);  // storage the decode entries' token spans point at
  std::vector<float> logits;
  for (int step = 0; step < request.steps; ++step) {
    if (step > 0) {
      for (size_t b = 0; b < n; ++b) {
        fed[b] = request.forced.empty() ? argmax[b].back() : request.forced[b][step - 1];
        batch[b].start_pos += static_cast<int32_t>(batch[b].tokens.size());
        batch[b].tokens = absl::MakeConstSpan(&fed[b], 1);
      }
    }
    if (auto s = model.Forward(batch, policy, LogitsFor::kLastToken, logits); !s.ok())
      return s;
    for (size_t b = 0; b < n; ++b) {
      const absl::Span<const float> row =
          absl::MakeConstSpan(logits).subspan(b * vocab, vocab);
      argmax[b].push_back(Argmax(row));
      if (sink) {
        if (auto s = sink(step, b, row); !s.ok()) return s;
      }
    }
  }
  return argmax;
}

}  // namespace freekv
