#include "worker/model/model_paths.h"

#include <pwd.h>
#include <unistd.h>

#include <cstdlib>
#include <vector>

namespace freekv {
namespace {

std::string NonEmptyEnv(const char* name) {
  const char* value = std::getenv(name);
  return value == nullptr ? std::string() : std::string(value);
}

std::string HomeDir() {
  std::string home = NonEmptyEnv("HOME");
  if (!home.empty()) return home;
  // getpwuid_r: getpwuid's static buffer is not thread-safe.
  const long hint = sysconf(_SC_GETPW_R_SIZE_MAX);
  std::vector<char> buffer(hint > 0 ? hint : 16384);
  struct passwd entry;
  struct passwd* result = nullptr;
  if (getpwuid_r(getuid(), &entry, buffer.data(), buffer.size(), &result) == 0 &&
      result != nullptr && result->pw_dir != nullptr) {
    return result->pw_dir;
  }
  return "/";
}

}  // namespace

std::string DefaultModelDir() {
  const std::string dir = NonEmptyEnv("FREEKV_MODEL_DIR");
  if (!dir.empty()) return dir;
  const std::string cache = NonEmptyEnv("FREEKV_CACHE");
  if (!cache.empty()) return cache + "/stories15M";
  return HomeDir() + "/.cache/freekv/stories15M";
}

std::string ModelBinPath(const std::string& dir) { return dir + "/model.bin"; }
std::string TokenizerBinPath(const std::string& dir) { return dir + "/tokenizer.bin"; }

}  // namespace freekv
