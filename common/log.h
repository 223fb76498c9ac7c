// Minimal leveled logging to stderr. Abseil 20220623 (Debian bookworm) predates
// absl/log, so this is the one place that formats log lines.
// Thread-safe: each line is written with a single fprintf call.
#ifndef FREEKV_COMMON_LOG_H_
#define FREEKV_COMMON_LOG_H_

#include <cstdio>
#include <string>

#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace freekv {

enum class LogLevel { kInfo, kWarning, kError };

inline const char* LogLevelTag(LogLevel level) {
  switch (level) {
    case LogLevel::kInfo:
      return "I";
    case LogLevel::kWarning:
      return "W";
    case LogLevel::kError:
      return "E";
  }
  return "?";
}

template <typename... Args>
void Log(LogLevel level, const absl::FormatSpec<Args...>& format,
         const Args&... args) {
  const std::string line = absl::StrFormat(
      "%s %s %s\n", LogLevelTag(level),
      absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::Now(), absl::UTCTimeZone()),
      absl::StrFormat(format, args...));
  std::fputs(line.c_str(), stderr);
}

}  // namespace freekv

#endif  // FREEKV_COMMON_LOG_H_
