#include "common/byte_size.h"

#include "gtest/gtest.h"

namespace freekv {
namespace {

TEST(ByteSizeTest, ParsesSuffixesAsBinaryMultiples) {
  EXPECT_EQ(*ParseByteSize("4096"), 4096u);
  EXPECT_EQ(*ParseByteSize("64K"), 64u << 10);
  EXPECT_EQ(*ParseByteSize("64M"), 64u << 20);
  EXPECT_EQ(*ParseByteSize("64G"), uint64_t{64} << 30);
  EXPECT_EQ(*ParseByteSize("2t"), uint64_t{2} << 40);
  EXPECT_EQ(*ParseByteSize("8GB"), uint64_t{8} << 30);
}

TEST(ByteSizeTest, RejectsGarbageAndOverflowWithTheText) {
  for (const char* bad : {"", "G", "12X", "-1G", "1.5G", "99999999999P"}) {
    absl::StatusOr<uint64_t> parsed = ParseByteSize(bad);
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  EXPECT_NE(ParseByteSize("12X").status().message().find("12X"), std::string::npos);
}

TEST(ByteSizeTest, FormatRoundTrips) {
  for (uint64_t v : {uint64_t{0}, uint64_t{1000}, uint64_t{4096},
                     uint64_t{64} << 30, (uint64_t{3} << 40) + 1}) {
    EXPECT_EQ(*ParseByteSize(FormatByteSize(v)), v) << FormatByteSize(v);
  }
  EXPECT_EQ(FormatByteSize(uint64_t{64} << 30), "64G");
}

}  // namespace
}  // namespace freekv
