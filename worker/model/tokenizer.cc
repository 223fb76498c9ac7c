#include "worker/model/tokenizer.h"

#include <cstdint>
#include <cstring>
#include <queue>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "worker/model/mapped_file.h"

namespace freekv {
namespace {

// The formats are little-endian and are read by memcpy into host integers and floats.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "little-endian host required");

// llama2.c starts its best-merge search at this score, so merges scoring at or below
// it never happen; kept for identical results.
constexpr float kMinMergeScore = -1e10f;
// Llama-2's vocabulary puts the 256 byte tokens right after <unk>, <s>, </s>.
constexpr int kFirstByteToken = 3;

std::string ByteTokenPiece(int byte) { return absl::StrFormat("<0x%02X>", byte); }

// The UTF-8 encoding of code point `cp` < 256: how older exporters stored byte tokens.
std::string Latin1AsUtf8(int cp) {
  if (cp < 0x80) return std::string(1, static_cast<char>(cp));
  return {static_cast<char>(0xC0 | (cp >> 6)), static_cast<char>(0x80 | (cp & 0x3F))};
}

int ParseByteToken(const std::string& piece) {
  int value = 0;
  if (piece.size() != 6 || piece.compare(0, 3, "<0x") != 0 || piece[5] != '>') return -1;
  for (int i = 3; i < 5; ++i) {
    const char c = piece[i];
    const int digit = c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
    if (digit < 0) return -1;
    value = value * 16 + digit;
  }
  return value;
}

bool IsContinuationByte(char c) { return (static_cast<unsigned char>(c) & 0xC0) == 0x80; }

}  // namespace

absl::StatusOr<Tokenizer> Tokenizer::Load(const std::string& path) {
  absl::StatusOr<MappedFile> file = MappedFile::Open(path);
  if (!file.ok()) return file.status();
  const absl::Span<const uint8_t> b = file->bytes();
  Tokenizer t;
  const auto truncated = [&](size_t at) {
    return absl::InvalidArgumentError(absl::StrCat(path, " is truncated at byte ", at,
                                                   " (token ", t.pieces_.size(), ")"));
  };
  if (b.size() < 4) return truncated(0);
  size_t at = 4;  // past max_token_length, which std::string makes unnecessary
  while (at < b.size()) {
    float score;
    int32_t length;
    if (b.size() - at < 8) return truncated(at);
    std::memcpy(&score, b.data() + at, 4);
    std::memcpy(&length, b.data() + at + 4, 4);
    at += 8;
    if (length < 0 || static_cast<size_t>(length) > b.size() - at) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": token ", t.pieces_.size(),
                                                     " has length ", length, " at byte ", at));
    }
    t.pieces_.emplace_back(reinterpret_cast<const char*>(b.data() + at), length);
    t.scores_.push_back(score);
    at += length;
  }
  if (absl::Status s = t.Index(); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat(path, ": ", s.message()));
  }
  return t;
}

absl::Status Tokenizer::Index() {
  // Normalise legacy byte tokens (the character itself) to <0xXX>.
  for (int byte = 0; byte < 256; ++byte) {
    const int id = kFirstByteToken + byte;
    if (id < vocab_size() && pieces_[id] == Latin1AsUtf8(byte)) pieces_[id] = ByteTokenPiece(byte);
  }
  byte_token_.fill(-1);
  byte_value_.assign(pieces_.size(), -1);
  for (int id = 0; id < vocab_size(); ++id) {
    // The first id wins for a repeated piece, as in a linear search.
    ids_.emplace(pieces_[id], id);
    const int byte = ParseByteToken(pieces_[id]);
    if (byte >= 0) {
      byte_value_[id] = byte;
      if (byte_token_[byte] < 0) byte_token_[byte] = id;
    }
  }
  for (int byte = 0; byte < 256; ++byte) {
    if (byte_token_[byte] < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("tokenizer has no byte-fallback token ", ByteTokenPiece(byte)));
    }
  }
  return absl::OkStatus();
}

int Tokenizer::Lookup(absl::string_view piece) const {
  const auto it = ids_.find(piece);
  return it == ids_.end() ? -1 : it->second;
}

