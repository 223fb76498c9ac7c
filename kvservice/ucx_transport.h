// UcxTransportFactory: the kvservice's UCX data plane. One per service process: one
// UCX context and one UcxEngine (a worker and the thread that owns it) shared by every
// session; Connect makes a UcxSessionTransport per session at OpenSession.
//
// Which UCX transports move the bytes: on one node, when the worker's regions were
// allocated by UCX (client/ucx_regions.h), the shared-memory transports (sysv, posix):
// a put is a memcpy by the engine thread into its mapping of the worker's segment. With
// transports = "tcp" (or memory the worker registered itself) UCX emulates RMA over
// active messages, which the worker's progress thread serves.
//
// Store memory: RegisterLocalMemory maps a store chunk with ucp_mem_map, so that
// transports that need registered local buffers (zero-copy ones, e.g. verbs across
// nodes) can use it; WrapChunkAllocator makes the page store do it for every chunk.
//
// Thread-safety: every method from any thread. Destroy every SessionTransport (one
// destroyed from a done callback closes after its pushes finish: let them), and
// unregister (or free) every store chunk, before the factory.
#ifndef FREEKV_KVSERVICE_UCX_TRANSPORT_H_
#define FREEKV_KVSERVICE_UCX_TRANSPORT_H_

#include <cstddef>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "kvservice/chunk_allocator.h"
#include "kvservice/transport.h"
#include "transport/ucx_context.h"
#include "transport/ucx_engine.h"
#include "transport/ucx_memory.h"

namespace freekv {

struct UcxTransportOptions {
  // UCX transports, UCX_TLS syntax ("tcp", "sysv,posix,tcp"); empty keeps UCX's own
  // choice ($UCX_TLS, else all it finds).
  std::string transports;
};

class UcxTransportFactory final : public TransportFactory {
 public:
  static absl::StatusOr<std::unique_ptr<UcxTransportFactory>> Create(
      const UcxTransportOptions& options = {});
  ~UcxTransportFactory() override;

  // Connects to the worker named by `peer` (its UCX worker address and the rkeys of
  // its staging and offload regions). INVALID_ARGUMENT naming the field for a missing
  // or malformed one; UNAVAILABLE when UCX cannot reach the worker.
  absl::StatusOr<std::unique_ptr<SessionTransport>> Connect(
      const SessionPeer& peer) override;

  // Maps [base, base + bytes) with ucp_mem_map until UnregisterLocalMemory(base).
  // ALREADY_EXISTS if base is registered already.
  absl::Status RegisterLocalMemory(std::byte* base, size_t bytes);
  // NOT_FOUND if base is not registered. Nothing in flight may use the memory.
  absl::Status UnregisterLocalMemory(std::byte* base);
  size_t registered_regions() const;

  // `inner`'s chunks, each registered once made and unregistered before it is freed.
  // The factory must outlive the returned allocator and every chunk it made.
  std::unique_ptr<ChunkAllocator> WrapChunkAllocator(
      std::unique_ptr<ChunkAllocator> inner);

  // CPU time of the engine thread so far (benchmarks report it).
  absl::Duration engine_cpu_time() const { return engine_->CpuTime(); }

 private:
  UcxTransportFactory(std::unique_ptr<UcxContext> context,
                      std::unique_ptr<UcxEngine> engine)
      : context_(std::move(context)), engine_(std::move(engine)) {}

  // Declared in the order they must be made; destroyed in reverse.
  const std::unique_ptr<UcxContext> context_;
  const std::unique_ptr<UcxEngine> engine_;
  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::byte*, UcxMemory> registered_ ABSL_GUARDED_BY(mu_);
};

}  // namespace freekv

#endif  // FREEKV_KVSERVICE_UCX_TRANSPORT_H_
