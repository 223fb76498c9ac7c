#include "common/geometry.h"

#include "gtest/gtest.h"

namespace freekv {
namespace {

Geometry Llama8B() {
  Geometry g;
  g.num_layers = 32;
  g.num_kv_heads = 8;
  g.head_dim = 128;
  g.page_tokens = 32;
  g.dtype = DType::kBFloat16;
  return g;
}

TEST(GeometryTest, SliceAndBlockBytesMatchTheDesignCard) {
  const Geometry g = Llama8B();
  EXPECT_EQ(g.head_slice_bytes(), 16u * 1024);  // 2 * 32 * 128 * 2
  EXPECT_EQ(g.block_bytes(), 128u * 1024);
  EXPECT_TRUE(ValidateGeometry(g).ok());
}

TEST(GeometryTest, ZeroFieldIsRejectedByName) {
  Geometry g = Llama8B();
  g.head_dim = 0;
  const absl::Status s = ValidateGeometry(g);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("head_dim"), absl::string_view::npos) << s;
}

TEST(GeometryTest, OversizeBlockIsRejected) {
  Geometry g = Llama8B();
  g.num_kv_heads = 1024;
  g.head_dim = 1024;
  g.dtype = DType::kFloat32;
  EXPECT_EQ(ValidateGeometry(g).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace freekv
