// Recall bandwidth on a GPU: (page, head) blocks of 16 KiB, scattered over a pinned
// store of several GiB, copied into the staging slots of every layer, one step's worth
// of requests at a time (default 32 layers x 256 slices x 16 KiB = 128 MiB per step),
// against the contiguous pinned H2D copy measured in the same run (the ceiling).
//
//   in-process rows: CopyStreams (the kvservice's own copy code) from a pinned store
//     in this process (registered with cudaHostRegister, as the kvservice's): one
//     cudaMemcpyAsync per block (the reference system's way); cudaMemcpyBatchAsync
//     over 1 or 2 streams; CPU gather into pinned bounce buffers then large copies,
//     with 8 to 14 threads, with and without prefetching the store; split (gather with
//     a share of each request batched straight from the store meanwhile); the CPU
//     gather alone (no GPU copy), to show what bounds it. Runs 1-6 in bench/RESULTS.md
//     also compared batch attributes, 4 streams, small and cudaHostAlloc'd stores,
//     plain stores and gather beside busy threads; those rows are gone;
//   kvservice rows: the real kvservice process serving a CUDA IPC session of this
//     process (Llama-3.1-8B geometry), each step's 32 recall requests sent over gRPC
//     and timed until the last reply (so gRPC and the service's bookkeeping count),
//     per --service_methods.
// Every row checks sampled blocks bit for bit before it reports. Prints one markdown
// table (what bench/RESULTS.md records).
//
// Then the latency of one recall, what a corrected head waits for per layer: on each
// kvservice row's session, requests of --latency_slices scattered slices sent one at a
// time (Recall, then Wait for the reply), p50 and p99 over 60 of them, against the p50
// of a synchronous in-process pinned H2D copy of the same bytes (contiguous) measured
// in the same run: what the round trip adds to the copy it carries. Single-threaded
// apart from the store fill and the kvservice.
//
// Then what a correction waits for while speculative recalls are in flight: a probe of
// --probe_slices slices sent right behind --probe_behind requests of --slices slices,
// timed until its own reply, sent as an ordinary request and as an urgent one
// (RecallOptions::urgent: the kvservice's urgent lane, --cuda_urgent_copy_method, which
// a row sets with urgent=METHOD; off makes the two the same, a control).
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "client/cuda_kv_client.h"
#include "kvservice/cuda_copy.h"
#include "kvservice/pinned_chunk_allocator.h"
#include "tests/integration/cuda_test_util.h"
#include "tests/integration/kvservice_process.h"

ABSL_FLAG(int32_t, store_gib, 4, "GiB of store the blocks are scattered over.");
ABSL_FLAG(int32_t, layers, 32, "Layers per step (one recall request each).");
ABSL_FLAG(int32_t, slices, 256, "16 KiB (page, head) slices per layer per step.");
ABSL_FLAG(int32_t, steps, 20, "Timed steps per row (after 3 untimed ones).");
ABSL_FLAG(bool, in_process, true, "Run the in-process rows.");
ABSL_FLAG(std::string, latency_slices, "1,16,64,256",
          "Slices per request of the latency rows (one request in flight); empty: none.");
ABSL_FLAG(int32_t, probe_slices, 64,
          "Slices of the probe sent behind a queue of requests (0: no probe rows).");
ABSL_FLAG(int32_t, probe_behind, 4,
          "Requests of --slices slices in flight ahead of each probe (fewer than --layers).");
ABSL_FLAG(std::string, service_methods,
          "gather/8:prefetch=0,gather/8,gather/12,split/8,split/12,split/12:share=0.25,"
          "split/14:share=0.25,batch/2",
          "kvservice rows, METHOD/N[:share=S][:piece=KIB][:prefetch=KIB][:urgent=M] each (a "
          "kvservice per row): gather or split with N threads, or batch over N streams; "
          "share, piece, prefetch and urgent set --cuda_direct_share, "
          "--cuda_gather_piece_kib, --cuda_gather_prefetch_kib and "
          "--cuda_urgent_copy_method.");

