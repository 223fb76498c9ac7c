// The safetensors file format (huggingface/safetensors): an 8-byte little-endian header
// length N, N bytes of JSON
//   {"<name>": {"dtype": "F32", "shape": [r, c], "data_offsets": [begin, end]}, ...,
//    "__metadata__": {"<key>": "<string>"}}
// then the tensor bytes, offsets relative to the end of the header.
//
// SafetensorsReader maps a file and converts F32, F16 and BF16 tensors to fp32 on
// request; other dtypes are listed but not converted. Immutable after Open: safe to
// read from any number of threads.
// SafetensorsWriter collects tensors and writes one file. Not thread-safe.
#ifndef FREEKV_WORKER_MODEL_SAFETENSORS_H_
#define FREEKV_WORKER_MODEL_SAFETENSORS_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/geometry.h"
#include "worker/model/mapped_file.h"

namespace freekv {

// "F32", "F16", "BF16": the safetensors names of the dtypes we convert.
const char* SafetensorsDTypeName(DType dtype);

struct TensorInfo {
  std::string dtype_name;       // as in the header, e.g. "BF16" or "I64"
  std::optional<DType> dtype;   // set for F32, F16 and BF16
  std::vector<int64_t> shape;
  size_t begin = 0;  // byte range within the data region
  size_t end = 0;
};

class SafetensorsReader {
 public:
  // NOT_FOUND when the file is missing; INVALID_ARGUMENT naming the tensor or field
  // when the header is malformed or an offset range falls outside the file.
  static absl::StatusOr<SafetensorsReader> Open(const std::string& path);

  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::map<std::string, TensorInfo>& tensors() const { return tensors_; }

  // The tensor converted to fp32. NOT_FOUND when absent; INVALID_ARGUMENT when its
  // shape is not expected_shape; UNIMPLEMENTED for a dtype we do not convert.
  absl::StatusOr<std::vector<float>> ReadFloat32(
      absl::string_view name, absl::Span<const int64_t> expected_shape) const;

  // The stored bytes of a tensor, unconverted.
  absl::Span<const uint8_t> RawBytes(const TensorInfo& info) const;

 private:
  SafetensorsReader(MappedFile file, size_t data_start)
      : file_(std::move(file)), data_start_(data_start) {}
  absl::Status ParseHeader(absl::string_view json);

  MappedFile file_;
  size_t data_start_;  // file offset of the data region
  std::map<std::string, TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

class SafetensorsWriter {
 public:
  // Adds a tensor, stored as `dtype` (converted from fp32 at Write). `values` is not
  // copied: it must stay alive and unchanged until Write returns. INVALID_ARGUMENT when
  // the name repeats or the shape's product is not values.size().
  absl::Status Add(std::string name, DType dtype, std::vector<int64_t> shape,
                   absl::Span<const float> values);
  void SetMetadata(std::string key, std::string value);

  // Writes the file through a temporary beside it and a rename, so that no reader sees
  // a partial file. INTERNAL naming the path on I/O errors.
  absl::Status Write(const std::string& path) const;

 private:
  struct Entry {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    absl::Span<const float> values;
  };
  std::string HeaderJson() const;

  std::vector<Entry> entries_;  // in Add order, which is the data order
  std::map<std::string, std::string> metadata_;
};

}  // namespace freekv

#endif  // FREEKV_WORKER_MODEL_SAFETENSORS_H_
