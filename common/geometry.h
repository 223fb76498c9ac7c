// Model geometry as the store and the transports see it: how many bytes a block and a
// (page, head) slice take. A plain value type; safe to copy between threads.
//
// A store block holds one (sequence, layer, page) in HND order
//   [kv_head][K|V][token][dim]
// so one (page, kv_head) slice of K and V is contiguous (head_slice_bytes).
#ifndef FREEKV_COMMON_GEOMETRY_H_
#define FREEKV_COMMON_GEOMETRY_H_

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"

namespace freekv {

enum class DType { kFloat16, kBFloat16, kFloat32 };

size_t DTypeBytes(DType dtype);
const char* DTypeName(DType dtype);

struct Geometry {
  uint32_t num_layers = 0;
  uint32_t num_kv_heads = 0;
  uint32_t head_dim = 0;
  uint32_t page_tokens = 0;
  DType dtype = DType::kBFloat16;

  // Bytes of one (page, kv_head) slice: K and V of page_tokens tokens.
  size_t head_slice_bytes() const {
    return 2ull * page_tokens * head_dim * DTypeBytes(dtype);
  }
  // Bytes of one (sequence, layer, page) block: every KV head's slice.
  size_t block_bytes() const { return num_kv_heads * head_slice_bytes(); }
};

// Limits that keep a single session's geometry sane; a request outside them is
// INVALID_ARGUMENT naming the field.
inline constexpr uint32_t kMaxLayers = 1024;
inline constexpr uint32_t kMaxKvHeads = 1024;
inline constexpr uint32_t kMaxHeadDim = 1024;
inline constexpr uint32_t kMaxPageTokens = 4096;
// Blocks larger than this would not fit a store chunk.
inline constexpr size_t kMaxBlockBytes = size_t{64} << 20;

// OK, or INVALID_ARGUMENT with a message naming the first bad field.
absl::Status ValidateGeometry(const Geometry& geometry);

}  // namespace freekv

#endif  // FREEKV_COMMON_GEOMETRY_H_
