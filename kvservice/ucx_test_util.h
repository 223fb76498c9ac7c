// Helpers shared by the UCX data plane's tests and benchmark: the SessionPeer of a
// worker's regions, random non-overlapping copy runs, and a blocking Push.
// Test support only.
#ifndef FREEKV_KVSERVICE_UCX_TEST_UTIL_H_
#define FREEKV_KVSERVICE_UCX_TEST_UTIL_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "client/ucx_regions.h"
#include "client/ucx_regions_child.h"
#include "kvservice/transport.h"

namespace freekv {

// What OpenSession would carry for these regions (in this process, or a child's).
SessionPeer UcxPeerOf(const UcxRegions& regions);
SessionPeer UcxPeerOf(const UcxRegionsDescriptor& regions);

// `count` runs, each in its own `slot_bytes` slot both in the store and in a region of
// `region_bytes`, the slots shuffled; every fourth run has a random size (1 byte up to
// a slot) at a random place in its slot, the others fill 16 KiB (or the slot).
std::vector<CopyRun> RandomRuns(std::byte* store, size_t store_bytes,
                                uint64_t region_bytes, size_t slot_bytes, size_t count,
                                uint32_t seed);

// Push, then wait for done; DEADLINE_EXCEEDED if it does not come within `timeout`.
absl::Status PushAndWait(SessionTransport& transport, std::vector<CopyRun> runs,
                         absl::Duration timeout = absl::Seconds(30));

}  // namespace freekv

#endif  // FREEKV_KVSERVICE_UCX_TEST_UTIL_H_
