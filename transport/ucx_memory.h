// UcxMemory: owns one UCX memory mapping (ucp_mem_map .. ucp_mem_unmap) and, for
// Allocate, the memory itself.
//
// Allocate lets UCX allocate page-aligned host memory. On one node UCX takes it from a
// shared memory segment (sysv, else posix), and the packed rkey names that segment, so
// a peer's puts and gets become plain copies through its own mapping of the segment:
// no CPU of this process and no kernel call per operation. Memory the caller registers
// (Register) is reachable only through transports that go through this process (CMA
// is not used for RMA by UCX 1.13; tcp and shared-memory active messages emulate RMA,
// which needs this worker progressed); the service registers its store chunks that way
// so that zero-copy transports (verbs, across nodes) can use them as local buffers.
//
// Move-only. The context must outlive it. The bytes may be used from any thread.
#ifndef FREEKV_TRANSPORT_UCX_MEMORY_H_
#define FREEKV_TRANSPORT_UCX_MEMORY_H_

#include <ucp/api/ucp.h>

#include <cstddef>
#include <string>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "transport/ucx_context.h"

namespace freekv {

class UcxMemory {
 public:
  // At least `bytes` bytes (UCX may round up), page-aligned. INVALID_ARGUMENT for 0.
  static absl::StatusOr<UcxMemory> Allocate(const UcxContext& context, size_t bytes);
  // Registers [base, base + bytes), which the caller owns and keeps mapped until this
  // mapping is destroyed. INVALID_ARGUMENT for a null base or 0 bytes.
  static absl::StatusOr<UcxMemory> Register(const UcxContext& context, std::byte* base,
                                            size_t bytes);

  UcxMemory() = default;  // maps nothing
  ~UcxMemory();
  UcxMemory(UcxMemory&& other) noexcept;
  UcxMemory& operator=(UcxMemory&& other) noexcept;
  UcxMemory(const UcxMemory&) = delete;
  UcxMemory& operator=(const UcxMemory&) = delete;

  std::byte* data() const { return data_; }
  size_t size() const { return size_; }
  absl::Span<std::byte> span() const { return absl::MakeSpan(data_, size_); }
  ucp_mem_h handle() const { return memh_; }

  // ucp_rkey_pack's bytes: what a peer passes to UcxRemoteKey::Unpack to reach this
  // memory.
  absl::StatusOr<std::string> PackRkey() const;

 private:
  static absl::StatusOr<UcxMemory> Map(const UcxContext& context,
                                       const ucp_mem_map_params_t& params);
  void Reset();

  ucp_context_h context_ = nullptr;
  ucp_mem_h memh_ = nullptr;
  std::byte* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace freekv

#endif  // FREEKV_TRANSPORT_UCX_MEMORY_H_
