// CUDA launchers of resident_ops.h. The copies move 16-byte vectors (head_dim * 2 bytes
// must be a multiple of 16).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "absl/strings/str_cat.h"
#include "kernels/cuda_check.cuh"
#include "kernels/similarity_block.cuh"
#include "worker/freekv_gpu/resident_ops.h"
#include "worker/freekv_gpu/resident_ops_checks.h"

namespace freekv::gpu {
namespace {

using kernels::CudaStatus;
using kernels::LaunchStatus;

constexpr int kThreads = 256;

struct PoolArgs {
  uint4* k;
  uint4* v;
  int64_t page_stride;  // vectors
  int32_t page_tokens, num_kv_heads, vecs_per_row, num_pages;
};

PoolArgs ToArgs(const kernels::PagedKv<BFloat16>& pool) {
  const int32_t per_vec = 16 / sizeof(BFloat16);
  return {reinterpret_cast<uint4*>(pool.k), reinterpret_cast<uint4*>(pool.v),
          pool.page_stride / per_vec, pool.page_tokens, pool.num_kv_heads,
          pool.head_dim / per_vec, pool.num_pages};
}

absl::Status CheckVectorisable(const kernels::PagedKv<BFloat16>& pool) {
  if ((pool.head_dim * sizeof(BFloat16)) % 16 != 0 || pool.page_stride % 8 != 0 ||
      reinterpret_cast<uintptr_t>(pool.k) % 16 != 0 ||
      reinterpret_cast<uintptr_t>(pool.v) % 16 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("pool rows must be whole 16-byte vectors; head_dim ", pool.head_dim));
  }
  return absl::OkStatus();
}

// Opens `gate` and its device word `signal` (when non-null) to `value` from the
// device, naming no slot, and makes both visible to the host and to holds on other
// streams at once.
__device__ __forceinline__ void OpenGateOnDevice(uint32_t* gate, uint32_t* signal,
                                                 uint32_t value) {
  *reinterpret_cast<volatile uint32_t*>(gate) = GateWord(value);
  if (signal != nullptr) *reinterpret_cast<volatile uint32_t*>(signal) = GateWord(value);
  __threadfence_system();
}

// *stamp = *step, after a system-wide fence: the host thread that sees the stamp
// (acquire) sees everything this launch and the stream's earlier work wrote.
__device__ __forceinline__ void StampOnDevice(int32_t* stamp, const int32_t* step) {
  __threadfence_system();
  *reinterpret_cast<volatile int32_t*>(stamp) = *step;
}

// Which slot an apply reads: slot0 (the host knew it), or the slot a published gate
// word names (ApplyPublishedCuda); null when it names none.
struct SlotPick {
  const uint4* slot0;
  const uint4* slot1;
  const uint32_t* observed;  // null: slot0
  const int32_t* step;
  int32_t offset;
};

__device__ __forceinline__ const uint4* PickSlot(const SlotPick& pick) {
  if (pick.observed == nullptr) return pick.slot0;
  const uint32_t word = *pick.observed;
  if (GateValue(word) != static_cast<uint32_t>(*pick.step + pick.offset)) return nullptr;
  const int32_t slot = GateSlot(word);
  return slot == 0 ? pick.slot0 : slot == 1 ? pick.slot1 : nullptr;
}

// One warp per diff entry (list, j): blockIdx.x = list, j = blockIdx.y * kApplyWarps +
// the warp. Lane 0 alone reads the slot's word and the diff, and tells the warp what to
// copy, if anything; it issues the diff's four reads together. The decoder passes the
// diff's device copy (DiffSet::device): read from pinned host memory, each warp's reads
// crossed PCIe, behind the recalls' copies on the same link. A warp, not a block, per
// 16 KiB entry: the apply runs beside the decode stream's kernels, and blocks that
// mostly wait would take the SMs' thread slots from them (at batch 4 a block per entry
// asked for every slot of the H100).
constexpr int kApplyWarps = 8;
// 16-byte vectors each lane loads before it stores any: one after the other, a warp
// waited out a device-memory latency per 512 bytes.
constexpr int kApplyInFlight = 8;

__global__ void __launch_bounds__(kApplyWarps * 32)
    ApplyKernel(SlotPick pick, const int32_t* pages, const int32_t* slots,
                const int32_t* counts, const uint8_t* flags, bool unflagged, PoolArgs pool,
                ResidentLayout layout, int32_t* resident) {
  const int32_t list = blockIdx.x, k = layout.selected;
  const int32_t capacity = layout.selected + layout.cache;
  const int32_t lane = threadIdx.x % 32;
  const int32_t j = blockIdx.y * kApplyWarps + threadIdx.x / 32;
  if (j >= k) return;
  const uint4* slot = nullptr;
  int32_t s = -1, logical = 0;
  if (lane == 0) {
    slot = PickSlot(pick);
    if (slot != nullptr) {
      const int32_t count = counts[list];
      const bool flagged = flags != nullptr && flags[list] != 0;
      const int32_t entry_slot = slots[list * k + j];
      const int32_t entry_page = pages[list * k + j];
      if (j < count && (flags == nullptr || flagged != unflagged)) {
        s = entry_slot;
        logical = entry_page;
      }
    }
  }
  s = __shfl_sync(0xffffffffu, s, 0);
  // the select kernel never writes s >= capacity
  if (s < 0 || s >= capacity) return;
  slot = reinterpret_cast<const uint4*>(
      __shfl_sync(0xffffffffu, reinterpret_cast<uintptr_t>(slot), 0));
  const int32_t seq = list / pool.num_kv_heads, head = list % pool.num_kv_heads;
  // ResidentLayout::selected_page, spelled out: the header is host-only C++.
  const int64_t page =
      int64_t{seq} * (layout.sink + capacity + layout.window) + layout.sink + s;
  const int32_t half = pool.page_tokens * pool.vecs_per_row;
  const uint4* src = slot + (int64_t{list} * k + j) * 2 * half;
  for (int32_t first = lane; first < 2 * half; first += 32 * kApplyInFlight) {
    uint4 vecs[kApplyInFlight];
#pragma unroll
    for (int u = 0; u < kApplyInFlight; ++u) {
      const int32_t i = first + 32 * u;
      if (i < 2 * half) vecs[u] = src[i];
    }
#pragma unroll
    for (int u = 0; u < kApplyInFlight; ++u) {
      const int32_t i = first + 32 * u;
      if (i >= 2 * half) break;
      const int32_t within = i % half;
      const int32_t t = within / pool.vecs_per_row, vec = within % pool.vecs_per_row;
      const int64_t dst = page * pool.page_stride +
                          int64_t{t * pool.num_kv_heads + head} * pool.vecs_per_row + vec;
      (i < half ? pool.k : pool.v)[dst] = vecs[u];
    }
  }
  if (lane == 0) resident[list * capacity + s] = logical;
}

// Holds the calling thread, and so its launch and stream, until the gate reaches
// `value` or the abort word is set (HoldAtGate: thread 0 of block 0; the launch ends
// when every thread has), adding the time it waited to *waited_ns and writing the word
// it passed on to *observed (each when non-null). A spinning kernel rather than the
// driver's cuStreamWaitValue32: a blocked stream memory operation stalls the hardware
// queue it sits in, which other streams may share, and on the H100 that deadlocked; a
// running kernel blocks only its own stream. It sleeps between reads (the gate is
// pinned host memory: each read crosses PCIe).
__device__ void HoldUntil(const GateHold& hold, uint32_t value) {
  const volatile uint32_t* word = hold.gate;
  const volatile uint32_t* signal = hold.signal;
  const volatile uint32_t* abort = hold.abort;
  auto reached = [&](uint32_t w) { return static_cast<int32_t>(GateValue(w) - value) >= 0; };
  // The signal word when it opened, else the host word (GateHold::signal says why).
  auto read = [&]() {
    if (signal != nullptr) {
      const uint32_t s = *signal;
      if (reached(s)) return s;
    }
    return *word;
  };
  auto open = [&](uint32_t w) { return reached(w) || (abort != nullptr && *abort != 0); };
  uint32_t seen = read();
  if (!open(seen)) {
    uint64_t start, end;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
    do {
      __nanosleep(256);
      seen = read();
    } while (!open(seen));
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(end));
    if (hold.waited_ns != nullptr) {
      atomicAdd(hold.waited_ns, static_cast<unsigned long long>(end - start));
    }
  }
  // What the host wrote before the gate (the slot's bytes, landed before the reply) is
  // read only after this.
  __threadfence_system();
  if (hold.observed != nullptr) *hold.observed = seen;
}

