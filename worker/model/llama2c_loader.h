// Loads a llama2.c checkpoint (the format of karpathy/llama2.c's model.bin, version 0):
//   Config: 7 x int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size,
//           seq_len); a negative vocab_size means the classifier is stored, unshared.
//   fp32 weights: embedding, rms_att[L], wq[L], wk[L], wv[L], wo[L], rms_ffn[L],
//           w1[L], w2[L], w3[L], rms_final, freq_cis_real, freq_cis_imag, [classifier].
// llama2.c's conventions are ModelWeights' own, so nothing is permuted. llama2.c fixes
// rope_theta = 10000 and norm_eps = 1e-5; the stored freq_cis tables are not used by
// the forward pass (RoPE is computed), but can be read back to check that convention.
#ifndef FREEKV_WORKER_MODEL_LLAMA2C_LOADER_H_
#define FREEKV_WORKER_MODEL_LLAMA2C_LOADER_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/model/model_weights.h"

namespace freekv {

// The RoPE tables a llama2.c checkpoint carries: [seq_len][head_dim / 2] each.
struct Llama2cRopeTable {
  std::vector<float> cos;
  std::vector<float> sin;
};

// NOT_FOUND when the file is missing; INVALID_ARGUMENT naming the field when the header
// is inconsistent or the file size differs from what the header implies. When
// rope_table is non-null it receives the stored freq_cis tables.
absl::StatusOr<ModelWeights> LoadLlama2cModel(const std::string& path,
                                              Llama2cRopeTable* rope_table = nullptr);

}  // namespace freekv

#endif  // FREEKV_WORKER_MODEL_LLAMA2C_LOADER_H_
