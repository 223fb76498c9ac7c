// The GPU backend: freekv_gpu's GpuGenerator (worker/freekv_gpu/gpu_generator.h) over
// a GpuLlama (bf16 weights on device 0), and for freekv and blocking a CUDA IPC session
// with the kvservice (client/cuda_kv_client.h) sized for the budget. Built from
// gpu_backend_cuda.cc under --config=cuda; without CUDA, gpu_backend_none.cc answers
// every call with FAILED_PRECONDITION saying how to build it.
//
// RetrievalConfig maps to the generator's options: page_tokens, sink / selected /
// window pages, tau; exempt layers (full_layers) are not supported on the GPU yet.
// The backend owns the session, the model and the generator; one thread at a time.
#ifndef FREEKV_WORKER_GPU_BACKEND_H_
#define FREEKV_WORKER_GPU_BACKEND_H_

#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "worker/decode_backend.h"
#include "worker/model/model_weights.h"

namespace freekv {

// Call first thing in main, before any CUDA call, in a process that will decode on
// the GPU: the recall gates need eager module loading (freekv_gpu/resident_ops.h).
// FAILED_PRECONDITION in a build without CUDA.
absl::Status PrepareGpuProcess();

// Uploads the weights and opens what the policy needs. options.config.max_sequences
// bounds the prompts of one Decode (it sizes the staging slots). INVALID_ARGUMENT for
// a non-empty full_layers or a budget the generator cannot serve; the kvservice's and
// CUDA's errors pass through; FAILED_PRECONDITION in a build without CUDA.
absl::StatusOr<std::unique_ptr<DecodeBackend>> MakeGpuBackend(
    const ModelWeights& weights, const BackendOptions& options);

}  // namespace freekv

#endif  // FREEKV_WORKER_GPU_BACKEND_H_