__device__ void HoldAtGate(const GateHold& hold) {
  if (blockIdx.x != 0 || threadIdx.x != 0) return;
  if (hold.stamp != nullptr) StampOnDevice(hold.stamp, hold.step);
  if (hold.gate != nullptr) HoldUntil(hold, static_cast<uint32_t>(*hold.step + hold.offset));
}

__global__ void WaitGateKernel(GateHold hold) { HoldAtGate(hold); }

__global__ void AppendKernel(const uint4* k, const uint4* v, const int32_t* pages,
                             const int32_t* tokens, PoolArgs pool, GateHold hold) {
  const int32_t b = blockIdx.x, row = pool.num_kv_heads * pool.vecs_per_row;
  // A token outside the pool is skipped (AppendKvRef refuses it), never written past
  // the pool; the gate is held all the same.
  const bool inside = pages[b] >= 0 && pages[b] < pool.num_pages && tokens[b] >= 0 &&
                      tokens[b] < pool.page_tokens;
  const int64_t dst = pages[b] * pool.page_stride + int64_t{tokens[b]} * row;
  for (int32_t i = threadIdx.x; inside && i < 2 * row; i += blockDim.x) {
    if (i < row) {
      pool.k[dst + i] = k[int64_t{b} * row + i];
    } else {
      pool.v[dst + i - row] = v[int64_t{b} * row + i - row];
    }
  }
  HoldAtGate(hold);
}

