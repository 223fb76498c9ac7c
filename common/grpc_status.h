// Conversions between absl::Status and grpc::Status. The canonical codes are the same
// numbers on both sides, so the mapping is one to one and keeps the message.
#ifndef FREEKV_COMMON_GRPC_STATUS_H_
#define FREEKV_COMMON_GRPC_STATUS_H_

#include <string>

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace freekv {

inline grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()),
                      std::string(status.message()));
}

inline absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                      status.error_message());
}

}  // namespace freekv

#endif  // FREEKV_COMMON_GRPC_STATUS_H_