namespace freekv {
namespace {

constexpr size_t kSlice = 16 << 10;
constexpr int kWarmup = 3;

#define BENCH_CHECK(expr)                                                       \
  do {                                                                         \
    const absl::Status s_ = (expr);                                            \
    if (!s_.ok()) {                                                            \
      std::fprintf(stderr, "%s failed: %s\n", #expr, s_.ToString().c_str());  \
      std::exit(1);                                                            \
    }                                                                          \
  } while (false)

template <typename T>
T Unwrap(absl::StatusOr<T> value, const char* what) {
  if (!value.ok()) {
    std::fprintf(stderr, "%s failed: %s\n", what, value.status().ToString().c_str());
    std::exit(1);
  }
  return *std::move(value);
}

struct Row {
  std::string way;
  std::string where;
  double gbps = 0;
};

// Round trips of one request of `slices` slices on a kvservice row's session.
struct LatencyRow {
  std::string way;
  int slices = 0;
  double p50_us = 0, p99_us = 0;
};

// A probe's round trips behind a queue of requests, sent ordinary and urgent.
struct ProbeRow {
  std::string way;
  double normal_p50_us = 0, normal_p99_us = 0;
  double urgent_p50_us = 0, urgent_p99_us = 0;
};

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

double Seconds(absl::Time start) { return absl::ToDoubleSeconds(absl::Now() - start); }

double Percentile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(q * v.size()))];
}

std::vector<int> LatencySlices() {
  std::vector<int> out;
  for (absl::string_view n :
       absl::StrSplit(absl::GetFlag(FLAGS_latency_slices), ',', absl::SkipEmpty())) {
    int v = 0;
    if (!absl::SimpleAtoi(n, &v) || v < 1 || v > absl::GetFlag(FLAGS_slices)) {
      std::fprintf(stderr, "--latency_slices: '%s' is not in [1, --slices]\n",
                   std::string(n).c_str());
      std::exit(2);
    }
    out.push_back(v);
  }
  return out;
}

// Random bytes (splitmix64), filled by several threads: the store is GiBs.
void FillRandom(std::byte* data, size_t bytes, uint64_t seed) {
  const int threads = 8;
  const size_t part = bytes / threads / 8 * 8;
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([=] {
      uint64_t x = seed + 0x9E3779B97F4A7C15ull * (t + 1);
      const size_t end = t + 1 == threads ? bytes / 8 * 8 : (t + 1) * part;
      for (size_t i = t * part; i < end; i += 8) {
        x += 0x9E3779B97F4A7C15ull;
        uint64_t z = x;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        z ^= z >> 31;
        std::memcpy(data + i, &z, 8);
      }
    });
  }
  for (std::thread& w : workers) w.join();
}

HostChunk PinnedChunk(size_t bytes) {
  auto pinned = Unwrap(
      PinnedChunkAllocator::Create(std::make_unique<HostChunkAllocator>(), 0), "pin");
  return Unwrap(pinned->Allocate(bytes), "pinned chunk");
}

// Seconds of each of `timed` synchronous contiguous pinned host-to-device copies of
// `bytes` (after `untimed` more), from one pinned chunk of random bytes; the last
// 4 KiB copied are checked.
std::vector<double> ContiguousCopySeconds(size_t bytes, int untimed, int timed) {
  HostChunk host = PinnedChunk(bytes);
  FillRandom(host.data(), bytes, 1);
  auto device = Unwrap(testing::TestDeviceBuffer::Create(bytes), "device buffer");
  CopyOptions plain;
  plain.method = CopyMethod::kPerRun;
  auto copier = Unwrap(CopyStreams::Create(0, plain), "streams");
  std::vector<double> seconds;
  for (int rep = 0; rep < untimed + timed; ++rep) {
    const absl::Time start = absl::Now();
    const DeviceCopy whole[] = {{device->data(), host.data(), bytes}};
    BENCH_CHECK(copier->Enqueue(whole));
    BENCH_CHECK(copier->Synchronize());
    if (rep >= untimed) seconds.push_back(Seconds(start));
  }
  const size_t tail = std::min<size_t>(bytes, 4096);
  std::vector<std::byte> check(tail);
  BENCH_CHECK(testing::CopyBytes(check.data(), device->data() + bytes - tail, tail));
  if (std::memcmp(check.data(), host.data() + bytes - tail, tail) != 0) {
    std::fprintf(stderr, "contiguous copy of %zu bytes: bytes differ\n", bytes);
    std::exit(1);
  }
  return seconds;
}