__global__ void CopyWordsKernel(int32_t* dst, const int32_t* src, int64_t n,
                                GateHold hold) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    dst[i] = src[i];
  }
  HoldAtGate(hold);
}

__global__ void StampKernel(int32_t* stamp, const int32_t* step) {
  StampOnDevice(stamp, step);
}

__global__ void OpenGateIfNoneKernel(GateIfNone open) {
  if (*open.num_flagged == 0) {
    OpenGateOnDevice(open.gate, open.signal, static_cast<uint32_t>(*open.step + open.offset));
  }
}

// The correction point over many blocks: kCheckRows rows each (fewer for groups so
// large that their cosines would not fit the block's chunk). The last block to finish
// (a device tally) publishes the count and opens the gate.
constexpr int kCheckThreads = 256;
constexpr int kCheckRows = 8;

int CheckRowsPerBlock(int32_t group) {
  return std::max(1, std::min(kCheckRows, kernels::kSimilarityChunk / group));
}

__global__ void __launch_bounds__(kCheckThreads)
    PublishCorrectionKernel(const __nv_bfloat16* q, const __nv_bfloat16* q_prev, int32_t rows,
                            int32_t group, int32_t head_dim, float tau, int32_t rows_per_block,
                            float* similarity, uint8_t* flags, int32_t* num_flagged,
                            uint8_t* masks, int32_t* tally, const int32_t* step,
                            uint32_t* gate, uint32_t* signal, int32_t offset) {
  __shared__ float cosines[kernels::kSimilarityChunk];
  __shared__ float scratch[32];
  const int32_t first = blockIdx.x * rows_per_block;
  const int32_t count = min(rows_per_block, rows - first);
  const float flagged = kernels::BlockSum(
      kernels::SimilarityRows(q, q_prev, first, count, group, head_dim, tau, similarity,
                              flags, cosines),
      scratch);
  // SimilarityRows synchronised the block after its similarity writes; the masks come
  // from the device copy, not the pinned flags.
  for (int r = threadIdx.x; r < count; r += blockDim.x) {
    const bool moved = similarity[first + r] < tau;
    masks[first + r] = moved ? 1 : 0;
    masks[rows + first + r] = moved ? 0 : 1;
  }
  if (threadIdx.x != 0) return;
  // tally[0]: flags so far, tally[1]: blocks done. The flags were fenced (system scope)
  // before the block sum; this block's add to the count is ordered before its add to
  // the blocks done, so the last block reads every block's count.
  atomicAdd(&tally[0], static_cast<int32_t>(flagged));
  __threadfence();
  if (atomicAdd(&tally[1], 1) != static_cast<int32_t>(gridDim.x) - 1) return;
  __threadfence();
  const int32_t total = atomicExch(&tally[0], 0);
  tally[1] = 0;  // the next launch starts from zero (launches on one stream never overlap)
  *num_flagged = total;
  __threadfence_system();
  if (total == 0) OpenGateOnDevice(gate, signal, static_cast<uint32_t>(*step + offset));
}

