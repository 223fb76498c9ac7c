// CUDA kernel of select.h: one 1024-thread CTA per (sequence, KV head) does the group
// softmax into shared memory, a 4-pass radix select of the k-th largest group score
// (ties to the lower page by a block scan), and the diff with the resident slots.
#include <algorithm>

#include "kernels/cuda_check.cuh"
#include "kernels/device_util.cuh"
#include "kernels/select.h"

namespace freekv {
namespace kernels {

namespace {

constexpr int kThreads = 1024;
constexpr int kMaxCandidates = 16384;
constexpr int kMaxK = 1024;

struct SelectArgs {
  int32_t num_q_heads, num_kv_heads, max_candidates, k, capacity;
  const int32_t* begin;
  const int32_t* count;
  const uint8_t* head_mask;  // or nullptr
  const float* scores;
  const int32_t* resident;   // or nullptr: no diff
  float* group_scores;
  int32_t* selected;
  int32_t* recall_pages;
  int32_t* recall_slots;
  int32_t* num_recall;
  int32_t* attend_slots;  // or nullptr
  int32_t* copy;          // or nullptr: ResidentDiff::copy
};

struct SelectSmem {
  float red[32];
  int scan[33];
  unsigned hist[256];
  unsigned prefix, remaining;
};

// gs[j] = mean over the group's heads of softmax_j(scores of that head).
__device__ void GroupSoftmax(const SelectArgs& a, int seq, int kvh, int count, float* gs,
                             SelectSmem& sm) {
  for (int j = threadIdx.x; j < a.max_candidates; j += kThreads) gs[j] = 0.0f;
  const int group = a.num_q_heads / a.num_kv_heads;
  for (int h = 0; h < group && count > 0; ++h) {
    const float* s =
        a.scores + (int64_t{seq} * a.num_q_heads + kvh * group + h) * a.max_candidates;
    float m = -INFINITY;
    for (int j = threadIdx.x; j < count; j += kThreads) m = fmaxf(m, s[j]);
    m = BlockMax(m, sm.red);
    float sum = 0.0f;
    for (int j = threadIdx.x; j < count; j += kThreads) sum += expf(s[j] - m);
    sum = BlockSum(sum, sm.red);
    const float w = 1.0f / (sum * group);
    for (int j = threadIdx.x; j < count; j += kThreads) gs[j] += expf(s[j] - m) * w;
  }
  __syncthreads();
}

// Finds the key of the k-th largest of keys(gs[0..count)) (gs >= 0, so float bits
// order like the floats); returns it and sets *take_equal to how many elements equal
// to it belong to the top k.
__device__ unsigned RadixSelect(const float* gs, int count, int k, SelectSmem& sm,
                                int* take_equal) {
  unsigned prefix = 0, mask = 0, remaining = k;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = threadIdx.x; i < 256; i += kThreads) sm.hist[i] = 0;
    __syncthreads();
    for (int j = threadIdx.x; j < count; j += kThreads) {
      const unsigned u = __float_as_uint(gs[j]);
      if ((u & mask) == prefix) atomicAdd(&sm.hist[(u >> shift) & 255u], 1u);
    }
    __syncthreads();
    if (threadIdx.x < 32) {  // lane l owns bins 255-8l .. 248-8l, highest first
      const int lane = threadIdx.x;
      unsigned c = 0;
      for (int r = 0; r < 8; ++r) c += sm.hist[255 - 8 * lane - r];
      unsigned incl = c;
      for (int off = 1; off < 32; off *= 2) {
        const unsigned y = __shfl_up_sync(0xffffffffu, incl, off);
        if (lane >= off) incl += y;
      }
      const unsigned before = incl - c;
      const bool mine = before < remaining && remaining <= incl;
      if (mine) {
        unsigned cum = before;
        for (int r = 0; r < 8; ++r) {
          const unsigned bin = 255 - 8 * lane - r;
          if (cum + sm.hist[bin] >= remaining) {
            sm.prefix = prefix | (bin << shift);
            sm.remaining = remaining - cum;
            break;
          }
          cum += sm.hist[bin];
        }
      }
    }
    __syncthreads();
    prefix = sm.prefix;
    remaining = sm.remaining;
    mask |= 255u << shift;
    __syncthreads();
  }
  *take_equal = static_cast<int>(remaining);
  return prefix;
}

// Marks the top min(k, count) candidates and writes them ascending to sel[] (page
// ids); returns how many. Each thread owns a contiguous chunk so that block scans
// give index order.
__device__ int TopK(const SelectArgs& a, int count, int begin, const float* gs, int* sel,
                    SelectSmem& sm) {
  const bool all = count <= a.k;
  int take_equal = 0;
  const unsigned threshold = all ? 0u : RadixSelect(gs, count, a.k, sm, &take_equal);
  const int per = (count + kThreads - 1) / kThreads;
  const int lo = min(count, static_cast<int>(threadIdx.x) * per), hi = min(count, lo + per);
  int equal = 0;
  for (int j = lo; j < hi; ++j) equal += __float_as_uint(gs[j]) == threshold;
  int total;
  int eq_rank = BlockExclusiveScan(all ? 0 : equal, sm.scan, &total);
  auto chosen = [&](int j, int& rank) {
    if (all) return true;
    const unsigned u = __float_as_uint(gs[j]);
    if (u > threshold) return true;
    return u == threshold && rank++ < take_equal;
  };
  int picked = 0, rank = eq_rank;
  for (int j = lo; j < hi; ++j) picked += chosen(j, rank);
  int pos = BlockExclusiveScan(picked, sm.scan, &total);
  rank = eq_rank;
  for (int j = lo; j < hi; ++j) {
    if (chosen(j, rank)) sel[pos++] = begin + j;
  }
  __syncthreads();
  return total;
}

// Recall list: selected pages not resident (ascending) into victim slots (empty
// first, then lowest group score, ties to the lower slot).
__device__ void Diff(const SelectArgs& a, int row, int count, int begin, const float* gs,
                     const int* sel, int take, int* res, float* vscore, int* by_rank,
                     SelectSmem& sm) {
  for (int s = threadIdx.x; s < a.capacity; s += kThreads) {
    res[s] = a.resident[int64_t{row} * a.capacity + s];
  }
  __syncthreads();
  for (int s = threadIdx.x; s < a.capacity; s += kThreads) {
    const int page = res[s];
    bool victim = page < 0;
    if (!victim) {  // sel is ascending: binary search
      int lo = 0, hi = take;
      while (lo < hi) {
        const int mid = (lo + hi) / 2;
        if (sel[mid] < page) lo = mid + 1; else hi = mid;
      }
      victim = lo == take || sel[lo] != page;
    }
    const int j = page - begin;
    // NaN marks "not a victim"; empty slots sort before every score.
    vscore[s] = !victim ? NAN : page < 0 ? -INFINITY : (j >= 0 && j < count ? gs[j] : -3e38f);
  }
  __syncthreads();
  for (int s = threadIdx.x; s < a.capacity; s += kThreads) {
    if (isnan(vscore[s])) continue;
    int rank = 0;
    for (int o = 0; o < a.capacity; ++o) {
      const float v = vscore[o];
      if (!isnan(v) && (v < vscore[s] || (v == vscore[s] && o < s))) ++rank;
    }
    by_rank[rank] = s;
  }
  const int i = threadIdx.x;
  bool missing = false;
  int held = -1;  // the slot holding sel[i]
  if (i < take) {
    for (int s = 0; s < a.capacity && held < 0; ++s) held = res[s] == sel[i] ? s : -1;
    missing = held < 0;
  }
  int num_missing;
  const int pos = BlockExclusiveScan(missing, sm.scan, &num_missing);  // also syncs by_rank
  int32_t* pages = a.recall_pages + int64_t{row} * a.k;
  int32_t* slots = a.recall_slots + int64_t{row} * a.k;
  // ResidentDiff::copy's parts of this row, when there is a copy.
  const int64_t rows = int64_t{gridDim.x};
  int32_t* copy_pages = a.copy == nullptr ? nullptr : a.copy + int64_t{row} * a.k;
  int32_t* copy_slots = a.copy == nullptr ? nullptr : copy_pages + rows * a.k;
  if (missing) {
    pages[pos] = sel[i];
    slots[pos] = by_rank[pos];
    if (a.copy != nullptr) copy_pages[pos] = sel[i], copy_slots[pos] = by_rank[pos];
  }
  if (i >= num_missing && i < a.k) {
    pages[i] = slots[i] = -1;
    if (a.copy != nullptr) copy_pages[i] = copy_slots[i] = -1;
  }
  if (a.attend_slots != nullptr && i < a.k) {
    a.attend_slots[int64_t{row} * a.k + i] = i >= take ? -1 : missing ? by_rank[pos] : held;
  }
  if (i == 0) {
    a.num_recall[row] = num_missing;
    if (a.copy != nullptr) a.copy[2 * rows * a.k + row] = num_missing;
  }
}

__global__ void __launch_bounds__(kThreads) GroupSelectKernel(SelectArgs a) {
  extern __shared__ float dyn[];
  __shared__ SelectSmem sm;
  const int row = blockIdx.x;
  if (a.head_mask != nullptr && a.head_mask[row] == 0) return;
  const int seq = row / a.num_kv_heads, kvh = row % a.num_kv_heads;
  const int count = a.count[seq], begin = a.begin[seq];
  float* gs = dyn;                                        // [max_candidates]
  int* sel = reinterpret_cast<int*>(gs + a.max_candidates);  // [k]
  int* res = sel + a.k;                                   // [capacity]
  float* vscore = reinterpret_cast<float*>(res + a.capacity);  // [capacity]
  int* by_rank = reinterpret_cast<int*>(vscore + a.capacity);  // [capacity]
  GroupSoftmax(a, seq, kvh, count, gs, sm);
  for (int j = threadIdx.x; j < a.max_candidates; j += kThreads) {
    a.group_scores[int64_t{row} * a.max_candidates + j] = gs[j];
  }
  const int take = TopK(a, count, begin, gs, sel, sm);
  for (int i = threadIdx.x; i < a.k; i += kThreads) {
    a.selected[int64_t{row} * a.k + i] = i < take ? sel[i] : -1;
  }
  if (a.resident != nullptr) Diff(a, row, count, begin, gs, sel, take, res, vscore, by_rank, sm);
}

}  // namespace

