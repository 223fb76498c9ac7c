// Checks on the packed worker addresses and rkeys a peer sends, before UCX sees them.
//
// UCX 1.13 (Debian bookworm) parses these blobs without being told their length, and
// stops the whole process -- a failed assertion, or a crash in its own error path --
// on some malformed ones, and whenever an rkey names a shared-memory segment that this
// process cannot attach (the worker has exited, or runs in another IPC or PID
// namespace). A kvservice must answer such a peer with an error instead, so these
// checks refuse, from the layouts UCX 1.13 writes, what would stop it: wrong sizes,
// unknown versions, truncation, and shared-memory segments that are gone, out of
// reach, or smaller than the region they are said to hold. What passes is still
// parsed by UCX. Tied to UCX 1.13's formats on purpose: revisit on an upgrade.
//
// Thread-safe (no state).
#ifndef FREEKV_TRANSPORT_UCX_BLOB_CHECKS_H_
#define FREEKV_TRANSPORT_UCX_BLOB_CHECKS_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace freekv {

// A header byte whose low 4 bits are the format version (1.13 writes v1 = 0 or
// v2 = 1), then the 64-bit worker uuid and the devices. INVALID_ARGUMENT otherwise.
absl::Status CheckPackedAddress(absl::string_view address);

// One memory domain's part of a packed rkey.
struct RkeyDomain {
  int index;                // the domain's index in the packing process
  absl::string_view bytes;  // its packed key
};

// Splits an rkey: a 64-bit map of memory domains, a memory-type byte (must be host),
// then for each domain in the map a size byte and that many bytes. INVALID_ARGUMENT
// for anything shorter or different.
absl::StatusOr<std::vector<RkeyDomain>> ParsePackedRkey(absl::string_view rkey);

// ParsePackedRkey, then for each shared-memory domain in it (UCX 1.13's sysv keys are
// 12 bytes: shmid, owner address; posix keys 24 or 32: segment id, address, length)
// checks that this process can open the segment and that the segment
// covers [address, address + length) of the peer's memory. UNAVAILABLE names the
// segment and the likely cause.
absl::Status CheckRkeyReachable(absl::string_view rkey, uint64_t address,
                                uint64_t length);

}  // namespace freekv

#endif  // FREEKV_TRANSPORT_UCX_BLOB_CHECKS_H_
