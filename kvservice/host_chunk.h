// HostChunk: owns one chunk of host memory for the page store.
//
// The memory is an anonymous private mmap, page-aligned, its size rounded up to the
// system page size; the destructor unmaps it. Chunks are what the store registers with
// transports (ucp_mem_map) or pins (cudaHostRegister), so a chunk also carries release
// actions: undo steps that run, newest first, before the memory is unmapped, so that no
// registration or pin ever outlives the memory it names.
//
// Move-only. Not thread-safe: one owner at a time; the bytes themselves may be read and
// written from any thread while the chunk is alive.
#ifndef FREEKV_KVSERVICE_HOST_CHUNK_H_
#define FREEKV_KVSERVICE_HOST_CHUNK_H_

#include <cstddef>
#include <functional>
#include <vector>

#include "absl/status/statusor.h"

namespace freekv {

class HostChunk {
 public:
  // Maps at least `bytes` bytes (rounded up to PageSize()). INVALID_ARGUMENT for 0,
  // RESOURCE_EXHAUSTED naming the size and errno text when mmap fails.
  static absl::StatusOr<HostChunk> Map(size_t bytes);

  // The system page size; every chunk's data() is aligned to it.
  static size_t PageSize();

  HostChunk() = default;  // Owns nothing: data() is null, size() is 0.
  ~HostChunk();
  HostChunk(HostChunk&& other) noexcept;
  HostChunk& operator=(HostChunk&& other) noexcept;
  HostChunk(const HostChunk&) = delete;
  HostChunk& operator=(const HostChunk&) = delete;

  std::byte* data() const { return data_; }
  size_t size() const { return size_; }

  // Registers `action` to run when this chunk is released (destroyed or overwritten
  // by a move), before munmap. Actions run in reverse order of registration, so a
  // layered setup (pin, then register with UCX) is torn down in the opposite order.
  void AddReleaseAction(std::function<void()> action);

 private:
  HostChunk(std::byte* data, size_t size) : data_(data), size_(size) {}
  void Release();

  std::byte* data_ = nullptr;
  size_t size_ = 0;
  std::vector<std::function<void()>> release_actions_;
};

}  // namespace freekv

#endif  // FREEKV_KVSERVICE_HOST_CHUNK_H_