// The ceiling: one contiguous 1 GiB pinned host-to-device copy, median of 10.
double ContiguousCeiling() {
  const size_t bytes = size_t{1} << 30;
  std::vector<double> gbps;
  for (double s : ContiguousCopySeconds(bytes, 2, 10)) gbps.push_back(bytes / s / 1e9);
  return Median(gbps);
}

// Slot byte offset of (layer, slot) in a staging region of `slot_bytes` slots.
size_t SlotBase(int layer, int slot, size_t slot_bytes) {
  return (2 * size_t(layer) + slot) * slot_bytes;
}

// A pinned store the in-process rows read from (mmap + cudaHostRegister, as the
// kvservice's). Runs 2 and 3 found cudaHostAlloc no different.
struct Store {
  std::string name;
  HostChunk chunk;
  std::byte* data = nullptr;
  size_t bytes = 0;
};

Store MakeStore() {
  Store store;
  store.name = absl::StrFormat("%d GiB registered", absl::GetFlag(FLAGS_store_gib));
  store.bytes = size_t(absl::GetFlag(FLAGS_store_gib)) << 30;
  store.chunk = PinnedChunk(store.bytes);
  store.data = store.chunk.data();
  FillRandom(store.data, store.bytes, 10);
  return store;
}

struct Way {
  std::string name;
  CopyOptions options;
};

// The gather pools the in-process rows use: streaming stores, prefetching 8 KiB ahead
// (GatherPoolOptions' defaults) unless named otherwise.
struct Pools {
  GatherPool eight_unprefetched{{8, absl::Microseconds(500), true, 0}};
  GatherPool eight{{8, absl::Microseconds(500), true}};
  GatherPool twelve{{12, absl::Microseconds(500), true}};
  GatherPool twelve_plain{{12, absl::Microseconds(500), false}};
  GatherPool fourteen{{14, absl::Microseconds(500), true}};
};

// How `pool` writes and prefetches, as the rows name it.
std::string PoolName(const GatherPool& pool) {
  std::string name = pool.streaming_stores() ? "streaming stores" : "plain stores";
  if (pool.prefetch_bytes() == 0) return name + ", no prefetch";
  return absl::StrFormat("%s, prefetch %zu KiB", name, pool.prefetch_bytes() >> 10);
}

CopyOptions Batch(int streams) {
  CopyOptions options;  // kBatch
  options.streams = streams;
  return options;
}

// kGather, or kSplit with `direct_share` when it is given.
CopyOptions Gather(GatherPool& pool, double direct_share = -1, size_t bounce_mib = 8) {
  CopyOptions options;
  options.method = direct_share < 0 ? CopyMethod::kGather : CopyMethod::kSplit;
  options.gather_pool = &pool;
  options.bounce_bytes = bounce_mib << 20;
  if (direct_share >= 0) options.direct_share = direct_share;
  return options;
}

std::vector<Way> InProcessWays(Pools& pools) {
  CopyOptions per_block;
  per_block.method = CopyMethod::kPerRun;
  return {{"cudaMemcpyAsync per block", per_block},
          {"batch, 1 stream", Batch(1)},
          {"batch, 2 streams", Batch(2)},
          {"gather, 8 threads, no prefetch", Gather(pools.eight_unprefetched)},
          {"gather, 8 threads", Gather(pools.eight)},
          {"gather, 12 threads", Gather(pools.twelve)},
          {"gather, 14 threads", Gather(pools.fourteen)},
          {"gather, 12 threads, plain stores", Gather(pools.twelve_plain)},
          {"gather, 12 threads, 2 x 2 MiB bounce", Gather(pools.twelve, -1, 2)},
          {"gather, 12 threads, plain stores, 2 x 2 MiB bounce",
           Gather(pools.twelve_plain, -1, 2)},

          {"split, 8 threads, 1/4 direct", Gather(pools.eight, 0.25)},
          {"split, 8 threads, 1/3 direct", Gather(pools.eight, 1.0 / 3)},
          {"split, 12 threads, 1/4 direct", Gather(pools.twelve, 0.25)},
          {"split, 12 threads, 1/3 direct", Gather(pools.twelve, 1.0 / 3)},
          {"split, 14 threads, 1/4 direct", Gather(pools.fourteen, 0.25)}};
}