// splitmix64 of (seed, index) -> uniform in [-1, 1).
__device__ __forceinline__ float Uniform(uint64_t seed, uint64_t index) {
  uint64_t z = seed * 0x9E3779B97F4A7C15ull + index + 0x632BE59BD9B4E019ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return static_cast<float>(z >> 40) * (2.0f / 16777216.0f) - 1.0f;
}

__global__ void FillUniformKernel(__nv_bfloat16* data, int64_t n, uint64_t seed,
                                  float scale) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    data[i] = __float2bfloat16_rn(scale * Uniform(seed, i));
  }
}

// Element (pair, d) of a digest table: max row at pair * 2D + d, min row at + D.
__global__ void FillDigestsKernel(__nv_bfloat16* data, int64_t pairs_x_dim, int32_t dim,
                                  uint64_t seed) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < pairs_x_dim;
       i += int64_t{gridDim.x} * blockDim.x) {
    const float a = Uniform(seed, 2 * i), b = Uniform(seed, 2 * i + 1);
    const int64_t pair = i / dim, d = i % dim;
    data[pair * 2 * dim + d] = __float2bfloat16_rn(fmaxf(a, b));
    data[pair * 2 * dim + dim + d] = __float2bfloat16_rn(fminf(a, b));
  }
}

__global__ void DriftKernel(const __nv_bfloat16* base, float eps, const int32_t* seed_at,
                            __nv_bfloat16* out, int64_t n) {
  const uint64_t seed = static_cast<uint32_t>(*seed_at);
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    out[i] = __float2bfloat16_rn(__bfloat162float(base[i]) + eps * Uniform(seed, i));
  }
}

unsigned Blocks(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(blocks < 4096 ? (blocks > 0 ? blocks : 1) : 4096);
}

// Gates need eager module loading (resident_ops.h).
absl::Status CheckHold(const GateHold& hold) {
  static const bool eager = [] {
    const char* mode = getenv("CUDA_MODULE_LOADING");
    return mode != nullptr && std::string(mode) == "EAGER";
  }();
  if ((hold.gate != nullptr || hold.stamp != nullptr) && hold.step == nullptr) {
    return absl::InvalidArgumentError("a gate hold or a stamp needs the step it compares with");
  }
  if (hold.gate != nullptr && !eager) {
    return absl::FailedPreconditionError(
        "gates need CUDA_MODULE_LOADING=EAGER (call RequireEagerLoading() at the start of "
        "main): a kernel loaded lazily while a gate holds a stream deadlocks");
  }
  return absl::OkStatus();
}

