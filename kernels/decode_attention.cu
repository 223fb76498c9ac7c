// CUDA kernel of decode_attention.h. One CTA per (sequence, KV head, split) runs the
// AttnCore engine over its share of the list's tokens for the whole GQA group, so
// every K/V byte is read once per step. The CTA's page ids are staged in shared
// memory first (one dependent global load instead of one per step). K/V rows either
// go through shared memory by cp.async, several steps deep (DecodeOptions::pipelined,
// the default), or straight into registers. With several splits, each CTA writes a
// partial state and the CTA that finishes last for its (sequence, KV head) merges
// them: no second kernel.
//
// Dynamic shared memory: [page ids: id_slots int32][work region], where the work
// region holds, one after the other in time, the cp.async ring, Finish's scratch and
// the merge weights. The page ids are the split's, or (sort_pages) the whole list's
// in page order plus the unsorted copy.
#include <algorithm>

#include "kernels/attention_core.cuh"
#include "kernels/cuda_check.cuh"
#include "kernels/decode_attention.h"

namespace freekv {
namespace kernels {

namespace {

constexpr int kWarps = 4;
constexpr int kMaxSplits = 64;    // merge weights: one per lane and half-warp pair
constexpr int kSmemPages = 2048;  // most page ids staged in shared memory (8 KiB)
constexpr int kSortPages = 256;   // longest list put in page order (rank sort)
constexpr int kMinStages = 2, kMaxStages = 6;

// How the launcher cuts lists into splits when the caller does not: enough CTAs for
// ctas_per_sm per multiprocessor, or more where a split would exceed max_pages pages,
// each split at least min_pages pages. Measured on H100 at Llama-3.1-8B geometry
// (bench/kernels/NOTES.md): the staged kernel is fastest with few long CTAs (about 2
// per SM of the 4 that fit, up to 32 pages each); the register kernel keeps the
// policy it shipped with (about 4 waves).
struct SplitPolicy {
  int ctas_per_sm;
  int min_pages;
  int max_pages;
};
constexpr SplitPolicy kRegisterPolicy{16, 4, 1 << 30};
constexpr SplitPolicy kStagedPolicy{2, 2, 32};
constexpr int kDefaultStages = 2;
// sort_pages applies from this many (list, page) pairs per call: below it (batch 4
// and less at a 2048-token budget) the call is latency-bound and the sort's ~1 us
// costs more than it gains.
constexpr int64_t kSortMinSlices = 4096;

struct DecodeArgs {
  int64_t page_stride;
  int32_t page_tokens, page_shift;  // page_shift = log2(page_tokens), or -1
  int32_t num_kv_heads, head_dim, num_q_heads, table_heads;
  int32_t pages_per_split, num_splits, rows;  // rows = num_seqs * num_q_heads
  int32_t id_slots;    // int32 slots of the page-id region (a multiple of 4), or 0
  int32_t sort_slots;  // > 0: the whole list is staged and sorted, in 2 x sort_slots
  int32_t stages;      // cp.async ring depth (staged kernel)
  const int32_t* indptr;
  const int32_t* indices;
  const int32_t* last_page_len;
  float scale_log2;
  float* lse;        // final lse, or nullptr
  float* o_parts;    // [num_splits][rows][head_dim] when num_splits > 1
  float* lse_parts;  // [num_splits][rows]
  int32_t* counters;  // [num_seqs * num_kv_heads], zero between calls
};

// The last CTA of a (sequence, KV head) combines the splits' states of its rows:
// out = sum_p w_p * o_p with w_p = exp(lse_p - lse). One warp per head finds the
// weights (lane p holds parts p and p + 32), then every thread sums float4 columns
// over the parts with independent loads. Partials written by other CTAs are read with
// __ldcg (L2), never from this SM's L1. weights: kGroup * kMaxSplits shared floats.
template <typename DT, int kGroup>
__device__ void MergeSplits(const DecodeArgs& a, int row0, float* weights, DT* out) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int g = warp; g < kGroup; g += kWarps) {
    const int row = row0 + g;
    auto part_lse = [&](int p) {
      return p < a.num_splits ? __ldcg(a.lse_parts + int64_t{p} * a.rows + row) : -INFINITY;
    };
    const float lse0 = part_lse(lane), lse1 = part_lse(lane + 32);
    const float m = WarpMax(fmaxf(lse0, lse1));
    const float w0 = m == -INFINITY ? 0.0f : expf(lse0 - m);
    const float w1 = m == -INFINITY ? 0.0f : expf(lse1 - m);
    const float sum = WarpSum(w0 + w1);
    const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
    weights[g * kMaxSplits + lane] = w0 * inv;
    weights[g * kMaxSplits + lane + 32] = w1 * inv;
    if (lane == 0 && a.lse != nullptr) a.lse[row] = sum > 0.0f ? m + logf(sum) : -INFINITY;
  }
  __syncthreads();
  const int cols = a.head_dim / 4;
  for (int idx = threadIdx.x; idx < kGroup * cols; idx += kWarps * 32) {
    const int g = idx / cols, d = (idx % cols) * 4;
    const float4* src = reinterpret_cast<const float4*>(
        a.o_parts + int64_t{row0 + g} * a.head_dim + d);
    const int64_t part_stride = int64_t{a.rows} * a.head_dim / 4;  // in float4
    float4 o = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll 4
    for (int p = 0; p < a.num_splits; ++p) {
      const float w = weights[g * kMaxSplits + p];
      const float4 x = __ldcg(src + p * part_stride);
      o.x = fmaf(w, x.x, o.x);
      o.y = fmaf(w, x.y, o.y);
      o.z = fmaf(w, x.z, o.z);
      o.w = fmaf(w, x.w, o.w);
    }
    DT* dst = out + int64_t{row0 + g} * a.head_dim + d;
    dst[0] = FromF<DT>(o.x);
    dst[1] = FromF<DT>(o.y);
    dst[2] = FromF<DT>(o.z);
    dst[3] = FromF<DT>(o.w);
  }
}

// Puts this CTA's page ids in shared memory and returns where they start. With
// sort_slots, the whole list's full pages are ranked by page id (the partial last
// page stays last) and the split takes its share of that order: the KV heads of a
// sequence, whose lists usually name the same pool pages, then stream each page at
// about the same time. *usable: pages this CTA may index (a max_pages overrun only).
__device__ const int32_t* StagePageIds(const DecodeArgs& a, const int32_t* list_ids, int n,
                                       int first_page, int32_t* ids, int* usable) {
  *usable = n - first_page;
  if (a.sort_slots > 0) {
    int32_t* raw = ids + a.sort_slots;
    const int count = min(n, a.sort_slots), full = count - 1;
    for (int i = threadIdx.x; i < count; i += kWarps * 32) raw[i] = list_ids[i];
    __syncthreads();
    for (int i = threadIdx.x; i < count; i += kWarps * 32) {
      const int32_t key = raw[i];
      int rank = i;  // the last page keeps its place
      if (i < full) {
        rank = 0;
        for (int j = 0; j < full; ++j) rank += raw[j] < key || (raw[j] == key && j < i);
      }
      ids[rank] = key;
    }
    *usable = count - first_page;
    return ids + first_page;
  }
  if (a.id_slots == 0) return list_ids + first_page;
  const int count = min(min(a.pages_per_split, a.id_slots), n - first_page);
  for (int i = threadIdx.x; i < count; i += kWarps * 32) ids[i] = list_ids[first_page + i];
  *usable = min(*usable, a.id_slots);
  return ids;
}

// Up to group 4, registers are capped at 128 so that 4 CTAs (16 warps) fit per SM;
// both load schedules fit without spills (ptxas -v).
template <typename DT, int kGroup, int kLanes, bool kStaged>
__global__ void __launch_bounds__(kWarps * 32, kGroup <= 4 ? 4 : 1)
    PagedDecodeKernel(const DT* q, const DT* k, const DT* v, DT* out, DecodeArgs a) {
  using Core = AttnCore<DT, kGroup, kLanes, kWarps, /*kPipelined=*/false>;
  extern __shared__ uint4 smem[];
  __shared__ bool is_last;
  const int seq = blockIdx.x / a.num_kv_heads, kvh = blockIdx.x % a.num_kv_heads;
  const int split = blockIdx.y;
  const int row0 = seq * a.num_q_heads + kvh * kGroup;  // first query row of the group

  const int list = seq * a.table_heads + (a.table_heads == 1 ? 0 : kvh);
  const int first = a.indptr[list];
  const int n = a.indptr[list + 1] - first;
  const int num_tokens = (n - 1) * a.page_tokens + a.last_page_len[list];
  const int first_page = split * a.pages_per_split;
  const int begin = first_page * a.page_tokens;
  int end = min(num_tokens, begin + a.pages_per_split * a.page_tokens);
  int usable = 0;
  const int32_t* pages = StagePageIds(a, a.indices + first, n, first_page,
                                      reinterpret_cast<int32_t*>(smem), &usable);
  end = min(end, begin + usable * a.page_tokens);
  uint4* work = smem + a.id_slots / 4;
  __syncthreads();
  float qf[kGroup][Core::kVec];
  Core::LoadQ(q + int64_t{row0} * a.head_dim, a.head_dim, a.scale_log2, qf);
  typename Core::State state;
  Core::Init(state);
  const int64_t head_off = int64_t{kvh} * a.head_dim;
  const int64_t token_stride = int64_t{a.num_kv_heads} * a.head_dim;
  auto addr = [&](int tok) -> int64_t {
    const int rel = tok - begin;
    const int page = a.page_shift >= 0 ? rel >> a.page_shift : rel / a.page_tokens;
    return pages[page] * a.page_stride + (rel - page * a.page_tokens) * token_stride +
           head_off;
  };
  if constexpr (kStaged) {
    Core::AttendStaged(qf, k, v, a.head_dim, addr, begin, end, work, a.stages, state);
  } else {
    Core::Attend(qf, k, v, a.head_dim, addr, begin, end, state);
  }
  __syncthreads();  // the work region is Finish's now: every warp is done with its ring
  auto& scratch = *reinterpret_cast<typename Core::Smem*>(work);
  if (a.num_splits == 1) {
    Core::Finish(
        state, a.head_dim, scratch,
        [&](int g, int d, float o) {
          out[int64_t{row0 + g} * a.head_dim + d] = FromF<DT>(o);
        },
        [&](int g, float lse) {
          if (a.lse != nullptr) a.lse[row0 + g] = lse;
        });
    return;
  }
  const int64_t part = int64_t{split} * a.rows;
  Core::Finish(
      state, a.head_dim, scratch,
      [&](int g, int d, float o) { a.o_parts[(part + row0 + g) * a.head_dim + d] = o; },
      [&](int g, float lse) { a.lse_parts[part + row0 + g] = lse; });
  __threadfence();  // this CTA's partials are visible before it is counted
  __syncthreads();  // (also: Finish is done with the work region)
  if (threadIdx.x == 0) {
    is_last = atomicAdd(a.counters + blockIdx.x, 1) == a.num_splits - 1;
  }
  __syncthreads();
  if (!is_last) return;
  __threadfence();
  MergeSplits<DT, kGroup>(a, row0, reinterpret_cast<float*>(work), out);
  if (threadIdx.x == 0) a.counters[blockIdx.x] = 0;  // ready for the next call
}

// Shared memory of one launch: the page ids, then the largest user of the work region.
template <typename DT, int kGroup, int kLanes, bool kStaged>
size_t SmemBytes(const DecodeArgs& a) {
  using Core = AttnCore<DT, kGroup, kLanes, kWarps, false>;
  const size_t ring = kStaged ? size_t(a.stages) * Core::kStageBytes : 0;
  const size_t region = std::max({ring, sizeof(typename Core::Smem),
                                  size_t{kGroup} * kMaxSplits * sizeof(float)});
  return size_t(a.id_slots) * sizeof(int32_t) + region;
}

template <typename DT, int kGroup, int kLanes, bool kStaged>
absl::Status Launch(const DT* q, const DT* k, const DT* v, DT* out, const DecodeArgs& a,
                    int ctas, cudaStream_t stream) {
  auto kernel = PagedDecodeKernel<DT, kGroup, kLanes, kStaged>;
  const size_t smem = SmemBytes<DT, kGroup, kLanes, kStaged>(a);
  if (smem > 48 * 1024) {
    FREEKV_CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(
        kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  }
  if (kStaged) {  // the ring, not L1, holds the rows: as many resident CTAs as fit
    FREEKV_CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(
        kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
        cudaSharedmemCarveoutMaxShared));
  }
  kernel<<<dim3(ctas, a.num_splits), kWarps * 32, smem, stream>>>(q, k, v, out, a);
  return LaunchStatus("PagedDecodeKernel");
}

int ChoosePagesPerSplit(const SplitPolicy& policy, int num_ctas_unsplit, int max_pages) {
  const int slots = policy.ctas_per_sm * MultiprocessorCount();
  const int64_t pages = max_pages;
  const int64_t want = std::max<int64_t>((slots + num_ctas_unsplit - 1) / num_ctas_unsplit,
                                         (pages + policy.max_pages - 1) / policy.max_pages);
  const int64_t most = (pages + policy.min_pages - 1) / policy.min_pages;
  const int64_t splits = std::max<int64_t>(1, std::min({want, most, int64_t{kMaxSplits}}));
  return static_cast<int>((pages + splits - 1) / splits);
}

// The merge counters sit first, at a fixed place: the partials' layout depends on the
// split, and a call must find the counters its predecessor left zeroed.
size_t CountersBytes(size_t ctas) { return (ctas * sizeof(int32_t) + 255) / 256 * 256; }

size_t SplitCap(int32_t max_pages) {
  return static_cast<size_t>(std::min<int64_t>(kMaxSplits, std::max<int32_t>(1, max_pages)));
}

int Log2IfPowerOfTwo(int x) {
  if (x <= 0 || (x & (x - 1)) != 0) return -1;
  int shift = 0;
  while ((1 << shift) < x) ++shift;
  return shift;
}

// Split, page-id staging and workspace layout; everything but the pointers and shape
// fields, which the caller has set (table_heads included).
absl::Status PlanSplits(const DecodeOptions& options, int ctas, int32_t max_pages,
                        absl::Span<uint8_t> workspace, DecodeArgs& a) {
  const size_t cap = SplitCap(max_pages);
  const int min_pages_per_split = static_cast<int>((max_pages + cap - 1) / cap);
  const SplitPolicy& policy = options.pipelined ? kStagedPolicy : kRegisterPolicy;
  a.pages_per_split = options.pages_per_split > 0
                          ? std::max(options.pages_per_split, min_pages_per_split)
                          : ChoosePagesPerSplit(policy, ctas, max_pages);
  a.num_splits = (max_pages + a.pages_per_split - 1) / a.pages_per_split;
  const int ids = std::min(a.pages_per_split, max_pages);
  const bool sort = options.sort_pages && a.table_heads > 1 && max_pages <= kSortPages &&
                    int64_t{ctas} * max_pages >= kSortMinSlices;
  a.sort_slots = sort ? (max_pages + 3) / 4 * 4 : 0;
  a.id_slots = sort ? 2 * a.sort_slots : ids <= kSmemPages ? (ids + 3) / 4 * 4 : 0;
  a.stages = options.stages > 0 ? options.stages : kDefaultStages;
  if (a.num_splits == 1) return absl::OkStatus();
  const size_t parts = size_t(a.num_splits) * a.rows * (a.head_dim + 1);
  const size_t counters = CountersBytes(a.rows);  // rows >= ctas: same as the bound
  const size_t need = counters + parts * sizeof(float);
  if (workspace.size() < need) {
    return absl::InvalidArgumentError(absl::StrCat(
        "workspace has ", workspace.size(), " bytes, ", a.num_splits, " splits need ", need));
  }
  a.counters = reinterpret_cast<int32_t*>(workspace.data());
  a.o_parts = reinterpret_cast<float*>(workspace.data() + counters);
  a.lse_parts = a.o_parts + size_t(a.num_splits) * a.rows * a.head_dim;
  return absl::OkStatus();
}

}  // namespace

