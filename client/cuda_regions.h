// CudaRegions: a worker's device memory for a CUDA IPC session with the kvservice, and
// the interprocess events that order the kvservice's copies with the worker's stream.
//
// Owns, on one GPU: the staging region (2 slots per layer, layer-major, cudaMalloc'd
// in one piece), the offload region, the signal words (2 per layer, zeroed: a recall
// that names one has the kvservice write it once its bytes landed, so that the
// worker's kernels can wait for the word instead of the host for the reply), and per slot a ready event (the kvservice records
// it after copying a recall into the slot) and a free event (the worker records it
// after its last read of the slot), plus one offload-written event; all events are
// cudaEventInterprocess | cudaEventDisableTiming. Destroy it only after the session is
// closed (CudaKvClient orders this).
//
// The stream methods enqueue and return: none blocks the host. The protocol, per slot:
//   recall reply OK --> WaitSlotReady(stream) --> kernels read the slot on `stream`
//   --> MarkSlotFree(stream) --> release the slot --> the next recall into it.
// Thread-safe: every method may be called from any thread.
#ifndef FREEKV_CLIENT_CUDA_REGIONS_H_
#define FREEKV_CLIENT_CUDA_REGIONS_H_

#include <cstddef>
#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "client/cuda_ipc_handles.h"
#include "kernels/cuda_fwd.h"

namespace freekv {

class CudaRegions {
 public:
  // Allocates on `device`: 2 * num_layers slots of `slot_bytes` and `offload_bytes`.
  // INVALID_ARGUMENT naming a zero size; the CUDA error of a failed allocation.
  static absl::StatusOr<std::unique_ptr<CudaRegions>> Create(int device,
                                                             uint32_t num_layers,
                                                             uint64_t slot_bytes,
                                                             uint64_t offload_bytes);
  ~CudaRegions();
  CudaRegions(const CudaRegions&) = delete;
  CudaRegions& operator=(const CudaRegions&) = delete;

  int device() const;
  uint32_t num_layers() const;
  uint64_t slot_bytes() const;
  // Device pointers. staging_slot is null for a layer or slot out of range.
  std::byte* staging() const;
  uint64_t staging_bytes() const;
  std::byte* staging_slot(uint32_t layer, uint32_t slot) const;
  std::byte* offload() const;
  uint64_t offload_bytes() const;
  // The signal words, device memory: 2 per layer, [2 * layer + i]. A word's byte offset
  // from signals().data() is what RecallOptions::Signal::offset names.
  absl::Span<uint32_t> signals() const;
  // Sets every signal word to 0 and returns once done. For a new run of steps numbered
  // from 0 (a new decoder on this session): a word an earlier run left would open its
  // gates at once. Only while no recall that names a word is in flight.
  absl::Status ResetSignals() const;

  // The handles OpenSession sends (made once, at Create).
  const CudaIpcHandles& handles() const;

  // Makes `stream` wait for the kvservice's copies into the slot. Call once the
  // recall's reply said OK (KvClient::Wait): the kvservice records the event before it
  // replies, so the wait names that recall's copies.
  absl::Status WaitSlotReady(uint32_t layer, uint32_t slot, cudaStream_t stream) const;
  // Records on `stream` that the worker is done with the slot: the kvservice's next
  // copies into it wait for all work enqueued on `stream` so far. Call before
  // releasing the slot (KvClient::Release).
  absl::Status MarkSlotFree(uint32_t layer, uint32_t slot, cudaStream_t stream) const;
  // Records on `stream` that the offload region holds what the next Offload names:
  // call after enqueuing the writes and before KvClient::Offload.
  absl::Status MarkOffloadWritten(cudaStream_t stream) const;

 private:
  struct Impl;
  explicit CudaRegions(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace freekv

#endif  // FREEKV_CLIENT_CUDA_REGIONS_H_
