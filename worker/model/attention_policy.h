// The seam between the model and a decode policy: the model computes q, k and v of
// each layer and hands them to an AttentionPolicy, which owns the KV cache (where each
// page lives, what is resident) and returns the attention output. `full` is
// FullAttention (full_attention.h); the worker's freekv, blocking and oracle policies
// implement the same interface.
//
// A policy is driven by one thread at a time (the model's forward pass).
#ifndef FREEKV_WORKER_MODEL_ATTENTION_POLICY_H_
#define FREEKV_WORKER_MODEL_ATTENTION_POLICY_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/types/span.h"

namespace freekv {

// New tokens of one sequence in a forward pass: tokens.size() tokens at positions
// start_pos, start_pos + 1, ... A prefill (or prefill chunk) has many; a decode step
// has one. `sequence` is the caller's id for the sequence, stable across passes.
struct BatchEntry {
  int64_t sequence = 0;
  int32_t start_pos = 0;
  absl::Span<const int32_t> tokens;
};

class AttentionPolicy {
 public:
  virtual ~AttentionPolicy() = default;

  // Called once per forward pass before layer 0 (a step boundary: a policy may issue
  // or settle per-step work here). Default: nothing.
  virtual absl::Status BeginForward(absl::Span<const BatchEntry> batch) {
    return absl::OkStatus();
  }

  // Attention of one layer, called for layers 0..num_layers-1 in order.
  //   q:   [T][num_heads][head_dim]      T = the batch's total new tokens, rows
  //   k,v: [T][num_kv_heads][head_dim]   grouped by entry in batch order
  //   out: [T][num_heads][head_dim]
  // q and k carry RoPE at their positions. The policy appends k and v to each
  // sequence's cache (start_pos must equal the cached length of that layer) and writes,
  // for each new token, attention over its sequence's positions 0..its own.
  virtual absl::Status Attend(int layer, absl::Span<const BatchEntry> batch,
                              absl::Span<const float> q, absl::Span<const float> k,
                              absl::Span<const float> v, absl::Span<float> out) = 0;

  // Called once per forward pass after the last layer. Default: nothing.
  virtual absl::Status EndForward() { return absl::OkStatus(); }
};

}  // namespace freekv

#endif  // FREEKV_WORKER_MODEL_ATTENTION_POLICY_H_
