// CPU references of mlp.h.
#include <cmath>

#include "kernels/mlp.h"
#include "kernels/shape.h"

namespace freekv {
namespace kernels {

namespace {

template <typename T, typename Fn>
absl::Status ElementWise(absl::Span<const T> a, absl::Span<const T> b, absl::Span<T> out,
                         Fn fn) {
  FREEKV_RETURN_IF_ERROR(CheckSize("second input", b.size(), a.size()));
  FREEKV_RETURN_IF_ERROR(CheckSize("out", out.size(), a.size()));
  for (size_t i = 0; i < a.size(); ++i) {
    out[i] = FromFloat<T>(fn(ToFloat(a[i]), ToFloat(b[i])));
  }
  return absl::OkStatus();
}

}  // namespace

template <typename T>
absl::Status SiluMulRef(absl::Span<const T> gate, absl::Span<const T> up,
                        absl::Span<T> out) {
  return ElementWise(gate, up, out,
                     [](float g, float u) { return g / (1.0f + std::exp(-g)) * u; });
}

template <typename T>
absl::Status AddRef(absl::Span<const T> a, absl::Span<const T> b, absl::Span<T> out) {
  return ElementWise(a, b, out, [](float x, float y) { return x + y; });
}

#define FREEKV_INSTANTIATE(T)                                                     \
  template absl::Status SiluMulRef<T>(absl::Span<const T>, absl::Span<const T>,   \
                                      absl::Span<T>);                             \
  template absl::Status AddRef<T>(absl::Span<const T>, absl::Span<const T>,       \
                                  absl::Span<T>);
FREEKV_INSTANTIATE(float)
FREEKV_INSTANTIATE(BFloat16)
#undef FREEKV_INSTANTIATE

}  // namespace kernels
}  // namespace freekv
