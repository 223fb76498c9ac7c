#include "common/integrity.h"

#include <cstring>
#include <random>
#include <vector>

#include "common/random_bytes.h"
#include "gtest/gtest.h"

namespace freekv {
namespace {

absl::Span<const std::byte> AsBytes(const char* text) {
  return {reinterpret_cast<const std::byte*>(text), std::strlen(text)};
}

// Published XXH3_64bits (seed 0) values, so that a tag computed here matches the one
// any other XXH3 implementation (a Python client, a test tool) computes.
TEST(IntegrityTagTest, MatchesPublishedXxh3Values) {
  EXPECT_EQ(IntegrityTag({}), 0x2D06800538D394C2ull);
  EXPECT_EQ(IntegrityTag(AsBytes("a")), 0xE6C632B61E964E1Full);
}

TEST(IntegrityTagTest, SameBytesSameTagAtAnyAddress) {
  const std::vector<std::byte> bytes = RandomBytes(16 << 10, 1);
  std::vector<std::byte> copy(bytes.size() + 3);
  std::memcpy(copy.data() + 3, bytes.data(), bytes.size());  // unaligned copy
  EXPECT_EQ(IntegrityTag(bytes), IntegrityTag({copy.data() + 3, bytes.size()}));
}

TEST(IntegrityTagTest, EverySingleBitFlipChangesTheTag) {
  std::vector<std::byte> bytes = RandomBytes(4096, 2);
  const uint64_t tag = IntegrityTag(bytes);
  std::mt19937 rng(3);
  for (int trial = 0; trial < 256; ++trial) {
    const size_t index = rng() % bytes.size();
    const std::byte bit{static_cast<unsigned char>(1u << (rng() % 8))};
    bytes[index] ^= bit;
    EXPECT_NE(IntegrityTag(bytes), tag) << "byte " << index;
    bytes[index] ^= bit;
  }
  EXPECT_EQ(IntegrityTag(bytes), tag);
}

TEST(IntegrityTagTest, LengthIsPartOfTheTag) {
  const std::vector<std::byte> bytes = RandomBytes(1024, 4);
  EXPECT_NE(IntegrityTag(bytes), IntegrityTag({bytes.data(), bytes.size() - 1}));
}

}  // namespace
}  // namespace freekv
