// The CPU references of resident_ops.h on small hand-made cases: which pool rows a
// recall writes, what it commits, what it leaves alone, and how it refuses bad shapes.
#include <cstring>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/test_util.h"
#include "worker/freekv_gpu/resident_ops.h"

namespace freekv::gpu {
namespace {

using kernels::RandomVector;

constexpr int32_t kSeqs = 2, kHeads = 2, kTokens = 4, kDim = 8;
const ResidentLayout kLayout{1, 2, 1};  // 4 pool pages per sequence

struct Pool {
  std::vector<BFloat16> data;
  kernels::PagedKv<BFloat16> view;
};

Pool RandomPool(std::mt19937& rng) {
  Pool p;
  const int64_t page = int64_t{kTokens} * kHeads * kDim;
  const int32_t pages = kSeqs * kLayout.pages_per_seq();
  p.data = RandomVector<BFloat16>(rng, 2 * page * pages);
  p.view = {p.data.data(), p.data.data() + page, 2 * page, pages, kTokens, kHeads, kDim};
  return p;
}

bool SameRow(const BFloat16* a, const BFloat16* b) {
  return std::memcmp(a, b, kDim * sizeof(BFloat16)) == 0;
}

TEST(ApplyRecallRef, WritesEachListedSliceIntoItsHeadAndCommitsIt) {
  std::mt19937 rng(11);
  Pool pool = RandomPool(rng);
  const std::vector<BFloat16> before = pool.data;
  const size_t slice = 2 * kTokens * kDim, entries = kSeqs * kHeads * kLayout.selected;
  const std::vector<BFloat16> slot = RandomVector<BFloat16>(rng, entries * slice);
  // Lists (seq, head): (0,0) one page into slot 1; (0,1) two pages; (1,0) none;
  // (1,1) one page, masked off.
  const std::vector<int32_t> pages = {7, -1, 3, 9, -1, -1, 5, -1};
  const std::vector<int32_t> slots = {1, -1, 0, 1, -1, -1, 0, -1};
  const std::vector<int32_t> counts = {1, 2, 0, 1};
  const std::vector<uint8_t> mask = {1, 1, 1, 0};
  std::vector<int32_t> resident(entries, -1);
  ASSERT_TRUE(ApplyRecallRef(slot, {pages, slots, counts}, HeadMask{mask}, pool.view,
                             kLayout, absl::MakeSpan(resident))
                  .ok());
  EXPECT_EQ(resident, (std::vector<int32_t>{-1, 7, 3, 9, -1, -1, -1, -1}));
  struct Moved {
    int32_t entry, seq, head, slot;
  };
  const Moved moved[] = {{0, 0, 0, 1}, {2, 0, 1, 0}, {3, 0, 1, 1}};
  std::vector<bool> written(pool.data.size(), false);
  for (const Moved& m : moved) {
    const int32_t page = kLayout.selected_page(m.seq, m.slot);
    for (int32_t t = 0; t < kTokens; ++t) {
      const int64_t off = pool.view.offset(page, t, m.head);
      const BFloat16* src = slot.data() + m.entry * slice;
      EXPECT_TRUE(SameRow(pool.view.k + off, src + t * kDim)) << m.entry << " K " << t;
      EXPECT_TRUE(SameRow(pool.view.v + off, src + (kTokens + t) * kDim))
          << m.entry << " V " << t;
      const int64_t k_at = pool.view.k + off - pool.data.data();
      const int64_t v_at = pool.view.v + off - pool.data.data();
      for (int32_t d = 0; d < kDim; ++d) written[k_at + d] = written[v_at + d] = true;
    }
  }
  for (size_t i = 0; i < pool.data.size(); ++i) {
    if (!written[i]) {
      ASSERT_EQ(pool.data[i].bits, before[i].bits) << "element " << i;
    }
  }
  // The other half of the same diff: only the list whose flag is zero.
  std::vector<int32_t> rest(entries, -1);
  ASSERT_TRUE(ApplyRecallRef(slot, {pages, slots, counts}, HeadMask{mask, true}, pool.view,
                             kLayout, absl::MakeSpan(rest))
                  .ok());
  EXPECT_EQ(rest, (std::vector<int32_t>{-1, -1, -1, -1, -1, -1, 5, -1}));
}

TEST(ApplyRecallRef, RefusesMismatchedShapesAndBadSlots) {
  std::mt19937 rng(12);
  Pool pool = RandomPool(rng);
  const size_t entries = kSeqs * kHeads * kLayout.selected;
  std::vector<BFloat16> slot(entries * 2 * kTokens * kDim);
  std::vector<int32_t> pages(entries, 1), slots(entries, 0), counts(kSeqs * kHeads, 1);
  std::vector<int32_t> resident(entries, -1);
  std::vector<int32_t> short_resident(entries - 1, -1);
  EXPECT_EQ(ApplyRecallRef(slot, {pages, slots, counts}, {}, pool.view, kLayout,
                           absl::MakeSpan(short_resident))
                .code(),
            absl::StatusCode::kInvalidArgument);
  std::vector<BFloat16> short_slot(slot.size() - 1);
  EXPECT_EQ(ApplyRecallRef(short_slot, {pages, slots, counts}, {}, pool.view, kLayout,
                           absl::MakeSpan(resident))
                .code(),
            absl::StatusCode::kInvalidArgument);
  slots[0] = kLayout.selected;  // past the last selected slot
  EXPECT_EQ(ApplyRecallRef(slot, {pages, slots, counts}, {}, pool.view, kLayout,
                           absl::MakeSpan(resident))
                .code(),
            absl::StatusCode::kInvalidArgument);
}

// With a resident cache a list has capacity() slots, of which the diff names any: a
// slot past `selected` is pool page sink + slot, and the resident table is
// [lists][capacity]. A slot past the capacity is refused.
TEST(ApplyRecallRef, ACacheSlotPastTheSelectedOnesIsAPoolPageAndAResidentEntry) {
  std::mt19937 rng(13);
  const ResidentLayout cached{1, 2, 1, 2};  // 6 pool pages per sequence, 4 slots
  const int64_t page_elems = int64_t{kTokens} * kHeads * kDim;
  const int32_t pages = kSeqs * cached.pages_per_seq();
  std::vector<BFloat16> data = RandomVector<BFloat16>(rng, 2 * page_elems * pages);
  const kernels::PagedKv<BFloat16> view{data.data(), data.data() + page_elems,
                                        2 * page_elems, pages, kTokens, kHeads, kDim};
  const size_t slice = 2 * kTokens * kDim, entries = kSeqs * kHeads * cached.selected;
  const std::vector<BFloat16> slot = RandomVector<BFloat16>(rng, entries * slice);
  // List (1, 0) recalls page 40 into cache slot 3 (entry 4); the others nothing.
  const std::vector<int32_t> recall_pages = {-1, -1, -1, -1, 40, -1, -1, -1};
  std::vector<int32_t> slots = {-1, -1, -1, -1, 3, -1, -1, -1};
  const std::vector<int32_t> counts = {0, 0, 1, 0};
  std::vector<int32_t> resident(kSeqs * kHeads * cached.capacity(), -1);
  ASSERT_TRUE(ApplyRecallRef(slot, {recall_pages, slots, counts}, {}, view, cached,
                             absl::MakeSpan(resident))
                  .ok());
  std::vector<int32_t> want(resident.size(), -1);
  want[2 * cached.capacity() + 3] = 40;
  EXPECT_EQ(resident, want);
  const int32_t pool_page = cached.selected_page(1, 3);
  EXPECT_EQ(pool_page, cached.pages_per_seq() + 1 + 3);
  for (int32_t t = 0; t < kTokens; ++t) {
    const int64_t off = view.offset(pool_page, t, 0);
    EXPECT_TRUE(SameRow(view.k + off, slot.data() + 4 * slice + t * kDim)) << "K " << t;
    EXPECT_TRUE(SameRow(view.v + off, slot.data() + 4 * slice + (kTokens + t) * kDim))
        << "V " << t;
  }
  slots[4] = cached.capacity();
  EXPECT_EQ(ApplyRecallRef(slot, {recall_pages, slots, counts}, {}, view, cached,
                           absl::MakeSpan(resident))
                .code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(AppendKvRef, WritesTheNewTokenOfEverySequenceAndNothingElse) {
  std::mt19937 rng(13);
  Pool pool = RandomPool(rng);
  const std::vector<BFloat16> before = pool.data;
  const std::vector<BFloat16> k = RandomVector<BFloat16>(rng, kSeqs * kHeads * kDim);
  const std::vector<BFloat16> v = RandomVector<BFloat16>(rng, kSeqs * kHeads * kDim);
  const std::vector<int32_t> pages = {3, 6}, tokens = {2, 0};
  ASSERT_TRUE(AppendKvRef(k, v, pages, tokens, pool.view).ok());
  size_t changed = 0;
  for (size_t i = 0; i < pool.data.size(); ++i) changed += pool.data[i].bits != before[i].bits;
  for (int32_t b = 0; b < kSeqs; ++b) {
    for (int32_t h = 0; h < kHeads; ++h) {
      const int64_t off = pool.view.offset(pages[b], tokens[b], h);
      EXPECT_TRUE(SameRow(pool.view.k + off, k.data() + (b * kHeads + h) * kDim));
      EXPECT_TRUE(SameRow(pool.view.v + off, v.data() + (b * kHeads + h) * kDim));
    }
  }
  EXPECT_LE(changed, size_t{2} * kSeqs * kHeads * kDim);  // only the appended rows
  const std::vector<int32_t> outside = {3, 8};
  EXPECT_EQ(AppendKvRef(k, v, outside, tokens, pool.view).code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace freekv::gpu
