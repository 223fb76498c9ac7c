// The CUDA launchers of generate_ops.h against the CPU references on random inputs,
// at stories15M's geometry (pages of 8 tokens, 6 KV heads, head_dim 48) and Llama's
// (32, 8, 128), and PickTokens at Llama-2's and Llama-3's vocabularies with its host
// copy in pinned memory; bit for bit (the ops pick and move, they do not round). Then
// the ops captured in one CUDA graph and replayed.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cuda_test_util.h"
#include "kernels/cuda_util.h"
#include "kernels/test_util.h"
#include "worker/freekv_gpu/generate_ops.h"

namespace freekv::gpu {
namespace {

using kernels::CudaStream;
using kernels::DeviceBuffer;
using kernels::Down;
using kernels::Must;
using kernels::PagedKv;
using kernels::PinnedBuffer;
using kernels::RandomVector;
using kernels::Up;

constexpr float kNan = std::numeric_limits<float>::quiet_NaN();

// Random logits of `rows` rows, with the cases a reduction gets wrong: ties between
// far-apart indices (other threads, warps, unrolled loads), NaN sprinkled and at the
// maximum, a row of NaN, a row of -inf.
std::vector<float> HardLogits(std::mt19937& rng, int32_t rows, int32_t vocab) {
  std::vector<float> logits = RandomVector<float>(rng, size_t(rows) * vocab, -8, 8);
  std::uniform_int_distribution<int32_t> at(0, vocab - 1);
  for (int32_t b = 0; b < rows; ++b) {
    float* row = logits.data() + int64_t{b} * vocab;
    switch (b % 6) {
      case 1:  // a three-way tie
        row[at(rng)] = row[at(rng)] = row[at(rng)] = 9.5f;
        break;
      case 2:  // NaN where the maximum was, and in steps of 7
        *std::max_element(row, row + vocab) = kNan;
        for (int32_t i = b % 7; i < vocab; i += 7) row[i] = kNan;
        break;
      case 3:
        if (b == 3) std::fill_n(row, vocab, kNan);
        if (b == 9) std::fill_n(row, vocab, -INFINITY);
        break;
      case 4:  // the maximum in the last entry (a scalar tail when vocab % 4 != 0)
        row[vocab - 1] = 20.0f;
        break;
      default:
        break;
    }
  }
  return logits;
}

// Compares PickTokensCuda with the reference; host_out in pinned memory.
void CheckPickTokens(int32_t rows, int32_t vocab, bool with_forced, size_t misalign,
                     uint32_t seed) {
  std::mt19937 rng(seed);
  const std::vector<float> logits = HardLogits(rng, rows, vocab);
  std::vector<int32_t> forced;
  if (with_forced) {
    forced.resize(rows);
    for (int32_t& f : forced) f = rng() % 3 == 0 ? static_cast<int32_t>(rng() % vocab) : -1;
  }
  std::vector<int32_t> want(rows), want_host(rows);
  ASSERT_TRUE(PickTokensRef(logits, vocab, forced, absl::MakeSpan(want),
                            absl::MakeSpan(want_host))
                  .ok());
  // `misalign` floats in front of the logits, so rows start off 16-byte boundaries.
  std::vector<float> shifted(misalign, 1.0f);
  shifted.insert(shifted.end(), logits.begin(), logits.end());
  const DeviceBuffer d_logits = Up(shifted);
  const DeviceBuffer d_forced = Up(forced.empty() ? std::vector<int32_t>{0} : forced);
  const DeviceBuffer d_tokens = kernels::Poisoned<int32_t>(rows);
  PinnedBuffer host = Must(PinnedBuffer::Allocate(rows * sizeof(int32_t)));
  std::fill_n(host.span<int32_t>().data(), rows, -7);
  auto stream = Must(CudaStream::Create());
  Must(kernels::DeviceSynchronize());  // Poisoned runs on the legacy stream
  ASSERT_TRUE(PickTokensCuda(d_logits.span<const float>().subspan(misalign), vocab,
                             forced.empty() ? absl::Span<const int32_t>()
                                            : d_forced.span<const int32_t>(),
                             d_tokens.span<int32_t>(), host.span<int32_t>(), stream.get())
                  .ok());
  ASSERT_TRUE(stream.Synchronize().ok());
  EXPECT_EQ(Down<int32_t>(d_tokens), want) << rows << " x " << vocab;
  const int32_t* got_host = host.span<int32_t>().data();
  EXPECT_EQ(std::vector<int32_t>(got_host, got_host + rows), want_host);
}

TEST(PickTokensCuda, MatchesTheReferenceAtLlamaVocabularies) {
  CheckPickTokens(64, 32000, /*with_forced=*/true, 0, 1);
  CheckPickTokens(64, 128256, /*with_forced=*/true, 0, 2);
  CheckPickTokens(13, 128256, /*with_forced=*/false, 0, 3);
  CheckPickTokens(1, 32000, /*with_forced=*/false, 0, 4);
}

TEST(PickTokensCuda, MatchesTheReferenceOnUnalignedRows) {
  CheckPickTokens(12, 1001, /*with_forced=*/true, 0, 5);   // vocab % 4 != 0
  CheckPickTokens(12, 32000, /*with_forced=*/false, 1, 6);  // rows off 16 bytes
}

// Not a contract, a number for the report: one launch at 64 x vocab.
TEST(PickTokensCuda, Timing) {
  for (int32_t vocab : {32000, 128256}) {
    std::mt19937 rng(7);
    const DeviceBuffer logits = Up(RandomVector<float>(rng, size_t{64} * vocab, -8, 8));
    DeviceBuffer tokens = Must(DeviceBuffer::Allocate(64 * sizeof(int32_t)));
    auto stream = Must(CudaStream::Create());
    auto start = Must(kernels::CudaEvent::Create()), end = Must(kernels::CudaEvent::Create());
    constexpr int kLaunches = 200;
    for (int i = 0; i < 2 * kLaunches; ++i) {
      if (i == kLaunches) Must(start.Record(stream.get()));
      Must(PickTokensCuda(logits.span<const float>(), vocab, {}, tokens.span<int32_t>(), {},
                          stream.get()));
    }
    Must(end.Record(stream.get()));
    const float ms = Must(end.ElapsedMsSince(start));
    std::printf("PickTokensCuda 64 x %d: %.2f us per launch (%.0f GB/s)\n", vocab,
                1000.0f * ms / kLaunches, 64.0 * vocab * 4 * kLaunches / (ms * 1e6));
  }
}

struct Geometry {
  int32_t page_tokens, heads, dim;
};
constexpr Geometry kStories{8, 6, 48}, kLlama{32, 8, 128};

// A random pool in one buffer, mirrored on the host: interleaved ([page][K|V]) or split
// (all K, then all V, with `pad` elements before the first page and after each page).
enum class Kv { kInterleaved, kSplit };

struct Pool {
  Geometry g;
  int32_t pages;
  bool interleaved;
  int64_t pe, pad;
  std::vector<BFloat16> host;
  DeviceBuffer device;

