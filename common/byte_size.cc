#include "common/byte_size.h"

#include <limits>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace freekv {
namespace {

constexpr char kSuffixes[] = "KMGTP";

}  // namespace

absl::StatusOr<uint64_t> ParseByteSize(absl::string_view text) {
  absl::string_view digits = absl::StripAsciiWhitespace(text);
  int shift = 0;
  if (!digits.empty()) {
    char last = absl::ascii_toupper(digits.back());
    if (last == 'B' && digits.size() > 1) {  // "64GB" or "64GiB"-less forms
      digits.remove_suffix(1);
      last = absl::ascii_toupper(digits.back());
    }
    for (int i = 0; kSuffixes[i] != '\0'; ++i) {
      if (last == kSuffixes[i]) {
        shift = 10 * (i + 1);
        digits.remove_suffix(1);
        break;
      }
    }
  }
  uint64_t value = 0;
  if (digits.empty() || !absl::SimpleAtoi(digits, &value)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "'", text, "' is not a byte size; use a whole number with an optional ",
        "suffix K, M, G, T or P (binary multiples), e.g. 64G"));
  }
  if (shift > 0 && value > (std::numeric_limits<uint64_t>::max() >> shift)) {
    return absl::InvalidArgumentError(
        absl::StrCat("byte size '", text, "' does not fit in 64 bits"));
  }
  return value << shift;
}

std::string FormatByteSize(uint64_t bytes) {
  int i = -1;
  while (bytes != 0 && (bytes & 1023) == 0 && kSuffixes[i + 1] != '\0') {
    bytes >>= 10;
    ++i;
  }
  if (i < 0) return absl::StrCat(bytes);
  return absl::StrCat(bytes, std::string(1, kSuffixes[i]));
}

bool AbslParseFlag(absl::string_view text, ByteSize* size, std::string* error) {
  absl::StatusOr<uint64_t> parsed = ParseByteSize(text);
  if (!parsed.ok()) {
    *error = std::string(parsed.status().message());
    return false;
  }
  size->bytes = *parsed;
  return true;
}

std::string AbslUnparseFlag(ByteSize size) { return FormatByteSize(size.bytes); }

}  // namespace freekv