size_t DecodeWorkspaceBytes(int32_t num_seqs, int32_t num_q_heads, int32_t head_dim,
                            int32_t max_pages) {
  const size_t rows = size_t(std::max(0, num_seqs)) * std::max(0, num_q_heads);
  const size_t parts = SplitCap(max_pages) * rows * (size_t(std::max(0, head_dim)) + 1);
  return CountersBytes(rows) + parts * sizeof(float);  // counters: <= one per row
}

template <typename T>
absl::Status PagedDecodeAttentionCuda(absl::Span<const T> q, const PagedKv<const T>& kv,
                                      const PageTable& table,
                                      const DecodeOptions& options, int32_t max_pages,
                                      absl::Span<T> out, absl::Span<float> lse,
                                      absl::Span<uint8_t> workspace, cudaStream_t stream) {
  FREEKV_RETURN_IF_ERROR(ValidatePagedKv(kv));
  FREEKV_RETURN_IF_ERROR(CheckGqa(options.num_q_heads, kv.num_kv_heads));
  FREEKV_RETURN_IF_ERROR(CheckPositive("max_pages", max_pages));
  if (options.stages != 0 && (options.stages < kMinStages || options.stages > kMaxStages)) {
    return absl::InvalidArgumentError(absl::StrCat("DecodeOptions.stages is ", options.stages,
                                                   ", expected 0 or ", kMinStages, "..",
                                                   kMaxStages));
  }
  const size_t row = size_t(options.num_q_heads) * kv.head_dim;
  FREEKV_RETURN_IF_ERROR(CheckRows("q", q.size(), row));
  const int32_t num_seqs = static_cast<int32_t>(q.size() / row);
  FREEKV_RETURN_IF_ERROR(CheckSize("out", out.size(), q.size()));
  if (!lse.empty()) {
    FREEKV_RETURN_IF_ERROR(CheckSize("lse", lse.size(), size_t(num_seqs) * options.num_q_heads));
  }
  FREEKV_RETURN_IF_ERROR(ValidatePageTable(table, num_seqs, kv.num_kv_heads));
  DecodeArgs a{};
  a.page_stride = kv.page_stride;
  a.page_tokens = kv.page_tokens;
  a.page_shift = Log2IfPowerOfTwo(kv.page_tokens);
  a.num_kv_heads = kv.num_kv_heads;
  a.head_dim = kv.head_dim;
  a.num_q_heads = options.num_q_heads;
  a.table_heads = table.table_heads;
  a.rows = num_seqs * options.num_q_heads;
  a.indptr = table.indptr.data();
  a.indices = table.indices.data();
  a.last_page_len = table.last_page_len.data();
  a.scale_log2 = options.scale * kLog2e;
  a.lse = lse.empty() ? nullptr : lse.data();
  const int ctas = num_seqs * kv.num_kv_heads;
  FREEKV_RETURN_IF_ERROR(PlanSplits(options, ctas, max_pages, workspace, a));
  using DT = std::remove_const_t<typename DeviceType<const T>::type>;
  const int group = options.num_q_heads / kv.num_kv_heads;
  return DispatchGroupLanes<DT>(
      group, kv.head_dim, [&](auto g, auto lanes) -> absl::Status {
        constexpr int kGroup = decltype(g)::value, kLanes = decltype(lanes)::value;
        auto launch = options.pipelined ? Launch<DT, kGroup, kLanes, true>
                                        : Launch<DT, kGroup, kLanes, false>;
        return launch(Dev(q.data()), Dev(kv.k), Dev(kv.v), Dev(out.data()), a, ctas, stream);
      });
}

#define FREEKV_INSTANTIATE(T)                                                         \
  template absl::Status PagedDecodeAttentionCuda<T>(                                  \
      absl::Span<const T>, const PagedKv<const T>&, const PageTable&,                 \
      const DecodeOptions&, int32_t, absl::Span<T>, absl::Span<float>,                \
      absl::Span<uint8_t>, cudaStream_t);
FREEKV_INSTANTIATE(float)
FREEKV_INSTANTIATE(BFloat16)
#undef FREEKV_INSTANTIATE

}  // namespace kernels
}  // namespace freekv
