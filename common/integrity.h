// Integrity tags for store blocks: a 64-bit checksum of a block's bytes, written when a
// page is offloaded and compared when it is recalled (by the service, and by clients
// and tests that check what arrived). A pure function; safe to call from any thread.
//
// The tag is XXH3_64bits (seed 0) from libxxhash: it runs at memory bandwidth, so the
// recall path can afford to verify, and it is the same value every process computes
// for the same bytes, so the client and the service can compare tags directly.
#ifndef FREEKV_COMMON_INTEGRITY_H_
#define FREEKV_COMMON_INTEGRITY_H_

#include <cstddef>
#include <cstdint>

#include "absl/types/span.h"

namespace freekv {

// XXH3_64bits of `bytes`. An empty span has a tag too (the XXH3 value of no input).
uint64_t IntegrityTag(absl::Span<const std::byte> bytes);

}  // namespace freekv

#endif  // FREEKV_COMMON_INTEGRITY_H_
