// CpuBackend: the CPU Transformer (fp32, worker/model/transformer.h) under a
// PolicyBundle (policy_factory.h), decoding with DecodeBatch (decode_loop.h).
//
// Borrows the weights, which must outlive it; owns the bundle (the policy and the
// kvservice link it recalls through). One thread at a time.
#ifndef FREEKV_WORKER_CPU_BACKEND_H_
#define FREEKV_WORKER_CPU_BACKEND_H_

#include <memory>

#include "absl/status/statusor.h"
#include "worker/decode_backend.h"
#include "worker/model/model_weights.h"
#include "worker/model/transformer.h"
#include "worker/policy_factory.h"

namespace freekv {

class CpuBackend : public DecodeBackend {
 public:
  // The policy MakePolicy builds for `options` (freekv and blocking open a session
  // with the kvservice at options.target).
  static absl::StatusOr<std::unique_ptr<CpuBackend>> Create(
      const ModelWeights& weights, const BackendOptions& options);
  // Any policy: MakePolicy's, or another AttentionPolicy (the evaluation's exact
  // ceiling). INVALID_ARGUMENT for a bundle without a policy or weights that do not
  // match their config.
  static absl::StatusOr<std::unique_ptr<CpuBackend>> Create(const ModelWeights& weights,
                                                            PolicyBundle bundle);

  Device device() const override { return Device::kCpu; }
  // DecodeBatch, then the statistics EndForward has not sent yet go to the kvservice.
  absl::StatusOr<std::vector<std::vector<int32_t>>> Decode(
      const DecodeRequest& request, const LogitsSink& sink = {}) override;
  absl::Status Release(int64_t sequence) override;
  BackendStats stats() const override;

 private:
  CpuBackend(Transformer model, PolicyBundle bundle)
      : model_(std::move(model)), bundle_(std::move(bundle)) {}

  Transformer model_;
  PolicyBundle bundle_;
  double prefill_seconds_ = 0;
  double decode_seconds_ = 0;
};

}  // namespace freekv

#endif  // FREEKV_WORKER_CPU_BACKEND_H_
