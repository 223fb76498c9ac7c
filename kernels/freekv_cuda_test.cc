// GPU tests of the FreeKV selection path (digest.h, score.h, select.h,
// similarity.h) against their CPU references, at Llama-3.1-8B geometry.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cuda_test_util.h"
#include "kernels/digest.h"
#include "kernels/score.h"
#include "kernels/select.h"
#include "kernels/similarity.h"

namespace freekv {
namespace kernels {
namespace {

constexpr int kHq = 32, kHkv = 8, kDim = 128, kPage = 32;

TEST(DigestCudaTest, BitExactAndWritesOnlyItsSlots) {
  std::mt19937 rng(300);
  const std::vector<int32_t> lens = {32 * 40 + 5, 32 * 9};
  const TestPool<BFloat16> pool = MakeTestPool<BFloat16>(rng, lens, kPage, kHkv, kDim);
  std::vector<int32_t> pages, seqs, logical;
  for (int b = 0; b < 2; ++b) {
    for (int p = 0; p < lens[b] / kPage; p += 1 + b) {  // every other page of seq 1
      pages.push_back(pool.seq_pages[b][p]);
      seqs.push_back(b);
      logical.push_back(p);
    }
  }
  const int max_pages = 48;
  const size_t table_size = size_t{2} * max_pages * kHkv * 2 * kDim;
  std::vector<BFloat16> ref(table_size, BFloat16{0xFFFF});
  ASSERT_TRUE(PageDigestRef<BFloat16>(pool.view(), {pages, seqs, logical},
                                      {absl::MakeSpan(ref), 2, max_pages, kHkv, kDim}).ok());
  DeviceBuffer dk = Up(pool.k), dv = Up(pool.v), dtable = Poisoned<BFloat16>(table_size);
  DeviceBuffer dp = Up(pages), ds = Up(seqs), dl = Up(logical);
  PagedKv<const BFloat16> kv = pool.view();
  kv.k = dk.span<const BFloat16>().data();
  kv.v = dv.span<const BFloat16>().data();
  ASSERT_TRUE(PageDigestCuda<BFloat16>(kv, {dp.span<const int32_t>(), ds.span<const int32_t>(),
                                            dl.span<const int32_t>()},
                                       {dtable.span<BFloat16>(), 2, max_pages, kHkv, kDim},
                                       nullptr).ok());
  const std::vector<BFloat16> got = Down<BFloat16>(dtable);
  size_t mismatches = 0;
  for (size_t i = 0; i < table_size; ++i) mismatches += got[i].bits != ref[i].bits;
  EXPECT_EQ(mismatches, 0u);
}

TEST(DigestCudaTest, JobsOutOfRangeWriteNothing) {
  std::mt19937 rng(302);
  const std::vector<int32_t> lens = {32 * 6};
  const TestPool<BFloat16> pool = MakeTestPool<BFloat16>(rng, lens, kPage, kHkv, kDim);
  const int max_pages = 8;
  // One good job between jobs naming a sequence, a logical page and a pool page
  // outside their ranges (each would write past a table of one sequence).
  const std::vector<int32_t> pages = {pool.seq_pages[0][1], pool.seq_pages[0][2], 1 << 20,
                                      pool.seq_pages[0][3], -1};
  const std::vector<int32_t> seqs = {5, 0, 0, 0, 0};
  const std::vector<int32_t> logical = {1, 2, 3, max_pages, 4};
  const size_t table_size = size_t{max_pages} * kHkv * 2 * kDim;
  // The guard band after the table must stay poisoned.
  const size_t guarded = table_size * 8;
  std::vector<BFloat16> ref(guarded, BFloat16{0xFFFF});
  ASSERT_TRUE(PageDigestRef<BFloat16>(pool.view(), {{&pages[1], 1}, {&seqs[1], 1},
                                                    {&logical[1], 1}},
                                      {absl::MakeSpan(ref).subspan(0, table_size), 1,
                                       max_pages, kHkv, kDim}).ok());
  EXPECT_FALSE(PageDigestRef<BFloat16>(pool.view(), {pages, seqs, logical},
                                       {absl::MakeSpan(ref).subspan(0, table_size), 1,
                                        max_pages, kHkv, kDim}).ok());
  DeviceBuffer dk = Up(pool.k), dv = Up(pool.v), dtable = Poisoned<BFloat16>(guarded);
  DeviceBuffer dp = Up(pages), ds = Up(seqs), dl = Up(logical);
  PagedKv<const BFloat16> kv = pool.view();
  kv.k = dk.span<const BFloat16>().data();
  kv.v = dv.span<const BFloat16>().data();
  ASSERT_TRUE(PageDigestCuda<BFloat16>(
                  kv, {dp.span<const int32_t>(), ds.span<const int32_t>(),
                       dl.span<const int32_t>()},
                  {dtable.span<BFloat16>().subspan(0, table_size), 1, max_pages, kHkv, kDim},
                  nullptr).ok());
  const std::vector<BFloat16> got = Down<BFloat16>(dtable);
  size_t mismatches = 0;
  for (size_t i = 0; i < guarded; ++i) mismatches += got[i].bits != ref[i].bits;
  EXPECT_EQ(mismatches, 0u);
}

// Candidate ranges of a batch.
struct SelectCase {
  std::vector<int32_t> begin, count;
  int max_cand;
};

TEST(ScoreCudaTest, MatchesReferenceWithVariableLengthsAndMask) {
  std::mt19937 rng(301);
  const SelectCase c{{16, 16, 3}, {4000, 1200, 0}, 4096};
  const int max_pages = 4096 + 16;
  const int seqs = 3;
  for (bool masked : {false, true}) {
    const std::vector<BFloat16> digest =
        RandomVector<BFloat16>(rng, size_t{seqs} * max_pages * kHkv * 2 * kDim, -2, 2);
    const std::vector<BFloat16> q = RandomVector<BFloat16>(rng, seqs * kHq * kDim);
    std::vector<uint8_t> mask;
    if (masked) for (int i = 0; i < seqs * kHkv; ++i) mask.push_back(i % 3 == 0);
    const float scale = 1.0f / std::sqrt(float{kDim});
    std::vector<float> ref(size_t{seqs} * kHq * c.max_cand, NAN);
    ASSERT_TRUE(PageScoreRef<BFloat16>(q, kHq, {digest, seqs, max_pages, kHkv, kDim},
                                       {c.begin, c.count, c.max_cand}, scale, mask,
                                       absl::MakeSpan(ref)).ok());
    DeviceBuffer dd = Up(digest), dq = Up(q), db = Up(c.begin), dc = Up(c.count);
    DeviceBuffer dm = Up(mask), dout = Poisoned<float>(ref.size());
    ASSERT_TRUE(PageScoreCuda<BFloat16>(
                    dq.span<const BFloat16>(), kHq,
                    {dd.span<const BFloat16>(), seqs, max_pages, kHkv, kDim},
                    {db.span<const int32_t>(), dc.span<const int32_t>(), c.max_cand}, scale,
                    masked ? dm.span<const uint8_t>() : absl::Span<const uint8_t>(),
                    dout.span<float>(), nullptr).ok());
    std::vector<float> got = Down<float>(dout);
    // Compare finite entries by relative L2; -inf and untouched (NaN) entries exactly.
    std::vector<float> got_finite, ref_finite;
    for (size_t i = 0; i < ref.size(); ++i) {
      if (std::isfinite(ref[i])) {
        got_finite.push_back(got[i]);
        ref_finite.push_back(ref[i]);
      } else {
        EXPECT_TRUE(std::isnan(ref[i]) ? std::isnan(got[i]) : got[i] == ref[i]) << i;
      }
    }
    const double err = RelativeL2(got_finite, ref_finite);
    EXPECT_LT(err, 1e-5) << "masked " << masked;
    std::printf("score masked=%d: relative L2 %.3g over %zu scores\n", masked, err,
                ref_finite.size());
  }
}

// Pages where two selections differ must be ties (within float rounding) at the k-th
// group score of the reference. Returns which rows are identical.
std::vector<bool> ExpectSameSelectionExceptTies(const std::vector<int32_t>& got,
                                                const std::vector<int32_t>& ref,
                                                const std::vector<float>& group,
                                                const SelectCase& c, int k) {
  const int rows = static_cast<int>(ref.size()) / k;
  std::vector<bool> same(rows, true);
  for (int row = 0; row < rows; ++row) {
    std::vector<int32_t> a(got.begin() + row * k, got.begin() + (row + 1) * k);
    std::vector<int32_t> b(ref.begin() + row * k, ref.begin() + (row + 1) * k);
    if (a == b) continue;
    same[row] = false;
    const int seq = row / kHkv;
    const float* g = group.data() + size_t{static_cast<uint32_t>(row)} * c.max_cand;
    float kth = INFINITY;
    for (int32_t p : b) if (p >= 0) kth = std::min(kth, g[p - c.begin[seq]]);
    for (int i = 0; i < k; ++i) {
      for (int32_t p : {a[i], b[i]}) {
        const bool in_a = std::count(a.begin(), a.end(), p) > 0;
        const bool in_b = std::count(b.begin(), b.end(), p) > 0;
        if (in_a != in_b) {
          EXPECT_NEAR(g[p - c.begin[seq]], kth, 1e-6f * kth) << "row " << row << " page " << p;
        }
      }
    }
  }
  return same;
}

// Masked rows are left untouched: -7 in the reference's buffers, poison (-1) on the GPU.
std::vector<int32_t> UntouchedAsPoison(std::vector<int32_t> v) {
  for (int32_t& x : v) if (x == -7) x = -1;
  return v;
}

TEST(GroupSelectCudaTest, MatchesReferenceChainAtLongContexts) {
  std::mt19937 rng(302);
  const int k = 32, capacity = 48;
  const SelectCase c{{16, 16, 16, 0}, {4064, 992, 20, 4096}, 4096};  // 128K, 32K, tiny
  const int seqs = 4, rows = seqs * kHkv;
  std::vector<float> scores = RandomVector<float>(rng, size_t{seqs} * kHq * c.max_cand, -4, 4);
  for (float& s : scores) s = std::round(s * 64) / 64;  // coarse values: exact ties occur
  std::vector<int32_t> resident(rows * capacity);
  for (int row = 0; row < rows; ++row) {
    const int seq = row / kHkv;
    for (int s = 0; s < capacity; ++s) {
      const bool empty = c.count[seq] < capacity || s % 7 == 3;
      resident[row * capacity + s] = empty ? -1 : c.begin[seq] + (s * 37 + row) % c.count[seq];
    }
  }
  for (bool masked : {false, true}) {
    std::vector<uint8_t> mask;
    if (masked) for (int i = 0; i < rows; ++i) mask.push_back(i % 2);
    const Candidates cand{c.begin, c.count, c.max_cand};
    std::vector<float> group(size_t{rows} * c.max_cand, NAN);
    std::vector<int32_t> sel(rows * k, -7), pages(rows * k, -7), slots(rows * k, -7), num(rows, -7);
    std::vector<int32_t> attend(rows * k, -7);
    ASSERT_TRUE(GroupSoftmaxRef(scores, kHq, kHkv, cand, mask, absl::MakeSpan(group)).ok());
    ASSERT_TRUE(TopKPagesRef(group, kHkv, cand, k, mask, absl::MakeSpan(sel)).ok());
    ASSERT_TRUE(ResidentDiffRef(sel, resident, capacity, group, kHkv, cand, k, mask,
                                {absl::MakeSpan(pages), absl::MakeSpan(slots),
                                 absl::MakeSpan(num), absl::MakeSpan(attend)}).ok());
    DeviceBuffer ds = Up(scores), db = Up(c.begin), dc = Up(c.count), dr = Up(resident);
    DeviceBuffer dm = Up(mask), dg = Poisoned<float>(group.size());
    DeviceBuffer dsel = Poisoned<int32_t>(sel.size()), dpages = Poisoned<int32_t>(sel.size());
    DeviceBuffer dslots = Poisoned<int32_t>(sel.size()), dnum = Poisoned<int32_t>(rows);
    DeviceBuffer dattend = Poisoned<int32_t>(sel.size());
    DeviceBuffer dcopy = Poisoned<int32_t>(DiffCopyInts(rows, k));
    ASSERT_TRUE(GroupSelectCuda(
                    ds.span<const float>(), kHq, kHkv,
                    {db.span<const int32_t>(), dc.span<const int32_t>(), c.max_cand}, k,
                    dr.span<const int32_t>(), capacity,
                    masked ? dm.span<const uint8_t>() : absl::Span<const uint8_t>(),
                    dg.span<float>(), dsel.span<int32_t>(),
                    {dpages.span<int32_t>(), dslots.span<int32_t>(), dnum.span<int32_t>(),
                     dattend.span<int32_t>(), dcopy.span<int32_t>()},
                    nullptr).ok());
    const std::vector<float> got_group = Down<float>(dg);
    std::vector<float> gf, rf;  // masked rows stay poisoned (NaN) on both sides
    for (size_t i = 0; i < group.size(); ++i) {
      ASSERT_EQ(std::isnan(group[i]), std::isnan(got_group[i])) << i;
      if (!std::isnan(group[i])) gf.push_back(got_group[i]), rf.push_back(group[i]);
    }
    EXPECT_LT(RelativeL2(gf, rf), 1e-5);
    const std::vector<int32_t> got_sel = Down<int32_t>(dsel);
    const std::vector<bool> same =
        ExpectSameSelectionExceptTies(got_sel, UntouchedAsPoison(sel), group, c, k);
    const std::vector<int32_t> got_pages = Down<int32_t>(dpages);
    const std::vector<int32_t> got_slots = Down<int32_t>(dslots);
    const std::vector<int32_t> got_num = Down<int32_t>(dnum);
    const std::vector<int32_t> ref_pages = UntouchedAsPoison(pages);
    const std::vector<int32_t> ref_slots = UntouchedAsPoison(slots);
    const std::vector<int32_t> ref_num = UntouchedAsPoison(num);
    const std::vector<int32_t> got_attend = Down<int32_t>(dattend);
    const std::vector<int32_t> ref_attend = UntouchedAsPoison(attend);
    int differing = 0;
    for (int row = 0; row < rows; ++row) {  // the diff follows from the selection
      if (masked && !mask[row]) {
        EXPECT_TRUE(same[row]) << "masked row " << row << " written";
      }
      if (!same[row]) {
        ++differing;
        continue;
      }
      EXPECT_EQ(got_num[row], ref_num[row]) << "row " << row;
      for (int i = 0; i < k; ++i) {
        EXPECT_EQ(got_pages[row * k + i], ref_pages[row * k + i]) << "row " << row;
        EXPECT_EQ(got_slots[row * k + i], ref_slots[row * k + i]) << "row " << row;
        EXPECT_EQ(got_attend[row * k + i], ref_attend[row * k + i]) << "row " << row;
      }
    }
    // The copy holds what the diff holds, row for row (masked rows untouched in both).
    std::vector<int32_t> want_copy = got_pages;
    want_copy.insert(want_copy.end(), got_slots.begin(), got_slots.end());
    want_copy.insert(want_copy.end(), got_num.begin(), got_num.end());
    EXPECT_EQ(Down<int32_t>(dcopy), want_copy);
    std::printf("select masked=%d: %d of %d rows differ (ties)\n", masked, differing, rows);
    EXPECT_LE(differing, 2);
  }
}

// Llama-3.1-8B's GQA (group 4), stories15M's (no GQA, head_dim 48) and a group larger
// than the kernel reduces at once (16).
struct SimilarityShape {
  int hq, hkv, dim;
};

class SimilarityCudaTest : public ::testing::TestWithParam<SimilarityShape> {};

TEST_P(SimilarityCudaTest, MatchesReferenceAndCountsFlags) {
  const auto [kHq, kHkv, kDim] = GetParam();
  std::mt19937 rng(303 + kHq + kDim);
  const int seqs = 32;
  for (float tau : {0.5f, 0.9f}) {
    const std::vector<BFloat16> q = RandomVector<BFloat16>(rng, seqs * kHq * kDim);
    std::vector<BFloat16> prev = q;  // perturbed copies: similarities spread around tau
    std::normal_distribution<float> noise(0.0f, 1.0f);
    for (size_t i = 0; i < prev.size(); ++i) {
      constexpr float kNoise[] = {0.0f, 0.3f, 0.6f, 1.0f, 2.0f};  // cos ~ 1 .. 0.3
      const float amount = kNoise[(i / (kDim * (kHq / kHkv))) % 5];
      prev[i] = ToBFloat16(ToFloat(prev[i]) + amount * noise(rng));
    }
    std::vector<float> sim(seqs * kHkv);
    std::vector<uint8_t> flags(seqs * kHkv);
    std::vector<int32_t> count(1);
    ASSERT_TRUE(QuerySimilarityRef<BFloat16>(q, prev, kHq, kHkv, kDim, tau,
                                             {absl::MakeSpan(sim), absl::MakeSpan(flags),
                                              absl::MakeSpan(count)}).ok());
    DeviceBuffer dq = Up(q), dp = Up(prev), dsim = Poisoned<float>(sim.size());
    DeviceBuffer dflags = Poisoned<uint8_t>(flags.size()), dcount = Poisoned<int32_t>(1);
    ASSERT_TRUE(QuerySimilarityCuda<BFloat16>(
                    dq.span<const BFloat16>(), dp.span<const BFloat16>(), kHq, kHkv, kDim, tau,
                    {dsim.span<float>(), dflags.span<uint8_t>(), dcount.span<int32_t>()},
                    nullptr).ok());
    const std::vector<float> got = Down<float>(dsim);
    EXPECT_LT(RelativeL2(got, sim), 1e-5);
    const std::vector<uint8_t> got_flags = Down<uint8_t>(dflags);
    int near_tau = 0;
    for (size_t i = 0; i < flags.size(); ++i) {
      if (std::fabs(sim[i] - tau) < 1e-5f) { ++near_tau; continue; }
      EXPECT_EQ(got_flags[i], flags[i]) << i;
    }
    if (near_tau == 0) {
      EXPECT_EQ(Down<int32_t>(dcount)[0], count[0]);
    }
    std::printf("similarity tau=%.2f: %d of %zu flagged\n", tau, count[0], flags.size());
    EXPECT_GT(count[0], 0);
    EXPECT_LT(count[0], static_cast<int>(flags.size()));
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, SimilarityCudaTest,
                         ::testing::Values(SimilarityShape{32, 8, 128}, SimilarityShape{6, 6, 48},
                                           SimilarityShape{16, 1, 64}),
                         [](const auto& info) {
                           return "hq" + std::to_string(info.param.hq) + "_hkv" +
                                  std::to_string(info.param.hkv) + "_d" +
                                  std::to_string(info.param.dim);
                         });

}  // namespace
}  // namespace kernels
}  // namespace freekv
