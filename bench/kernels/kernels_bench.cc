// GPU benchmark of the FreeKV kernels at Llama-3.1-8B geometry (32 query heads, 8 KV
// heads, head_dim 128, pages of 32 tokens, bf16). Prints, for each kernel, the time
// per call, the achieved bandwidth (fewest bytes read + written over the time) and
// its ratio to the device-to-device copy measured in the same run (bytes read +
// written), then the selection-to-attention time ratios. Inputs are random; every
// case rotates over enough distinct buffers (>= kFootprint bytes) that L2 (50 MB on
// H100) cannot hold them, and launches are replayed from a CUDA graph. The decode
// attention rows come from decode_bench.cc. Flags: --only=decode (decode rows only),
// --sweep (also every split x ring depth of the staged decode kernel).
#include <algorithm>
#include <cstdio>
#include <map>
#include <numeric>
#include <random>
#include <vector>

#include "bench/kernels/bench_util.h"
#include "bench/kernels/decode_bench.h"
#include "bench/kernels/llama_case.h"
#include "kernels/digest.h"
#include "kernels/layout.h"
#include "kernels/score.h"
#include "kernels/select.h"

namespace freekv {
namespace bench {
namespace {

using namespace kernels;  // NOLINT: the benchmark exercises this whole namespace

absl::StatusOr<double> CopyCeilingGbps(cudaStream_t s) {
  const size_t bytes = size_t{256} << 20;
  BENCH_ASSIGN(src, DeviceBuffer::Allocate(bytes));
  BENCH_ASSIGN(dst, DeviceBuffer::Allocate(bytes));
  FREEKV_RETURN_IF_ERROR(src.CopyFromHost(RandomBf16(bytes / 2, 1).data(), bytes));
  BENCH_ASSIGN(us, TimeUs(s, 8, [&](int) {
                 return CopyDeviceToDevice(dst.data(), src.data(), bytes, s);
               }));
  return 2.0 * bytes / (us * 1e3);
}

// Recall: `slices` (page, head) slices from HND staging into per-head NHD slots.
absl::StatusOr<double> HndToNhdUs(cudaStream_t s, int slices) {
  const int instances = Instances(2 * slices * kSliceBytes);
  const int total = slices * instances;
  BENCH_ASSIGN(pool, MakePool((total + kHkv - 1) / kHkv, 20));
  BENCH_ASSIGN(staging, Upload(RandomBf16(total * 2 * kSliceElems, 21)));
  std::vector<int32_t> slots(size_t(pool.pages) * kHkv);
  std::iota(slots.begin(), slots.end(), 0);
  std::shuffle(slots.begin(), slots.end(), std::mt19937(22));
  std::vector<int32_t> pages(total), heads(total);
  for (int i = 0; i < total; ++i) {
    pages[i] = slots[i] / kHkv;
    heads[i] = slots[i] % kHkv;
  }
  BENCH_ASSIGN(dpages, Upload(pages));
  BENCH_ASSIGN(dheads, Upload(heads));
  return TimeUs(s, kLaunches, [&](int n) {
    const size_t i = n % instances;
    return HndToNhdCuda<BFloat16>(
        staging.span<const BFloat16>().subspan(i * slices * 2 * kSliceElems, slices * 2 * kSliceElems),
        dpages.span<const int32_t>().subspan(i * slices, slices),
        dheads.span<const int32_t>().subspan(i * slices, slices), pool.mutable_view(), s);
  });
}

// Offload: `pages` whole NHD pages into HND blocks.
absl::StatusOr<double> NhdToHndUs(cudaStream_t s, int pages) {
  const int instances = Instances(2 * pages * kHkv * kSliceBytes);
  BENCH_ASSIGN(pool, MakePool(pages * instances, 30));
  BENCH_ASSIGN(blocks, DeviceBuffer::Allocate(size_t(pages) * instances * 2 * kPageElems * 2));
  std::vector<int32_t> ids(size_t(pages) * instances);
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), std::mt19937(31));
  BENCH_ASSIGN(dids, Upload(ids));
  return TimeUs(s, kLaunches, [&](int n) {
    const size_t i = n % instances;
    return NhdToHndCuda<BFloat16>(
        pool.view(), dids.span<const int32_t>().subspan(i * pages, pages),
        blocks.span<BFloat16>().subspan(i * pages * 2 * kPageElems, pages * 2 * kPageElems), s);
  });
}

// Digests of a 32K-token prefill: 1024 full pages.
absl::StatusOr<double> DigestUs(cudaStream_t s, int pages) {
  const int instances = Instances(pages * kPageElems * 2.0);
  BENCH_ASSIGN(pool, MakePool(pages * instances, 40));
  const size_t per_seq = size_t(pages) * kHkv * 2 * kDim;
  BENCH_ASSIGN(table, DeviceBuffer::Allocate(per_seq * instances * 2));
  std::vector<int32_t> ids(size_t(pages) * instances), seqs(ids.size()), logical(ids.size());
  for (size_t j = 0; j < ids.size(); ++j) {
    ids[j] = static_cast<int32_t>(j);
    seqs[j] = static_cast<int32_t>(j / pages);
    logical[j] = static_cast<int32_t>(j % pages);
  }
  BENCH_ASSIGN(dids, Upload(ids));
  BENCH_ASSIGN(dseqs, Upload(seqs));
  BENCH_ASSIGN(dlog, Upload(logical));
  const DigestTable<BFloat16> view{table.span<BFloat16>(), instances, pages, kHkv, kDim};
  return TimeUs(s, kLaunches, [&](int n) {
    const size_t i = n % instances;
    const DigestJobs jobs{dids.span<const int32_t>().subspan(i * pages, pages),
                          dseqs.span<const int32_t>().subspan(i * pages, pages),
                          dlog.span<const int32_t>().subspan(i * pages, pages)};
    return PageDigestCuda<BFloat16>(pool.view(), jobs, view, s);
  });
}

struct SelectionTimes {
  double score_us = 0, select_us = 0, both_us = 0;
  double score_bytes = 0, select_bytes = 0;
};

// Score + group select (+ resident diff) over the candidates of a `context`-token
// sequence: every page between 16 sink and 16 window pages.
absl::StatusOr<SelectionTimes> SelectionUs(cudaStream_t s, int batch, int context) {
  const int max_pages = context / kPage;
  const int count = max_pages - kSinkPages - kWindowPages;
  const size_t per_seq = size_t(max_pages) * kHkv * 2 * kDim;
  const int instances = Instances(batch * per_seq * 2.0);
  BENCH_ASSIGN(digests, Upload(RandomBf16(per_seq * batch * instances, 50)));
  BENCH_ASSIGN(q, Upload(RandomBf16(size_t(batch) * kHq * kDim * instances, 51)));
  BENCH_ASSIGN(begin, Upload(std::vector<int32_t>(batch, kSinkPages)));
  BENCH_ASSIGN(cnt, Upload(std::vector<int32_t>(batch, count)));
  std::vector<int32_t> resident(size_t(batch) * kHkv * kCapacity);
  std::mt19937 rng(52);
  for (int32_t& r : resident) r = kSinkPages + static_cast<int32_t>(rng() % count);
  BENCH_ASSIGN(dres, Upload(resident));
  const size_t rows = size_t(batch) * kHkv;
  BENCH_ASSIGN(scores, DeviceBuffer::Allocate(size_t(batch) * kHq * count * 4));
  BENCH_ASSIGN(group, DeviceBuffer::Allocate(rows * count * 4));
  BENCH_ASSIGN(sel, DeviceBuffer::Allocate(rows * kSelected * 4));
  BENCH_ASSIGN(pages, DeviceBuffer::Allocate(rows * kSelected * 4));
  BENCH_ASSIGN(slots, DeviceBuffer::Allocate(rows * kSelected * 4));
  BENCH_ASSIGN(num, DeviceBuffer::Allocate(rows * 4));
  const Candidates cand{begin.span<const int32_t>(), cnt.span<const int32_t>(), count};
  const float scale = 1.0f / std::sqrt(float{kDim});
  auto score = [&](int n) {
    const size_t i = n % instances;
    const DigestTable<const BFloat16> table{
        digests.span<const BFloat16>().subspan(i * batch * per_seq, batch * per_seq), batch,
        max_pages, kHkv, kDim};
    return PageScoreCuda<BFloat16>(
        q.span<const BFloat16>().subspan(i * batch * kHq * kDim, batch * kHq * kDim), kHq,
        table, cand, scale, {}, scores.span<float>(), s);
  };
  auto select = [&](int) {
    return GroupSelectCuda(scores.span<const float>(), kHq, kHkv, cand, kSelected,
                           dres.span<const int32_t>(), kCapacity, {}, group.span<float>(),
                           sel.span<int32_t>(),
                           {pages.span<int32_t>(), slots.span<int32_t>(), num.span<int32_t>()},
                           s);
  };
  SelectionTimes t;
  BENCH_ASSIGN(a, TimeUs(s, kLaunches, score));
  BENCH_ASSIGN(b, TimeUs(s, kLaunches, select));
  BENCH_ASSIGN(c, TimeUs(s, kLaunches, [&](int n) {
                 FREEKV_RETURN_IF_ERROR(score(n));
                 return select(n);
               }));
  t.score_us = a;
  t.select_us = b;
  t.both_us = c;
  t.score_bytes = double(batch) * kHkv * count * 2 * kDim * 2 + double(batch) * kHq * count * 4;
  t.select_bytes = double(batch) * kHq * count * 4 + double(rows) * count * 4;
  return t;
}

// The decode rows compare every option set's output with the register kernel's.
absl::Status DecodeVerdict(int mismatches) {
  if (mismatches == 0) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(
      mismatches, " decode option sets disagree with the register kernel's output"));
}

