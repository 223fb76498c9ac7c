// Helpers shared by the CPU and GPU tests of kernels/: random inputs (never zeros)
// and the relative L2 error the contracts are stated in. Test-only; not thread-safe
// (each test owns its generator).
#ifndef FREEKV_KERNELS_TEST_UTIL_H_
#define FREEKV_KERNELS_TEST_UTIL_H_

#include <cmath>
#include <cstdint>
#include <random>
#include <type_traits>
#include <vector>

#include "absl/types/span.h"
#include "kernels/bf16.h"

namespace freekv {
namespace kernels {

// The contract's bound on ||out - ref|| / ||ref||: 1e-5 for float32, 1e-2 for bf16.
template <typename T>
double Tolerance() {
  return std::is_same<T, float>::value ? 1e-5 : 1e-2;
}

// Uniform in [lo, hi), rounded to T.
template <typename T>
std::vector<T> RandomVector(std::mt19937& rng, size_t n, float lo = -1.0f,
                            float hi = 1.0f) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<T> v(n);
  for (T& x : v) x = FromFloat<T>(dist(rng));
  return v;
}

template <typename T>
std::vector<float> ToFloatVector(absl::Span<const T> v) {
  std::vector<float> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = ToFloat(v[i]);
  return out;
}

// ||out - ref|| / ||ref||; +inf when any output is NaN or the sizes differ.
template <typename T, typename U>
double RelativeL2(absl::Span<const T> out, absl::Span<const U> ref) {
  if (out.size() != ref.size()) return INFINITY;
  double diff = 0.0, norm = 0.0;
  for (size_t i = 0; i < out.size(); ++i) {
    const double o = ToFloat(out[i]);
    const double r = ToFloat(ref[i]);
    if (std::isnan(o)) return INFINITY;
    diff += (o - r) * (o - r);
    norm += r * r;
  }
  return norm == 0.0 ? std::sqrt(diff) : std::sqrt(diff / norm);
}

template <typename T, typename U>
double RelativeL2(const std::vector<T>& out, const std::vector<U>& ref) {
  return RelativeL2(absl::Span<const T>(out), absl::Span<const U>(ref));
}

}  // namespace kernels
}  // namespace freekv

#endif  // FREEKV_KERNELS_TEST_UTIL_H_
