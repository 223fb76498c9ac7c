#include "worker/freekv_gpu/step_inputs.h"

#include "gtest/gtest.h"

namespace freekv::gpu {
namespace {

TEST(StepInputs, SparseTablesListSinkSelectedAndTheWindowOldestFirst) {
  StepShape shape;
  shape.batch = 2;
  shape.num_kv_heads = 2;
  shape.page_tokens = 4;
  shape.layout = {1, 2, 3};  // 6 pool pages per sequence
  shape.position = 4 * 9 + 2;  // token 2 of logical page 9: pages 0..9
  shape.step = 5;
  auto in = StepInputs::Build(shape);
  ASSERT_TRUE(in.ok()) << in.status();
  EXPECT_EQ(in->num_lists(), 4);
  EXPECT_EQ(in->max_pages(), 6);
  EXPECT_EQ(in->max_candidates(), 10 - 1 - 3);  // pages 1..6
  const auto all = in->all();
  // Window pages 7, 8, 9 live in ring places 7 % 3, 8 % 3, 9 % 3 = 1, 2, 0.
  const int32_t seq1[] = {6, 7, 8, 10, 11, 9};
  for (int32_t i = 0; i < 6; ++i) {
    EXPECT_EQ(all[in->indices_at() + 3 * 6 + i], seq1[i]) << i;  // list (1, 1)
  }
  EXPECT_EQ(all[in->append_pages_at() + 1], 9);  // page 9 -> ring place 0 of seq 1
  EXPECT_EQ(all[in->append_tokens_at() + 1], 2);
  EXPECT_EQ(all[in->last_len_at() + 2], 3);
  EXPECT_EQ(all[in->candidate_begin_at()], 1);
  EXPECT_EQ(all[in->candidate_count_at() + 1], 6);
  EXPECT_EQ(all[in->indptr_at() + 4], 24);
  EXPECT_EQ(all[in->step_at()], 5);
  shape.position += 1;  // same page: same sizes, so a captured graph still fits
  EXPECT_TRUE(in->SameShape(*StepInputs::Build(shape)));
  shape.position += 4;  // a new page: one more candidate
  EXPECT_FALSE(in->SameShape(*StepInputs::Build(shape)));
}

TEST(StepInputs, FullTablesListEveryPageOfTheSequence) {
  StepShape shape;
  shape.batch = 2;
  shape.num_kv_heads = 8;
  shape.page_tokens = 32;
  shape.sparse = false;
  shape.full_pages_per_seq = 5;
  shape.position = 32 * 4;  // first token of page 4
  auto in = StepInputs::Build(shape);
  ASSERT_TRUE(in.ok()) << in.status();
  EXPECT_EQ(in->num_lists(), 2);
  EXPECT_EQ(in->max_pages(), 5);
  const auto all = in->all();
  for (int32_t p = 0; p < 5; ++p) EXPECT_EQ(all[in->indices_at() + 5 + p], 5 + p);
  EXPECT_EQ(all[in->append_pages_at() + 1], 9);
  EXPECT_EQ(all[in->last_len_at() + 1], 1);
  shape.position = 32 * 5;  // would need a sixth page
  EXPECT_EQ(StepInputs::Build(shape).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(StepInputs, RefusesASparseContextWithNoCandidate) {
  StepShape shape;
  shape.batch = 1;
  shape.num_kv_heads = 1;
  shape.page_tokens = 32;
  shape.layout = {16, 32, 16};
  shape.position = 32 * 31;  // 32 pages: sink + window, no candidate
  EXPECT_EQ(StepInputs::Build(shape).status().code(), absl::StatusCode::kInvalidArgument);
  shape.position = 32 * 32;
  EXPECT_TRUE(StepInputs::Build(shape).ok());
}

}  // namespace
}  // namespace freekv::gpu
