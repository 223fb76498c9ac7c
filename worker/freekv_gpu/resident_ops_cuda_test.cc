// The CUDA launchers of resident_ops.h against the CPU references on random inputs
// (bit for bit: they only move bytes), the device copy, and the gates: a stream that
// waits on one really stops until the host opens it (or its signal word opens, or the
// abort word is set).
#include <chrono>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/cuda_test_util.h"
#include "kernels/cuda_util.h"
#include "kernels/test_util.h"
#include "worker/freekv_gpu/resident_ops.h"

namespace freekv::gpu {
namespace {

// Before main, so before CUDA starts (see RequireEagerLoading).
const bool kEager = (RequireEagerLoading(), kernels::ShareOneWorkQueue(), true);

using kernels::CudaStream;
using kernels::DeviceBuffer;
using kernels::Must;
using kernels::RandomVector;

// Llama geometry per page (8 KV heads, head_dim 128, 32 tokens), 3 sequences.
constexpr int32_t kSeqs = 3, kHeads = 8, kTokens = 32, kDim = 128;
// 4 attended slots and 3 cached ones: diffs name slots across all 7.
const ResidentLayout kLayout{2, 4, 2, 3};

struct Pools {
  std::vector<BFloat16> host;
  DeviceBuffer device;
  kernels::PagedKv<BFloat16> Host() {
    return View(host.data());
  }
  kernels::PagedKv<BFloat16> Device() {
    return View(device.span<BFloat16>().data());
  }
  static kernels::PagedKv<BFloat16> View(BFloat16* base) {
    const int64_t page = int64_t{kTokens} * kHeads * kDim;
    return {base, base + page, 2 * page, kSeqs * kLayout.pages_per_seq(), kTokens, kHeads,
            kDim};
  }
};

Pools RandomPools(std::mt19937& rng) {
  Pools p;
  p.host = RandomVector<BFloat16>(
      rng, size_t{2} * kTokens * kHeads * kDim * kSeqs * kLayout.pages_per_seq());
  p.device = Must(DeviceBuffer::Upload<BFloat16>(p.host));
  return p;
}

std::vector<BFloat16> Download(const DeviceBuffer& b) {
  std::vector<BFloat16> out(b.bytes() / sizeof(BFloat16));
  EXPECT_TRUE(b.Download(absl::MakeSpan(out)).ok());
  return out;
}

bool SameBits(const std::vector<BFloat16>& a, const std::vector<BFloat16>& b) {
  return a.size() == b.size() &&
         std::equal(a.begin(), a.end(), b.begin(),
                    [](BFloat16 x, BFloat16 y) { return x.bits == y.bits; });
}

// The device pool and resident table the GPU wrote equal the reference's.
void ExpectPoolAndResidentMatch(const Pools& pool, const DeviceBuffer& d_resident,
                                const std::vector<int32_t>& resident,
                                const std::string& label) {
  EXPECT_TRUE(SameBits(Download(pool.device), pool.host)) << label;
  std::vector<int32_t> got(resident.size());
  ASSERT_TRUE(d_resident.Download(absl::MakeSpan(got)).ok());
  EXPECT_EQ(got, resident) << label;
}

// A diff over every (sequence, KV head) list, as GroupSelectCuda writes it: each list
// has at least `min_count` entries (at most `selected`), each in a distinct slot (of
// the capacity) and
// naming a page in [100, 1100). Past the count sit entries an earlier step left (valid
// slots, pages in [5000, 6000)), which an apply must ignore.
struct HostDiff {
  std::vector<int32_t> pages, slots, counts;
};
HostDiff RandomDiff(std::mt19937& rng, int32_t min_count) {
  const int32_t lists = kSeqs * kHeads, k = kLayout.selected;
  HostDiff d{std::vector<int32_t>(lists * k), std::vector<int32_t>(lists * k),
             std::vector<int32_t>(lists)};
  for (int32_t l = 0; l < lists; ++l) {
    d.counts[l] = min_count + rng() % (k + 1 - min_count);
    std::vector<int32_t> order(kLayout.capacity());
    for (int32_t s = 0; s < kLayout.capacity(); ++s) order[s] = s;
    std::shuffle(order.begin(), order.end(), rng);
    for (int32_t j = 0; j < k; ++j) {
      d.slots[l * k + j] = order[j];
      d.pages[l * k + j] = (j < d.counts[l] ? 100 : 5000) + rng() % 1000;
    }
  }
  return d;
}

TEST(ApplyRecallCuda, MatchesTheReferenceOnRandomDiffs) {
  std::mt19937 rng(21);
  Pools pool = RandomPools(rng);
  const int32_t lists = kSeqs * kHeads, k = kLayout.selected;
  const std::vector<BFloat16> slot =
      RandomVector<BFloat16>(rng, size_t{lists} * k * 2 * kTokens * kDim);
  const auto [pages, slots, counts] = RandomDiff(rng, 0);
  std::vector<uint8_t> mask(lists);
  for (uint8_t& m : mask) m = rng() % 4 != 0;
  std::vector<int32_t> resident(lists * kLayout.capacity());
  for (int32_t& r : resident) r = rng() % 50;
  auto d_slot = Must(DeviceBuffer::Upload<BFloat16>(slot));
  auto d_pages = Must(DeviceBuffer::Upload<int32_t>(pages));
  auto d_slots = Must(DeviceBuffer::Upload<int32_t>(slots));
  auto d_counts = Must(DeviceBuffer::Upload<int32_t>(counts));
  auto d_mask = Must(DeviceBuffer::Upload<uint8_t>(mask));
  auto d_resident = Must(DeviceBuffer::Upload<int32_t>(resident));
  auto stream = Must(CudaStream::Create());
  // Flagged heads, then the unflagged ones, then every head.
  for (int mode = 0; mode < 3; ++mode) {
    const RecallDiff host_diff{pages, slots, counts};
    const HeadMask host_heads{mode < 2 ? absl::MakeConstSpan(mask) : absl::Span<const uint8_t>(),
                              mode == 1};
    ASSERT_TRUE(ApplyRecallRef(slot, host_diff, host_heads, pool.Host(), kLayout,
                               absl::MakeSpan(resident))
                    .ok());
    const RecallDiff device_diff{d_pages.span<int32_t>(), d_slots.span<int32_t>(),
                                 d_counts.span<int32_t>()};
    const HeadMask device_heads{
        mode < 2 ? d_mask.span<const uint8_t>() : absl::Span<const uint8_t>(), mode == 1};
    ASSERT_TRUE(ApplyRecallCuda(d_slot.span<BFloat16>(), device_diff, device_heads,
                                pool.Device(), kLayout, d_resident.span<int32_t>(),
                                stream.get())
                    .ok());
    ASSERT_TRUE(stream.Synchronize().ok());
    ExpectPoolAndResidentMatch(pool, d_resident, resident, absl::StrCat("mode ", mode));
  }
}

// AppendKvCuda into pool.device, from host copies of its inputs.
void AppendOnTheGpu(const std::vector<BFloat16>& k, const std::vector<BFloat16>& v,
                    const std::vector<int32_t>& pages, const std::vector<int32_t>& tokens,
                    Pools& pool) {
  auto d_k = Must(DeviceBuffer::Upload<BFloat16>(k));
  auto d_v = Must(DeviceBuffer::Upload<BFloat16>(v));
  auto d_pages = Must(DeviceBuffer::Upload<int32_t>(pages));
  auto d_tokens = Must(DeviceBuffer::Upload<int32_t>(tokens));
  auto stream = Must(CudaStream::Create());
  ASSERT_TRUE(AppendKvCuda(d_k.span<BFloat16>(), d_v.span<BFloat16>(),
                           d_pages.span<int32_t>(), d_tokens.span<int32_t>(),
                           pool.Device(), stream.get())
                  .ok());
  ASSERT_TRUE(stream.Synchronize().ok());
}

TEST(AppendKvCuda, MatchesTheReference) {
  std::mt19937 rng(22);
  Pools pool = RandomPools(rng);
  const size_t row = size_t{kSeqs} * kHeads * kDim;
  const std::vector<BFloat16> k = RandomVector<BFloat16>(rng, row);
  const std::vector<BFloat16> v = RandomVector<BFloat16>(rng, row);
  std::vector<int32_t> pages(kSeqs), tokens(kSeqs);
  for (int32_t b = 0; b < kSeqs; ++b) {
    pages[b] = kLayout.window_page(b, rng() % 1000);
    tokens[b] = rng() % kTokens;
  }
  ASSERT_TRUE(AppendKvRef(k, v, pages, tokens, pool.Host()).ok());
  AppendOnTheGpu(k, v, pages, tokens, pool);
  EXPECT_TRUE(SameBits(Download(pool.device), pool.host));
}

TEST(AppendKvCuda, SkipsTokensOutsideThePool) {
  std::mt19937 rng(23);
  Pools pool = RandomPools(rng);
  const size_t row = size_t{kSeqs} * kHeads * kDim;
  const std::vector<BFloat16> k = RandomVector<BFloat16>(rng, row);
  const std::vector<BFloat16> v = RandomVector<BFloat16>(rng, row);
  std::vector<int32_t> pages(kSeqs), tokens(kSeqs);
  for (int32_t b = 0; b < kSeqs; ++b) {
    pages[b] = kLayout.window_page(b, b);
    tokens[b] = b % kTokens;
  }
  // Sequence 0 names a page past the pool, sequence 1 a token past its page: the
  // reference refuses them, the kernel writes only the other sequences.
  pages[0] = pool.Host().num_pages;
  tokens[1] = kTokens;
  EXPECT_FALSE(AppendKvRef(k, v, pages, tokens, pool.Host()).ok());
  const size_t skip = 2 * kHeads * kDim;
  ASSERT_TRUE(AppendKvRef(absl::MakeConstSpan(k).subspan(skip),
                          absl::MakeConstSpan(v).subspan(skip),
                          absl::MakeConstSpan(pages).subspan(2),
                          absl::MakeConstSpan(tokens).subspan(2), pool.Host())
                  .ok());
  AppendOnTheGpu(k, v, pages, tokens, pool);
  EXPECT_TRUE(SameBits(Download(pool.device), pool.host));
}

TEST(CopyWordsCuda, CopiesEveryWordAndRefusesMismatchedSizes) {
  std::mt19937 rng(5);
  std::uniform_int_distribution<int32_t> word;
  std::vector<int32_t> src(300'007);  // not a multiple of any block size
  for (int32_t& w : src) w = word(rng);
  const DeviceBuffer from = Must(DeviceBuffer::Upload<int32_t>(src));
  DeviceBuffer to = Must(DeviceBuffer::Allocate(src.size() * sizeof(int32_t)));
  Must(to.Poison());
  auto stream = Must(CudaStream::Create());
  Must(kernels::DeviceSynchronize());  // Poison runs on the legacy stream
  Must(CopyWordsCuda(to.span<int32_t>(), from.span<const int32_t>(), stream.get()));
  Must(stream.Synchronize());
  std::vector<int32_t> got(src.size());
  Must(to.Download(absl::MakeSpan(got)));
  EXPECT_EQ(got, src);
  EXPECT_EQ(CopyWordsCuda(to.span<int32_t>().subspan(1), from.span<const int32_t>(),
                          stream.get())
                .code(),
            absl::StatusCode::kInvalidArgument);
  // A stamp (or a gate) without the step it writes (or compares with) is refused.
  int32_t stamp = -1;
  GateHold no_step;
  no_step.stamp = &stamp;
  EXPECT_EQ(CopyWordsCuda(to.span<int32_t>(), from.span<const int32_t>(), stream.get(),
                          no_step)
                .code(),
            absl::StatusCode::kInvalidArgument);
}

// A marker buffer stays zero while `waiter` is held at the gate, and is filled once
// the gate opens.
bool MarkerWritten(const DeviceBuffer& marker) {
  const std::vector<BFloat16> got = Download(marker);
  for (BFloat16 x : got) {
    if (x.bits != 0) return true;
  }
  return false;
}

// A gate and its abort word in pinned host memory, as the decoder keeps them; both
// start shut.
struct HostGate {
  kernels::PinnedBuffer words = Must(kernels::PinnedBuffer::Allocate(2 * sizeof(uint32_t)));
  uint32_t* word = words.span<uint32_t>().data();
  uint32_t* abort = words.span<uint32_t>().data() + 1;
  HostGate() { *word = *abort = 0; }
};

// With a hold just enqueued on `waiter`: fills `marker` behind it, checks `held_ms`
// later that the fill has not run (`what` says what the hold failed to do if it did),
// then calls `open` and checks the fill has run once the stream drains.
void ExpectHeldUntilOpened(const CudaStream& waiter, const DeviceBuffer& marker,
                           int held_ms, const std::string& what,
                           const std::function<void()>& open) {
  ASSERT_TRUE(FillUniformCuda(marker.span<BFloat16>(), 1, 1.0f, waiter.get()).ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(held_ms));
  EXPECT_FALSE(MarkerWritten(marker)) << what;
  open();
  ASSERT_TRUE(waiter.Synchronize().ok());
  EXPECT_TRUE(MarkerWritten(marker));
}

uint32_t DeviceWord(const DeviceBuffer& observed) {
  uint32_t word = 0;
  EXPECT_TRUE(observed.CopyToHost(&word, sizeof(word)).ok());
  return word;
}

TEST(Gates, AWaitingStreamRunsOnlyOnceTheHostOpensTheGate) {
  HostGate gate;
  auto marker = Must(DeviceBuffer::Allocate(4096));
  auto step = Must(DeviceBuffer::Upload<int32_t>(std::vector<int32_t>{3}));
  auto waited = Must(DeviceBuffer::Allocate(sizeof(uint64_t)));
  auto observed = Must(DeviceBuffer::Allocate(sizeof(uint32_t)));
  ASSERT_TRUE(marker.Zero().ok());
  ASSERT_TRUE(waited.Zero().ok());
  ASSERT_TRUE(observed.Zero().ok());
  Must(kernels::DeviceSynchronize());
  auto waiter = Must(CudaStream::Create());
  OpenGate(gate.word, 4, 1);  // below the awaited 3 + 2
  ASSERT_TRUE(WaitGate({gate.word, step.span<int32_t>().data(), 2,
                        waited.span<unsigned long long>().data(), gate.abort,
                        observed.span<uint32_t>().data()},
                       waiter.get())
                  .ok());
  ExpectHeldUntilOpened(waiter, marker, 100, "the waiting stream ran past a closed gate",
                        [&] { OpenGate(gate.word, 5, 0); });
  EXPECT_EQ(DeviceWord(observed), GateWord(5, 0)) << "the word the hold passed on";
  uint64_t waited_ns = 0;
  ASSERT_TRUE(waited.CopyToHost(&waited_ns, sizeof(waited_ns)).ok());
  EXPECT_GE(waited_ns, 90'000'000u) << "the wait lasted the 100 ms the gate was shut";
}

// A hold with a signal word also passes once that word opens, and passes it on; with
// both words open the signal's wins (it names a slot that landed); with the signal
// shut, a host word opened far past (after an error) is passed on. In the decoder the
// signal word is device memory the kvservice (or the GPU) writes; here a second pinned
// word stands in for it, written by this thread: in this test's process every stream
// shares one work queue (kEager), so a copy into device memory would queue behind the
// held stream.
TEST(Gates, ASignalWordOpensTheGateToo) {
  HostGate gate, signal;
  auto marker = Must(DeviceBuffer::Allocate(4096));
  auto step = Must(DeviceBuffer::Upload<int32_t>(std::vector<int32_t>{3}));
  auto observed = Must(DeviceBuffer::Allocate(sizeof(uint32_t)));
  ASSERT_TRUE(marker.Zero().ok());
  ASSERT_TRUE(observed.Zero().ok());
  Must(kernels::DeviceSynchronize());
  auto waiter = Must(CudaStream::Create());
  OpenGate(gate.word, 4, 1);    // below the awaited 3 + 2
  OpenGate(signal.word, 4, 0);  // a stale signal
  GateHold hold{gate.word, step.span<int32_t>().data(), 2, nullptr, gate.abort,
                observed.span<uint32_t>().data()};
  hold.signal = signal.word;
  ASSERT_TRUE(WaitGate(hold, waiter.get()).ok());
  ExpectHeldUntilOpened(waiter, marker, 100, "the waiting stream ran past two shut words",
                        [&] { OpenGate(signal.word, 5, 1); });
  EXPECT_EQ(DeviceWord(observed), GateWord(5, 1)) << "the signal's word, naming its slot";

  OpenGate(gate.word, 5);  // both open: the signal's word, naming its slot, is passed on
  ASSERT_TRUE(WaitGate(hold, waiter.get()).ok());
  ASSERT_TRUE(waiter.Synchronize().ok());
  EXPECT_EQ(DeviceWord(observed), GateWord(5, 1));

  OpenGate(signal.word, 4, 0);  // the recall failed: its signal stays shut
  OpenGate(gate.word, 5 + kGateFarPast);
  ASSERT_TRUE(WaitGate(hold, waiter.get()).ok());
  ASSERT_TRUE(waiter.Synchronize().ok());
  EXPECT_EQ(DeviceWord(observed), GateWord(5 + kGateFarPast)) << "the host's word, no slot";
}

// The stall report's way out: the abort word lets a hold pass on a shut gate, and the
// word it passed on still shows the gate shut (so nothing is applied).
TEST(Gates, TheAbortWordLetsAHoldPassOnAShutGate) {
  HostGate gate;
  auto marker = Must(DeviceBuffer::Allocate(4096));
  auto step = Must(DeviceBuffer::Upload<int32_t>(std::vector<int32_t>{8}));
  auto observed = Must(DeviceBuffer::Allocate(sizeof(uint32_t)));
  ASSERT_TRUE(marker.Zero().ok());
  Must(kernels::DeviceSynchronize());
  auto waiter = Must(CudaStream::Create());
  OpenGate(gate.word, 7, 1);
  ASSERT_TRUE(WaitGate({gate.word, step.span<int32_t>().data(), 0, nullptr, gate.abort,
                        observed.span<uint32_t>().data()},
                       waiter.get())
                  .ok());
  ExpectHeldUntilOpened(waiter, marker, 50, "the waiting stream ran past a closed gate",
                        [&] { __atomic_store_n(gate.abort, 1u, __ATOMIC_RELEASE); });
  EXPECT_EQ(GateValue(DeviceWord(observed)), 7u);
}

// The host's bounded wait (CudaEvent::WaitFor, what the decoder waits with): a stream
// held at a shut gate makes it end with DEADLINE_EXCEEDED, not hang; once the gate
// opens, the same event completes.
TEST(Gates, AHostWaitOnAHeldStreamEndsAtItsLimit) {
  HostGate gate;
  auto step = Must(DeviceBuffer::Upload<int32_t>(std::vector<int32_t>{1}));
  auto waiter = Must(CudaStream::Create());
  auto done = Must(kernels::CudaEvent::Create(/*timing=*/false));
  ASSERT_TRUE(WaitGate({gate.word, step.span<int32_t>().data(), 0, nullptr}, waiter.get()).ok());
  ASSERT_TRUE(done.Record(waiter.get()).ok());
  const auto start = std::chrono::steady_clock::now();
  const absl::Status held = done.WaitFor(absl::Milliseconds(200));
  const auto waited = std::chrono::steady_clock::now() - start;
  EXPECT_EQ(held.code(), absl::StatusCode::kDeadlineExceeded) << held;
  EXPECT_GE(waited, std::chrono::milliseconds(200));
  EXPECT_LT(waited, std::chrono::seconds(5));
  OpenGate(gate.word, 1);
  EXPECT_TRUE(done.WaitFor(absl::Seconds(10)).ok());
}

// Both words, the pinned one and the device one, open; or neither.
TEST(Gates, OpenGateIfNoneOpensOnlyWhenNothingIsFlagged) {
  HostGate gate;
  auto step = Must(DeviceBuffer::Upload<int32_t>(std::vector<int32_t>{6}));
  auto signal = Must(DeviceBuffer::Allocate(sizeof(uint32_t)));
  ASSERT_TRUE(signal.Zero().ok());
  Must(kernels::DeviceSynchronize());
  auto stream = Must(CudaStream::Create());
  for (int32_t flagged : {3, 0}) {
    auto count = Must(DeviceBuffer::Upload<int32_t>(std::vector<int32_t>{flagged}));
    ASSERT_TRUE(OpenGateIfNone({count.span<int32_t>().data(), gate.word,
                                step.span<int32_t>().data(), 1, signal.span<uint32_t>().data()},
                               stream.get())
                    .ok());
    ASSERT_TRUE(stream.Synchronize().ok());
    const uint32_t want = flagged == 0 ? GateWord(7) : 0u;
    EXPECT_EQ(*gate.word, want) << flagged << " flagged";
    EXPECT_EQ(DeviceWord(signal), want) << flagged << " flagged: the device word";
  }
}

// ApplyPublishedCuda against ApplyRecallRef of the slot the observed word names: slot
// 1, then slot 0, are applied; a word naming no slot, or publishing another step's
// value, applies nothing.
TEST(ApplyPublishedCuda, AppliesTheSlotTheGatePublishedForThisStep) {
  std::mt19937 rng(31);
  Pools pool = RandomPools(rng);
  const int32_t lists = kSeqs * kHeads, k = kLayout.selected;
  const size_t slot_elems = size_t{lists} * k * 2 * kTokens * kDim;
  const std::vector<BFloat16> slot0 = RandomVector<BFloat16>(rng, slot_elems);
  const std::vector<BFloat16> slot1 = RandomVector<BFloat16>(rng, slot_elems);
  const auto [pages, slots, counts] = RandomDiff(rng, 1);
  std::vector<int32_t> resident(lists * kLayout.capacity(), -1);
  const DeviceBuffer d_slot0 = kernels::Up(slot0), d_slot1 = kernels::Up(slot1);
  const DeviceBuffer d_pages = kernels::Up(pages), d_slots = kernels::Up(slots);
  const DeviceBuffer d_counts = kernels::Up(counts);
  DeviceBuffer d_resident = kernels::Up(resident);
  auto step = Must(DeviceBuffer::Upload<int32_t>(std::vector<int32_t>{20}));
  auto observed = Must(DeviceBuffer::Allocate(sizeof(uint32_t)));
  auto stream = Must(CudaStream::Create());
  const RecallDiff diff{d_pages.span<int32_t>(), d_slots.span<int32_t>(),
                        d_counts.span<int32_t>()};
  const GateHold held{nullptr, step.span<int32_t>().data(), 1, nullptr, nullptr,
                      observed.span<uint32_t>().data()};
  // (word, the slot it should apply: -1 none)
  const std::pair<uint32_t, int> cases[] = {{GateWord(21, 1), 1}, {GateWord(21, -1), -1},
                                            {GateWord(20, 0), -1}, {GateWord(21, 0), 0}};
  for (const auto& [word, applied] : cases) {
    ASSERT_TRUE(observed.CopyFromHost(&word, sizeof(word)).ok());
    if (applied >= 0) {
      ASSERT_TRUE(ApplyRecallRef(applied == 0 ? slot0 : slot1, {pages, slots, counts}, {},
                                 pool.Host(), kLayout, absl::MakeSpan(resident))
                      .ok());
    }
    ASSERT_TRUE(ApplyPublishedCuda(held, {d_slot0.span<const BFloat16>(),
                                          d_slot1.span<const BFloat16>()},
                                   diff, {}, pool.Device(), kLayout,
                                   d_resident.span<int32_t>(), stream.get())
                    .ok());
    ASSERT_TRUE(stream.Synchronize().ok());
    ExpectPoolAndResidentMatch(pool, d_resident, resident, absl::StrCat("word ", word));
  }
  EXPECT_EQ(ApplyPublishedCuda({}, {d_slot0.span<const BFloat16>(),
                                    d_slot1.span<const BFloat16>()},
                               diff, {}, pool.Device(), kLayout, d_resident.span<int32_t>(),
                               stream.get())
                .code(),
            absl::StatusCode::kInvalidArgument);
}

// The correction point against kernels' similarity reference: with some heads moved,
// the same flags and count, the flagged and unflagged head masks, and the gate left
// shut; with none moved, the gate open at step + 1. Flags and count in pinned host
// memory, as the decoder keeps them. The shapes spread the rows over one block, over
// 16 (Llama-3.1-8B's GQA at batch 16), and over blocks of fewer rows (a group of 512
// query heads); each runs three times on one tally, which every launch must leave zero.
TEST(PublishCorrectionCuda, FlagsMasksAndGateInOneLaunch) {
  struct Shape {
    int32_t seqs, hq, hkv, dim;
  };
  for (const Shape& shape : {Shape{3, 8, 2, 128}, Shape{16, 32, 8, 128}, Shape{3, 1024, 2, 64}}) {
    SCOPED_TRACE(testing::Message() << shape.seqs << " x " << shape.hq << "/" << shape.hkv
                                    << " heads of " << shape.dim);
    const int32_t rows = shape.seqs * shape.hkv, group = shape.hq / shape.hkv;
    std::mt19937 rng(41 + shape.seqs);
    const std::vector<BFloat16> q =
        RandomVector<BFloat16>(rng, size_t(shape.seqs) * shape.hq * shape.dim);
    std::vector<BFloat16> moved = q;
    std::normal_distribution<float> noise(0.0f, 1.0f);
    for (size_t i = 0; i < moved.size(); ++i) {  // every other KV head's group moves a lot
      if ((i / (size_t(shape.dim) * group)) % 2 == 1) {
        moved[i] = kernels::ToBFloat16(kernels::ToFloat(moved[i]) + 2.0f * noise(rng));
      }
    }
    const DeviceBuffer d_q = kernels::Up(q);
    auto step = Must(DeviceBuffer::Upload<int32_t>(std::vector<int32_t>{12}));
    HostGate gate;
    auto similarity = Must(DeviceBuffer::Allocate(rows * sizeof(float)));
    auto host = Must(kernels::PinnedBuffer::Allocate(rows + 64));  // count | flags
    auto tally = Must(DeviceBuffer::Allocate(2 * sizeof(int32_t)));
    ASSERT_TRUE(tally.Zero().ok());
    auto signal = Must(DeviceBuffer::Allocate(sizeof(uint32_t)));
    auto stream = Must(CudaStream::Create());
    for (bool any_moved : {true, false, true}) {
      const std::vector<BFloat16>& prev = any_moved ? moved : q;
      const DeviceBuffer d_prev = kernels::Up(prev);
      *gate.word = 0;
      int32_t* count = host.span<int32_t>().data();
      uint8_t* flags = host.span<uint8_t>().data() + 4;
      std::fill_n(flags, rows, uint8_t{7});
      *count = -1;
      DeviceBuffer masks = kernels::Up(std::vector<uint8_t>(2 * rows, 7));
      const CorrectionCheck check{d_q.span<const BFloat16>(),
                                  d_prev.span<const BFloat16>(),
                                  shape.hq,
                                  shape.hkv,
                                  shape.dim,
                                  0.8f,
                                  {similarity.span<float>(), {flags, size_t(rows)}, {count, 1}},
                                  masks.span<uint8_t>(),
                                  tally.span<int32_t>()};
      ASSERT_TRUE(signal.Zero().ok());
      Must(kernels::DeviceSynchronize());
      ASSERT_TRUE(PublishCorrectionCuda(check, step.span<int32_t>().data(), gate.word,
                                        signal.span<uint32_t>().data(), 1, stream.get())
                      .ok());
      ASSERT_TRUE(stream.Synchronize().ok());
      std::vector<float> want_sim(rows);
      std::vector<uint8_t> want_flags(rows);
      std::vector<int32_t> want_count(1);
      ASSERT_TRUE(kernels::QuerySimilarityRef<BFloat16>(
                      q, prev, shape.hq, shape.hkv, shape.dim, 0.8f,
                      {absl::MakeSpan(want_sim), absl::MakeSpan(want_flags),
                       absl::MakeSpan(want_count)})
                      .ok());
      EXPECT_EQ(std::vector<uint8_t>(flags, flags + rows), want_flags);
      EXPECT_EQ(*count, want_count[0]);
      EXPECT_EQ(*count > 0, any_moved);
      std::vector<uint8_t> want_masks = want_flags;
      for (uint8_t f : want_flags) want_masks.push_back(f == 0 ? 1 : 0);
      std::vector<uint8_t> got_masks(want_masks.size());
      ASSERT_TRUE(masks.Download(absl::MakeSpan(got_masks)).ok());
      EXPECT_EQ(got_masks, want_masks);
      EXPECT_EQ(*gate.word, any_moved ? 0u : GateWord(13));
      EXPECT_EQ(DeviceWord(signal), any_moved ? 0u : GateWord(13)) << "the device word";
      std::vector<int32_t> left(2, -1);
      ASSERT_TRUE(tally.Download(absl::MakeSpan(left)).ok());
      EXPECT_EQ(left, (std::vector<int32_t>{0, 0}));
    }
  }
}

// AppendKvCuda and CopyWordsCuda holding a gate: their own work is done (and the
// copy's stamp written), but the stream goes no further until the gate opens.
TEST(Gates, LaunchesThatHoldAGateStopTheStreamAfterTheirWork) {
  HostGate gate;
  auto step = Must(DeviceBuffer::Upload<int32_t>(std::vector<int32_t>{9}));
  auto waiter = Must(CudaStream::Create());
  std::mt19937 rng(8);
  std::vector<int32_t> words(4099);
  for (int32_t& w : words) w = static_cast<int32_t>(rng());
  const DeviceBuffer src = Must(DeviceBuffer::Upload<int32_t>(words));
  DeviceBuffer dst = Must(DeviceBuffer::Allocate(words.size() * sizeof(int32_t)));
  Pools pool = RandomPools(rng);
  auto stamp_host = Must(kernels::PinnedBuffer::Allocate(sizeof(int32_t)));
  int32_t* stamp = stamp_host.span<int32_t>().data();
  const std::vector<BFloat16> k = RandomVector<BFloat16>(rng, size_t{kSeqs} * kHeads * kDim);
  const std::vector<BFloat16> v = RandomVector<BFloat16>(rng, k.size());
  const std::vector<int32_t> pages = {1, kLayout.pages_per_seq() + 3, 2 * kLayout.pages_per_seq()};
  const std::vector<int32_t> tokens = {0, 17, 31};
  const DeviceBuffer d_k = kernels::Up(k), d_v = kernels::Up(v);
  const DeviceBuffer d_pages = kernels::Up(pages), d_tokens = kernels::Up(tokens);
  ASSERT_TRUE(AppendKvRef(k, v, pages, tokens, pool.Host()).ok());
  for (int which = 0; which < 2; ++which) {
    auto marker = Must(DeviceBuffer::Allocate(4096));
    *gate.word = 0;
    ASSERT_TRUE(marker.Zero().ok());
    ASSERT_TRUE(dst.Zero().ok());
    Must(kernels::DeviceSynchronize());
    GateHold hold{gate.word, step.span<int32_t>().data(), 1, nullptr};
    *stamp = -1;
    if (which == 0) hold.stamp = stamp;  // the copy also stamps before it holds
    ASSERT_TRUE((which == 0 ? CopyWordsCuda(dst.span<int32_t>(), src.span<const int32_t>(),
                                            waiter.get(), hold)
                            : AppendKvCuda(d_k.span<BFloat16>(), d_v.span<BFloat16>(),
                                           d_pages.span<int32_t>(), d_tokens.span<int32_t>(),
                                           pool.Device(), waiter.get(), hold))
                    .ok());
    ExpectHeldUntilOpened(waiter, marker, 50,
                          absl::StrCat("launch ", which, " did not hold the gate"), [&] {
                            EXPECT_EQ(__atomic_load_n(stamp, __ATOMIC_ACQUIRE),
                                      which == 0 ? 9 : -1)
                                << "the stamp is written before the hold, and only when "
                                   "asked for";
                            OpenGate(gate.word, 10);
                          });
    if (which == 0) {
      std::vector<int32_t> copied(words.size());
      ASSERT_TRUE(dst.Download(absl::MakeSpan(copied)).ok());
      EXPECT_EQ(copied, words) << "the copy's own work";
    }
  }
  EXPECT_TRUE(SameBits(Download(pool.device), pool.host)) << "the append's own work";
}

}  // namespace
}  // namespace freekv::gpu
