#include "client/cuda_regions.h"

#include <utility>
#include <vector>

#include "kvservice/cuda_handles.cuh"

namespace freekv {

struct CudaRegions::Impl {
  int device = 0;
  uint32_t num_layers = 0;
  uint64_t slot_bytes = 0;
  gpu::DeviceAllocation staging;
  gpu::DeviceAllocation offload;
  gpu::DeviceAllocation signals;
  std::vector<gpu::Event> slot_ready;  // [2 * layer + slot]
  std::vector<gpu::Event> slot_free;
  gpu::Event offload_written;
  CudaIpcHandles handles;

  // The index of (layer, slot), or INVALID_ARGUMENT naming them.
  absl::StatusOr<size_t> SlotIndex(uint32_t layer, uint32_t slot) const {
    if (layer >= num_layers || slot > 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          "(layer ", layer, ", slot ", slot, ") is not a staging slot; ", num_layers,
          " layers of slots 0 and 1"));
    }
    return 2 * size_t{layer} + slot;
  }

  // Allocates the regions and the signal words and exports their handles.
  absl::Status AllocateRegions(uint64_t offload_bytes);
};

namespace {

constexpr unsigned int kIpcEventFlags = cudaEventInterprocess | cudaEventDisableTiming;

// Creates `count` interprocess events on `device` and exports each one's handle.
absl::Status MakeIpcEvents(int device, size_t count, std::vector<gpu::Event>* events,
                           std::vector<std::string>* handles) {
  for (size_t i = 0; i < count; ++i) {
    absl::StatusOr<gpu::Event> event = gpu::Event::Create(device, kIpcEventFlags);
    if (!event.ok()) return event.status();
    absl::StatusOr<std::string> handle = event->ExportIpc();
    if (!handle.ok()) return handle.status();
    events->push_back(*std::move(event));
    handles->push_back(*std::move(handle));
  }
  return absl::OkStatus();
}

// Sets the signal words to 0, synchronously.
absl::Status ZeroWords(int device, const gpu::DeviceAllocation& words) {
  gpu::DeviceGuard guard(device);
  return gpu::CudaStatus(cudaMemset(words.data(), 0, words.bytes()),
                         "cudaMemset of the signal words");
}

}  // namespace

absl::Status CudaRegions::Impl::AllocateRegions(uint64_t offload_bytes) {
  const uint64_t staging_bytes = 2ull * num_layers * slot_bytes;
  absl::StatusOr<gpu::DeviceAllocation> made_staging =
      gpu::DeviceAllocation::Create(device, staging_bytes);
  if (!made_staging.ok()) return made_staging.status();
  staging = *std::move(made_staging);
  absl::StatusOr<gpu::DeviceAllocation> made_offload =
      gpu::DeviceAllocation::Create(device, offload_bytes);
  if (!made_offload.ok()) return made_offload.status();
  offload = *std::move(made_offload);
  absl::StatusOr<std::string> staging_handle = staging.ExportIpc();
  if (!staging_handle.ok()) return staging_handle.status();
  absl::StatusOr<std::string> offload_handle = offload.ExportIpc();
  if (!offload_handle.ok()) return offload_handle.status();
  handles.staging_handle = *std::move(staging_handle);
  handles.staging_bytes = staging_bytes;
  handles.offload_handle = *std::move(offload_handle);
  handles.offload_bytes = offload_bytes;
  // A value a recall would publish is never 0 (its step is), so zeroed words are shut.
  const uint64_t signals_bytes = 2ull * num_layers * sizeof(uint32_t);
  absl::StatusOr<gpu::DeviceAllocation> made_signals =
      gpu::DeviceAllocation::Create(device, signals_bytes);
  if (!made_signals.ok()) return made_signals.status();
  signals = *std::move(made_signals);
  if (absl::Status s = ZeroWords(device, signals); !s.ok()) return s;
  absl::StatusOr<std::string> signals_handle = signals.ExportIpc();
  if (!signals_handle.ok()) return signals_handle.status();
  handles.signals_handle = *std::move(signals_handle);
  handles.signals_bytes = signals_bytes;
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<CudaRegions>> CudaRegions::Create(int device,
                                                                 uint32_t num_layers,
                                                                 uint64_t slot_bytes,
                                                                 uint64_t offload_bytes) {
  if (num_layers == 0 || slot_bytes == 0 || offload_bytes == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "CudaRegions: num_layers ", num_layers, ", slot_bytes ", slot_bytes,
        " and offload_bytes ", offload_bytes, " must all be positive"));
  }
  auto impl = std::make_unique<Impl>();
  impl->device = device;
  impl->num_layers = num_layers;
  impl->slot_bytes = slot_bytes;
  absl::StatusOr<std::string> bus_id = gpu::PciBusIdOf(device);
  if (!bus_id.ok()) return bus_id.status();
  impl->handles.pci_bus_id = *std::move(bus_id);
  if (absl::Status s = impl->AllocateRegions(offload_bytes); !s.ok()) return s;
  const size_t slots = 2 * size_t{num_layers};
  if (absl::Status s = MakeIpcEvents(device, slots, &impl->slot_ready,
                                     &impl->handles.slot_ready_events);
      !s.ok()) {
    return s;
  }
  if (absl::Status s =
          MakeIpcEvents(device, slots, &impl->slot_free, &impl->handles.slot_free_events);
      !s.ok()) {
    return s;
  }
  std::vector<gpu::Event> written;
  std::vector<std::string> written_handle;
  if (absl::Status s = MakeIpcEvents(device, 1, &written, &written_handle); !s.ok()) {
    return s;
  }
  impl->offload_written = std::move(written[0]);
  impl->handles.offload_written_event = std::move(written_handle[0]);
  return std::unique_ptr<CudaRegions>(new CudaRegions(std::move(impl)));
}