absl::Status LaunchApply(const SlotPick& pick, size_t slot_elems, const RecallDiff& diff,
                         const HeadMask& heads, const kernels::PagedKv<BFloat16>& pool,
                         const ResidentLayout& layout, absl::Span<int32_t> resident,
                         cudaStream_t stream) {
  FREEKV_RETURN_IF_ERROR(CheckApplyShapes(slot_elems, diff, heads.flags.size(), pool,
                                          layout, resident.size()));
  FREEKV_RETURN_IF_ERROR(CheckVectorisable(pool));
  const dim3 grid(static_cast<unsigned>(diff.counts.size()),
                  (layout.selected + kApplyWarps - 1) / kApplyWarps);
  ApplyKernel<<<grid, kApplyWarps * 32, 0, stream>>>(
      pick, diff.pages.data(), diff.slots.data(), diff.counts.data(),
      heads.flags.empty() ? nullptr : heads.flags.data(), heads.unflagged, ToArgs(pool),
      layout, resident.data());
  return LaunchStatus("ApplyKernel");
}

}  // namespace

absl::Status ApplyRecallCuda(absl::Span<const BFloat16> slot, const RecallDiff& diff,
                             const HeadMask& heads, const kernels::PagedKv<BFloat16>& pool,
                             const ResidentLayout& layout, absl::Span<int32_t> resident,
                             cudaStream_t stream) {
  const auto* s = reinterpret_cast<const uint4*>(slot.data());
  return LaunchApply({s, s, nullptr, nullptr, 0}, slot.size(), diff, heads, pool, layout,
                     resident, stream);
}

absl::Status ApplyPublishedCuda(const GateHold& held,
                                const std::array<absl::Span<const BFloat16>, 2>& slots,
                                const RecallDiff& diff, const HeadMask& heads,
                                const kernels::PagedKv<BFloat16>& pool,
                                const ResidentLayout& layout, absl::Span<int32_t> resident,
                                cudaStream_t stream) {
  if (held.observed == nullptr || held.step == nullptr || slots[0].size() != slots[1].size()) {
    return absl::InvalidArgumentError(
        "ApplyPublishedCuda: the hold needs an observed word and a step, and the two "
        "slots one size");
  }
  return LaunchApply({reinterpret_cast<const uint4*>(slots[0].data()),
                      reinterpret_cast<const uint4*>(slots[1].data()), held.observed,
                      held.step, held.offset},
                     slots[0].size(), diff, heads, pool, layout, resident, stream);
}

absl::Status AppendKvCuda(absl::Span<const BFloat16> k, absl::Span<const BFloat16> v,
                          absl::Span<const int32_t> pages, absl::Span<const int32_t> tokens,
                          const kernels::PagedKv<BFloat16>& pool, cudaStream_t stream,
                          const GateHold& hold) {
  FREEKV_RETURN_IF_ERROR(
      CheckAppendShapes(k.size(), v.size(), pages.size(), tokens.size(), pool));
  FREEKV_RETURN_IF_ERROR(CheckVectorisable(pool));
  FREEKV_RETURN_IF_ERROR(CheckHold(hold));
  AppendKernel<<<static_cast<unsigned>(pages.size()), kThreads, 0, stream>>>(
      reinterpret_cast<const uint4*>(k.data()), reinterpret_cast<const uint4*>(v.data()),
      pages.data(), tokens.data(), ToArgs(pool), hold);
  return LaunchStatus("AppendKernel");
}

void RequireEagerLoading() { setenv("CUDA_MODULE_LOADING", "EAGER", 1); }

absl::Status WaitGate(const GateHold& hold, cudaStream_t stream) {
  if (hold.gate == nullptr) return absl::InvalidArgumentError("WaitGate: no gate");
  FREEKV_RETURN_IF_ERROR(CheckHold(hold));
  WaitGateKernel<<<1, 1, 0, stream>>>(hold);
  return LaunchStatus("WaitGateKernel");
}

absl::Status CopyWordsCuda(absl::Span<int32_t> dst, absl::Span<const int32_t> src,
                           cudaStream_t stream, const GateHold& hold) {
  if (dst.size() != src.size()) {
    return absl::InvalidArgumentError(absl::StrCat("CopyWordsCuda: ", src.size(),
                                                   " words into ", dst.size()));
  }
  FREEKV_RETURN_IF_ERROR(CheckHold(hold));
  CopyWordsKernel<<<Blocks(int64_t(src.size())), kThreads, 0, stream>>>(
      dst.data(), src.data(), int64_t(src.size()), hold);
  return LaunchStatus("CopyWordsKernel");
}

