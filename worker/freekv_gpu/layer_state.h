// The device state of one layer under a GpuDecoder policy, and the buffers its steps
// share. Internal to worker/freekv_gpu (gpu_decoder.cc); plain owners, one thread.
#ifndef FREEKV_WORKER_FREEKV_GPU_LAYER_STATE_H_
#define FREEKV_WORKER_FREEKV_GPU_LAYER_STATE_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/cuda_util.h"
#include "kernels/select.h"
#include "kernels/similarity.h"
#include "worker/freekv_gpu/resident_ops.h"

namespace freekv::gpu {

// Shape of the per-layer state: batch rows, heads, head_dim, pages.
struct StateShape {
  int32_t batch = 0, q_heads = 0, kv_heads = 0, head_dim = 0, page_tokens = 0;
  bool sparse = true;
  // Sparse lists over a full pool (the real oracle: every page stays on the GPU).
  bool over_full = false;
  ResidentLayout layout;
  int32_t digest_pages = 0;  // sparse: logical pages a digest table covers
  int32_t full_pages = 0;    // full: pool pages per sequence

  int32_t lists() const { return batch * kv_heads; }
  // A ResidentLayout pool (sinks, slots, a window ring) rather than a full one.
  bool resident() const { return sparse && !over_full; }
  int64_t page_elems() const { return int64_t{page_tokens} * kv_heads * head_dim; }
  int64_t pool_pages() const {
    return int64_t{batch} * (resident() ? layout.pages_per_seq() : full_pages);
  }
};

// A selection diff (one int32 block: pages, slots, counts, the correction count, then
// the flags as bytes) in pinned host memory that the kernels write and read directly
// (zero-copy: on the H100 the copy nodes that brought the diff over cost as much as
// the rest of freekv's extra work), followed by two stamps: the step whose diff the
// block holds. The stream writes a stamp after the kernels that wrote its part of the
// block, so a host thread that reads the stamp (acquire) sees that part of that step.
// Stamps rather than events because steps run as CUDA graphs, whose event records a
// host thread cannot wait on reliably (measured: it saw the previous step's record).
// stamp() covers the whole block (blocking, freekv's first step) or, for freekv, the
// flagged heads' rows (the correction, selected on the decode stream); spec_stamp()
// the other heads' rows (the speculation, selected beside it).
// The selection writes pages, slots and counts a second time into `device`
// (kernels::ResidentDiff::copy), which the kernels that apply a recall read: read
// from the pinned block, every warp of the apply crossed PCIe beside the step, behind
// the recalls' copies on the same link.
struct DiffSet {
  kernels::PinnedBuffer host;
  kernels::DeviceBuffer device;  // pages, slots, counts
  int32_t lists = 0, selected = 0;

  static absl::StatusOr<DiffSet> Create(int32_t lists, int32_t selected);
  size_t entries() const { return size_t(lists) * selected; }
  size_t block_ints() const;
  // What a selection writes: the pinned block's parts (kernels and host threads use the
  // same pointers, unified addressing) and the device copy.
  kernels::ResidentDiff Diff() const;
  // The pinned block's parts, for host threads (the recall driver).
  RecallDiff HostDiff() const;
  // The device copy's, for kernels.
  RecallDiff DeviceDiff() const;
  int32_t* num_flagged() const { return block() + 2 * entries() + lists; }
  absl::Span<uint8_t> flags() const {
    return {reinterpret_cast<uint8_t*>(num_flagged() + 1), size_t(lists)};
  }
  int32_t* stamp() const { return block() + block_ints(); }
  int32_t* spec_stamp() const { return stamp() + 1; }
  // Writes *step (device) into the stamp, after the stream's work so far.
  absl::Status Publish(const int32_t* step, cudaStream_t stream) const;

 private:
  int32_t* block() const { return host.span<int32_t>().data(); }
};

struct LayerState {
  kernels::DeviceBuffer pool;
  kernels::PagedKv<BFloat16> view;
  kernels::DeviceBuffer digests;   // sparse
  kernels::DeviceBuffer resident;  // sparse: [lists][capacity], -1 when empty
  // recall policies with layout.cache > 0: [lists][selected], the slot of each page the head's latest
  // selection attends (kernels::ResidentDiff::attend_slots), which the step's page
  // table takes before attention; -1 where none.
  kernels::DeviceBuffer attend;
  kernels::DeviceBuffer q_prev;    // freekv
  kernels::DeviceBuffer similarity;
  DiffSet diff;                    // freekv / blocking: each step's selection

  static absl::StatusOr<LayerState> Create(const StateShape& shape, bool recalls,
                                           uint64_t seed, cudaStream_t stream);
};

// Device bytes LayerState::Create allocates.
uint64_t LayerStateBytes(const StateShape& shape, bool recalls);

}  // namespace freekv::gpu

#endif  // FREEKV_WORKER_FREEKV_GPU_LAYER_STATE_H_
