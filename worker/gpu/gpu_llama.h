// The Llama decoder's single-token decode step on the GPU: the same forward pass as
// worker/model/transformer.h, with bf16 weights and activations, cuBLAS GEMMs (fp32
// accumulation) and the kernels of kernels/ (RMSNorm, interleaved RoPE, SiLU-gated MLP).
// Attention is the caller's: PreAttention leaves q, k, v (after RoPE) in device
// buffers, the caller appends k, v to its KV cache and writes attn_out, and
// PostAttention finishes the layer. A decode step is
//   write tokens/positions; Embed; for each layer {PreAttention; attend; PostAttention};
//   Classify.
//
// Owns the device copy of the weights (bf16), the activations for up to max_batch
// sequences and a cuBLAS handle with a fixed workspace. The enqueue methods never
// allocate or synchronise, so a step (or one layer) can be captured in a CUDA graph
// (kernels::CudaGraph) and replayed; the graph then reads and writes the buffers below
// at their fixed addresses.
//
// Not thread-safe: one thread at a time enqueues (the cuBLAS handle is bound to the
// stream of each call). Work on different streams must be ordered by the caller, since
// every call reads and writes the same activation buffers. CUDA-free header.
#ifndef FREEKV_WORKER_GPU_GPU_LLAMA_H_
#define FREEKV_WORKER_GPU_GPU_LLAMA_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kernels/bf16.h"
#include "kernels/cuda_fwd.h"
#include "kernels/cuda_util.h"
#include "worker/model/model_config.h"
#include "worker/model/model_weights.h"

namespace freekv {
namespace gpu {

class CublasHandle;  // RAII owner of a cublasHandle_t (gpu_llama.cu)

class GpuLlama {
 public:
  // Uploads `weights` (fp32, ModelWeights conventions) to the current device as bf16,
  // tensor by tensor through a small host staging buffer (host memory stays far below
  // one layer); layers that alias one LayerWeights still get their own device copy.
  // Creates the cuBLAS handle with its workspace and the activations for up to
  // max_batch sequences. INVALID_ARGUMENT for weights that fail ValidateModelWeights or
  // max_batch <= 0 (checked before any device work); CUDA/cuBLAS errors as INTERNAL.
  static absl::StatusOr<std::unique_ptr<GpuLlama>> Create(const ModelWeights& weights,
                                                          int32_t max_batch);
  GpuLlama(const GpuLlama&) = delete;
  GpuLlama& operator=(const GpuLlama&) = delete;
  ~GpuLlama();

  const ModelConfig& config() const { return config_; }
  int32_t max_batch() const { return max_batch_; }

  // Device buffers of the current step; rows [0, batch) are used. The caller writes
  // tokens and positions (or hidden directly) before Embed / PreAttention, and its
  // attention writes attn_out between PreAttention and PostAttention.
  absl::Span<int32_t> tokens() const;              // [max_batch]
  absl::Span<int32_t> positions() const;           // [max_batch], the new token's
  absl::Span<kernels::BFloat16> hidden() const;    // [max_batch][dim], residual stream
  absl::Span<kernels::BFloat16> q() const;         // [max_batch][num_heads][head_dim]
  absl::Span<kernels::BFloat16> k() const;         // [max_batch][num_kv_heads][head_dim]
  absl::Span<kernels::BFloat16> v() const;         // [max_batch][num_kv_heads][head_dim]
  absl::Span<kernels::BFloat16> attn_out() const;  // [max_batch][num_heads][head_dim]
  absl::Span<float> logits() const;                // [max_batch][vocab_size]

  // Enqueue on `stream`: asynchronous, no allocation, no host synchronisation,
  // capturable in a CUDA graph. INVALID_ARGUMENT for batch outside [1, max_batch] or a
  // layer outside [0, num_layers); launch errors as INTERNAL naming the call.
  //
  // hidden = embedding[tokens]. A token outside [0, vocab_size) yields a NaN row (the
  // device cannot report it without a synchronisation), so its logits are NaN.
  absl::Status Embed(int32_t batch, cudaStream_t stream);
  // RMSNorm(hidden), the q/k/v GEMMs, RoPE of q and k at `positions`.
  absl::Status PreAttention(int layer, int32_t batch, cudaStream_t stream);
  // hidden += attn_out * wo^T (the residual add is fused into the GEMM, beta = 1), then
  // hidden += down(SiluMul(gate(x), up(x))) with x = RMSNorm(hidden).
  absl::Status PostAttention(int layer, int32_t batch, cudaStream_t stream);
  // logits = RMSNorm(hidden) * classifier^T, written as fp32 by the GEMM.
  absl::Status Classify(int32_t batch, cudaStream_t stream);

  // Device bytes of the weights (layer padding included; a tied classifier is counted
  // once, since it shares the embedding's copy).
  size_t weight_bytes() const;

 private:
  // Element offsets of each tensor inside a layer's single device buffer; every tensor
  // starts 256-byte aligned for cuBLAS. wk/wv and w1/w3 are read as strided batches of
  // two GEMMs, so their distance is the batch stride.
  struct LayerOffsets {
    size_t attn_norm = 0, ffn_norm = 0, wq = 0, wk = 0, wv = 0, wo = 0, w1 = 0, w3 = 0,
           w2 = 0, total = 0;
  };

  static LayerOffsets OffsetsOf(const ModelConfig& config);
  GpuLlama(const ModelConfig& config, int32_t max_batch);
  absl::Status UploadWeights(const ModelWeights& weights);
  absl::Status AllocateActivations();
  absl::Status CheckBatch(int32_t batch) const;
  absl::Status CheckLayer(int layer) const;
  const kernels::BFloat16* LayerTensor(int layer, size_t offset) const;

  ModelConfig config_;
  int32_t max_batch_;
  LayerOffsets offsets_;

  // Weights, bf16 (inv_freq_: RoPE frequencies, fp32, [head_dim / 2]).
  kernels::DeviceBuffer embedding_, classifier_, final_norm_, inv_freq_;
  std::vector<kernels::DeviceBuffer> layers_;  // one buffer per layer, offsets_ inside
  const kernels::BFloat16* classifier_data_ = nullptr;  // classifier_ or embedding_

  std::unique_ptr<CublasHandle> cublas_;

  // Activations. kv_ holds k then v ([2][max_batch][kv_width]); gate_up_ holds gate
  // then up ([2][max_batch][hidden_dim]): each pair is written by one batched GEMM.
  kernels::DeviceBuffer tokens_, positions_, hidden_, normed_, q_, kv_, attn_out_,
      gate_up_, logits_;
};

}  // namespace gpu
}  // namespace freekv

#endif  // FREEKV_WORKER_GPU_GPU_LLAMA_H_
