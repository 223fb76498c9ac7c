#include "common/geometry.h"

#include "absl/strings/str_cat.h"

namespace freekv {

size_t DTypeBytes(DType dtype) {
  switch (dtype) {
    case DType::kFloat16:
    case DType::kBFloat16:
      return 2;
    case DType::kFloat32:
      return 4;
  }
  return 0;
}

const char* DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kFloat16:
      return "float16";
    case DType::kBFloat16:
      return "bfloat16";
    case DType::kFloat32:
      return "float32";
  }
  return "unknown";
}

namespace {

absl::Status CheckRange(const char* field, uint32_t value, uint32_t max) {
  if (value == 0 || value > max) {
    return absl::InvalidArgumentError(absl::StrCat(
        "geometry.", field, " is ", value, "; it must be in [1, ", max, "]"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateGeometry(const Geometry& geometry) {
  if (auto s = CheckRange("num_layers", geometry.num_layers, kMaxLayers); !s.ok()) {
    return s;
  }
  if (auto s = CheckRange("num_kv_heads", geometry.num_kv_heads, kMaxKvHeads);
      !s.ok()) {
    return s;
  }
  if (auto s = CheckRange("head_dim", geometry.head_dim, kMaxHeadDim); !s.ok()) {
    return s;
  }
  if (auto s = CheckRange("page_tokens", geometry.page_tokens, kMaxPageTokens);
      !s.ok()) {
    return s;
  }
  if (geometry.block_bytes() > kMaxBlockBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "geometry gives blocks of ", geometry.block_bytes(),
        " bytes (num_kv_heads * 2 * page_tokens * head_dim * dtype bytes); at most ",
        kMaxBlockBytes, " are supported"));
  }
  return absl::OkStatus();
}

}  // namespace freekv
