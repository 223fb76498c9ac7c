// A read-only memory map of a whole file. Owns the mapping and unmaps it on
// destruction; movable, not copyable. The bytes are immutable: safe to read from any
// number of threads while the MappedFile lives.
#ifndef FREEKV_WORKER_MODEL_MAPPED_FILE_H_
#define FREEKV_WORKER_MODEL_MAPPED_FILE_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace freekv {

class MappedFile {
 public:
  // NOT_FOUND when the file does not exist; INTERNAL on other open/map failures.
  static absl::StatusOr<MappedFile> Open(const std::string& path);

  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();

  absl::Span<const uint8_t> bytes() const { return {data_, size_}; }
  const std::string& path() const { return path_; }

 private:
  MappedFile(std::string path, const uint8_t* data, size_t size)
      : path_(std::move(path)), data_(data), size_(size) {}
  void Reset();

  std::string path_;
  const uint8_t* data_ = nullptr;  // nullptr for an empty file (nothing mapped)
  size_t size_ = 0;
};

}  // namespace freekv

#endif  // FREEKV_WORKER_MODEL_MAPPED_FILE_H_
