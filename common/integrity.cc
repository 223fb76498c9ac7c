#include "common/integrity.h"

#include <xxhash.h>

namespace freekv {

uint64_t IntegrityTag(absl::Span<const std::byte> bytes) {
  return XXH3_64bits(bytes.data(), bytes.size());
}

}  // namespace freekv
