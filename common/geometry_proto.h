// Geometry to and from its v1 proto; shared by the kvservice and the client.
// Pure functions; safe from any thread.
#ifndef FREEKV_COMMON_GEOMETRY_PROTO_H_
#define FREEKV_COMMON_GEOMETRY_PROTO_H_

#include "absl/status/statusor.h"
#include "common/geometry.h"
#include "proto/freekv/v1/kvservice.pb.h"

namespace freekv {

// INVALID_ARGUMENT (naming the field) for an unspecified dtype or a bad geometry.
absl::StatusOr<Geometry> GeometryFromProto(const v1::ModelGeometry& proto);
v1::ModelGeometry GeometryToProto(const Geometry& geometry);

}  // namespace freekv

#endif  // FREEKV_COMMON_GEOMETRY_PROTO_H_
