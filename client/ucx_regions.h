// UcxRegions: a worker's side of the UCX data plane. Owns a UCX context, the staging
// region (where the kvservice puts recalled slices) and the offload region (where it
// gets full blocks from), both page-aligned host memory allocated and mapped by UCX,
// and a progress thread (a UcxEngine) for the worker the kvservice connects to.
//
// What a session needs from it goes into OpenSessionRequest: worker_address() (as
// ucx_worker_address), staging()/offload() base and size with staging_rkey() and
// offload_rkey() (as the MemoryRegion fields).
//
// The regions come from UCX (ucp_mem_map with ALLOCATE) rather than from the caller
// because on one node UCX then backs them with a shared-memory segment that the
// kvservice maps itself: its puts and gets are plain copies that need nothing from this
// process. Over tcp they are emulated by active messages that the progress thread
// serves; it sleeps on the worker's event fd between them, so it costs no CPU while
// nothing arrives.
//
// Thread-safety: all methods from any thread. The bytes of the regions are the
// caller's to read and write; the kvservice writes staging slots only when asked to
// recall into them and reads the offload region only during Offload.
#ifndef FREEKV_CLIENT_UCX_REGIONS_H_
#define FREEKV_CLIENT_UCX_REGIONS_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "transport/ucx_context.h"
#include "transport/ucx_engine.h"
#include "transport/ucx_memory.h"

namespace freekv {

struct UcxRegionsOptions {
  // UCX transports, UCX_TLS syntax; empty keeps UCX's own choice ($UCX_TLS, else all).
  std::string transports;
};

class UcxRegions {
 public:
  // Both sizes must be non-zero (INVALID_ARGUMENT naming the one that is not); UCX's
  // failure to allocate is RESOURCE_EXHAUSTED.
  static absl::StatusOr<std::unique_ptr<UcxRegions>> Create(
      uint64_t staging_bytes, uint64_t offload_bytes,
      const UcxRegionsOptions& options = {});
  // Stops the progress thread, then unmaps the regions. The kvservice session must be
  // closed first (its endpoint would otherwise point at nothing).
  ~UcxRegions() = default;
  UcxRegions(const UcxRegions&) = delete;
  UcxRegions& operator=(const UcxRegions&) = delete;

  // Exactly the sizes asked for; page-aligned.
  absl::Span<std::byte> staging() const { return staging_span_; }
  absl::Span<std::byte> offload() const { return offload_span_; }
  const std::string& staging_rkey() const { return staging_rkey_; }
  const std::string& offload_rkey() const { return offload_rkey_; }
  const std::string& worker_address() const { return engine_->worker_address(); }

  // CPU time of the progress thread so far.
  absl::Duration progress_cpu_time() const { return engine_->CpuTime(); }

 private:
  UcxRegions() = default;

  // Declared in the order they are made; destroyed in reverse (thread first).
  std::unique_ptr<UcxContext> context_;
  UcxMemory staging_;
  UcxMemory offload_;
  absl::Span<std::byte> staging_span_;
  absl::Span<std::byte> offload_span_;
  std::string staging_rkey_;
  std::string offload_rkey_;
  std::unique_ptr<UcxEngine> engine_;
};

}  // namespace freekv

#endif  // FREEKV_CLIENT_UCX_REGIONS_H_
