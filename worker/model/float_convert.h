// Conversions between fp32 and the 16-bit float formats weights are stored in (IEEE
// binary16 and bfloat16), rounding to nearest even like the hardware does. Pure
// functions; thread-safe.
#ifndef FREEKV_WORKER_MODEL_FLOAT_CONVERT_H_
#define FREEKV_WORKER_MODEL_FLOAT_CONVERT_H_

#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernels/bf16.h"

namespace freekv {

inline uint32_t FloatBits(float f) {
  uint32_t x;
  std::memcpy(&x, &f, sizeof(x));
  return x;
}

inline float FloatFromBits(uint32_t x) {
  float f;
  std::memcpy(&f, &x, sizeof(f));
  return f;
}

// bfloat16 is kernels/bf16.h's, so the model and the kernels round identically.
inline float Bf16ToFloat(uint16_t h) { return kernels::ToFloat(kernels::BFloat16{h}); }
inline uint16_t FloatToBf16(float f) { return kernels::ToBFloat16(f).bits; }

inline float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  const uint32_t mantissa = h & 0x3ffu;
  if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24
    const float magnitude = std::ldexp(static_cast<float>(mantissa), -24);
    return FloatFromBits(sign | FloatBits(magnitude));
  }
  if (exponent == 31) return FloatFromBits(sign | 0x7f800000u | (mantissa << 13));
  return FloatFromBits(sign | ((exponent + 112) << 23) | (mantissa << 13));
}

inline uint16_t FloatToHalf(float f) {
  const uint32_t x = FloatBits(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t magnitude = x & 0x7fffffffu;
  if (magnitude > 0x7f800000u) return sign | 0x7e00u;   // NaN
  if (magnitude >= 0x47800000u) return sign | 0x7c00u;  // >= 2^16 (or inf): inf
  const int exponent = static_cast<int>(magnitude >> 23) - 127;
  const uint32_t significand = (magnitude & 0x7fffffu) | 0x800000u;  // 24 bits
  // Bits of the 24-bit significand that binary16 cannot keep: 13 for normals, more
  // for results below 2^-14, which become subnormals in units of 2^-24.
  const int shift = exponent < -14 ? -1 - exponent : 13;
  if (shift > 24) return sign;  // below half the smallest subnormal: rounds to zero
  uint32_t kept = significand >> shift;
  const uint32_t rest = significand & ((1u << shift) - 1u);
  const uint32_t half = 1u << (shift - 1);
  if (rest > half || (rest == half && (kept & 1u))) ++kept;
  if (exponent < -14) return sign | static_cast<uint16_t>(kept);  // 0x400 = min normal
  // kept carries the hidden bit (0x400); a rounding carry to 0x800 bumps the exponent,
  // up to inf, which is the correctly rounded result.
  return sign | static_cast<uint16_t>(((exponent + 15) << 10) + kept - 0x400u);
}

}  // namespace freekv

#endif  // FREEKV_WORKER_MODEL_FLOAT_CONVERT_H_