// One in-process row: per step, each layer's `slices` random store slices are copied
// to consecutive places of one of its two slots, one Enqueue per layer.
Row InProcessRow(const Way& way, const Store& store, std::byte* staging) {
  const int layers = absl::GetFlag(FLAGS_layers);
  const int slices = absl::GetFlag(FLAGS_slices);
  const size_t slot_bytes = slices * kSlice;
  auto copier = Unwrap(CopyStreams::Create(0, way.options), "streams");
  std::mt19937_64 rng(3);
  std::vector<double> gbps;
  std::vector<std::vector<DeviceCopy>> requests(layers);
  for (int step = 0; step < kWarmup + absl::GetFlag(FLAGS_steps); ++step) {
    for (int layer = 0; layer < layers; ++layer) {
      std::byte* slot = staging + SlotBase(layer, step % 2, slot_bytes);
      requests[layer].clear();
      for (int i = 0; i < slices; ++i) {
        const size_t block = rng() % (store.bytes / kSlice);
        requests[layer].push_back({slot + i * kSlice, store.data + block * kSlice, kSlice});
      }
    }
    const absl::Time start = absl::Now();
    for (const auto& request : requests) BENCH_CHECK(copier->Enqueue(request));
    BENCH_CHECK(copier->Synchronize());
    if (step >= kWarmup) gbps.push_back(layers * slot_bytes / Seconds(start) / 1e9);
  }
  for (const auto& request : requests) {  // sampled bit-for-bit check of the last step
    for (size_t i = 0; i < request.size(); i += 61) {
      std::vector<std::byte> got(kSlice);
      BENCH_CHECK(testing::CopyBytes(got.data(), request[i].dst, kSlice));
      if (std::memcmp(got.data(), request[i].src, kSlice) != 0) {
        std::fprintf(stderr, "in-process %s: a slice differs\n", way.name.c_str());
        std::exit(1);
      }
    }
  }
  return {way.name, "in-process, " + store.name, Median(gbps)};
}

// The CPU half of gather alone: each request's random store slices packed into one
// pinned 8 MiB bounce buffer (halves in turn), no GPU copy. What gather can reach at
// most on this host. `sequential`: the slices are adjacent instead (a plain memory
// copy: what the host's memory moves at most).
Row CpuGatherRow(GatherPool& pool, const Store& store, bool sequential = false) {
  const int layers = absl::GetFlag(FLAGS_layers);
  const int slices = absl::GetFlag(FLAGS_slices);
  auto bounce = Unwrap(testing::TestHostBuffer::Create(2 * slices * kSlice), "bounce");
  std::mt19937_64 rng(7);
  std::vector<std::vector<HostCopy>> requests(layers);
  std::vector<double> gbps;
  for (int step = 0; step < kWarmup + absl::GetFlag(FLAGS_steps); ++step) {
    for (int layer = 0; layer < layers; ++layer) {
      std::byte* half = bounce->data() + (layer % 2) * slices * kSlice;
      requests[layer].clear();
      const size_t first = rng() % (store.bytes / kSlice - slices);
      for (int i = 0; i < slices; ++i) {
        const size_t block = sequential ? first + i : rng() % (store.bytes / kSlice);
        requests[layer].push_back({half + i * kSlice, store.data + block * kSlice, kSlice});
      }
    }
    const absl::Time start = absl::Now();
    for (const auto& request : requests) pool.Copy(request);
    if (step >= kWarmup) gbps.push_back(layers * slices * kSlice / Seconds(start) / 1e9);
  }
  for (const HostCopy& copy : requests.back()) {
    if (std::memcmp(copy.dst, copy.src, kSlice) != 0) {
      std::fprintf(stderr, "CPU gather: a slice differs\n");
      std::exit(1);
    }
  }
  return {absl::StrFormat("CPU %s only (no GPU copy), %d threads, %s",
                          sequential ? "copy of adjacent blocks" : "gather", pool.threads(),
                          PoolName(pool)),
          "in-process, " + store.name, Median(gbps)};
}

