// The device-side bookkeeping of FreeKV's resident set on the GPU, beyond the kernels of
// kernels/: applying a recall that landed in a staging slot, appending the new token's
// K and V, and the "gates" that let the compute stream wait for a recall without the
// host waiting for the GPU.
//
// Resident layout (one per layer): sequence b owns pool pages
//   [b * pages_per_seq, (b + 1) * pages_per_seq) of an NHD pool (kernels/paged_kv.h):
//   first `sink` pages (attention sinks), then capacity() = selected + cache slots (the
//   pages recalled for each KV head: FreeKV keeps a separate copy per head, so head h
//   of slot s may hold a different logical page than head h' of the same slot), then
//   `window` pages used as a ring (logical page w in pool page sink + capacity + w %
//   window).
// resident [num_seqs][num_kv_heads][capacity] names the logical page each head's slot
// holds (-1: empty), as kernels/select.h's ResidentDiff expects.
// Each step attends `selected` of a head's slots. With cache == 0 those are all of
// them (slot j is the table's j-th selected page). With cache > 0 a head keeps up to
// `cache` more pages than it attends: a page that drops out of the top `selected` stays
// until a better-scored page needs its slot (the selection evicts the lowest-scored
// unselected page first), so a page that comes back needs no recall. The selection
// then names the slot of each page it attends (ResidentDiff::attend_slots), and the
// page table follows it (SelectedToTableCuda, generate_ops.h).
//
// Staging slot layout: the slice recalled for diff entry (b, h, j) sits at slice index
// (b * num_kv_heads + h) * selected + j, each slice [K|V][page_tokens][head_dim] (one
// (page, head) block of the kvservice's HND store). Fixed places, so the slot can be
// applied from the device-resident diff with no host-built list.
//
// Thread safety: stateless launchers; enqueue on one stream per buffer set.
#ifndef FREEKV_WORKER_FREEKV_GPU_RESIDENT_OPS_H_
#define FREEKV_WORKER_FREEKV_GPU_RESIDENT_OPS_H_

#include <array>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "kernels/bf16.h"
#include "kernels/cuda_fwd.h"
#include "kernels/paged_kv.h"
#include "kernels/similarity.h"

namespace freekv::gpu {

using kernels::BFloat16;

struct ResidentLayout {
  int32_t sink = 16;
  int32_t selected = 32;
  int32_t window = 16;
  int32_t cache = 0;  // slots per (sequence, KV head) beyond the attended `selected`

  int32_t capacity() const { return selected + cache; }
  int32_t pages_per_seq() const { return sink + capacity() + window; }
  int32_t selected_page(int32_t seq, int32_t slot) const {
    return seq * pages_per_seq() + sink + slot;
  }
  int32_t window_page(int32_t seq, int64_t logical_page) const {
    return seq * pages_per_seq() + sink + capacity() +
           static_cast<int32_t>(logical_page % window);
  }
};
// INVALID_ARGUMENT unless sink >= 0, selected > 0, window > 0 and cache >= 0.
absl::Status CheckResidentLayout(const ResidentLayout& layout);

// A diff as kernels::GroupSelectCuda writes it ([num_seqs][num_kv_heads][selected]
// pages and slots, [num_seqs][num_kv_heads] counts), read-only here.
struct RecallDiff {
  absl::Span<const int32_t> pages;
  absl::Span<const int32_t> slots;
  absl::Span<const int32_t> counts;
};

// Which (sequence, KV head) lists an operation covers: every one when `flags` is
// empty; otherwise those whose flag byte is non-zero, or with `unflagged` those whose
// flag is zero. freekv splits one selection's diff so: the flagged heads are corrected
// at once, the others are recalled speculatively for the next step.
struct HeadMask {
  absl::Span<const uint8_t> flags;
  bool unflagged = false;

