// UcxContext: owns one UCP context (ucp_init .. ucp_cleanup).
//
// Every context made here asks for RMA (put/get into registered memory) and WAKEUP
// (workers that sleep on an event fd instead of spinning: the development machines
// have 2 cores, and a spinning progress thread halves what the other side gets).
// It is created with mt_workers_shared, because memory is mapped and unmapped
// (UcxMemory) from whatever thread owns a store chunk while the worker is progressed
// by its engine thread.
//
// Thread-safe after creation; must outlive every worker and memory mapping made on it.
#ifndef FREEKV_TRANSPORT_UCX_CONTEXT_H_
#define FREEKV_TRANSPORT_UCX_CONTEXT_H_

#include <ucp/api/ucp.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace freekv {

struct UcxContextOptions {
  // UCX transports for this context, in UCX_TLS syntax ("tcp", "sysv,posix,cma,tcp").
  // Empty keeps UCX's own choice: $UCX_TLS if set, else every transport it finds.
  std::string transports;
};

class UcxContext {
 public:
  static absl::StatusOr<std::unique_ptr<UcxContext>> Create(
      const UcxContextOptions& options = {});
  ~UcxContext();
  UcxContext(const UcxContext&) = delete;
  UcxContext& operator=(const UcxContext&) = delete;

  ucp_context_h get() const { return context_; }

 private:
  explicit UcxContext(ucp_context_h context) : context_(context) {}
  const ucp_context_h context_;
};

}  // namespace freekv

#endif  // FREEKV_TRANSPORT_UCX_CONTEXT_H_