absl::Status StampCuda(int32_t* stamp, const int32_t* step, cudaStream_t stream) {
  StampKernel<<<1, 1, 0, stream>>>(stamp, step);
  return LaunchStatus("StampKernel");
}

absl::Status OpenGateIfNone(const GateIfNone& open, cudaStream_t stream) {
  if (open.num_flagged == nullptr) {
    return absl::InvalidArgumentError("OpenGateIfNone: no flag count");
  }
  OpenGateIfNoneKernel<<<1, 1, 0, stream>>>(open);
  return LaunchStatus("OpenGateIfNoneKernel");
}

absl::Status PublishCorrectionCuda(const CorrectionCheck& c, const int32_t* step,
                                   uint32_t* gate, uint32_t* signal, int32_t offset,
                                   cudaStream_t stream) {
  FREEKV_RETURN_IF_ERROR(kernels::CheckSimilarityShapes(
      c.q.size(), c.q_prev.size(), c.num_q_heads, c.num_kv_heads, c.head_dim, c.outputs));
  FREEKV_RETURN_IF_ERROR(kernels::CheckSize("masks", c.masks.size(), 2 * c.outputs.flags.size()));
  FREEKV_RETURN_IF_ERROR(kernels::CheckSize("tally", c.tally.size(), 2));
  const int32_t rows = static_cast<int32_t>(c.outputs.flags.size());
  const int32_t group = c.num_q_heads / c.num_kv_heads;
  const int32_t per_block = CheckRowsPerBlock(group);
  // At least one block, which publishes a count of 0 when there are no rows.
  const int32_t blocks = std::max(1, (rows + per_block - 1) / per_block);
  PublishCorrectionKernel<<<static_cast<unsigned>(blocks), kCheckThreads, 0, stream>>>(
      reinterpret_cast<const __nv_bfloat16*>(c.q.data()),
      reinterpret_cast<const __nv_bfloat16*>(c.q_prev.data()), rows, group, c.head_dim,
      c.tau, per_block, c.outputs.similarity.data(), c.outputs.flags.data(),
      c.outputs.num_flagged.data(), c.masks.data(), c.tally.data(), step, gate, signal,
      offset);
  return LaunchStatus("PublishCorrectionKernel");
}

absl::Status FillUniformCuda(absl::Span<BFloat16> data, uint64_t seed, float scale,
                             cudaStream_t stream) {
  FillUniformKernel<<<Blocks(data.size()), kThreads, 0, stream>>>(
      reinterpret_cast<__nv_bfloat16*>(data.data()), data.size(), seed, scale);
  return LaunchStatus("FillUniformKernel");
}

absl::Status FillDigestsCuda(absl::Span<BFloat16> digests, int32_t head_dim, uint64_t seed,
                             cudaStream_t stream) {
  if (head_dim <= 0 || digests.size() % (2 * size_t(head_dim)) != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "digests of ", digests.size(), " elements are not rows of 2 x ", head_dim));
  }
  const int64_t n = digests.size() / 2;
  FillDigestsKernel<<<Blocks(n), kThreads, 0, stream>>>(
      reinterpret_cast<__nv_bfloat16*>(digests.data()), n, head_dim, seed);
  return LaunchStatus("FillDigestsKernel");
}

absl::Status DriftCuda(absl::Span<const BFloat16> base, float eps, const int32_t* seed,
                       absl::Span<BFloat16> hidden, cudaStream_t stream) {
  FREEKV_RETURN_IF_ERROR(kernels::CheckSize("hidden", hidden.size(), base.size()));
  DriftKernel<<<Blocks(base.size()), kThreads, 0, stream>>>(
      reinterpret_cast<const __nv_bfloat16*>(base.data()), eps, seed,
      reinterpret_cast<__nv_bfloat16*>(hidden.data()), base.size());
  return LaunchStatus("DriftKernel");
}

}  // namespace freekv::gpu