  Pool(std::mt19937& rng, const Geometry& geometry, int32_t num_pages, Kv kv,
       int64_t padding = 0)
      : g(geometry), pages(num_pages), interleaved(kv == Kv::kInterleaved),
        pe(int64_t{g.page_tokens} * g.heads * g.dim), pad(padding),
        host(RandomVector<BFloat16>(rng, 2 * pages * (pe + pad) + pad)),
        device(Up(host)) {}
  PagedKv<BFloat16> View(BFloat16* base) const {
    if (interleaved) return {base, base + pe, 2 * pe, pages, g.page_tokens, g.heads, g.dim};
    BFloat16* k = base + pad;
    return {k, k + pages * (pe + pad), pe + pad, pages, g.page_tokens, g.heads, g.dim};
  }
  PagedKv<BFloat16> Host() { return View(host.data()); }
  PagedKv<BFloat16> Device() const { return View(device.span<BFloat16>().data()); }
};

PagedKv<const BFloat16> Const(const PagedKv<BFloat16>& p) {
  return {p.k, p.v, p.page_stride, p.num_pages, p.page_tokens, p.num_kv_heads, p.head_dim};
}

bool SameBits(const std::vector<BFloat16>& a, const std::vector<BFloat16>& b) {
  return a.size() == b.size() &&
         std::equal(a.begin(), a.end(), b.begin(),
                    [](BFloat16 x, BFloat16 y) { return x.bits == y.bits; });
}

// Copies `n` random pages of src into n distinct random pages of dst on both sides.
void CheckCopyPages(Pool& src, Pool& dst, int32_t n, std::mt19937& rng) {
  std::vector<int32_t> src_pages(n), dst_pages(dst.pages);
  for (int32_t& p : src_pages) p = rng() % src.pages;
  std::iota(dst_pages.begin(), dst_pages.end(), 0);
  std::shuffle(dst_pages.begin(), dst_pages.end(), rng);
  dst_pages.resize(n);
  ASSERT_TRUE(CopyPagesRef(Const(src.Host()), src_pages, dst.Host(), dst_pages).ok());
  const DeviceBuffer d_src_pages = Up(src_pages), d_dst_pages = Up(dst_pages);
  auto stream = Must(CudaStream::Create());
  ASSERT_TRUE(CopyPagesCuda(Const(src.Device()), d_src_pages.span<const int32_t>(),
                            dst.Device(), d_dst_pages.span<const int32_t>(), stream.get())
                  .ok());
  ASSERT_TRUE(stream.Synchronize().ok());
  EXPECT_TRUE(SameBits(Down<BFloat16>(dst.device), dst.host));
}

TEST(CopyPagesCuda, MatchesTheReferenceAtStoriesAndLlamaGeometry) {
  std::mt19937 rng(11);
  for (const Geometry& g : {kStories, kLlama}) {
    SCOPED_TRACE(g.dim);
    Pool interleaved(rng, g, 40, Kv::kInterleaved), split(rng, g, 30, Kv::kSplit);
    CheckCopyPages(interleaved, split, 17, rng);  // vectorised, interleaved -> split
    CheckCopyPages(split, interleaved, 30, rng);  // and back
  }
}

TEST(CopyPagesCuda, MatchesTheReferenceOnUnalignedPools) {
  std::mt19937 rng(12);
  Pool interleaved(rng, kStories, 12, Kv::kInterleaved);
  Pool padded(rng, kStories, 9, Kv::kSplit, /*padding=*/1);
  CheckCopyPages(interleaved, padded, 9, rng);  // element by element
  CheckCopyPages(padded, interleaved, 5, rng);
}

TEST(ScatterWordsCuda, MatchesTheReference) {
  std::mt19937 rng(13);
  std::vector<int32_t> dst(10007), indices(dst.size()), values(3001);
  for (int32_t& w : dst) w = static_cast<int32_t>(rng());
  for (int32_t& w : values) w = static_cast<int32_t>(rng());
  std::iota(indices.begin(), indices.end(), 0);
  std::shuffle(indices.begin(), indices.end(), rng);
  indices.resize(values.size());
  const DeviceBuffer d_dst = Up(dst), d_indices = Up(indices), d_values = Up(values);
  ASSERT_TRUE(ScatterWordsRef(absl::MakeSpan(dst), indices, values).ok());
  auto stream = Must(CudaStream::Create());
  ASSERT_TRUE(ScatterWordsCuda(d_dst.span<int32_t>(), d_indices.span<const int32_t>(),
                               d_values.span<const int32_t>(), stream.get())
                  .ok());
  ASSERT_TRUE(stream.Synchronize().ok());
  EXPECT_EQ(Down<int32_t>(d_dst), dst);
}

// A TopKPages-like selection: per list, a random number of distinct pages ascending,
// then -1; each list's part of the table starts after a gap (its sink pages).
TEST(SelectedToTableCuda, MatchesTheReference) {
  for (const Geometry& g : {kStories, kLlama}) {
    std::mt19937 rng(14 + g.heads);
    constexpr int32_t kSeqs = 5, kK = 32, kFull = 90, kGap = 7;
    const int32_t lists = kSeqs * g.heads;
    std::vector<int32_t> selected(size_t(lists) * kK, -1), starts(lists), pages(kFull);
    std::iota(pages.begin(), pages.end(), 0);
    for (int32_t i = 0; i < lists; ++i) {
      std::shuffle(pages.begin(), pages.end(), rng);
      const int32_t count = rng() % (kK + 1);
      std::sort(pages.begin(), pages.begin() + count);
      std::copy_n(pages.begin(), count, selected.begin() + int64_t{i} * kK);
      starts[i] = i * (kK + kGap) + kGap;
    }
    std::vector<int32_t> indices(size_t(lists) * (kK + kGap));
    for (int32_t& w : indices) w = static_cast<int32_t>(rng() % 1000) + 5000;
    const DeviceBuffer d_sel = Up(selected), d_starts = Up(starts);
    // A full pool, and the slots of a resident pool (pages past a gap of sinks).
    for (const SeqPages pages : {SeqPages::Full(kFull), SeqPages{kFull + 20, 9, kFull}}) {
      std::vector<int32_t> want = indices;
      ASSERT_TRUE(SelectedToTableRef(selected, kK, g.heads, pages, starts, absl::MakeSpan(want))
                      .ok());
      const DeviceBuffer d_idx = Up(indices);
      auto stream = Must(CudaStream::Create());
      ASSERT_TRUE(SelectedToTableCuda(d_sel.span<const int32_t>(), kK, g.heads, pages,
                                      d_starts.span<const int32_t>(), d_idx.span<int32_t>(),
                                      stream.get())
                      .ok());
      ASSERT_TRUE(stream.Synchronize().ok());
      EXPECT_EQ(Down<int32_t>(d_idx), want) << g.heads << " heads, first " << pages.first;
      EXPECT_NE(want, indices) << "the selection wrote nothing";
    }
  }
}

// PickTokens (pinned host copy) and a page copy captured in one graph: replaying it
// does the work, and a second replay after new logits picks the new tokens.
TEST(GenerateOps, RunInsideACapturedGraph) {
  std::mt19937 rng(15);
  constexpr int32_t kRows = 8, kVocab = 32000;
  std::vector<float> logits = HardLogits(rng, kRows, kVocab);
  DeviceBuffer d_logits = Up(logits);
  DeviceBuffer d_tokens = kernels::Poisoned<int32_t>(kRows);
  PinnedBuffer host = Must(PinnedBuffer::Allocate(kRows * sizeof(int32_t)));
  Pool src(rng, kLlama, 6, Kv::kInterleaved), dst(rng, kLlama, 4, Kv::kSplit);
  const std::vector<int32_t> src_pages = {5, 2}, dst_pages = {0, 3};
  const DeviceBuffer d_src_pages = Up(src_pages), d_dst_pages = Up(dst_pages);
  auto stream = Must(CudaStream::Create());
  Must(kernels::DeviceSynchronize());
  kernels::CudaGraph graph = Must(kernels::CudaGraph::Capture(stream.get(), [&] {
    FREEKV_RETURN_IF_ERROR(PickTokensCuda(d_logits.span<const float>(), kVocab, {},
                                          d_tokens.span<int32_t>(), host.span<int32_t>(),
                                          stream.get()));
    return CopyPagesCuda(Const(src.Device()), d_src_pages.span<const int32_t>(),
                         dst.Device(), d_dst_pages.span<const int32_t>(), stream.get());
  }));
  ASSERT_TRUE(CopyPagesRef(Const(src.Host()), src_pages, dst.Host(), dst_pages).ok());
  for (int replay = 0; replay < 2; ++replay) {
    if (replay == 1) {
      logits = HardLogits(rng, kRows, kVocab);
      Must(d_logits.CopyFromHost(logits.data(), logits.size() * sizeof(float)));
    }
    std::vector<int32_t> want(kRows);
    ASSERT_TRUE(PickTokensRef(logits, kVocab, {}, absl::MakeSpan(want), {}).ok());
    ASSERT_TRUE(graph.Launch(stream.get()).ok());
    ASSERT_TRUE(stream.Synchronize().ok());
    EXPECT_EQ(Down<int32_t>(d_tokens), want) << "replay " << replay;
    const int32_t* got = host.span<int32_t>().data();
    EXPECT_EQ(std::vector<int32_t>(got, got + kRows), want) << "replay " << replay;
  }
  EXPECT_TRUE(SameBits(Down<BFloat16>(dst.device), dst.host));
}

}  // namespace
}  // namespace freekv::gpu
