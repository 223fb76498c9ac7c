#include "kvservice/host_chunk.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"

namespace freekv {

size_t HostChunk::PageSize() {
  static const size_t page_size = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return page_size;
}

absl::StatusOr<HostChunk> HostChunk::Map(size_t bytes) {
  if (bytes == 0) {
    return absl::InvalidArgumentError("HostChunk::Map: bytes must be positive, got 0");
  }
  const size_t page = PageSize();
  if (bytes > SIZE_MAX - page) {
    return absl::InvalidArgumentError(
        absl::StrCat("HostChunk::Map: bytes ", bytes, " is too large to map"));
  }
  const size_t rounded = (bytes + page - 1) / page * page;
  void* memory =
      mmap(nullptr, rounded, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (memory == MAP_FAILED) {
    const int error = errno;
    return absl::ResourceExhaustedError(absl::StrCat(
        "HostChunk::Map: mmap of ", rounded, " bytes failed: ", std::strerror(error)));
  }
  return HostChunk(static_cast<std::byte*>(memory), rounded);
}

HostChunk::~HostChunk() { Release(); }

HostChunk::HostChunk(HostChunk&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      release_actions_(std::move(other.release_actions_)) {
  other.release_actions_.clear();
}

HostChunk& HostChunk::operator=(HostChunk&& other) noexcept {
  if (this != &other) {
    Release();
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    release_actions_ = std::move(other.release_actions_);
    other.release_actions_.clear();
  }
  return *this;
}

void HostChunk::AddReleaseAction(std::function<void()> action) {
  release_actions_.push_back(std::move(action));
}

void HostChunk::Release() {
  for (auto it = release_actions_.rbegin(); it != release_actions_.rend(); ++it) {
    (*it)();
  }
  release_actions_.clear();
  if (data_ != nullptr) {
    // munmap of a mapping we created can only fail on a bad address; nothing to do.
    munmap(data_, size_);
    data_ = nullptr;
    size_ = 0;
  }
}

}  // namespace freekv
