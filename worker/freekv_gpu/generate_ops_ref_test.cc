// The CPU references of generate_ops.h on small hand-checked cases: argmax ties, NaN
// and forced tokens, page copies between interleaved and split pools, scatters, and a
// selection turned into a page table; and how each refuses bad sizes.
#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/test_util.h"
#include "worker/freekv_gpu/generate_ops.h"

namespace freekv::gpu {
namespace {

using kernels::PagedKv;
using kernels::RandomVector;
using ::testing::HasSubstr;

constexpr float kNan = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

void ExpectInvalid(const absl::Status& status, const char* field) {
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_THAT(std::string(status.message()), HasSubstr(field));
}

TEST(PickTokensRef, ArgmaxTakesTheFirstMaximumForcedTokensAreFedAndTheHostSeesTheArgmax) {
  const std::vector<float> logits = {
      0.1f, 0.7f, -2.0f, 0.7f, 0.3f,    // tie at 1 and 3: 1
      -1.0f, -3.0f, -0.5f, -2.0f, -0.6f,  // all negative: 2
      9.0f, 0.0f, 0.0f, 0.0f, 0.0f,     // forced to 4 although 0 is the maximum
      0.0f, 1.0f, 2.0f, 3.0f, 4.0f,     // forced -1: the argmax, 4
  };
  const std::vector<int32_t> forced = {-1, -1, 4, -1};
  std::vector<int32_t> tokens(4, -7), host(4, -7);
  ASSERT_TRUE(PickTokensRef(logits, 5, forced, absl::MakeSpan(tokens),
                            absl::MakeSpan(host))
                  .ok());
  EXPECT_EQ(tokens, (std::vector<int32_t>{1, 2, 4, 4}));
  EXPECT_EQ(host, (std::vector<int32_t>{1, 2, 0, 4}));  // what the model chose
  // No forcing, no host copy: the same rows give their argmax, row 2 its 0.
  std::vector<int32_t> plain(4, -7);
  ASSERT_TRUE(PickTokensRef(logits, 5, {}, absl::MakeSpan(plain), {}).ok());
  EXPECT_EQ(plain, (std::vector<int32_t>{1, 2, 0, 4}));
}

TEST(PickTokensRef, NanNeverWinsAndSignedZerosAndInfinitiesTie) {
  const std::vector<float> logits = {
      kNan, 1.0f, kNan, 3.0f, 3.0f,   // 3
      kNan, kNan, kNan, kNan, kNan,   // all NaN: 0
      kNan, -kInf, -kInf, kNan, -kInf,  // only -inf besides NaN: 1
      -0.0f, 0.0f, -1.0f, -0.0f, -5.0f,  // -0 == +0: the first, 0
      1.0f, kInf, 2.0f, kInf, kNan,   // 1
  };
  std::vector<int32_t> tokens(5, -7);
  ASSERT_TRUE(PickTokensRef(logits, 5, {}, absl::MakeSpan(tokens), {}).ok());
  EXPECT_EQ(tokens, (std::vector<int32_t>{3, 0, 1, 0, 1}));
}

TEST(PickTokensRef, MatchesMaxElementOnRandomRows) {
  std::mt19937 rng(3);
  constexpr int32_t kRows = 7, kVocab = 32000;
  std::vector<float> logits = RandomVector<float>(rng, size_t{kRows} * kVocab, -8, 8);
  // A tie in row 0 between a later and an earlier copy of the maximum.
  const auto row0 = logits.begin();
  *(row0 + 31000) = *(row0 + 123) = 9.0f;
  std::vector<int32_t> tokens(kRows);
  ASSERT_TRUE(PickTokensRef(logits, kVocab, {}, absl::MakeSpan(tokens), {}).ok());
  for (int32_t b = 0; b < kRows; ++b) {
    const auto row = logits.begin() + int64_t{b} * kVocab;
    EXPECT_EQ(tokens[b], std::max_element(row, row + kVocab) - row) << "row " << b;
  }
  EXPECT_EQ(tokens[0], 123);
}

TEST(PickTokensRef, RefusesBadSizesAndAcceptsAnEmptyBatch) {
  const std::vector<float> logits(12, 1.0f);
  std::vector<int32_t> tokens(3), two(2);
  const std::vector<int32_t> forced2 = {1, 2};
  ExpectInvalid(PickTokensRef(logits, 0, {}, absl::MakeSpan(tokens), {}), "vocab");
  ExpectInvalid(PickTokensRef(logits, 5, {}, absl::MakeSpan(tokens), {}), "logits");
  ExpectInvalid(PickTokensRef(logits, 4, forced2, absl::MakeSpan(tokens), {}), "forced");
  ExpectInvalid(PickTokensRef(logits, 4, {}, absl::MakeSpan(tokens), absl::MakeSpan(two)),
                "host_out");
  EXPECT_TRUE(PickTokensRef({}, 4, {}, {}, {}).ok());
}

// Page p of a pool, as K then V, page_elems() each.
std::vector<BFloat16> PageOf(const PagedKv<BFloat16>& pool, int32_t p) {
  const int64_t n = pool.page_elems(), at = p * pool.page_stride;
  std::vector<BFloat16> out(pool.k + at, pool.k + at + n);
  out.insert(out.end(), pool.v + at, pool.v + at + n);
  return out;
}

bool SameBits(const std::vector<BFloat16>& a, const std::vector<BFloat16>& b) {
  return a.size() == b.size() &&
         std::equal(a.begin(), a.end(), b.begin(),
                    [](BFloat16 x, BFloat16 y) { return x.bits == y.bits; });
}

constexpr int32_t kTokens = 2, kHeads = 2, kDim = 4, kPage = kTokens * kHeads * kDim;

struct Pools {
  std::vector<BFloat16> src_data, dst_k, dst_v;
  PagedKv<BFloat16> src, dst;  // src interleaved, 4 pages; dst split and padded, 3 pages
};

Pools RandomPools(std::mt19937& rng) {
  Pools p;
  p.src_data = RandomVector<BFloat16>(rng, 2 * kPage * 4);
  p.dst_k = RandomVector<BFloat16>(rng, (kPage + 3) * 3);
  p.dst_v = RandomVector<BFloat16>(rng, (kPage + 3) * 3);
  p.src = {p.src_data.data(), p.src_data.data() + kPage, 2 * kPage, 4, kTokens, kHeads,
           kDim};
  p.dst = {p.dst_k.data(), p.dst_v.data(), kPage + 3, 3, kTokens, kHeads, kDim};
  return p;
}

PagedKv<const BFloat16> Const(const PagedKv<BFloat16>& p) {
  return {p.k, p.v, p.page_stride, p.num_pages, p.page_tokens, p.num_kv_heads, p.head_dim};
}

TEST(CopyPagesRef, CopiesWholePagesBetweenInterleavedAndSplitPools) {
  std::mt19937 rng(4);
  Pools p = RandomPools(rng);
  const std::vector<BFloat16> k_before = p.dst_k, v_before = p.dst_v;
  const std::vector<int32_t> src_pages = {3, 0}, dst_pages = {1, 2};
  ASSERT_TRUE(CopyPagesRef(Const(p.src), src_pages, p.dst, dst_pages).ok());
  EXPECT_TRUE(SameBits(PageOf(p.dst, 1), PageOf(p.src, 3)));
  EXPECT_TRUE(SameBits(PageOf(p.dst, 2), PageOf(p.src, 0)));
  // Page 0 and the padding after every page are untouched.
  for (int64_t i = 0; i < static_cast<int64_t>(p.dst_k.size()); ++i) {
    const int64_t page = i / p.dst.page_stride, within = i % p.dst.page_stride;
    if (page != 0 && within < kPage) continue;
    EXPECT_EQ(p.dst_k[i].bits, k_before[i].bits) << "K element " << i;
    EXPECT_EQ(p.dst_v[i].bits, v_before[i].bits) << "V element " << i;
  }
  // Back the other way, into the interleaved pool.
  ASSERT_TRUE(CopyPagesRef(Const(p.dst), std::vector<int32_t>{0}, p.src,
                           std::vector<int32_t>{2})
                  .ok());
  EXPECT_TRUE(SameBits(PageOf(p.src, 2), PageOf(p.dst, 0)));
  EXPECT_TRUE(CopyPagesRef(Const(p.src), {}, p.dst, {}).ok());
}

TEST(CopyPagesRef, RefusesOtherGeometriesAndPagesOutOfRange) {
  std::mt19937 rng(5);
  Pools p = RandomPools(rng);
  const std::vector<BFloat16> k_before = p.dst_k;
  const std::vector<int32_t> one = {1}, two = {1, 2};
  PagedKv<BFloat16> other = p.dst;
  other.head_dim = 2;
  ExpectInvalid(CopyPagesRef(Const(p.src), one, other, one), "dst pages");
  ExpectInvalid(CopyPagesRef(Const(p.src), one, p.dst, two), "dst_pages");
  // The second pair is out of range: the reference refuses before copying the first.
  ExpectInvalid(CopyPagesRef(Const(p.src), std::vector<int32_t>{0, 4}, p.dst, two),
                "src_pages[1]");
  ExpectInvalid(CopyPagesRef(Const(p.src), two, p.dst, std::vector<int32_t>{0, 3}),
                "dst_pages[1]");
  ExpectInvalid(CopyPagesRef(Const(p.src), std::vector<int32_t>{-1}, p.dst, one),
                "src_pages[0]");
  EXPECT_TRUE(SameBits(p.dst_k, k_before));
}

TEST(ScatterWordsRef, WritesEachValueAtItsIndexOnly) {
  std::vector<int32_t> dst = {10, 11, 12, 13, 14};
  ASSERT_TRUE(ScatterWordsRef(absl::MakeSpan(dst), std::vector<int32_t>{3, 0},
                              std::vector<int32_t>{-1, 70})
                  .ok());
  EXPECT_EQ(dst, (std::vector<int32_t>{70, 11, 12, -1, 14}));
  ExpectInvalid(ScatterWordsRef(absl::MakeSpan(dst), std::vector<int32_t>{1, 5},
                                std::vector<int32_t>{8, 9}),
                "indices[1]");
  ExpectInvalid(ScatterWordsRef(absl::MakeSpan(dst), std::vector<int32_t>{1, 2},
                                std::vector<int32_t>{8}),
                "values");
  EXPECT_EQ(dst, (std::vector<int32_t>{70, 11, 12, -1, 14})) << "refused calls write nothing";
  EXPECT_TRUE(ScatterWordsRef(absl::MakeSpan(dst), {}, {}).ok());
}

// 2 sequences x 2 KV heads, k = 3, 10 pages per sequence in the full pool; each list's
// selected part starts 5 entries after the last (the rest is sink and window pages).
TEST(SelectedToTableRef, MapsEachSelectedPageIntoItsSequencesPoolPages) {
  const std::vector<int32_t> selected = {0, 4, -1,   2, -1, -1,
                                         1, 3, 9,    -1, -1, -1};
  const std::vector<int32_t> starts = {0, 5, 10, 15};
  std::vector<int32_t> indices(18, 99);
  ASSERT_TRUE(SelectedToTableRef(selected, 3, 2, SeqPages::Full(10), starts,
                                 absl::MakeSpan(indices))
                  .ok());
  std::vector<int32_t> want(18, 99);
  want[0] = 0, want[1] = 4, want[5] = 2;       // sequence 0: pages 0..9
  want[10] = 11, want[11] = 13, want[12] = 19;  // sequence 1: pages 10..19
  EXPECT_EQ(indices, want);
}

TEST(SelectedToTableRef, RefusesBadSizesPagesAndStarts) {
  const std::vector<int32_t> selected = {0, 1, 2, 3};  // 2 lists of k = 2
  const std::vector<int32_t> starts = {0, 2};
  std::vector<int32_t> indices(4, 99);
  auto call = [&](absl::Span<const int32_t> sel, int32_t k, int32_t heads, int32_t full,
                  absl::Span<const int32_t> st) {
    return SelectedToTableRef(sel, k, heads, SeqPages::Full(full), st,
                              absl::MakeSpan(indices));
  };
  ExpectInvalid(call(selected, 0, 2, 10, starts), "k");
  ExpectInvalid(call(selected, 2, 0, 10, starts), "num_kv_heads");
  ExpectInvalid(call(selected, 2, 2, 0, starts), "pages.count");
  ExpectInvalid(call(selected, 2, 3, 10, starts), "starts");
  ExpectInvalid(call(selected, 3, 2, 10, starts), "selected");
  ExpectInvalid(call(selected, 2, 2, 3, starts), "selected[3]");  // page 3 of 3
  ExpectInvalid(call(selected, 2, 2, 10, std::vector<int32_t>{0, 3}), "starts[1]");
  ExpectInvalid(call(selected, 2, 2, 10, std::vector<int32_t>{-1, 2}), "starts[0]");
  EXPECT_EQ(indices, std::vector<int32_t>(4, 99)) << "refused calls write nothing";
  ASSERT_TRUE(call(selected, 2, 2, 10, starts).ok());
  EXPECT_EQ(indices, (std::vector<int32_t>{0, 1, 2, 3}));
  EXPECT_TRUE(call({}, 2, 2, 10, {}).ok());
  // Slots 0..2 of a 6-page sequence that starts them after 2 sinks: slot 3 is past them,
  // and slots past the sequence's pages are refused.
  ExpectInvalid(SelectedToTableRef(selected, 2, 2, {6, 2, 3}, starts, absl::MakeSpan(indices)),
                "selected[3]");
  ExpectInvalid(SelectedToTableRef(selected, 2, 2, {6, 2, 5}, starts, absl::MakeSpan(indices)),
                "do not fit");
}

// A ResidentLayout pool (2 sinks, 4 slots, 2 window pages: 8 pages per sequence):
// attend slots name the slot pages of their sequence.
TEST(SelectedToTableRef, MapsAttendSlotsIntoTheSequencesSlotPages) {
  const std::vector<int32_t> slots = {3, 0,    -1, 1,   // sequence 0, heads 0 and 1
                                      2, 3,    0, -1};  // sequence 1
  const std::vector<int32_t> starts = {2, 6, 10, 14};
  std::vector<int32_t> indices(16, 99);
  ASSERT_TRUE(SelectedToTableRef(slots, 2, 2, {8, 2, 4}, starts, absl::MakeSpan(indices)).ok());
  std::vector<int32_t> want(16, 99);
  want[2] = 5, want[3] = 2, want[7] = 3;  // slot s of sequence 0: page 2 + s
  want[10] = 12, want[11] = 13, want[14] = 10;  // sequence 1: page 10 + s
  EXPECT_EQ(indices, want);
}

}  // namespace
}  // namespace freekv::gpu