absl::Status GroupSelectCuda(absl::Span<const float> scores, int32_t num_q_heads,
                             int32_t num_kv_heads, const Candidates& candidates,
                             int32_t k, absl::Span<const int32_t> resident,
                             int32_t capacity, absl::Span<const uint8_t> head_mask,
                             absl::Span<float> group_scores,
                             absl::Span<int32_t> selected, const ResidentDiff& diff,
                             cudaStream_t stream) {
  FREEKV_RETURN_IF_ERROR(ValidateCandidates(candidates));
  FREEKV_RETURN_IF_ERROR(CheckGqa(num_q_heads, num_kv_heads));
  const size_t n = candidates.max_candidates;
  const size_t rows = candidates.num_seqs() * size_t(num_kv_heads);
  if (n > size_t{kMaxCandidates} || k < 1 || k > kMaxK) {
    return absl::InvalidArgumentError(absl::StrCat("max_candidates ", n, " (<= ",
                                                   kMaxCandidates, ") or k ", k,
                                                   " (1..", kMaxK, ") out of range"));
  }
  FREEKV_RETURN_IF_ERROR(CheckSize("scores", scores.size(), candidates.num_seqs() * size_t(num_q_heads) * n));
  FREEKV_RETURN_IF_ERROR(CheckSize("group_scores", group_scores.size(), rows * n));
  FREEKV_RETURN_IF_ERROR(CheckSize("selected", selected.size(), rows * k));
  if (!head_mask.empty()) FREEKV_RETURN_IF_ERROR(CheckSize("head_mask", head_mask.size(), rows));
  const bool with_diff = !resident.empty();
  if (with_diff) {
    if (capacity < k || capacity > kMaxK) {
      return absl::InvalidArgumentError(
          absl::StrCat("capacity ", capacity, " must be in [k, ", kMaxK, "]"));
    }
    FREEKV_RETURN_IF_ERROR(CheckSize("resident", resident.size(), rows * capacity));
    FREEKV_RETURN_IF_ERROR(CheckSize("diff.recall_pages", diff.recall_pages.size(), rows * k));
    FREEKV_RETURN_IF_ERROR(CheckSize("diff.recall_slots", diff.recall_slots.size(), rows * k));
    FREEKV_RETURN_IF_ERROR(CheckSize("diff.num_recall", diff.num_recall.size(), rows));
    if (!diff.attend_slots.empty()) {
      FREEKV_RETURN_IF_ERROR(
          CheckSize("diff.attend_slots", diff.attend_slots.size(), rows * k));
    }
    if (!diff.copy.empty()) {
      FREEKV_RETURN_IF_ERROR(CheckSize("diff.copy", diff.copy.size(), DiffCopyInts(rows, k)));
    }
  }
  SelectArgs a{num_q_heads, num_kv_heads, static_cast<int32_t>(n), k,
               with_diff ? capacity : 0, candidates.begin.data(), candidates.count.data(),
               head_mask.empty() ? nullptr : head_mask.data(), scores.data(),
               with_diff ? resident.data() : nullptr, group_scores.data(), selected.data(),
               diff.recall_pages.data(), diff.recall_slots.data(), diff.num_recall.data(),
               with_diff && !diff.attend_slots.empty() ? diff.attend_slots.data() : nullptr,
               with_diff && !diff.copy.empty() ? diff.copy.data() : nullptr};
  const size_t smem = (n + k + 3 * size_t(a.capacity)) * 4;
  FREEKV_CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(
      GroupSelectKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  GroupSelectKernel<<<static_cast<unsigned>(rows), kThreads, smem, stream>>>(a);
  return LaunchStatus("GroupSelectKernel");
}

}  // namespace kernels
}  // namespace freekv