std::vector<Row> InProcessRows() {
  const size_t slot_bytes = absl::GetFlag(FLAGS_slices) * kSlice;
  auto staging = Unwrap(
      testing::TestDeviceBuffer::Create(2 * absl::GetFlag(FLAGS_layers) * slot_bytes),
      "staging");
  const Store store = MakeStore();
  Pools pools;
  std::vector<Row> rows;
  for (const Way& way : InProcessWays(pools)) {
    rows.push_back(InProcessRow(way, store, staging->data()));
  }
  for (GatherPool* pool : {&pools.eight_unprefetched, &pools.eight, &pools.twelve,
                           &pools.twelve_plain, &pools.fourteen}) {
    rows.push_back(CpuGatherRow(*pool, store));
  }
  rows.push_back(CpuGatherRow(pools.fourteen, store, /*sequential=*/true));
  return rows;
}

Geometry LlamaGeometry() {
  Geometry g;
  g.num_layers = absl::GetFlag(FLAGS_layers);
  g.num_kv_heads = 8;
  g.head_dim = 128;
  g.page_tokens = 32;
  g.dtype = DType::kBFloat16;
  return g;
}

// Offloads `pages` pages per layer (sequence 1) through the offload region; the page
// at position p of batch b holds pattern[(p * block + b * 4096) % pattern.size()...].
std::vector<std::byte> OffloadStore(CudaKvClient& worker, uint32_t pages) {
  const Geometry& g = worker.client().geometry();
  const size_t block = g.block_bytes();
  const size_t per_batch = worker.regions().offload_bytes() / block;
  std::vector<std::byte> pattern(per_batch * block);
  FillRandom(pattern.data(), pattern.size(), 4);
  std::vector<std::byte> rotated(pattern.size());
  std::vector<OffloadPageRef> refs;
  size_t batch = 0;
  for (uint32_t layer = 0; layer < g.num_layers; ++layer) {
    for (uint32_t page = 0; page < pages; ++page) {
      refs.push_back({1, layer, page, refs.size() * block});
      if (refs.size() < per_batch && !(layer + 1 == g.num_layers && page + 1 == pages)) {
        continue;
      }
      const size_t shift = batch++ * 4096 % pattern.size();
      std::rotate_copy(pattern.begin(), pattern.begin() + shift, pattern.end(),
                       rotated.begin());
      BENCH_CHECK(testing::CopyBytes(worker.regions().offload(), rotated.data(),
                                     refs.size() * block));
      BENCH_CHECK(worker.regions().MarkOffloadWritten(nullptr));
      Unwrap(worker.client().Offload(refs), "Offload");
      refs.clear();
    }
  }
  return pattern;
}

// The bytes of slice (layer, page, head) as OffloadStore wrote them.
const std::byte* ExpectedSlice(const std::vector<std::byte>& pattern, size_t per_batch,
                               size_t block, uint32_t pages, uint32_t layer, uint32_t page,
                               uint32_t head, std::vector<std::byte>* scratch) {
  const size_t index = size_t(layer) * pages + page;
  const size_t shift = (index / per_batch) * 4096 % pattern.size();
  const size_t offset = (index % per_batch) * block + head * kSlice;
  scratch->resize(kSlice);
  for (size_t i = 0; i < kSlice; ++i) {
    (*scratch)[i] = pattern[(offset + i + shift) % pattern.size()];
  }
  return scratch->data();
}

// Sampled bit-for-bit check of a recalled slot against what OffloadStore wrote.
void CheckSlot(CudaKvClient& worker, const std::vector<std::byte>& pattern, uint32_t pages,
               const RecallTicket& t, const std::vector<RecallSliceRef>& slices, int step) {
  const size_t block = worker.client().geometry().block_bytes();
  std::vector<std::byte> slot(worker.regions().slot_bytes());
  BENCH_CHECK(testing::CopyBytes(slot.data(), worker.regions().staging_slot(t.layer, t.slot),
                                 slot.size()));
  std::vector<std::byte> scratch;
  for (size_t i = step; i < slices.size(); i += 29) {
    const RecallSliceRef& s = slices[i];
    const std::byte* want =
        ExpectedSlice(pattern, worker.regions().offload_bytes() / block, block, pages,
                      t.layer, s.page, s.kv_head, &scratch);
    if (std::memcmp(slot.data() + s.slot_offset, want, kSlice) != 0) {
      std::fprintf(stderr, "kvservice row: layer %u slice %zu differs\n", t.layer, i);
      std::exit(1);
    }
  }
}

