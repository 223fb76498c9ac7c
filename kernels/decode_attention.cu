// CUDA kernel of decode_attention.h. One CTA per (sequence, KV head, split) runs the
// AttnCore engine over its share of the list's tokens for the whole GQA group, so
// every K/V byte is read once per step. The CTA's page ids are staged in shared
// memory first (one dependent global load instead of one per step). With several
// splits, each CTA writes a partial state and the CTA that finishes last for its
// (sequence, KV head) merges them: no second kernel.
#include <algorithm>

#include "kernels/attention_core.cuh"
#include "kernels/cuda_check.cuh"
#include "kernels/decode_attention.h"

namespace freekv {
namespace kernels {

namespace {

constexpr int kWarps = 4;
constexpr int kMaxSplits = 64;
constexpr int kMinPagesPerSplit = 4;  // >= 4 steps per warp at 32-token pages
constexpr int kSmemPages = 1024;      // page ids staged in shared memory
constexpr int kCtasPerSmTarget = 16;  // about 4 waves of resident CTAs

struct DecodeArgs {
  int64_t page_stride;
  int32_t page_tokens, num_kv_heads, head_dim, num_q_heads, table_heads;
  int32_t pages_per_split, num_splits, rows;  // rows = num_seqs * num_q_heads
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
// out = sum_p exp(lse_p - lse) * o_p. Partials written by other CTAs are read with
// __ldcg (L2), never from this SM's L1.
template <typename DT, int kGroup>
__device__ void MergeSplits(const DecodeArgs& a, int row0, DT* out) {
  for (int idx = threadIdx.x; idx < kGroup * a.head_dim; idx += kWarps * 32) {
    const int row = row0 + idx / a.head_dim, d = idx % a.head_dim;
    float m = -INFINITY;
    for (int p = 0; p < a.num_splits; ++p) {
      m = fmaxf(m, __ldcg(a.lse_parts + int64_t{p} * a.rows + row));
    }
    float sum = 0.0f, o = 0.0f;
    if (m != -INFINITY) {
      for (int p = 0; p < a.num_splits; ++p) {
        const float w = expf(__ldcg(a.lse_parts + int64_t{p} * a.rows + row) - m);
        sum += w;
        o += w * __ldcg(a.o_parts + (int64_t{p} * a.rows + row) * a.head_dim + d);
      }
    }
    out[int64_t{row} * a.head_dim + d] = FromF<DT>(sum > 0.0f ? o / sum : 0.0f);
    if (d == 0 && a.lse != nullptr) a.lse[row] = sum > 0.0f ? m + logf(sum) : -INFINITY;
  }
}

template <typename DT, int kGroup, int kLanes, bool kPipelined>
__global__ void __launch_bounds__(kWarps * 32)
    PagedDecodeKernel(const DT* q, const DT* k, const DT* v, DT* out, DecodeArgs a) {
  using Core = AttnCore<DT, kGroup, kLanes, kWarps, kPipelined>;
  __shared__ typename Core::Smem smem;
  __shared__ int32_t page_ids[kSmemPages];
  __shared__ bool is_last;
  const int seq = blockIdx.x / a.num_kv_heads, kvh = blockIdx.x % a.num_kv_heads;
  const int split = blockIdx.y;
  const int list = seq * a.table_heads + (a.table_heads == 1 ? 0 : kvh);
  const int first = a.indptr[list];
  const int n = a.indptr[list + 1] - first;
  const int num_tokens = (n - 1) * a.page_tokens + a.last_page_len[list];
  const int first_page = split * a.pages_per_split;
  const int begin = first_page * a.page_tokens;
  const int end = min(num_tokens, begin + a.pages_per_split * a.page_tokens);
  const int32_t* pages = a.indices + first + first_page;
  const bool staged = a.pages_per_split <= kSmemPages;
  if (staged) {
    for (int i = threadIdx.x; i < min(a.pages_per_split, n - first_page); i += kWarps * 32) {
      page_ids[i] = pages[i];
    }
    pages = page_ids;
  }
  __syncthreads();

  const int row0 = seq * a.num_q_heads + kvh * kGroup;  // first query row of the group
  float qf[kGroup][Core::kVec];
  Core::LoadQ(q + int64_t{row0} * a.head_dim, a.head_dim, a.scale_log2, qf);
  typename Core::State state;
  Core::Init(state);
  const int64_t head_off = int64_t{kvh} * a.head_dim;
  const int64_t token_stride = int64_t{a.num_kv_heads} * a.head_dim;
  Core::Attend(qf, k, v, a.head_dim,
               [&](int tok) {
                 const int rel = tok - begin;
                 return pages[rel / a.page_tokens] * a.page_stride +
                        (rel % a.page_tokens) * token_stride + head_off;
               },
               begin, end, state);
  if (a.num_splits == 1) {
    Core::Finish(
        state, a.head_dim, smem,
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
      state, a.head_dim, smem,
      [&](int g, int d, float o) { a.o_parts[(part + row0 + g) * a.head_dim + d] = o; },
      [&](int g, float lse) { a.lse_parts[part + row0 + g] = lse; });
  __threadfence();  // this CTA's partials are visible before it is counted
  __syncthreads();
  if (threadIdx.x == 0) {
    is_last = atomicAdd(a.counters + blockIdx.x, 1) == a.num_splits - 1;
  }
  __syncthreads();
  if (!is_last) return;
  __threadfence();
  MergeSplits<DT, kGroup>(a, row0, out);
  if (threadIdx.x == 0) a.counters[blockIdx.x] = 0;  // ready for the next call
}

// Splits: enough CTAs for about four waves (measured on H100: one wave of long CTAs
// lost 10-25% to tails), each at least kMinPagesPerSplit pages (shorter CTAs spend
// their time in set-up and merge).
int ChoosePagesPerSplit(int num_ctas_unsplit, int max_pages) {
  const int slots = kCtasPerSmTarget * MultiprocessorCount();
  const int want = (slots + num_ctas_unsplit - 1) / num_ctas_unsplit;
  const int most = (max_pages + kMinPagesPerSplit - 1) / kMinPagesPerSplit;
  const int splits = std::max(1, std::min({want, most, kMaxSplits}));
  return (max_pages + splits - 1) / splits;
}

// The merge counters sit first, at a fixed place: the partials' layout depends on the
// split, and a call must find the counters its predecessor left zeroed.
size_t CountersBytes(size_t ctas) { return (ctas * sizeof(int32_t) + 255) / 256 * 256; }

size_t SplitCap(int32_t max_pages) {
  return static_cast<size_t>(std::min<int64_t>(kMaxSplits, std::max<int32_t>(1, max_pages)));
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
  const int min_pages_per_split = static_cast<int>((max_pages + SplitCap(max_pages) - 1) /
                                                   SplitCap(max_pages));
  a.pages_per_split = options.pages_per_split > 0
                          ? std::max(options.pages_per_split, min_pages_per_split)
                          : ChoosePagesPerSplit(ctas, max_pages);
  a.num_splits = (max_pages + a.pages_per_split - 1) / a.pages_per_split;
  if (a.num_splits > 1) {
    const size_t parts = size_t(a.num_splits) * a.rows * (kv.head_dim + 1);
    const size_t counters = CountersBytes(a.rows);  // rows >= ctas: same as the bound
    const size_t need = counters + parts * sizeof(float);
    if (workspace.size() < need) {
      return absl::InvalidArgumentError(absl::StrCat(
          "workspace has ", workspace.size(), " bytes, ", a.num_splits, " splits need ", need));
    }
    a.counters = reinterpret_cast<int32_t*>(workspace.data());
    a.o_parts = reinterpret_cast<float*>(workspace.data() + counters);
    a.lse_parts = a.o_parts + size_t(a.num_splits) * a.rows * kv.head_dim;
  }
  using DT = std::remove_const_t<typename DeviceType<const T>::type>;
  const int group = options.num_q_heads / kv.num_kv_heads;
  return DispatchGroupLanes<DT>(
      group, kv.head_dim, [&](auto g, auto lanes) -> absl::Status {
        constexpr int kGroup = decltype(g)::value, kLanes = decltype(lanes)::value;
        const dim3 grid(ctas, a.num_splits);
        auto kernel = options.pipelined ? PagedDecodeKernel<DT, kGroup, kLanes, true>
                                        : PagedDecodeKernel<DT, kGroup, kLanes, false>;
        kernel<<<grid, kWarps * 32, 0, stream>>>(Dev(q.data()), Dev(kv.k), Dev(kv.v),
                                                 Dev(out.data()), a);
        return LaunchStatus("PagedDecodeKernel");
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
