// Decode-attention rows of the kernel benchmark (decode_bench.h).
#include "bench/kernels/decode_bench.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "bench/kernels/llama_case.h"
#include "kernels/decode_attention.h"

namespace freekv {
namespace bench {
namespace {

using kernels::DecodeOptions;
using kernels::DecodeWorkspaceBytes;
using kernels::PagedDecodeAttentionCuda;
using kernels::PageTable;
using kernels::ToFloat;

// Decode attention over `pages_per_list` full pages per list: `instances` disjoint
// copies of the batch's pages and tables (rotation), built once and timed with
// several option sets. Per-head lists when per_head: the KV heads of a sequence list
// the same pages, each head in its own random order, or all in one (one_order).
struct DecodeCase {
  int batch = 0, pages_per_list = 0, instances = 0;
  bool per_head = true;
  Pool pool;
  std::vector<DeviceBuffer> indptr, indices, last, qs;
  DeviceBuffer out, work;
};

absl::StatusOr<DecodeCase> MakeDecodeCase(int batch, int pages_per_list, bool per_head,
                                          bool one_order = false) {
  DecodeCase c;
  c.batch = batch;
  c.pages_per_list = pages_per_list;
  c.per_head = per_head;
  const int per_instance = batch * pages_per_list;
  c.instances = Instances(per_instance * kHkv * kSliceBytes);
  BENCH_ASSIGN(pool, MakePool(per_instance * c.instances, 10));
  c.pool = std::move(pool);
  std::mt19937 rng(11);
  for (int i = 0; i < c.instances; ++i) {
    std::vector<int32_t> ip{0}, idx, ll;
    const int lists_per_seq = per_head ? kHkv : 1;
    for (int b = 0; b < batch; ++b) {
      std::vector<int32_t> pages(pages_per_list);
      std::iota(pages.begin(), pages.end(), (i * batch + b) * pages_per_list);
      for (int h = 0; h < lists_per_seq; ++h) {
        if (h == 0 || !one_order) std::shuffle(pages.begin(), pages.end(), rng);
        idx.insert(idx.end(), pages.begin(), pages.end());
        ip.push_back(static_cast<int32_t>(idx.size()));
        ll.push_back(kPage);
      }
    }
    BENCH_ASSIGN(a, Upload(ip));
    BENCH_ASSIGN(b, Upload(idx));
    BENCH_ASSIGN(l, Upload(ll));
    BENCH_ASSIGN(q, Upload(RandomBf16(size_t(batch) * kHq * kDim, 100 + i)));
    c.indptr.push_back(std::move(a));
    c.indices.push_back(std::move(b));
    c.last.push_back(std::move(l));
    c.qs.push_back(std::move(q));
  }
  BENCH_ASSIGN(out, DeviceBuffer::Allocate(size_t(batch) * kHq * kDim * 2));
  BENCH_ASSIGN(work, DeviceBuffer::Allocate(
                         DecodeWorkspaceBytes(batch, kHq, kDim, pages_per_list)));
  FREEKV_RETURN_IF_ERROR(work.Zero());
  c.out = std::move(out);
  c.work = std::move(work);
  return c;
}

// Median us per call with `opt` (heads and scale filled in here). The output is
// poisoned first; afterwards it holds the last call's (instance 39 % instances), the
// same for every option set, so outputs of different options can be compared.
absl::StatusOr<double> DecodeUs(cudaStream_t s, DecodeCase& c, DecodeOptions opt) {
  opt.num_q_heads = kHq;
  opt.scale = 1.0f / std::sqrt(float{kDim});
  FREEKV_RETURN_IF_ERROR(c.out.Poison());
  return TimeUs(s, kLaunches, [&](int n) {
    const int i = n % c.instances;
    const PageTable t{c.indptr[i].span<const int32_t>(), c.indices[i].span<const int32_t>(),
                      c.last[i].span<const int32_t>(), c.per_head ? kHkv : 1};
    return PagedDecodeAttentionCuda<BFloat16>(c.qs[i].span<const BFloat16>(), c.pool.view(),
                                              t, opt, c.pages_per_list,
                                              c.out.span<BFloat16>(), {},
                                              c.work.span<uint8_t>(), s);
  });
}

absl::StatusOr<std::vector<float>> DecodeOutput(const DecodeCase& c) {
  std::vector<BFloat16> raw(size_t(c.batch) * kHq * kDim);
  FREEKV_RETURN_IF_ERROR(c.out.Download<BFloat16>(absl::MakeSpan(raw)));
  std::vector<float> out(raw.size());
  std::transform(raw.begin(), raw.end(), out.begin(), [](BFloat16 x) { return ToFloat(x); });
  return out;
}

// ||a - b|| / ||b||; NaN (an unwritten, poisoned element) never passes.
double RelativeL2(const std::vector<float>& a, const std::vector<float>& b) {
  double diff = 0, norm = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    diff += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    norm += double(b[i]) * b[i];
  }
  return std::sqrt(diff / norm);
}

// Fewest bytes: K and V of every listed token, q read and out written.
double DecodeBytes(int batch, int pages_per_list) {
  return batch * kHkv * pages_per_list * kSliceBytes + 2.0 * batch * kHq * kDim * 2;
}

// Rows of one decode case: the default options (the staged kernel), and the register
// kernel reading pages in list order (the previous kernel), then with `sweep` the
// staged kernel at each pages-per-split x stages x sort_pages. Each output is
// compared with the register kernel's (relative L2 < 1e-2, the bf16 test tolerance);
// a mismatch is marked in the table and counted. Returns the default options' time.
absl::StatusOr<double> DecodeRows(cudaStream_t s, DecodeCase& c, const std::string& kernel,
                                  const std::string& cfg, bool sweep, Table& table,
                                  int& mismatches) {
  const double bytes = DecodeBytes(c.batch, c.pages_per_list);
  DecodeOptions registers;
  registers.pipelined = false;
  registers.sort_pages = false;
  BENCH_ASSIGN(reg_us, DecodeUs(s, c, registers));
  BENCH_ASSIGN(ref, DecodeOutput(c));
  auto timed = [&](const DecodeOptions& opt,
                   const std::string& note) -> absl::StatusOr<double> {
    BENCH_ASSIGN(us, DecodeUs(s, c, opt));
    BENCH_ASSIGN(got, DecodeOutput(c));
    const double err = RelativeL2(got, ref);
    const bool ok = err < 1e-2;  // false for NaN
    if (!ok) ++mismatches;
    table.Add({kernel, cfg, us, bytes,
               ok ? note : absl::StrFormat("%s: MISMATCH, relative L2 %.3g", note, err)});
    return us;
  };
  BENCH_ASSIGN(us, timed(DecodeOptions(), "default options (staged kernel)"));
  table.Add({kernel, cfg, reg_us, bytes, "register loads, list order (previous kernel)"});
  if (!sweep) return us;
  for (bool sort : {true, false}) {
    for (int pages : {2, 4, 8, 16, 32, 64}) {
      for (int stages : {2, 3}) {
        DecodeOptions opt;
        opt.pages_per_split = pages;
        opt.stages = stages;
        opt.sort_pages = sort;
        FREEKV_RETURN_IF_ERROR(
            timed(opt, absl::StrFormat("staged, %d pages/split, %d stages, sort %d", pages,
                                       stages, sort))
                .status());
      }
    }
  }
  return us;
}

}  // namespace

absl::StatusOr<DecodeBenchResult> DecodeBench(cudaStream_t s, bool sweep, Table& table) {
  DecodeBenchResult result;
  for (int b : {1, 4, 8, 16, 32}) {
    BENCH_ASSIGN(c, MakeDecodeCase(b, kBudgetPages, /*per_head=*/true));
    BENCH_ASSIGN(us, DecodeRows(s, c, "sparse decode attn",
                                absl::StrFormat("B=%d, 2048 tok per KV head", b), sweep,
                                table, result.mismatches));
    result.sparse_us[b] = us;
  }
  for (int b : {8, 32}) {  // the heads of a sequence list their pages in one order
    BENCH_ASSIGN(c, MakeDecodeCase(b, kBudgetPages, /*per_head=*/true, /*one_order=*/true));
    FREEKV_RETURN_IF_ERROR(DecodeRows(s, c, "sparse decode, one order",
                                      absl::StrFormat("B=%d, 2048 tok per KV head", b),
                                      /*sweep=*/false, table, result.mismatches)
                               .status());
  }
  for (int b : {1, 8}) {
    BENCH_ASSIGN(c, MakeDecodeCase(b, 1024, /*per_head=*/false));
    FREEKV_RETURN_IF_ERROR(DecodeRows(s, c, "full decode attn",
                                      absl::StrFormat("B=%d, 32K ctx", b), /*sweep=*/false,
                                      table, result.mismatches)
                               .status());
  }
  return result;
}

}  // namespace bench
}  // namespace freekv
