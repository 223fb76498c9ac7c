#include "worker/agreement.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"

namespace freekv {

std::vector<float> LogSoftmax(absl::Span<const float> logits) {
  std::vector<float> out(logits.size());
  if (logits.empty()) return out;
  const double max = *std::max_element(logits.begin(), logits.end());
  double sum = 0;
  for (float x : logits) sum += std::exp(x - max);
  const double log_z = max + std::log(sum);
  for (size_t i = 0; i < logits.size(); ++i)
    out[i] = static_cast<float>(logits[i] - log_z);
  return out;
}

double KlDivergence(absl::Span<const float> log_p, absl::Span<const float> log_q) {
  double kl = 0;
  for (size_t i = 0; i < log_p.size() && i < log_q.size(); ++i) {
    const double p = std::exp(static_cast<double>(log_p[i]));
    if (p > 0) kl += p * (static_cast<double>(log_p[i]) - log_q[i]);
  }
  return std::max(kl, 0.0);  // rounding can leave a tiny negative for equal inputs
}

absl::Status AgreementMeter::Add(absl::Span<const float> reference_log_probs,
                                 int32_t reference_token,
                                 absl::Span<const float> logits) {
  if (reference_log_probs.size() != logits.size() || logits.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("reference has ", reference_log_probs.size(),
                     " log-probabilities, the policy ", logits.size(), " logits"));
  }
  ++compared_;
  agreed_ +=
      std::max_element(logits.begin(), logits.end()) - logits.begin() == reference_token;
  const double kl = KlDivergence(reference_log_probs, LogSoftmax(logits));
  kl_sum_ += kl;
  max_kl_ = std::max(max_kl_, kl);
  return absl::OkStatus();
}

void AgreementMeter::Merge(const AgreementMeter& other) {
  compared_ += other.compared_;
  agreed_ += other.agreed_;
  kl_sum_ += other.kl_sum_;
  max_kl_ = std::max(max_kl_, other.max_kl_);
}

}  // namespace freekv
