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

// The name a new thread reads back after NameThisThread(name).
std::string NameSeenByAThreadNamed(const std::string& name) {
  std::string seen;
  std::thread other([&] {
    NameThisThread(name);
    seen = NameOf(pthread_self());
  });
  other.join();
  return seen;
}

TEST(NameThisThreadTest, NamesTheCallingThreadOnly) {
  const std::string before = NameOf(pthread_self());
  EXPECT_EQ(NameSeenByAThreadNamed("kv-packer"), "kv-packer");
  EXPECT_EQ(NameOf(pthread_self()), before);
}

TEST(NameThisThreadTest, CutsLongNamesAtFifteenCharacters) {
  EXPECT_EQ(NameSeenByAThreadNamed("kv-urgent-issue-and-more"), "kv-urgent-issue");
}

}  // namespace
}  // namespace freekv
