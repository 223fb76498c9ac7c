// How many CPUs this process may actually use: the smaller of its CPU affinity (what
// taskset or Kubernetes' static CPU manager leaves it) and its cgroup v2 CPU quota
// (cpu.max, what a Kubernetes CPU limit becomes). std::thread::hardware_concurrency
// counts the machine's CPUs instead, so a pool sized from it oversubscribes a pod.
//
// The kvservice sizes its packing threads from it (--cuda_gather_threads=0).
// Stateless; any thread may call.
#ifndef FREEKV_KVSERVICE_USABLE_CPUS_H_
#define FREEKV_KVSERVICE_USABLE_CPUS_H_

#include <optional>

#include "absl/strings/string_view.h"

namespace freekv {

// CPUs the calling thread's affinity allows, capped by the cgroup's quota; at least 1.
int UsableCpus();

// The CPUs a cgroup v2 cpu.max ("QUOTA PERIOD", or "max PERIOD" for none) allows,
// rounded up; nullopt for no quota or text that is not cpu.max's.
std::optional<int> CpusFromCgroupCpuMax(absl::string_view cpu_max);

}  // namespace freekv

#endif  // FREEKV_KVSERVICE_USABLE_CPUS_H_
