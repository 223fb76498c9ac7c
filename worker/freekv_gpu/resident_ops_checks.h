// Shape checks shared by resident_ops' references and CUDA launchers (sizes only: the
// spans may be device memory). Internal to worker/freekv_gpu.
#ifndef FREEKV_WORKER_FREEKV_GPU_RESIDENT_OPS_CHECKS_H_
#define FREEKV_WORKER_FREEKV_GPU_RESIDENT_OPS_CHECKS_H_

#include <cstddef>

#include "absl/status/status.h"
#include "worker/freekv_gpu/resident_ops.h"

namespace freekv::gpu {

absl::Status CheckApplyShapes(size_t slot_elems, const RecallDiff& diff,
                              size_t head_mask_size,
                              const kernels::PagedKv<BFloat16>& pool,
                              const ResidentLayout& layout, size_t resident_size);
absl::Status CheckAppendShapes(size_t k_size, size_t v_size, size_t pages_size,
                               size_t tokens_size, const kernels::PagedKv<BFloat16>& pool);

}  // namespace freekv::gpu

#endif  // FREEKV_WORKER_FREEKV_GPU_RESIDENT_OPS_CHECKS_H_
