#include "common/thread_name.h"

#include <pthread.h>

#include <string>
#include <thread>

#include "gtest/gtest.h"

namespace freekv {
namespace {

std::string NameOf(pthread_t thread) {
  char name[64] = {};
  if (pthread_getname_np(thread, name, sizeof(name)) != 0) return "<unreadable>";
  return name;
}

TEST(NameThisThreadTest, NamesTheCallingThreadOnly) {
  const std::string before = NameOf(pthread_self());
  std::string seen;
  std::thread other([&seen] {
    NameThisThread("kv-packer");
    seen = NameOf(pthread_self());
  });
  other.join();
  EXPECT_EQ(seen, "kv-packer");
  EXPECT_EQ(NameOf(pthread_self()), before);
}

TEST(NameThisThreadTest, CutsLongNamesAtFifteenCharacters) {
  std::string seen;
  std::thread other([&seen] {
    NameThisThread("kv-urgent-issue-and-more");
    seen = NameOf(pthread_self());
  });
  other.join();
  EXPECT_EQ(seen, "kv-urgent-issue");
}

}  // namespace
}  // namespace freekv
