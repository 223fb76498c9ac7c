#include "kvservice/usable_cpus.h"

#include <sched.h>

#include <algorithm>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace freekv {
namespace {

// CPUs in the calling thread's affinity mask; the machine's count if it can't be read.
int AffinityCpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return CPU_COUNT(&set);
  return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

// The quota of this process's own cgroup (v2: one "0::/path" line in
// /proc/self/cgroup); nullopt when there is none or it can't be read.
std::optional<int> CgroupCpus() {
  std::ifstream cgroup("/proc/self/cgroup");
  std::string line;
  while (std::getline(cgroup, line)) {
    absl::string_view path = line;
    if (!absl::ConsumePrefix(&path, "0::")) continue;
    std::ifstream cpu_max(absl::StrCat("/sys/fs/cgroup", path, "/cpu.max"));
    std::stringstream text;
    text << cpu_max.rdbuf();
    return CpusFromCgroupCpuMax(text.str());
  }
  return std::nullopt;
}

}  // namespace

std::optional<int> CpusFromCgroupCpuMax(absl::string_view cpu_max) {
  const std::vector<absl::string_view> fields =
      absl::StrSplit(absl::StripAsciiWhitespace(cpu_max), ' ', absl::SkipEmpty());
  int64_t quota = 0, period = 0;
  if (fields.size() != 2 || fields[0] == "max" || !absl::SimpleAtoi(fields[0], &quota) ||
      !absl::SimpleAtoi(fields[1], &period) || quota <= 0 || period <= 0) {
    return std::nullopt;
  }
  return static_cast<int>((quota + period - 1) / period);
}

int UsableCpus() {
  int cpus = AffinityCpus();
  if (std::optional<int> quota = CgroupCpus(); quota.has_value()) cpus = std::min(cpus, *quota);
  return std::max(cpus, 1);
}

}  // namespace freekv
