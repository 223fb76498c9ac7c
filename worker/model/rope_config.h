// The RoPE a ModelConfig implies, in the ModelWeights convention (interleaved pairs),
// for the CPU transformer and the GPU model alike. A pure function; any thread.
#ifndef FREEKV_WORKER_MODEL_ROPE_CONFIG_H_
#define FREEKV_WORKER_MODEL_ROPE_CONFIG_H_

#include "kernels/rope.h"
#include "worker/model/model_config.h"

namespace freekv {

inline kernels::RopeConfig RopeConfigOf(const ModelConfig& c) {
  kernels::RopeConfig rope;
  rope.head_dim = c.head_dim;
  rope.theta = c.rope_theta;
  rope.style = kernels::RopeStyle::kInterleaved;
  rope.llama3_factor = c.rope_scaling.factor;
  rope.llama3_low_freq_factor = c.rope_scaling.low_freq_factor;
  rope.llama3_high_freq_factor = c.rope_scaling.high_freq_factor;
  rope.llama3_original_max_positions = c.rope_scaling.original_max_positions;
  return rope;
}

}  // namespace freekv

#endif  // FREEKV_WORKER_MODEL_ROPE_CONFIG_H_