// The p50 of a synchronous pinned H2D copy of `bytes` (contiguous), in-process: the
// copy a recall of that many bytes carries, without the request around it.
double CopyP50Us(size_t bytes) { return Median(ContiguousCopySeconds(bytes, 5, 60)) * 1e6; }

// One kvservice row: a CUDA IPC session, the store offloaded, `steps` timed steps,
// then the latency rows on the same session (appended to `latency`). `spec` is
// METHOD/N[:share=S][:prefetch=KIB] (gather threads or batch streams, and the
// kvservice flags the settings name).
Row ServiceRow(const std::string& spec, std::vector<LatencyRow>* latency,
               std::vector<ProbeRow>* probes) {
  const std::vector<std::string> settings = absl::StrSplit(spec, ':');
  const std::vector<std::string> parts = absl::StrSplit(settings[0], '/');
  const std::string& method = parts[0];
  const std::string n = parts.size() > 1 ? parts[1] : "1";
  const bool threads = method == "gather" || method == "split";  // N counts threads
  std::vector<std::string> flags = {
      absl::StrFormat("--capacity=%dG", absl::GetFlag(FLAGS_store_gib) + 1),
      "--chunk_bytes=256M", "--cuda_copy_method=" + method,
      (threads ? "--cuda_gather_threads=" : "--cuda_copy_streams=") + n};
  std::string way = absl::StrFormat("kvservice CUDA IPC, %s, %s %s", method, n,
                                    threads ? "threads" : "stream(s)");
  for (size_t i = 1; i < settings.size(); ++i) {
    const std::pair<std::string, std::string> kv = absl::StrSplit(settings[i], '=');
    if (kv.first == "share") {
      flags.push_back("--cuda_direct_share=" + kv.second);
      way += ", " + kv.second + " direct";
    } else if (kv.first == "piece") {
      flags.push_back("--cuda_gather_piece_kib=" + kv.second);
      way += ", pieces of " + kv.second + " KiB";
    } else if (kv.first == "urgent") {
      flags.push_back("--cuda_urgent_copy_method=" + kv.second);
      way += ", urgent lane " + kv.second;
    } else if (kv.first == "prefetch") {
      flags.push_back("--cuda_gather_prefetch_kib=" + kv.second);
      way += kv.second == "0" ? ", no prefetch" : ", prefetch " + kv.second + " KiB";
    } else {
      std::fprintf(stderr,
                   "--service_methods: '%s' in '%s' is not share=S, piece=KIB, "
                   "prefetch=KIB or urgent=METHOD\n",
                   settings[i].c_str(), spec.c_str());
      std::exit(2);
    }
  }
  const Geometry g = LlamaGeometry();
  const int slices = absl::GetFlag(FLAGS_slices);
  const size_t store_bytes = size_t(absl::GetFlag(FLAGS_store_gib)) << 30;
  const uint32_t pages = store_bytes / g.block_bytes() / g.num_layers;
  auto service = Unwrap(testing::KvServiceProcess::Start(flags), "kvservice");
  KvClientOptions options;
  options.target = service->target();
  options.geometry = g;
  options.slot_slices = slices;
  options.offload_blocks = 2048;
  options.client_name = "gpu_recall_bench";
  auto worker = Unwrap(CudaKvClient::Open(options, 0), "CudaKvClient::Open");
  const absl::Time offload_start = absl::Now();
  const std::vector<std::byte> pattern = OffloadStore(*worker, pages);
  std::fprintf(stderr, "kvservice %s: offloaded %u pages/layer in %.1f s\n",
               spec.c_str(), pages, Seconds(offload_start));
  std::mt19937_64 rng(5);
  std::vector<double> gbps;
  std::vector<std::vector<RecallSliceRef>> requests(g.num_layers);
  std::vector<RecallTicket> tickets;
  for (int step = 0; step < kWarmup + absl::GetFlag(FLAGS_steps); ++step) {
    for (auto& request : requests) {
      request.clear();
      for (int i = 0; i < slices; ++i) {
        request.push_back({1, uint32_t(rng() % g.num_kv_heads), uint32_t(rng() % pages),
                           i * kSlice});
      }
    }
    tickets.clear();
    const absl::Time start = absl::Now();
    for (uint32_t layer = 0; layer < g.num_layers; ++layer) {
      tickets.push_back(Unwrap(worker->client().Recall(step, layer, requests[layer]), "Recall"));
    }
    for (const RecallTicket& t : tickets) {
      BENCH_CHECK(worker->client().Wait(t, absl::Now() + absl::Seconds(30)));
    }
    if (step >= kWarmup) gbps.push_back(g.num_layers * slices * kSlice / Seconds(start) / 1e9);
    CheckSlot(*worker, pattern, pages, tickets.back(), requests.back(), step);
    for (const RecallTicket& done : tickets) BENCH_CHECK(worker->client().Release(done));
  }
  // One request in flight at a time, rotating over the layers.
  uint64_t step = kWarmup + absl::GetFlag(FLAGS_steps);
  for (int n : LatencySlices()) {
    std::vector<double> us;
    std::vector<RecallSliceRef> request;
    for (int rep = 0; rep < 65; ++rep, ++step) {
      request.clear();
      for (int i = 0; i < n; ++i) {
        request.push_back({1, uint32_t(rng() % g.num_kv_heads), uint32_t(rng() % pages),
                           i * kSlice});
      }
      const uint32_t layer = rep % g.num_layers;
      const absl::Time start = absl::Now();
      const RecallTicket t = Unwrap(worker->client().Recall(step, layer, request), "Recall");
      BENCH_CHECK(worker->client().Wait(t, absl::Now() + absl::Seconds(30)));
      if (rep >= 5) us.push_back(Seconds(start) * 1e6);
      if (rep % 16 == 0) CheckSlot(*worker, pattern, pages, t, request, 0);
      BENCH_CHECK(worker->client().Release(t));
    }
    latency->push_back({way, n, Median(us), Percentile(us, 0.99)});
  }
  // A probe on the last layer behind requests on the first ones, ordinary then urgent.
  const int probe = absl::GetFlag(FLAGS_probe_slices);
  const int behind = absl::GetFlag(FLAGS_probe_behind);
  if (probe > 0) {
    ProbeRow row{way};
    for (bool urgent : {false, true}) {
      std::vector<double> us;
      for (int rep = 0; rep < 45; ++rep, ++step) {
        for (int r = 0; r <= behind; ++r) {
          auto& request = requests[r];
          request.clear();
          for (int i = 0; i < (r < behind ? slices : probe); ++i) {
            request.push_back({1, uint32_t(rng() % g.num_kv_heads), uint32_t(rng() % pages),
                               i * kSlice});
          }
        }
        tickets.clear();
        for (int r = 0; r < behind; ++r) {
          tickets.push_back(Unwrap(worker->client().Recall(step, r, requests[r]), "Recall"));
        }
        RecallOptions options;
        options.urgent = urgent;
        const absl::Time start = absl::Now();
        const RecallTicket t = Unwrap(
            worker->client().Recall(step, g.num_layers - 1, requests[behind], options),
            "Recall");
        BENCH_CHECK(worker->client().Wait(t, absl::Now() + absl::Seconds(30)));
        if (rep >= 5) us.push_back(Seconds(start) * 1e6);
        if (rep % 8 == 0) CheckSlot(*worker, pattern, pages, t, requests[behind], 0);
        for (const RecallTicket& done : tickets) {
          BENCH_CHECK(worker->client().Wait(done, absl::Now() + absl::Seconds(30)));
        }
        if (rep % 8 == 0 && behind > 0) {
          CheckSlot(*worker, pattern, pages, tickets[0], requests[0], 1);
        }
        tickets.push_back(t);
        for (const RecallTicket& done : tickets) BENCH_CHECK(worker->client().Release(done));
      }
      (urgent ? row.urgent_p50_us : row.normal_p50_us) = Median(us);
      (urgent ? row.urgent_p99_us : row.normal_p99_us) = Percentile(us, 0.99);
    }
    probes->push_back(row);
  }
  return {way,
          absl::StrFormat("2 processes, %d GiB pinned store",
                          absl::GetFlag(FLAGS_store_gib)),
          Median(gbps)};
}

