// A byte count given on the command line as "4096", "64M", "64G" or "1T"
// (binary multiples: K = 1024). Usable as an ABSL_FLAG type.
#ifndef FREEKV_COMMON_BYTE_SIZE_H_
#define FREEKV_COMMON_BYTE_SIZE_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace freekv {

struct ByteSize {
  uint64_t bytes = 0;
};

// "64G" -> 64 << 30. INVALID_ARGUMENT for anything else, naming the text.
absl::StatusOr<uint64_t> ParseByteSize(absl::string_view text);
// The shortest exact spelling: 68719476736 -> "64G".
std::string FormatByteSize(uint64_t bytes);

// Abseil flag hooks.
bool AbslParseFlag(absl::string_view text, ByteSize* size, std::string* error);
std::string AbslUnparseFlag(ByteSize size);

}  // namespace freekv

#endif  // FREEKV_COMMON_BYTE_SIZE_H_
