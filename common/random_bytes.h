// Reproducible pseudo-random bytes for tests, the demo and benchmarks: pages that are
// never zeros, so a copy that moved nothing or the wrong block cannot pass unnoticed.
// Pure functions; safe from any thread.
#ifndef FREEKV_COMMON_RANDOM_BYTES_H_
#define FREEKV_COMMON_RANDOM_BYTES_H_

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "absl/types/span.h"

namespace freekv {

// Fills `bytes` from a 64-bit Mersenne Twister seeded with `seed`.
inline void FillRandomBytes(absl::Span<std::byte> bytes, uint64_t seed) {
  std::mt19937_64 rng(seed);
  size_t i = 0;
  for (; i + 8 <= bytes.size(); i += 8) {
    const uint64_t word = rng();
    std::memcpy(bytes.data() + i, &word, 8);
  }
  const uint64_t tail = rng();
  std::memcpy(bytes.data() + i, &tail, bytes.size() - i);
}

inline std::vector<std::byte> RandomBytes(size_t n, uint64_t seed) {
  std::vector<std::byte> bytes(n);
  FillRandomBytes(absl::MakeSpan(bytes), seed);
  return bytes;
}

}  // namespace freekv

#endif  // FREEKV_COMMON_RANDOM_BYTES_H_