CudaRegions::CudaRegions(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
CudaRegions::~CudaRegions() = default;

int CudaRegions::device() const { return impl_->device; }
uint32_t CudaRegions::num_layers() const { return impl_->num_layers; }
uint64_t CudaRegions::slot_bytes() const { return impl_->slot_bytes; }
std::byte* CudaRegions::staging() const { return impl_->staging.data(); }
uint64_t CudaRegions::staging_bytes() const { return impl_->staging.bytes(); }
std::byte* CudaRegions::offload() const { return impl_->offload.data(); }
uint64_t CudaRegions::offload_bytes() const { return impl_->offload.bytes(); }
const CudaIpcHandles& CudaRegions::handles() const { return impl_->handles; }
absl::Span<uint32_t> CudaRegions::signals() const {
  return {reinterpret_cast<uint32_t*>(impl_->signals.data()),
          impl_->signals.bytes() / sizeof(uint32_t)};
}

std::byte* CudaRegions::staging_slot(uint32_t layer, uint32_t slot) const {
  absl::StatusOr<size_t> index = impl_->SlotIndex(layer, slot);
  if (!index.ok()) return nullptr;
  return impl_->staging.data() + *index * impl_->slot_bytes;
}

absl::Status CudaRegions::ResetSignals() const {
  return ZeroWords(impl_->device, impl_->signals);
}

absl::Status CudaRegions::WaitSlotReady(uint32_t layer, uint32_t slot,
                                        cudaStream_t stream) const {
  absl::StatusOr<size_t> index = impl_->SlotIndex(layer, slot);
  if (!index.ok()) return index.status();
  gpu::DeviceGuard guard(impl_->device);
  return gpu::CudaStatus(
      cudaStreamWaitEvent(stream, impl_->slot_ready[*index].get(), 0),
      "cudaStreamWaitEvent on a slot's ready event");
}

absl::Status CudaRegions::MarkSlotFree(uint32_t layer, uint32_t slot,
                                       cudaStream_t stream) const {
  absl::StatusOr<size_t> index = impl_->SlotIndex(layer, slot);
  if (!index.ok()) return index.status();
  gpu::DeviceGuard guard(impl_->device);
  return gpu::CudaStatus(cudaEventRecord(impl_->slot_free[*index].get(), stream),
                         "cudaEventRecord of a slot's free event");
}

absl::Status CudaRegions::MarkOffloadWritten(cudaStream_t stream) const {
  gpu::DeviceGuard guard(impl_->device);
  return gpu::CudaStatus(cudaEventRecord(impl_->offload_written.get(), stream),
                         "cudaEventRecord of the offload-written event");
}

}  // namespace freekv