  bool covers(size_t list) const {
    return flags.empty() || (flags[list] != 0) != unflagged;
  }
};

// A gate to hold a stream at (WaitGate, below), and one to open when nothing is flagged
// (OpenGateIfNone).
struct GateHold {
  const uint32_t* gate = nullptr;  // null: no gate to hold
  const int32_t* step = nullptr;
  int32_t offset = 0;
  unsigned long long* waited_ns = nullptr;
  // A word that, once non-zero, lets every hold pass (a stalled decode lets its stream
  // drain); may be null.
  const uint32_t* abort = nullptr;
  // Device memory: the gate word the hold passed on, for ApplyPublishedCuda; may be null.
  uint32_t* observed = nullptr;
  // When non-null: set to *step (StampCuda's work, fence first) just before the hold,
  // after the stream's earlier work. freekv's correction stamps its diff so, on the
  // launch that then waits for the recall the stamp lets the host send.
  int32_t* stamp = nullptr;
  // Device memory, may be null: a second word that opens the same gate, written by the
  // kvservice's copy stream right behind a recall's bytes (RecallOptions::Signal), so
  // that no host thread stands between the copies and the hold, and by the GPU when it
  // opens the gate itself (GateIfNone::signal). The hold passes on whichever word opens
  // first, and reads this one first: it stays on the GPU, while each read of the
  // pinned word crosses PCIe, behind the recalls' copies on the same link. When both
  // are open this one wins: a slot it names has landed (after an error the host opens
  // gates far past, to apply nothing; a slot that did land is applied all the same).
  const uint32_t* signal = nullptr;
};
struct GateIfNone {
  const int32_t* num_flagged = nullptr;  // required (OpenGateIfNone refuses null)
  uint32_t* gate = nullptr;
  const int32_t* step = nullptr;
  int32_t offset = 0;
  uint32_t* signal = nullptr;  // may be null: the gate's device word, opened alongside
};

// For every (b, h) `heads` covers and j < counts[b][h]: copies slot slice (b, h, j)
// into head h of pool page layout.selected_page(b, slots[b][h][j]) and sets
// resident[b][h][slots..] to pages[b][h][j]. The pool is bf16 with K and V interleaved
// per page (pool.v = pool.k + page_elems); pool.num_pages >= num_seqs * pages_per_seq.
absl::Status ApplyRecallRef(absl::Span<const BFloat16> slot, const RecallDiff& diff,
                            const HeadMask& heads, const kernels::PagedKv<BFloat16>& pool,
                            const ResidentLayout& layout, absl::Span<int32_t> resident);
absl::Status ApplyRecallCuda(absl::Span<const BFloat16> slot, const RecallDiff& diff,
                             const HeadMask& heads, const kernels::PagedKv<BFloat16>& pool,
                             const ResidentLayout& layout, absl::Span<int32_t> resident,
                             cudaStream_t stream);
// ApplyRecallCuda of the recall a gate published (GateWord below), decided on the GPU
// so that one captured graph serves every step: `held` is the hold the stream just
// passed (its `observed` word, `*step + offset`); when that word publishes exactly the
// awaited value with a slot, the layer's slot it names (`slots`, the layer's two) is
// applied; otherwise (the GPU opened the gate itself, nothing was recalled, or the hold
// was aborted) nothing is.
absl::Status ApplyPublishedCuda(const GateHold& held,
                                const std::array<absl::Span<const BFloat16>, 2>& slots,
                                const RecallDiff& diff, const HeadMask& heads,
                                const kernels::PagedKv<BFloat16>& pool,
                                const ResidentLayout& layout, absl::Span<int32_t> resident,
                                cudaStream_t stream);

// Writes the new token of each sequence: k and v [num_seqs][num_kv_heads][head_dim]
// go to token tokens[b] of pool page pages[b] (every head). A page or token outside
// the pool is refused by the reference and skipped by the kernel.
absl::Status AppendKvRef(absl::Span<const BFloat16> k, absl::Span<const BFloat16> v,
                         absl::Span<const int32_t> pages, absl::Span<const int32_t> tokens,
                         const kernels::PagedKv<BFloat16>& pool);
// `hold` (the gates below): the launch also holds the stream at a gate.
absl::Status AppendKvCuda(absl::Span<const BFloat16> k, absl::Span<const BFloat16> v,
                          absl::Span<const int32_t> pages, absl::Span<const int32_t> tokens,
                          const kernels::PagedKv<BFloat16>& pool, cudaStream_t stream,
                          const GateHold& hold = {});

// Gates: a 32-bit word per waiting point, in pinned host memory, compared with a step
// number the stream reads from device memory (`*step + offset`), so that one captured
// CUDA graph serves every step. A gate word holds the value it opens in bits 2..31
// and, in bits 0..1, the staging slot holding the recall it publishes (0: none, 1 or
// 2: slot 0 or 1; GateWord). WaitGate holds `stream` (a one-thread kernel that polls
// the word; no host thread waits) until (int32_t)(value - (*step + offset)) >= 0 or
// the abort word is set, adds the nanoseconds it waited to *waited_ns and writes the
// word it passed on to *observed (each when non-null); a hold with a `signal` word
// also passes when that word opens (GateHold). OpenGateIfNone writes
// *step + offset, with no slot, when *num_flagged == 0 (a layer with no corrected head
// never waits for the host), into the gate and its signal word; the recall driver
// opens gates from the host (OpenGate).
//
// A gate must open on GPU work enqueued before the hold, never after: streams share
// the GPU's hardware work queues (on the H100 under MPS a client may get very few), and
// a held stream blocks its queue, so work another stream enqueues behind it may never
// run. That deadlock, not a slow recall, hung freekv's decode when a driver stream
// applied the recalls and opened the gates. Now every gate is a word the host writes
// (after the selection it recalls for, enqueued earlier) or the stream itself wrote
// earlier, and the holding streams apply the slots (ApplyPublishedCuda).
//
// Gates need every kernel of the process loaded before the first wait: CUDA 12+ loads
// modules lazily, and loading one while a gate holds a stream waits for that stream,
// so a kernel launched for the first time behind a gate deadlocks. Call
// RequireEagerLoading() first thing in main (before any CUDA call); WaitGate refuses
// (FAILED_PRECONDITION) when CUDA_MODULE_LOADING is not EAGER.
// The same holds for the driver's own kernels, which EAGER does not load: a
// device-to-device cudaMemcpyAsync issued for the first time behind a gate hung the
// first freekv step on the H100. Copies within the device on a gated stream use
// CopyWordsCuda, a kernel of this module.
//
// A launch on the critical path costs the step a few microseconds however little it
// does, and a layer has several gates; so AppendKvCuda and CopyWordsCuda can hold a
// gate (GateHold) while they do their own work, and PublishCorrectionCuda (below) opens
// one.
void RequireEagerLoading();
// A gate value far past every step: opened to it, a gate lets every later wait pass
// (how the recall driver lets the GPU drain after an error).
inline constexpr uint32_t kGateFarPast = 1u << 28;
// The gate-word helpers serve the host (the recall driver) and the kernels alike.
#if defined(__CUDACC__)
#define FREEKV_GATE_FN __host__ __device__ inline constexpr
#else
#define FREEKV_GATE_FN inline constexpr
#endif
// The word of a gate opened to `value`, publishing staging slot `slot` (-1: none).
FREEKV_GATE_FN uint32_t GateWord(uint32_t value, int32_t slot = -1) {
  return value << 2 | static_cast<uint32_t>(slot + 1);
}
FREEKV_GATE_FN uint32_t GateValue(uint32_t word) { return word >> 2; }
// The staging slot a gate word publishes, or -1.
FREEKV_GATE_FN int32_t GateSlot(uint32_t word) { return static_cast<int32_t>(word & 3u) - 1; }
#undef FREEKV_GATE_FN
absl::Status WaitGate(const GateHold& hold, cudaStream_t stream);
absl::Status OpenGateIfNone(const GateIfNone& open, cudaStream_t stream);
// From the host: publishes GateWord(value, slot) (a release store, after which the
// stream may read the slot).
inline void OpenGate(uint32_t* gate, uint32_t value, int32_t slot = -1) {
  __atomic_store_n(gate, GateWord(value, slot), __ATOMIC_RELEASE);
}

// dst = src, within the device (word by word: both are 4-byte aligned).
absl::Status CopyWordsCuda(absl::Span<int32_t> dst, absl::Span<const int32_t> src,
                           cudaStream_t stream, const GateHold& hold = {});

// *stamp = *step after the stream's earlier work, with a system-wide fence first: the
// publication mark a host thread polls (stamp may be pinned host memory).
absl::Status StampCuda(int32_t* stamp, const int32_t* step, cudaStream_t stream);

// freekv's correction point of a layer, in one launch: the similarity of q_t and
// q_{t-1} per (sequence, KV head) with its flags and their count (kernels/similarity.h;
// the flags and the count may be pinned host memory), the same flags as two head masks
// for the selection kernels (`masks`, device memory: [lists] bytes set for the flagged
// heads, then [lists] set for the others; a selection kernel reads its mask byte from
// every CTA, and a pinned byte crosses PCIe), then the gate opened to *step + offset
// when no head is flagged (OpenGateIfNone's work). The masks split the layer's
// selection: the flagged heads' on the decode stream (the correction waits for it),
// the others' beside it (the speculation, which nothing in the step waits for).
// The launch spreads the rows over many blocks (one block for every row took 6% of a
// batch-16 decode step), and the last block to finish publishes the count: `tally`,
// two device ints that are zero before the first launch and that every launch leaves
// zero. Launches that share a tally must not overlap (issue them on one stream).
struct CorrectionCheck {
  absl::Span<const BFloat16> q, q_prev;  // [num_seqs][num_q_heads][head_dim]
  int32_t num_q_heads = 0, num_kv_heads = 0, head_dim = 0;
  float tau = 0;
  kernels::SimilarityOutputs outputs;
  absl::Span<uint8_t> masks;  // [2][num_seqs * num_kv_heads], device memory
  absl::Span<int32_t> tally;  // [2], device memory
};
// `signal` (device memory, may be null): the gate's device word, opened alongside.
absl::Status PublishCorrectionCuda(const CorrectionCheck& check, const int32_t* step,
                                   uint32_t* gate, uint32_t* signal, int32_t offset,
                                   cudaStream_t stream);

// Benchmark inputs: uniform values in [-scale, scale) from (seed, index).
absl::Status FillUniformCuda(absl::Span<BFloat16> data, uint64_t seed, float scale,
                             cudaStream_t stream);
// A digest table's rows (kernels/digest.h: pairs of [head_dim] max and min rows) with
// random values, max >= min element-wise.
absl::Status FillDigestsCuda(absl::Span<BFloat16> digests, int32_t head_dim, uint64_t seed,
                             cudaStream_t stream);
// hidden = base + eps * uniform(*seed) noise (the seed read from device memory, so a
// graph replays it with each step's value): the slowly drifting input of a benchmark.
absl::Status DriftCuda(absl::Span<const BFloat16> base, float eps, const int32_t* seed,
                       absl::Span<BFloat16> hidden, cudaStream_t stream);

}  // namespace freekv::gpu

#endif  // FREEKV_WORKER_FREEKV_GPU_RESIDENT_OPS_H_
