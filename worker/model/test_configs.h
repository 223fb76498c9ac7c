// Model shapes the tests share. Test-only.
#ifndef FREEKV_WORKER_MODEL_TEST_CONFIGS_H_
#define FREEKV_WORKER_MODEL_TEST_CONFIGS_H_

#include "worker/model/model_config.h"

namespace freekv::testing {

// 3 layers, 4 query heads over 2 KV heads (GQA), head_dim 16 (q width 64 against dim
// 48), vocab 97, 256 positions.
inline ModelConfig SmallGqaConfig() {
  ModelConfig c;
  c.dim = 48;
  c.hidden_dim = 80;
  c.num_layers = 3;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 16;
  c.vocab_size = 97;
  c.max_seq_len = 256;
  return c;
}

}  // namespace freekv::testing

#endif  // FREEKV_WORKER_MODEL_TEST_CONFIGS_H_