// One token per UTF-8 code point (at most 4 bytes, as llama2.c groups them), or its
// bytes' fallback tokens when the code point is not in the vocabulary.
std::vector<int> Tokenizer::InitialTokens(absl::string_view text) const {
  std::vector<int> tokens;
  if (text.empty()) return tokens;
  tokens.push_back(Lookup(" "));  // sentencepiece's add_dummy_prefix
  size_t start = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    if (!IsContinuationByte(text[i])) start = i;
    const size_t length = i + 1 - start;
    if (i + 1 < text.size() && IsContinuationByte(text[i + 1]) && length < 4) continue;
    const absl::string_view codepoint = text.substr(start, length);
    const int id = Lookup(codepoint);
    if (id >= 0) {
      tokens.push_back(id);
    } else {
      for (const char c : codepoint) tokens.push_back(byte_token_[static_cast<uint8_t>(c)]);
    }
    start = i + 1;  // a stray continuation byte starts a new group
  }
  return tokens;
}

// Merges the best-scoring adjacent pair until none merges. A heap of candidate pairs
// with lazy invalidation replaces llama2.c's full rescan per merge; ordering by
// (score desc, left position asc) picks exactly the pair the rescan would.
void Tokenizer::MergePairs(std::vector<int>& tokens) const {
  const int n = static_cast<int>(tokens.size());
  std::vector<int> next(n), prev(n);
  for (int i = 0; i < n; ++i) {
    next[i] = i + 1;
    prev[i] = i - 1;
  }
  struct Candidate {
    float score;
    int left;  // position of the left token; positions keep their order in the list
    int left_id, right_id, merged_id;
    bool operator<(const Candidate& o) const {
      return score != o.score ? score < o.score : left > o.left;
    }
  };
  std::priority_queue<Candidate> heap;
  const auto consider = [&](int left) {
    if (left < 0 || next[left] >= n) return;
    const int a = tokens[left], b = tokens[next[left]];
    const int merged = Lookup(pieces_[a] + pieces_[b]);
    if (merged >= 0 && scores_[merged] > kMinMergeScore) {
      heap.push({scores_[merged], left, a, b, merged});
    }
  };
  for (int i = 0; i + 1 < n; ++i) consider(i);
  std::vector<bool> alive(n, true);
  while (!heap.empty()) {
    const Candidate c = heap.top();
    heap.pop();
    const int right = next[c.left];
    // Stale when either side has merged since the candidate was pushed.
    if (!alive[c.left] || right >= n || tokens[c.left] != c.left_id ||
        tokens[right] != c.right_id) {
      continue;
    }
    tokens[c.left] = c.merged_id;
    alive[right] = false;
    next[c.left] = next[right];
    if (next[right] < n) prev[next[right]] = c.left;
    consider(prev[c.left]);
    consider(c.left);
  }
  std::vector<int> out;
  for (int i = 0; i < n; i = next[i]) out.push_back(tokens[i]);
  tokens = std::move(out);
}

std::vector<int> Tokenizer::Encode(absl::string_view text, bool bos, bool eos) const {
  std::vector<int> merged = InitialTokens(text);
  MergePairs(merged);
  std::vector<int> out;
  out.reserve(merged.size() + 2);
  // BOS stays out of the merges: no piece starts with "\n<s>\n", so it never merges.
  if (bos) out.push_back(kBos);
  out.insert(out.end(), merged.begin(), merged.end());
  if (eos) out.push_back(kEos);
  return out;
}

absl::StatusOr<std::string> Tokenizer::DecodeToken(int prev_token, int token) const {
  if (token < 0 || token >= vocab_size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("token ", token, " is outside the vocabulary [0, ", vocab_size(), ")"));
  }
  if (byte_value_[token] >= 0) return std::string(1, static_cast<char>(byte_value_[token]));
  absl::string_view piece = pieces_[token];
  if (prev_token == kBos && !piece.empty() && piece[0] == ' ') piece.remove_prefix(1);
  return std::string(piece);
}

absl::StatusOr<std::string> Tokenizer::Decode(absl::Span<const int> tokens) const {
  std::string text;
  int prev = -1;
  for (const int token : tokens) {
    if (token != kBos && token != kEos) {
      absl::StatusOr<std::string> piece = DecodeToken(prev, token);
      if (!piece.ok()) return piece.status();
      text += *piece;
    }
    prev = token;
  }
  return text;
}

}  // namespace freekv
