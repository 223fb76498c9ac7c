// BFloat16 storage type for host code, bit-compatible with CUDA's __nv_bfloat16
// (1 sign, 8 exponent, 7 mantissa bits), so device buffers of either type can be
// passed through the launchers declared in this folder. Arithmetic always happens in
// float: a BFloat16 is only ever loaded (exactly widened) or stored (rounded to
// nearest even). A plain value type; any thread may use it.
#ifndef FREEKV_KERNELS_BF16_H_
#define FREEKV_KERNELS_BF16_H_

#include <cstdint>
#include <cstring>

namespace freekv {
namespace kernels {

struct BFloat16 {
  uint16_t bits = 0;
};
static_assert(sizeof(BFloat16) == 2, "BFloat16 must be 2 bytes like __nv_bfloat16");

inline float ToFloat(float x) { return x; }
inline float ToFloat(BFloat16 x) {
  const uint32_t wide = static_cast<uint32_t>(x.bits) << 16;
  float f;
  std::memcpy(&f, &wide, sizeof(f));
  return f;
}

// Round to nearest, ties to even, as __float2bfloat16_rn does; NaN stays NaN.
inline BFloat16 ToBFloat16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  if ((u & 0x7fffffffu) > 0x7f800000u) return BFloat16{0x7fc0};
  u += 0x7fffu + ((u >> 16) & 1u);
  return BFloat16{static_cast<uint16_t>(u >> 16)};
}

// FromFloat<T>(x): the storage value nearest to x (identity for float).
template <typename T>
T FromFloat(float x);
template <>
inline float FromFloat<float>(float x) { return x; }
template <>
inline BFloat16 FromFloat<BFloat16>(float x) { return ToBFloat16(x); }

}  // namespace kernels
}  // namespace freekv

#endif  // FREEKV_KERNELS_BF16_H_
