// Turns UCX status codes into absl::Status, naming the call that failed.
#ifndef FREEKV_TRANSPORT_UCX_STATUS_H_
#define FREEKV_TRANSPORT_UCX_STATUS_H_

#include <ucs/type/status.h>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace freekv {

// OK for UCS_OK; otherwise the canonical code closest to `status` (no memory:
// RESOURCE_EXHAUSTED, bad parameter: INVALID_ARGUMENT, unreachable or reset peer, or
// its shared memory out of reach: UNAVAILABLE, cancelled: CANCELLED, anything else:
// INTERNAL) with a message
// "<what>: <UCX's text>".
absl::Status UcxStatus(ucs_status_t status, absl::string_view what);

}  // namespace freekv

#endif  // FREEKV_TRANSPORT_UCX_STATUS_H_
