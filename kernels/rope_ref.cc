// CPU reference of rope.h.
#include <cmath>

#include "absl/strings/str_cat.h"
#include "kernels/rope.h"
#include "kernels/shape.h"

namespace freekv {
namespace kernels {

namespace {

// Llama-3.1 scaling: long wavelengths are stretched by `factor`, short ones kept,
// the band between blended (as in the reference implementation).
float ScaleLlama3(float freq, const RopeConfig& c) {
  const float kPi = 3.14159265358979323846f;
  const float old_len = static_cast<float>(c.llama3_original_max_positions);
  const float low_wavelen = old_len / c.llama3_low_freq_factor;
  const float high_wavelen = old_len / c.llama3_high_freq_factor;
  const float wavelen = 2.0f * kPi / freq;
  if (wavelen < high_wavelen) return freq;
  if (wavelen > low_wavelen) return freq / c.llama3_factor;
  const float smooth = (old_len / wavelen - c.llama3_low_freq_factor) /
                       (c.llama3_high_freq_factor - c.llama3_low_freq_factor);
  return (1.0f - smooth) * freq / c.llama3_factor + smooth * freq;
}

}  // namespace

absl::StatusOr<std::vector<float>> RopeInvFreq(const RopeConfig& config) {
  FREEKV_RETURN_IF_ERROR(CheckPositive("RopeConfig.head_dim", config.head_dim));
  if (config.head_dim % 2 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("RopeConfig.head_dim must be even, got ", config.head_dim));
  }
  if (!(config.theta > 1.0f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("RopeConfig.theta must be > 1, got ", config.theta));
  }
  std::vector<float> inv_freq(config.head_dim / 2);
  for (size_t j = 0; j < inv_freq.size(); ++j) {
    const double exponent = 2.0 * static_cast<double>(j) / config.head_dim;
    float freq = static_cast<float>(1.0 / std::pow(static_cast<double>(config.theta),
                                                   exponent));
    if (config.llama3_factor > 1.0f) freq = ScaleLlama3(freq, config);
    inv_freq[j] = freq;
  }
  return inv_freq;
}

template <typename T>
absl::Status ApplyRopeRef(absl::Span<T> x, absl::Span<const int32_t> positions,
                          absl::Span<const float> inv_freq, int32_t num_heads,
                          RopeStyle style) {
  FREEKV_RETURN_IF_ERROR(CheckPositive("num_heads", num_heads));
  FREEKV_RETURN_IF_ERROR(CheckPositive("inv_freq size", inv_freq.size()));
  const size_t half = inv_freq.size();
  const size_t head_dim = 2 * half;
  FREEKV_RETURN_IF_ERROR(
      CheckSize("x", x.size(), positions.size() * num_heads * head_dim));
  // Pair j is (lo, lo + stride) within the head.
  const size_t stride = style == RopeStyle::kInterleaved ? 1 : half;
  for (size_t t = 0; t < positions.size(); ++t) {
    for (size_t j = 0; j < half; ++j) {
      const float angle = static_cast<float>(positions[t]) * inv_freq[j];
      const float c = std::cos(angle);
      const float s = std::sin(angle);
      const size_t lo = style == RopeStyle::kInterleaved ? 2 * j : j;
      for (int32_t h = 0; h < num_heads; ++h) {
        T* head = x.data() + (t * num_heads + h) * head_dim;
        const float a = ToFloat(head[lo]);
        const float b = ToFloat(head[lo + stride]);
        head[lo] = FromFloat<T>(a * c - b * s);
        head[lo + stride] = FromFloat<T>(a * s + b * c);
      }
    }
  }
  return absl::OkStatus();
}

template absl::Status ApplyRopeRef<float>(absl::Span<float>, absl::Span<const int32_t>,
                                          absl::Span<const float>, int32_t, RopeStyle);
template absl::Status ApplyRopeRef<BFloat16>(absl::Span<BFloat16>,
                                             absl::Span<const int32_t>,
                                             absl::Span<const float>, int32_t,
                                             RopeStyle);

}  // namespace kernels
}  // namespace freekv