int Main() {
  const double ceiling = ContiguousCeiling();
  std::vector<Row> rows;
  if (absl::GetFlag(FLAGS_in_process)) rows = InProcessRows();
  if (absl::GetFlag(FLAGS_probe_slices) > absl::GetFlag(FLAGS_slices) ||
      absl::GetFlag(FLAGS_probe_behind) < 0 ||
      absl::GetFlag(FLAGS_probe_behind) >= absl::GetFlag(FLAGS_layers)) {
    std::fprintf(stderr, "--probe_slices is at most --slices; --probe_behind is 0 to "
                         "--layers - 1\n");
    return 2;
  }
  std::vector<LatencyRow> latency;
  std::vector<ProbeRow> probes;
  for (absl::string_view method :
       absl::StrSplit(absl::GetFlag(FLAGS_service_methods), ',', absl::SkipEmpty())) {
    rows.push_back(ServiceRow(std::string(method), &latency, &probes));
  }
  std::printf("\nRecall of %d layers x %d scattered 16 KiB (page, head) blocks per step "
              "(%.0f MiB); median of %d steps.\n\n",
              absl::GetFlag(FLAGS_layers), absl::GetFlag(FLAGS_slices),
              absl::GetFlag(FLAGS_layers) * absl::GetFlag(FLAGS_slices) * 16.0 / 1024,
              absl::GetFlag(FLAGS_steps));
  std::printf("| way | where | GB/s | of ceiling |\n| --- | --- | ---: | ---: |\n");
  std::printf("| contiguous 1 GiB pinned H2D (ceiling) | in-process | %.1f | 1.00 |\n",
              ceiling);
  for (const Row& row : rows) {
    std::printf("| %s | %s | %.1f | %.2f |\n", row.way.c_str(), row.where.c_str(), row.gbps,
                row.gbps / ceiling);
  }
  if (!probes.empty()) {
    const int probe = absl::GetFlag(FLAGS_probe_slices);
    std::printf("\nA probe of %d slices (%d KiB) sent right behind %d requests of %d slices "
                "(%d MiB), request sent to its reply read (40 after 5), ordinary and "
                "urgent.\n\n",
                probe, probe * 16, absl::GetFlag(FLAGS_probe_behind),
                absl::GetFlag(FLAGS_slices),
                absl::GetFlag(FLAGS_probe_behind) * absl::GetFlag(FLAGS_slices) / 64);
    std::printf("| way | ordinary p50 us | p99 us | urgent p50 us | p99 us | urgent / "
                "ordinary (p50) |\n| --- | ---: | ---: | ---: | ---: | ---: |\n");
    for (const ProbeRow& r : probes) {
      std::printf("| %s | %.0f | %.0f | %.0f | %.0f | %.2f |\n", r.way.c_str(),
                  r.normal_p50_us, r.normal_p99_us, r.urgent_p50_us, r.urgent_p99_us,
                  r.urgent_p50_us / r.normal_p50_us);
    }
  }
  if (latency.empty()) return 0;
  std::printf("\nOne recall in flight: request sent to reply read (60 after 5), against a "
              "synchronous pinned H2D copy of the same bytes in this process.\n\n");
  std::printf("| way | slices | KiB | p50 us | p99 us | copy p50 us | p50 / copy |\n"
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n");
  std::vector<double> copy_us;
  for (int n : LatencySlices()) copy_us.push_back(CopyP50Us(n * kSlice));
  for (size_t i = 0; i < latency.size(); ++i) {
    const LatencyRow& r = latency[i];
    const double copy = copy_us[i % copy_us.size()];
    std::printf("| %s | %d | %d | %.0f | %.0f | %.0f | %.1f |\n", r.way.c_str(), r.slices,
                r.slices * 16, r.p50_us, r.p99_us, copy, r.p50_us / copy);
  }
  return 0;
}

}  // namespace
}  // namespace freekv

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return freekv::Main();
}
