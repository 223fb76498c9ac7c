#include "worker/freekv_gpu/step_inputs.h"

#include <vector>

#include "gtest/gtest.h"

namespace freekv::gpu {
namespace {

std::vector<int32_t> ListOf(const StepInputs& in, int32_t list) {
  const auto all = in.all();
  const int32_t begin = all[in.indptr_at() + list], end = all[in.indptr_at() + list + 1];
  return {all.begin() + in.indices_at() + begin, all.begin() + in.indices_at() + end};
}

TEST(StepInputs, SparseTablesListSinkSelectedAndTheWindowOldestFirst) {
  StepShape shape;
  shape.num_kv_heads = 2;
  shape.page_tokens = 4;
  shape.layout = {1, 2, 3};                // 6 pool pages per sequence
  shape.positions = {4 * 9 + 2, 4 * 9 + 2};  // token 2 of logical page 9: pages 0..9
  shape.step = 5;
  auto in = StepInputs::Build(shape);
  ASSERT_TRUE(in.ok()) << in.status();
  EXPECT_EQ(in->num_lists(), 4);
  EXPECT_EQ(in->max_pages(), 6);
  EXPECT_EQ(in->max_candidates(), 10 - 1 - 3);  // pages 1..6
  const auto all = in->all();
  // Window pages 7, 8, 9 live in ring places 7 % 3, 8 % 3, 9 % 3 = 1, 2, 0.
  EXPECT_EQ(ListOf(*in, 3), (std::vector<int32_t>{6, 7, 8, 10, 11, 9}));  // list (1, 1)
  EXPECT_EQ(all[in->append_pages_at() + 1], 9);  // page 9 -> ring place 0 of seq 1
  EXPECT_EQ(all[in->append_tokens_at() + 1], 2);
  EXPECT_EQ(all[in->last_len_at() + 2], 3);
  EXPECT_EQ(all[in->candidate_begin_at()], 1);
  EXPECT_EQ(all[in->candidate_count_at() + 1], 6);
  EXPECT_EQ(all[in->selected_start_at() + 3], 3 * 6 + 1);
  EXPECT_EQ(all[in->indptr_at() + 4], 24);
  EXPECT_EQ(all[in->next_forced_at() + 1], -1);
  EXPECT_EQ(all[in->step_at()], 5);
  shape.positions = {4 * 9 + 3, 4 * 9 + 3};  // same page: a captured graph still fits
  EXPECT_TRUE(in->SameShape(*StepInputs::Build(shape)));
  shape.positions = {4 * 10 + 3, 4 * 10 + 3};  // a new page: one more candidate
  EXPECT_FALSE(in->SameShape(*StepInputs::Build(shape)));
}

TEST(StepInputs, ASequenceWithinTheBudgetAttendsToEveryPage) {
  StepShape shape;
  shape.num_kv_heads = 1;
  shape.page_tokens = 4;
  shape.layout = {1, 3, 2};  // 6 pool pages: sink 0, slots 1..3, ring 4..5
  // Sequence 0: 1 page (all sink). Sequence 1: pages 0..4, candidates 1..2 in slots
  // 0..1 (pool 7, 8), window 3, 4 in ring places 1, 0 (pool 11, 10).
  shape.positions = {2, 4 * 4 + 1};
  auto in = StepInputs::Build(shape);
  ASSERT_TRUE(in.ok()) << in.status();
  EXPECT_EQ(ListOf(*in, 0), (std::vector<int32_t>{0}));
  EXPECT_EQ(ListOf(*in, 1), (std::vector<int32_t>{6, 7, 8, 11, 10}));
  EXPECT_EQ(in->max_candidates(), 2);
  EXPECT_EQ(in->all()[in->candidate_count_at()], 0);
  EXPECT_EQ(in->all()[in->append_pages_at()], 0);  // a sink page is appended in place
  EXPECT_EQ(in->all()[in->last_len_at() + 1], 2);
}

TEST(StepInputs, PromotionsKeepTheSlotsFilledWhileCandidatesFit) {
  const ResidentLayout lay{1, 2, 2};
  // Page 3 starts: page 1 leaves the window as candidate 0 -> promoted. Page 5
  // starts: page 3 leaves as candidate 2 of 2 slots -> recalled, not promoted. Mid-page
  // positions promote nothing.
  EXPECT_EQ(PromotionsAt({4 * 3, 4 * 5, 4 * 3 + 1, 4 * 2}, 4, lay),
            (std::vector<int64_t>{1, -1, -1, -1}));
  EXPECT_EQ(PromotionsAt({4 * 4}, 4, lay), (std::vector<int64_t>{2}));
  // With 2 cached slots the slots hold 4 candidates: page 3 (candidate 2) and page 4
  // (candidate 3) are promoted too, page 5 (candidate 4) is not.
  const ResidentLayout cached{1, 2, 2, 2};
  EXPECT_EQ(PromotionsAt({4 * 5, 4 * 6, 4 * 7}, 4, cached), (std::vector<int64_t>{3, 4, -1}));
}

TEST(StepInputs, SelectedOverFullLeavesTheSelectionToTheDevice) {
  StepShape shape;
  shape.num_kv_heads = 2;
  shape.page_tokens = 4;
  shape.kind = TableKind::kSelectedOverFull;
  shape.layout = {1, 2, 1};
  shape.full_pages_per_seq = 8;
  shape.positions = {4 * 5, 4};  // seq 0: pages 0..5; seq 1: pages 0..1
  shape.next_forced = {7, -1};
  auto in = StepInputs::Build(shape);
  ASSERT_TRUE(in.ok()) << in.status();
  EXPECT_EQ(ListOf(*in, 1), (std::vector<int32_t>{0, -1, -1, 5}));
  EXPECT_EQ(ListOf(*in, 2), (std::vector<int32_t>{8, 9}));  // no candidate yet
  EXPECT_EQ(in->all()[in->selected_start_at() + 1], 4 + 1);
  EXPECT_EQ(in->all()[in->append_pages_at() + 1], 9);
  EXPECT_EQ(in->all()[in->next_forced_at()], 7);
}

TEST(StepInputs, FullTablesListEveryPageOfTheSequence) {
  StepShape shape;
  shape.num_kv_heads = 8;
  shape.page_tokens = 32;
  shape.kind = TableKind::kFull;
  shape.full_pages_per_seq = 5;
  shape.positions = {32 * 4, 32 * 4};  // first token of page 4
  auto in = StepInputs::Build(shape);
  ASSERT_TRUE(in.ok()) << in.status();
  EXPECT_EQ(in->num_lists(), 2);
  EXPECT_EQ(in->max_pages(), 5);
  EXPECT_EQ(ListOf(*in, 1), (std::vector<int32_t>{5, 6, 7, 8, 9}));
  EXPECT_EQ(in->all()[in->append_pages_at() + 1], 9);
  EXPECT_EQ(in->all()[in->last_len_at() + 1], 1);
  shape.positions = {0, 32 * 5};  // would need a sixth page
  EXPECT_EQ(StepInputs::Build(shape).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(StepInputs, RefusesBadShapes) {
  StepShape shape;
  shape.num_kv_heads = 1;
  shape.page_tokens = 32;
  EXPECT_EQ(StepInputs::Build(shape).status().code(), absl::StatusCode::kInvalidArgument);
  shape.positions = {-1};
  EXPECT_EQ(StepInputs::Build(shape).status().code(), absl::StatusCode::kInvalidArgument);
  shape.positions = {3};
  shape.next_forced = {1, 2};
  EXPECT_EQ(StepInputs::Build(shape).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace freekv::gpu
