#include "transport/ucx_blob_checks.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <sys/stat.h>
#include <ucs/memory/memory_type.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace freekv {
namespace {

uint64_t LoadWord(absl::string_view bytes, size_t offset) {
  uint64_t value = 0;
  std::memcpy(&value, bytes.data() + offset, sizeof(value));
  return value;
}

absl::Status SegmentError(absl::string_view segment, absl::string_view why) {
  return absl::UnavailableError(absl::StrCat(
      "the worker's shared memory ", segment, " ", why,
      ": the worker has exited, or runs in another IPC/PID namespace than the kvservice "
      "(Kubernetes: hostIPC and hostPID for both, or one pod)"));
}

absl::Status CheckCovers(absl::string_view segment, uint64_t base, uint64_t bytes,
                         uint64_t address, uint64_t length) {
  if (address < base || length > bytes || address - base > bytes - length) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "the region [%#x, +%d) is not inside the worker's shared memory %s [%#x, +%d)",
        address, length, segment, base, bytes));
  }
  return absl::OkStatus();
}

// sysv: uint32 shmid, uint64 address where the worker attached it.
absl::Status CheckSysvKey(absl::string_view key, uint64_t address, uint64_t length) {
  uint32_t shmid = 0;
  std::memcpy(&shmid, key.data(), sizeof(shmid));
  const uint64_t owner_address = LoadWord(key, 4);
  const std::string segment = absl::StrCat("segment (sysv shmid ", shmid, ")");
  shmid_ds info = {};
  if (shmctl(static_cast<int>(shmid), IPC_STAT, &info) != 0) {
    return SegmentError(segment, absl::StrCat("cannot be found: ", std::strerror(errno)));
  }
  return CheckCovers(segment, owner_address, info.shm_segsz, address, length);
}

// posix: uint64 segment id (flags in the top 4 bits), uint64 address, uint64 length
// (8 more bytes when the owner runs in a PID namespace; not part of the key proper).
absl::Status CheckPosixKey(absl::string_view key, uint64_t address, uint64_t length) {
  constexpr uint64_t kProcfs = uint64_t{1} << 63;   // /proc/<pid>/fd/<fd> of the owner
  constexpr uint64_t kShmOpen = uint64_t{1} << 62;  // /dev/shm/ucx_shm_posix_<id>
  constexpr uint64_t kIdMask = (uint64_t{1} << 60) - 1;
  const uint64_t id = LoadWord(key, 0);
  std::string path;
  if (id & kProcfs) {
    const uint64_t mmid = id & kIdMask;
    path = absl::StrCat("/proc/", mmid & ((1u << 30) - 1), "/fd/", mmid >> 30);
  } else if (id & kShmOpen) {
    path = absl::StrFormat("/dev/shm/ucx_shm_posix_%x", id & kIdMask);
  } else {
    return absl::InvalidArgumentError(
        "the worker's posix shared memory lives in a custom directory; not supported");
  }
  const std::string segment = absl::StrCat("segment ", path);
  const int fd = open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) {
    return SegmentError(segment,
                        absl::StrCat("cannot be opened: ", std::strerror(errno)));
  }
  struct stat file = {};
  const bool sized = fstat(fd, &file) == 0;
  close(fd);
  const uint64_t base = LoadWord(key, 8);
  const uint64_t bytes = LoadWord(key, 16);
  if (!sized || static_cast<uint64_t>(file.st_size) < bytes) {
    return SegmentError(segment, "is smaller than the worker says");
  }
  return CheckCovers(segment, base, bytes, address, length);
}

}  // namespace

absl::Status CheckPackedAddress(absl::string_view address) {
  constexpr size_t kMinBytes = 1 + 8;
  constexpr size_t kMaxBytes = 64 * 1024;
  if (address.size() < kMinBytes || address.size() > kMaxBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "UCX worker address is ", address.size(), " bytes; ucp_worker_get_address gives ",
        kMinBytes, " to ", kMaxBytes));
  }
  const unsigned version = static_cast<uint8_t>(address[0]) & 0xfu;
  if (version > 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "UCX worker address has format version ", version,
        "; UCX 1.13 writes 0 or 1 (is it ucp_worker_get_address's output?)"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<RkeyDomain>> ParsePackedRkey(absl::string_view rkey) {
  constexpr size_t kHeaderBytes = 8 + 1;
  if (rkey.size() < kHeaderBytes) {
    return absl::InvalidArgumentError(absl::StrCat("UCX rkey is ", rkey.size(),
                                                   " bytes; a packed rkey has at least ",
                                                   kHeaderBytes));
  }
  const uint64_t md_map = LoadWord(rkey, 0);
  const unsigned memory_type = static_cast<uint8_t>(rkey[8]);
  if (md_map == 0 || memory_type != UCS_MEMORY_TYPE_HOST) {
    return absl::InvalidArgumentError(
        absl::StrCat("UCX rkey names memory domains 0x", absl::Hex(md_map),
                     " of memory type ", memory_type, "; expected host memory (type ",
                     UCS_MEMORY_TYPE_HOST, ") in at least one domain"));
  }
  std::vector<RkeyDomain> domains;
  size_t offset = kHeaderBytes;  // where the next domain's size byte is
  for (int index = 0; index < 64; ++index) {
    if ((md_map >> index & 1) == 0) continue;
    const size_t bytes = offset < rkey.size() ? static_cast<uint8_t>(rkey[offset]) : 0;
    if (offset >= rkey.size() || bytes > rkey.size() - offset - 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          "UCX rkey is ", rkey.size(), " bytes, too short for its memory domains 0x",
          absl::Hex(md_map), " (truncated, or not ucp_rkey_pack's output)"));
    }
    domains.push_back({index, rkey.substr(offset + 1, bytes)});
    offset += 1 + bytes;
  }
  return domains;
}

absl::Status CheckRkeyReachable(absl::string_view rkey, uint64_t address,
                                uint64_t length) {
  absl::StatusOr<std::vector<RkeyDomain>> domains = ParsePackedRkey(rkey);
  if (!domains.ok()) return domains.status();
  for (const RkeyDomain& domain : *domains) {
    absl::Status s;
    if (domain.bytes.size() == 12) s = CheckSysvKey(domain.bytes, address, length);
    if (domain.bytes.size() == 24 || domain.bytes.size() == 32) {
      s = CheckPosixKey(domain.bytes, address, length);
    }
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

}  // namespace freekv
