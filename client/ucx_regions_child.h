// UcxRegionsChild: a worker stand-in in a child process, for tests and benchmarks of
// the UCX data plane across processes. The child owns a UcxRegions, fills both regions
// with pseudo-random bytes from a seed, sends their descriptor over a pipe, then
// answers commands: send back the staging region, report its progress thread's CPU
// time, quit.
//
// The child is this same binary, re-executed (/proc/self/exe) so that it starts UCX
// in a fresh process rather than in a fork of one that already runs threads: main()
// must call RunUcxRegionsChildIfAsked(argc, argv) before anything else.
//
// Test support only. Not thread-safe: one thread drives a child.
#ifndef FREEKV_CLIENT_UCX_REGIONS_CHILD_H_
#define FREEKV_CLIENT_UCX_REGIONS_CHILD_H_

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"

namespace freekv {

// Deterministic bytes from `seed` (the child's regions, and what tests expect there).
void FillPseudoRandom(absl::Span<std::byte> bytes, uint64_t seed);

struct UcxRegionDescriptor {
  uint64_t address = 0;
  uint64_t length = 0;
  std::string rkey;
};

struct UcxRegionsDescriptor {
  std::string worker_address;
  UcxRegionDescriptor staging;
  UcxRegionDescriptor offload;
};

struct UcxRegionsChildOptions {
  uint64_t staging_bytes = 1 << 20;
  uint64_t offload_bytes = 1 << 20;
  // Staging holds FillPseudoRandom(seed), offload FillPseudoRandom(seed + 1).
  uint64_t seed = 1;
  std::string transports;  // UcxRegionsOptions::transports
  // Added to the child's environment, "NAME=value" (e.g. UCX_ALLOC_PRIO).
  std::vector<std::string> environment;
};

class UcxRegionsChild {
 public:
  static absl::StatusOr<std::unique_ptr<UcxRegionsChild>> Spawn(
      const UcxRegionsChildOptions& options);
  // Kills the child if it still runs.
  ~UcxRegionsChild();

  const UcxRegionsDescriptor& descriptor() const { return descriptor_; }
  pid_t pid() const { return pid_; }

  // The child's staging region as it is now (the child writes it back).
  absl::StatusOr<std::vector<std::byte>> ReadStaging();
  // CPU time the child's UCX progress thread has used.
  absl::StatusOr<absl::Duration> ProgressCpuTime();
  // Asks the child to tear its regions down and exit; its exit code (0 when clean).
  absl::StatusOr<int> Quit();
  // SIGKILL, as a worker that dies; waits for it.
  void Kill();

 private:
  UcxRegionsChild(pid_t pid, int to_child, int from_child)
      : pid_(pid), to_child_(to_child), from_child_(from_child) {}
  absl::StatusOr<std::string> Ask(char command);
  absl::StatusOr<int> Wait();

  pid_t pid_;
  int to_child_;
  int from_child_;
  UcxRegionsDescriptor descriptor_;
};

// In a child started by Spawn: runs it and exits. Otherwise returns at once.
void RunUcxRegionsChildIfAsked(int argc, char** argv);

}  // namespace freekv

#endif  // FREEKV_CLIENT_UCX_REGIONS_CHILD_H_
