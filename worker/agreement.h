// How close a policy's next-token distributions are to full attention's, step by
// step under teacher forcing: top-1 agreement (the policy's argmax equals full's) and
// the KL divergence KL(P_full || P_policy) of the softmax distributions, in nats.
//
// Not thread-safe: one meter per thread.
#ifndef FREEKV_WORKER_AGREEMENT_H_
#define FREEKV_WORKER_AGREEMENT_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"

namespace freekv {

// log softmax of `logits`, accumulated in double.
std::vector<float> LogSoftmax(absl::Span<const float> logits);

// KL(P || Q) in nats from log-probabilities of the same length.
double KlDivergence(absl::Span<const float> log_p, absl::Span<const float> log_q);

class AgreementMeter {
 public:
  // Compares one step: full's log-probabilities and its greedy token (the argmax of
  // its logits, kept apart because rounding in the log-softmax can create ties) with
  // the policy's logits. INVALID_ARGUMENT when the sizes differ.
  absl::Status Add(absl::Span<const float> reference_log_probs, int32_t reference_token,
                   absl::Span<const float> logits);
  // Adds another meter's counts (merging rows of one table cell).
  void Merge(const AgreementMeter& other);

  uint64_t compared() const { return compared_; }
  uint64_t agreed() const { return agreed_; }
  double agreement() const { return compared_ == 0 ? 0.0 : double(agreed_) / compared_; }
  double mean_kl() const { return compared_ == 0 ? 0.0 : kl_sum_ / compared_; }
  double max_kl() const { return max_kl_; }

 private:
  uint64_t compared_ = 0;
  uint64_t agreed_ = 0;
  double kl_sum_ = 0;
  double max_kl_ = 0;
};

}  // namespace freekv

#endif  // FREEKV_WORKER_AGREEMENT_H_
