// Streaming softmax-weighted sum for the CPU references of attention: feed
// (logit, value row) pairs one at a time with the running-max formulation, read the
// normalised output and the log-sum-exp. Internal to kernels/. One object per
// (query row, chunk); not shared between threads.
#ifndef FREEKV_KERNELS_ONLINE_SOFTMAX_H_
#define FREEKV_KERNELS_ONLINE_SOFTMAX_H_

#include <cmath>
#include <limits>
#include <vector>

#include "kernels/bf16.h"

namespace freekv {
namespace kernels {

class OnlineSoftmax {
 public:
  explicit OnlineSoftmax(size_t head_dim) : acc_(head_dim, 0.0f) {}

  template <typename T>
  void Add(float logit, const T* value) {
    if (logit > max_) {
      // Rescale what was accumulated under the old maximum (exp(-inf) = 0 at start).
      const float correction = std::exp(max_ - logit);
      sum_ *= correction;
      for (float& a : acc_) a *= correction;
      max_ = logit;
    }
    const float p = std::exp(logit - max_);
    sum_ += p;
    for (size_t i = 0; i < acc_.size(); ++i) acc_[i] += p * ToFloat(value[i]);
  }

  bool empty() const { return sum_ == 0.0f; }
  // -inf when nothing was added.
  float lse() const {
    return empty() ? -std::numeric_limits<float>::infinity() : max_ + std::log(sum_);
  }
  // Writes the normalised output (zeros when nothing was added).
  template <typename T>
  void Write(T* out) const {
    const float inv = empty() ? 0.0f : 1.0f / sum_;
    for (size_t i = 0; i < acc_.size(); ++i) out[i] = FromFloat<T>(acc_[i] * inv);
  }

 private:
  float max_ = -std::numeric_limits<float>::infinity();
  float sum_ = 0.0f;
  std::vector<float> acc_;
};

template <typename T>
float DotAsFloat(const T* a, const T* b, size_t n) {
  float s = 0.0f;
  for (size_t i = 0; i < n; ++i) s += ToFloat(a[i]) * ToFloat(b[i]);
  return s;
}

}  // namespace kernels
}  // namespace freekv

#endif  // FREEKV_KERNELS_ONLINE_SOFTMAX_H_