struct Flags {
  bool only_decode = false;  // --only=decode: skip layout, digest and selection
  bool sweep = false;        // --sweep: time the staged kernel's splits x stages
};

absl::Status Run(const Flags& flags) {
  BENCH_ASSIGN(info, GetDeviceInfo());
  std::printf("device: %s, %d SMs, L2 %.0f MB, %.1f GB, sm_%d%d\n", info.name.c_str(),
              info.sm_count, info.l2_bytes / 1e6, info.global_bytes / 1e9, info.compute_major,
              info.compute_minor);
  BENCH_ASSIGN(stream, CudaStream::Create());
  const cudaStream_t s = stream.get();
  BENCH_ASSIGN(ceiling, CopyCeilingGbps(s));
  std::printf("ceiling: device-to-device copy %.0f GB/s (read + write; %.0f GB/s copied)\n",
              ceiling, ceiling / 2);
  Table table(ceiling);
  BENCH_ASSIGN(decode, DecodeBench(s, flags.sweep, table));
  const std::map<int, double>& attention_us = decode.sparse_us;
  if (flags.only_decode) {
    table.Print();
    return DecodeVerdict(decode.mismatches);
  }
  for (int b : {1, 8, 32}) {
    const int slices = b * kHkv * kSelected;
    BENCH_ASSIGN(us, HndToNhdUs(s, slices));
    table.Add({"HND->NHD (recall)", absl::StrFormat("B=%d, %d slices of 16 KiB", b, slices), us,
               2.0 * slices * kSliceBytes, "all selected pages"});
  }
  for (int b : {1, 8, 32}) {
    const int pages = b * kBudgetPages;
    BENCH_ASSIGN(us, NhdToHndUs(s, pages));
    table.Add({"NHD->HND (offload)", absl::StrFormat("%d pages of 128 KiB", pages), us,
               2.0 * pages * kHkv * kSliceBytes, ""});
  }
  BENCH_ASSIGN(digest_us, DigestUs(s, 1024));
  table.Add({"page digest", "1024 pages (32K prefill)", digest_us,
             1024.0 * kPageElems * 2 + 1024.0 * kHkv * 2 * kDim * 2, "reads K only"});
  std::vector<std::string> ratios;
  for (int context : {32768, 131072}) {
    for (int b : {1, 4, 8, 16, 32}) {
      BENCH_ASSIGN(t, SelectionUs(s, b, context));
      const std::string cfg = absl::StrFormat("B=%d, %dK ctx", b, context / 1024);
      table.Add({"page score", cfg, t.score_us, t.score_bytes, ""});
      table.Add({"group select+diff", cfg, t.select_us, t.select_bytes, "softmax, top-32, diff"});
      const double ratio = t.both_us / attention_us.at(b);
      table.Add({"score+select", cfg, t.both_us, t.score_bytes + t.select_bytes,
                 absl::StrFormat("%.0f%% of sparse attn", 100 * ratio)});
      ratios.push_back(absl::StrFormat("%s: %.1f us = %.0f%% of attention %.1f us", cfg,
                                       t.both_us, 100 * ratio, attention_us.at(b)));
    }
  }
  table.Print();
  std::printf("\nselection / sparse attention time (goal < 10%%):\n");
  for (const std::string& r : ratios) std::printf("  %s\n", r.c_str());
  return DecodeVerdict(decode.mismatches);
}

}  // namespace
}  // namespace bench
}  // namespace freekv

int main(int argc, char** argv) {
  freekv::bench::Flags flags;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--only=decode") {
      flags.only_decode = true;
    } else if (arg == "--sweep") {
      flags.sweep = true;
    } else {
      std::fprintf(stderr, "kernels_bench: unknown flag %s (flags: --only=decode, --sweep)\n",
                   arg.c_str());
      return 2;
    }
  }
  const absl::Status status = freekv::bench::Run(flags);
  if (!status.ok()) {
    std::fprintf(stderr, "kernels_bench failed: %s\n", status.ToString().c_str());
    return 1;
  }
  return 0;
}
