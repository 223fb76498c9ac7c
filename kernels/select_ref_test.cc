#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/select.h"
#include "kernels/test_util.h"

namespace freekv {
namespace kernels {
namespace {

TEST(GroupSoftmaxRefTest, EachRowIsADistributionOverItsCandidates) {
  std::mt19937 rng(30);
  const int hq = 8, hkv = 2, max_cand = 50;
  const std::vector<int32_t> begin = {4, 0, 7}, count = {50, 1, 33};
  const std::vector<float> scores = RandomVector<float>(rng, 3 * hq * max_cand, -20, 20);
  std::vector<float> group(3 * hkv * max_cand, NAN);
  ASSERT_TRUE(GroupSoftmaxRef(scores, hq, hkv, {begin, count, max_cand}, {},
                              absl::MakeSpan(group)).ok());
  for (int row = 0; row < 3 * hkv; ++row) {
    const float* g = group.data() + row * max_cand;
    EXPECT_NEAR(std::accumulate(g, g + max_cand, 0.0), 1.0, 1e-5) << "row " << row;
    for (int j = count[row / hkv]; j < max_cand; ++j) EXPECT_EQ(g[j], 0.0f);
  }
}

TEST(GroupSoftmaxRefTest, GroupMeanIsTheMeanOfHeadDistributions) {
  // One KV head, two query heads, two candidates.
  const std::vector<float> scores = {std::log(3.0f), 0.0f,  // head 0: (3/4, 1/4)
                                     0.0f, 0.0f};           // head 1: (1/2, 1/2)
  const std::vector<int32_t> begin = {0}, count = {2};
  std::vector<float> group(2);
  ASSERT_TRUE(GroupSoftmaxRef(scores, 2, 1, {begin, count, 2}, {}, absl::MakeSpan(group)).ok());
  EXPECT_NEAR(group[0], 0.625f, 1e-6);
  EXPECT_NEAR(group[1], 0.375f, 1e-6);
}

TEST(TopKPagesRefTest, AgreesWithAFullSortAndReturnsAscendingPages) {
  std::mt19937 rng(31);
  const int hkv = 3, max_cand = 200, k = 17;
  const std::vector<int32_t> begin = {16, 3}, count = {200, 150};
  const std::vector<float> g = RandomVector<float>(rng, 2 * hkv * max_cand, 0, 1);
  std::vector<int32_t> selected(2 * hkv * k);
  ASSERT_TRUE(TopKPagesRef(g, hkv, {begin, count, max_cand}, k, {},
                           absl::MakeSpan(selected)).ok());
  for (int row = 0; row < 2 * hkv; ++row) {
    const int b = row / hkv;
    std::vector<float> sorted(g.begin() + row * max_cand,
                              g.begin() + row * max_cand + count[b]);
    std::sort(sorted.rbegin(), sorted.rend());
    std::vector<float> picked;
    for (int i = 0; i < k; ++i) {
      const int32_t page = selected[row * k + i];
      if (i > 0) EXPECT_LT(selected[row * k + i - 1], page);
      picked.push_back(g[row * max_cand + page - begin[b]]);
    }
    std::sort(picked.rbegin(), picked.rend());
    EXPECT_EQ(picked, std::vector<float>(sorted.begin(), sorted.begin() + k));
  }
}

TEST(TopKPagesRefTest, TiesGoToTheLowerPageAndShortRowsArePadded) {
  const std::vector<float> g = {0.5f, 0.2f, 0.5f, 0.5f,  // seq 0: tie among 0, 2, 3
                                0.9f, 0.1f, 0.0f, 0.0f};  // seq 1: 2 candidates
  const std::vector<int32_t> begin = {10, 0}, count = {4, 2};
  std::vector<int32_t> selected(6);
  ASSERT_TRUE(TopKPagesRef(g, 1, {begin, count, 4}, 3, {}, absl::MakeSpan(selected)).ok());
  EXPECT_EQ(selected, (std::vector<int32_t>{10, 12, 13, 0, 1, -1}));
  ASSERT_TRUE(TopKPagesRef(g, 1, {begin, count, 4}, 2, {},
                           absl::MakeSpan(selected).subspan(0, 4)).ok());
  EXPECT_EQ(std::vector<int32_t>(selected.begin(), selected.begin() + 2),
            (std::vector<int32_t>{10, 12}));
}

TEST(ResidentDiffRefTest, HandDerivedDiffFillsEmptyThenLowestScoredSlots) {
  // Candidates are pages 0..9 with group score = page / 10, except page 7 lowest.
  std::vector<float> g(10);
  for (int j = 0; j < 10; ++j) g[j] = j / 10.0f;
  g[7] = -1.0f;
  const std::vector<int32_t> begin = {0}, count = {10};
  const std::vector<int32_t> selected = {2, 3, 8, 9};
  const std::vector<int32_t> resident = {5, 7, -1, 2, 6};  // capacity 5
  std::vector<int32_t> pages(4), slots(4), num(1), attend(4);
  ASSERT_TRUE(ResidentDiffRef(selected, resident, 5, g, 1, {begin, count, 10}, 4, {},
                              {absl::MakeSpan(pages), absl::MakeSpan(slots),
                               absl::MakeSpan(num), absl::MakeSpan(attend)}).ok());
  EXPECT_EQ(num[0], 3);  // 3, 8, 9 are missing
  EXPECT_EQ(pages, (std::vector<int32_t>{3, 8, 9, -1}));
  EXPECT_EQ(slots, (std::vector<int32_t>{2, 1, 0, -1}));  // empty, page 7, page 5
  // Page 2 stays in slot 3; 3, 8 and 9 go where their recalls land. Slot 4 (page 6)
  // is kept: the capacity is one more than the selection.
  EXPECT_EQ(attend, (std::vector<int32_t>{3, 2, 1, 0}));
}

// ResidentDiff::copy: pages, slots and count once more, in one block; a copy of the
// wrong size is refused.
TEST(ResidentDiffRefTest, WritesTheCopyBlockWhenGivenOne) {
  const std::vector<int32_t> begin = {0, 0}, count = {10, 10};
  const std::vector<int32_t> selected = {2, 3, 8, 9, 1, 4, 5, 6};  // two sequences
  const std::vector<int32_t> resident = {5, 7, -1, 2, 6, -1, 4, -1, -1, 1};  // capacity 5
  const std::vector<float> g(20, 0.5f);
  std::vector<int32_t> pages(8), slots(8), num(2), copy(DiffCopyInts(2, 4), -9);
  ASSERT_TRUE(ResidentDiffRef(selected, resident, 5, g, 1,
                              {begin, count, 10}, 4, {},
                              {absl::MakeSpan(pages), absl::MakeSpan(slots),
                               absl::MakeSpan(num), {}, absl::MakeSpan(copy)}).ok());
  std::vector<int32_t> want = pages;
  want.insert(want.end(), slots.begin(), slots.end());
  want.insert(want.end(), num.begin(), num.end());
  EXPECT_EQ(copy, want);
  EXPECT_EQ(num, (std::vector<int32_t>{3, 2}));  // 3, 8, 9 and 5, 6 are missing
  std::vector<int32_t> short_copy(DiffCopyInts(2, 4) - 1);
  EXPECT_EQ(ResidentDiffRef(selected, resident, 5, g, 1,
                            {begin, count, 10}, 4, {},
                            {absl::MakeSpan(pages), absl::MakeSpan(slots),
                             absl::MakeSpan(num), {}, absl::MakeSpan(short_copy)})
                .code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(ResidentDiffRefTest, ApplyingTheDiffMakesEverySelectedPageResident) {
  std::mt19937 rng(32);
  const int hkv = 4, max_cand = 64, k = 8, capacity = 12;
  const std::vector<int32_t> begin = {2}, count = {60};
  const std::vector<float> g = RandomVector<float>(rng, hkv * max_cand, 0, 1);
  std::vector<int32_t> selected(hkv * k);
  ASSERT_TRUE(TopKPagesRef(g, hkv, {begin, count, max_cand}, k, {},
                           absl::MakeSpan(selected)).ok());
  std::vector<int32_t> resident(hkv * capacity);
  for (int row = 0; row < hkv; ++row) {  // distinct random pages, some slots empty
    std::vector<int32_t> all(count[0]);
    std::iota(all.begin(), all.end(), begin[0]);
    std::shuffle(all.begin(), all.end(), rng);
    for (int s = 0; s < capacity; ++s) resident[row * capacity + s] = s % 5 == 4 ? -1 : all[s];
  }
  std::vector<int32_t> pages(hkv * k), slots(hkv * k), num(hkv), attend(hkv * k);
  ASSERT_TRUE(ResidentDiffRef(selected, resident, capacity, g, hkv, {begin, count, max_cand},
                              k, {}, {absl::MakeSpan(pages), absl::MakeSpan(slots),
                                      absl::MakeSpan(num), absl::MakeSpan(attend)}).ok());
  for (int row = 0; row < hkv; ++row) {
    std::vector<int32_t> after(resident.begin() + row * capacity,
                               resident.begin() + (row + 1) * capacity);
    for (int i = 0; i < num[row]; ++i) {
      const int32_t old = after[slots[row * k + i]];
      EXPECT_TRUE(old < 0 || std::find(selected.begin() + row * k,
                                       selected.begin() + (row + 1) * k, old) ==
                                 selected.begin() + (row + 1) * k)
          << "evicted a selected page";
      after[slots[row * k + i]] = pages[row * k + i];
    }
    for (int i = 0; i < k; ++i) {  // resident, in the slot the table will attend
      EXPECT_NE(std::find(after.begin(), after.end(), selected[row * k + i]), after.end());
      EXPECT_EQ(after[attend[row * k + i]], selected[row * k + i]) << "row " << row;
    }
  }
}

TEST(SelectRefTest, HeadMaskLeavesUnflaggedHeadsUntouched) {
  const std::vector<float> scores = {1, 2, 3, 4};  // 2 q heads = 2 kv heads, 2 cands
  const std::vector<int32_t> begin = {0}, count = {2};
  const std::vector<uint8_t> mask = {1, 0};
  std::vector<float> group = {-5, -5, -5, -5};
  ASSERT_TRUE(GroupSoftmaxRef(scores, 2, 2, {begin, count, 2}, mask, absl::MakeSpan(group)).ok());
  EXPECT_GT(group[1], group[0]);
  EXPECT_EQ(group[2], -5);
  std::vector<int32_t> selected = {-7, -7};
  ASSERT_TRUE(TopKPagesRef(group, 2, {begin, count, 2}, 1, mask, absl::MakeSpan(selected)).ok());
  EXPECT_EQ(selected, (std::vector<int32_t>{1, -7}));
}

}  // namespace
}  // namespace kernels
}  // namespace freekv
