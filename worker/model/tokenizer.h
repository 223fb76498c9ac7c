// The Llama-2 sentencepiece BPE vocabulary in llama2.c's tokenizer.bin format:
//   int32 max_token_length, then per token: float32 score, int32 length, bytes
// ('▁' already replaced by ' '; BOS and EOS are "\n<s>\n" and "\n</s>\n").
// Encode and Decode follow llama2.c's run.c (master) exactly: a dummy-prefix space,
// one token per UTF-8 code point or byte-fallback tokens <0xXX>, then repeatedly the
// adjacent pair whose merge has the highest score (leftmost on ties); decoding strips
// the leading space of the token after BOS and turns <0xXX> into the raw byte.
//
// Older tokenizer.bin files (such as stories15M's) store byte tokens as the character
// itself; Load normalises those to <0xXX>, which makes every piece unique, as in
// llama2.c's current file. Immutable after Load: safe to use from any thread.
#ifndef FREEKV_WORKER_MODEL_TOKENIZER_H_
#define FREEKV_WORKER_MODEL_TOKENIZER_H_

#include <array>
#include <string>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace freekv {

class Tokenizer {
 public:
  static constexpr int kBos = 1;
  static constexpr int kEos = 2;

  // NOT_FOUND when the file is missing; INVALID_ARGUMENT when it is truncated or lacks
  // one of the 256 byte-fallback tokens.
  static absl::StatusOr<Tokenizer> Load(const std::string& path);

  int vocab_size() const { return static_cast<int>(pieces_.size()); }
  // REQUIRES: 0 <= id < vocab_size().
  const std::string& piece(int id) const { return pieces_[id]; }
  float score(int id) const { return scores_[id]; }

  // Token ids of `text` (UTF-8 bytes), optionally framed by BOS and EOS. Runs in
  // O(n log n) for n bytes, with the same result as llama2.c's quadratic loop.
  std::vector<int> Encode(absl::string_view text, bool bos, bool eos) const;

  // The bytes `token` contributes when it follows `prev_token` (llama2.c's decode).
  // INVALID_ARGUMENT when token is out of range.
  absl::StatusOr<std::string> DecodeToken(int prev_token, int token) const;

  // The text of a token sequence: BOS and EOS contribute nothing, and the token after a
  // BOS loses its leading space, so Decode(Encode(s, true, false)) == s.
  absl::StatusOr<std::string> Decode(absl::Span<const int> tokens) const;

 private:
  Tokenizer() = default;
  absl::Status Index();
  int Lookup(absl::string_view piece) const;  // -1 when absent
  std::vector<int> InitialTokens(absl::string_view text) const;
  void MergePairs(std::vector<int>& tokens) const;

  std::vector<std::string> pieces_;
  std::vector<float> scores_;
  absl::flat_hash_map<std::string, int> ids_;
  std::array<int, 256> byte_token_{};  // token id of each byte-fallback byte
  std::vector<int> byte_value_;        // per token: its byte, or -1
};

}  // namespace freekv

#endif  // FREEKV_WORKER_MODEL_TOKENIZER_H_
