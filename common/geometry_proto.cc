#include "common/geometry_proto.h"

#include "absl/strings/str_cat.h"

namespace freekv {

absl::StatusOr<Geometry> GeometryFromProto(const v1::ModelGeometry& proto) {
  Geometry g;
  g.num_layers = proto.num_layers();
  g.num_kv_heads = proto.num_kv_heads();
  g.head_dim = proto.head_dim();
  g.page_tokens = proto.page_tokens();
  switch (proto.dtype()) {
    case v1::DTYPE_FLOAT16:
      g.dtype = DType::kFloat16;
      break;
    case v1::DTYPE_BFLOAT16:
      g.dtype = DType::kBFloat16;
      break;
    case v1::DTYPE_FLOAT32:
      g.dtype = DType::kFloat32;
      break;
    default:
      return absl::InvalidArgumentError(absl::StrCat(
          "geometry.dtype is ", v1::DType_Name(proto.dtype()),
          "; use DTYPE_FLOAT16, DTYPE_BFLOAT16 or DTYPE_FLOAT32"));
  }
  if (absl::Status s = ValidateGeometry(g); !s.ok()) return s;
  return g;
}

v1::ModelGeometry GeometryToProto(const Geometry& geometry) {
  v1::ModelGeometry proto;
  proto.set_num_layers(geometry.num_layers);
  proto.set_num_kv_heads(geometry.num_kv_heads);
  proto.set_head_dim(geometry.head_dim);
  proto.set_page_tokens(geometry.page_tokens);
  switch (geometry.dtype) {
    case DType::kFloat16:
      proto.set_dtype(v1::DTYPE_FLOAT16);
      break;
    case DType::kBFloat16:
      proto.set_dtype(v1::DTYPE_BFLOAT16);
      break;
    case DType::kFloat32:
      proto.set_dtype(v1::DTYPE_FLOAT32);
      break;
  }
  return proto;
}

}  // namespace freekv
