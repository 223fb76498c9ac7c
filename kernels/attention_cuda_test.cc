// GPU tests of attention.h and decode_attention.h against their CPU references.
#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/attention.h"
#include "kernels/cuda_test_util.h"
#include "kernels/decode_attention.h"

namespace freekv {
namespace kernels {
namespace {

template <typename T>
class AttentionCudaTest : public ::testing::Test {};
using Types = ::testing::Types<float, BFloat16>;
TYPED_TEST_SUITE(AttentionCudaTest, Types);

struct Geo {
  int hq, hkv, dim;
};

TYPED_TEST(AttentionCudaTest, CausalMatchesReference) {
  using T = TypeParam;
  std::mt19937 rng(200);
  for (const Geo g : {Geo{32, 8, 128}, Geo{6, 6, 48}, Geo{16, 2, 64}}) {
    const int nq = 45, nkv = 70;  // a chunk after 25 cached tokens
    const AttentionDims dims{g.hq, g.hkv, g.dim, 1.0f / std::sqrt(float(g.dim))};
    const std::vector<T> q = RandomVector<T>(rng, nq * g.hq * g.dim, -2, 2);
    const std::vector<T> k = RandomVector<T>(rng, nkv * g.hkv * g.dim, -2, 2);
    const std::vector<T> v = RandomVector<T>(rng, nkv * g.hkv * g.dim);
    std::vector<T> ref(q.size());
    std::vector<float> ref_lse(nq * g.hq);
    ASSERT_TRUE(CausalAttentionRef<T>(q, k, v, dims, absl::MakeSpan(ref),
                                      absl::MakeSpan(ref_lse)).ok());
    DeviceBuffer dq = Up(q), dk = Up(k), dv = Up(v);
    DeviceBuffer dout = Poisoned<T>(q.size()), dlse = Poisoned<float>(ref_lse.size());
    ASSERT_TRUE(CausalAttentionCuda<T>(dq.span<const T>(), dk.span<const T>(),
                                       dv.span<const T>(), dims, dout.span<T>(),
                                       dlse.span<float>(), nullptr).ok());
    const double err = RelativeL2(Down<T>(dout), ref);
    EXPECT_LT(err, Tolerance<T>()) << g.hq << "/" << g.hkv << "/" << g.dim;
    EXPECT_LT(RelativeL2(Down<float>(dlse), ref_lse), 1e-5);
    std::printf("causal %d/%d/%d: relative L2 %.3g\n", g.hq, g.hkv, g.dim, err);
  }
}


// Per-(sequence, KV head) lists like FreeKV's: a random subset of the full pages in a
// random order, then the partial window page last.
template <typename T>
HostPageTable RandomSparseTable(const TestPool<T>& pool, std::mt19937& rng) {
  HostPageTable table;
  table.table_heads = pool.num_kv_heads;
  for (size_t b = 0; b < pool.seq_lens.size(); ++b) {
    for (int h = 0; h < pool.num_kv_heads; ++h) {
      std::vector<int32_t> pages;
      const auto& all = pool.seq_pages[b];
      for (size_t p = 0; p + 1 < all.size(); ++p) {
        if (std::bernoulli_distribution(0.4)(rng)) pages.push_back(all[p]);
      }
      std::shuffle(pages.begin(), pages.end(), rng);
      pages.push_back(all.back());  // the partial window page stays last
      table.AddList(pages, pool.last_len(static_cast<int32_t>(b)));
    }
  }
  return table;
}

TYPED_TEST(AttentionCudaTest, PagedDecodeMatchesReferenceSparseAndFull) {
  using T = TypeParam;
  std::mt19937 rng(201);
  for (const Geo g : {Geo{32, 8, 128}, Geo{6, 6, 48}}) {
    const std::vector<int32_t> lens = {2048 + 17, 1, 700, 4096};
    const TestPool<T> pool = MakeTestPool<T>(rng, lens, 32, g.hkv, g.dim);
    DeviceBuffer dk = Up(pool.k), dv = Up(pool.v);
    PagedKv<const T> dkv = pool.view();
    dkv.k = dk.span<const T>().data();
    dkv.v = dv.span<const T>().data();
    const std::vector<T> q = RandomVector<T>(rng, lens.size() * g.hq * g.dim, -3, 3);
    DeviceBuffer dq = Up(q);
    const int max_pages = 4096 / 32;
    DeviceBuffer work = Must(DeviceBuffer::Allocate(
        DecodeWorkspaceBytes(lens.size(), g.hq, g.dim, max_pages)));
    Must(work.Zero());  // then reused by every call below: each must leave it zeroed
    for (const HostPageTable& table : {RandomSparseTable(pool, rng), pool.FullTable()}) {
      // 0: launcher chooses; 1: over the split cap, widened; 1000: a single split.
      for (int split : {0, 1, 5, 1000}) {
        DecodeOptions opt{g.hq, 1.0f / std::sqrt(float(g.dim)), split};
        opt.pipelined = split != 5;  // both load schedules
        std::vector<T> ref(q.size());
        std::vector<float> ref_lse(lens.size() * g.hq);
        ASSERT_TRUE(PagedDecodeAttentionRef<T>(q, pool.view(), table.view(), opt,
                                               absl::MakeSpan(ref), absl::MakeSpan(ref_lse)).ok());
        DevicePageTable dtable(table);
        DeviceBuffer dout = Poisoned<T>(q.size()), dlse = Poisoned<float>(ref_lse.size());
        const absl::Status s = PagedDecodeAttentionCuda<T>(
            dq.span<const T>(), dkv, dtable.view(), opt, max_pages, dout.span<T>(),
            dlse.span<float>(), work.span<uint8_t>(), nullptr);
        ASSERT_TRUE(s.ok()) << s;
        const double err = RelativeL2(Down<T>(dout), ref);
        EXPECT_LT(err, Tolerance<T>()) << "heads " << table.table_heads << " split " << split;
        EXPECT_LT(RelativeL2(Down<float>(dlse), ref_lse), 1e-5);
        std::printf("decode %d/%d/%d table_heads %d split %d: relative L2 %.3g\n", g.hq,
                    g.hkv, g.dim, table.table_heads, split, err);
      }
    }
  }
}

TEST(PagedDecodeCudaTest, TooSmallWorkspaceIsRejected) {
  std::mt19937 rng(202);
  const TestPool<float> pool = MakeTestPool<float>(rng, {512}, 32, 2, 64);
  DeviceBuffer dk = Up(pool.k), dv = Up(pool.v), dq = Up(RandomVector<float>(rng, 8 * 64));
  PagedKv<const float> dkv = pool.view();
  dkv.k = dk.span<const float>().data();
  dkv.v = dv.span<const float>().data();
  DevicePageTable table(pool.FullTable());
  DeviceBuffer out = Poisoned<float>(8 * 64);
  const absl::Status s = PagedDecodeAttentionCuda<float>(
      dq.span<const float>(), dkv, table.view(), DecodeOptions{8, 0.125f, 2}, 16,
      out.span<float>(), {}, {}, nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("workspace"), std::string::npos) << s;
}

}  // namespace
}  // namespace kernels
}  // namespace freekv
