// The state GpuDecoder::Impl keeps when it decodes real prompts (GpuDecoderOptions::
// real(), driven by GpuGenerator): the tokens picked on the GPU, the prefill's K and V,
// and the offloading of pages as they fill. Internal to worker/freekv_gpu
// (generation.cc); plain owners, used by the decode thread only.
#ifndef FREEKV_WORKER_FREEKV_GPU_GENERATION_H_
#define FREEKV_WORKER_FREEKV_GPU_GENERATION_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "kernels/bf16.h"
#include "kernels/cuda_util.h"
#include "kernels/paged_kv.h"
#include "worker/freekv_gpu/page_offloader.h"

namespace freekv::gpu {

// A read-only view of a pool, as the kernels take their inputs.
inline kernels::PagedKv<const kernels::BFloat16> ConstView(
    const kernels::PagedKv<kernels::BFloat16>& v) {
  return {v.k, v.v, v.page_stride, v.num_pages, v.page_tokens, v.num_kv_heads, v.head_dim};
}

struct Generation {
  // [max_steps + 1][batch]: row 0 the prefill's argmax, row t + 1 decode step t's;
  // written by the GPU (PickTokensCuda), read once the stream has drained.
  kernels::PinnedBuffer picked;
  // [batch][vocab] floats: a step's logits for the caller's sink. Pinned, so that the
  // copy is queued behind the step and the host's wait for it is the bounded one
  // (into pageable memory the copy itself would block the host, without a limit).
  kernels::PinnedBuffer logits;
  kernels::DeviceBuffer first_tokens;    // [batch] fed to decode step 0
  kernels::DeviceBuffer prefill_forced;  // [batch] forced[b][0], or -1
  // One sequence's prompt K and V, every layer: [layers][K|V][capacity][kv_heads][head_dim],
  // token-major, so it is both causal attention's contiguous input and a pool of
  // capacity / page_tokens pages (K and V in separate arrays).
  kernels::DeviceBuffer prefill_kv;
  int64_t prefill_capacity = 0;  // tokens, a multiple of page_tokens
  // Uploads outside the steps (prefill tokens, positions and page lists).
  kernels::PinnedBuffer staging;
  kernels::DeviceBuffer uploads;
  // [batch][kv_heads][selected]: the slots the prefill filled (every layer alike).
  std::vector<int32_t> resident;
  std::unique_ptr<PageOffloader> offloader;  // freekv, blocking
  // [sequence][t]: the token fed to decode step t (teacher forcing); empty: greedy.
  std::vector<std::vector<int32_t>> forced;
  // [sequence][logical page]: the offload job that stores the page, -1 if none yet.
  std::vector<std::vector<int64_t>> offload_job;
};

}  // namespace freekv::gpu

#endif  // FREEKV_WORKER_FREEKV_GPU_GENERATION_H_
