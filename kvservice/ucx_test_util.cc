#include "kvservice/ucx_test_util.h"

#include <algorithm>
#include <memory>
#include <numeric>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"

namespace freekv {

SessionPeer UcxPeerOf(const UcxRegions& regions) {
  SessionPeer peer;
  peer.worker_address = regions.worker_address();
  peer.staging = {reinterpret_cast<uint64_t>(regions.staging().data()),
                  regions.staging().size(), regions.staging_rkey(), ""};
  peer.offload = {reinterpret_cast<uint64_t>(regions.offload().data()),
                  regions.offload().size(), regions.offload_rkey(), ""};
  return peer;
}

SessionPeer UcxPeerOf(const UcxRegionsDescriptor& regions) {
  SessionPeer peer;
  peer.worker_address = regions.worker_address;
  peer.staging = {regions.staging.address, regions.staging.length, regions.staging.rkey,
                  ""};
  peer.offload = {regions.offload.address, regions.offload.length, regions.offload.rkey,
                  ""};
  return peer;
}

std::vector<CopyRun> RandomRuns(std::byte* store, size_t store_bytes,
                                uint64_t region_bytes, size_t slot_bytes, size_t count,
                                uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<size_t> remote(region_bytes / slot_bytes), local(store_bytes / slot_bytes);
  std::iota(remote.begin(), remote.end(), 0);
  std::iota(local.begin(), local.end(), 0);
  std::shuffle(remote.begin(), remote.end(), rng);
  std::shuffle(local.begin(), local.end(), rng);
  count = std::min({count, remote.size(), local.size()});
  std::vector<CopyRun> runs;
  for (size_t i = 0; i < count; ++i) {
    const size_t bytes =
        i % 4 == 0 ? 1 + rng() % slot_bytes : std::min<size_t>(16 << 10, slot_bytes);
    const size_t skew = rng() % (slot_bytes - bytes + 1);  // unaligned starts too
    runs.push_back(
        {store + local[i] * slot_bytes + skew, remote[i] * slot_bytes + skew, bytes});
  }
  return runs;
}

absl::Status PushAndWait(SessionTransport& transport, std::vector<CopyRun> runs,
                         absl::Duration timeout) {
  // Shared with the callback, which may outlive a timed-out wait.
  struct Result {
    absl::Notification done;
    absl::Status status;
  };
  auto result = std::make_shared<Result>();
  transport.Push(std::move(runs), [result](absl::Status s) {
    result->status = std::move(s);
    result->done.Notify();
  });
  if (!result->done.WaitForNotificationWithTimeout(timeout)) {
    return absl::DeadlineExceededError(
        absl::StrCat("push did not complete within ", absl::FormatDuration(timeout)));
  }
  return result->status;
}

}  // namespace freekv
