// Llama-family weights in safetensors, named as Hugging Face's LlamaForCausalLM names
// them (model.embed_tokens.weight, model.layers.N.self_attn.q_proj.weight, ...,
// model.norm.weight, lm_head.weight), in Hugging Face's RoPE convention: the q/k
// projection rows of each head are ordered [all first halves, all second halves]
// (rotate_half) rather than llama2.c's interleaved pairs. Save permutes into that order
// and Load permutes back, so real Hugging Face checkpoints and our own files load alike.
//
// The geometry comes from the file's __metadata__ when it carries Hugging Face config
// keys (hidden_size, intermediate_size, num_hidden_layers, num_attention_heads,
// num_key_value_heads, head_dim, vocab_size, max_position_embeddings, rope_theta,
// rms_norm_eps, and rope_scaling.* flattened; SaveModelSafetensors writes them),
// otherwise from config.json beside the file. The classifier is tied when
// lm_head.weight is absent.
#ifndef FREEKV_WORKER_MODEL_MODEL_SAFETENSORS_H_
#define FREEKV_WORKER_MODEL_MODEL_SAFETENSORS_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/geometry.h"
#include "worker/model/model_weights.h"

namespace freekv {

// Writes every tensor as `dtype` (fp32 is exact; F16/BF16 round to nearest even).
absl::Status SaveModelSafetensors(const ModelWeights& weights, const std::string& path,
                                  DType dtype);

// `path` is a .safetensors file, or a directory whose *.safetensors files (the shards
// of one model) are read together with its config.json. UNIMPLEMENTED when config.json
// asks for a RoPE scaling other than Llama 3's ("llama3").
absl::StatusOr<ModelWeights> LoadModelSafetensors(const std::string& path);

}  // namespace freekv

#endif  // FREEKV_WORKER_MODEL_MODEL_SAFETENSORS_H_
