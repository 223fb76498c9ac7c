// The kvservice's copy-method names: each reads back as the method it names, a name
// that is none of them is refused with the names that are, and the methods that may
// pack on the host are the ones that need a GatherPool.
#include "kvservice/copy_method.h"

#include <string>

#include "gtest/gtest.h"

namespace freekv {
namespace {

TEST(CopyMethodTest, EveryNameReadsBackAsItsMethod) {
  for (CopyMethod method : {CopyMethod::kBatch, CopyMethod::kPerRun, CopyMethod::kGather,
                            CopyMethod::kSplit, CopyMethod::kAuto}) {
    absl::StatusOr<CopyMethod> parsed = ParseCopyMethod(CopyMethodName(method));
    ASSERT_TRUE(parsed.ok()) << CopyMethodName(method) << ": " << parsed.status();
    EXPECT_EQ(*parsed, method) << CopyMethodName(method);
  }
}

TEST(CopyMethodTest, AnUnknownNameIsRefusedWithTheKnownOnes) {
  for (const char* name : {"scatter", "", "Gather", "off"}) {
    absl::StatusOr<CopyMethod> parsed = ParseCopyMethod(name);
    ASSERT_FALSE(parsed.ok()) << name;
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(parsed.status().message().find("'auto'"), std::string::npos)
        << parsed.status();
  }
}

TEST(CopyMethodTest, OnlyGatherSplitAndAutoPack) {
  EXPECT_FALSE(UsesBounce(CopyMethod::kBatch));
  EXPECT_FALSE(UsesBounce(CopyMethod::kPerRun));
  EXPECT_TRUE(UsesBounce(CopyMethod::kGather));
  EXPECT_TRUE(UsesBounce(CopyMethod::kSplit));
  EXPECT_TRUE(UsesBounce(CopyMethod::kAuto));
}

}  // namespace
}  // namespace freekv
