// Recall throughput over UCX between two processes on this machine, against a plain
// memcpy of the same bytes in the same run.
//
// A child process (client/ucx_regions_child.h) plays the worker: it owns the staging
// region, 2 slots of the largest request, mapped by UCX. This process plays the
// kvservice: a store of random 16 KiB blocks (HND (page, head) slices) registered with
// UCX, and a UcxTransportFactory session to the child. Each request recalls `blocks`
// slices into one slot, as a decode step does (32 selected pages x 8 KV heads = 256
// slices = 4 MiB):
//   scattered   random store blocks, one run (one ucp_put_nbx) each
//   contiguous  adjacent store blocks, merged into one run
// Requests are pushed and waited for one at a time (depth 1: a step that waits for its
// recall) or two in flight into alternating slots (depth 2: double buffering). The
// memcpy column copies the same runs of the same requests into a local buffer; the two
// take turns in short rounds so that other load on the machine falls on both alike.
// Every case ends by reading the child's staging back and comparing the last
// request's bytes.
//
//   bazel run -c opt //bench:ucx_recall_bench -- [--transports=tcp] [--store_mib=512]
//       [--seconds_per_case=2] [--rounds=10]
#include <sys/utsname.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <deque>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "client/ucx_regions_child.h"
#include "kvservice/chunk_allocator.h"
#include "kvservice/ucx_session_transport.h"
#include "kvservice/ucx_test_util.h"
#include "kvservice/ucx_transport.h"

ABSL_FLAG(std::string, transports, "",
          "UCX transports for both processes (UCX_TLS syntax); empty: UCX's default");
ABSL_FLAG(int, store_mib, 512, "Store size in MiB (random blocks are drawn from it)");
ABSL_FLAG(double, seconds_per_case, 2.0,
          "Time each case spends on each side (UCX, memcpy), over all rounds");
ABSL_FLAG(int, rounds, 10, "Turns UCX and memcpy take within a case");

namespace freekv {
namespace {

constexpr size_t kBlockBytes = 16 << 10;  // 2 * 32 tokens * 128 dims * 2 bytes
constexpr uint32_t kBatchBlocks[] = {64, 256, 1024};
constexpr uint32_t kMaxBlocks = 1024;
constexpr uint64_t kSlotBytes = kMaxBlocks * kBlockBytes;
constexpr int kDistinctRequests = 32;

struct Case {
  bool contiguous;
  uint32_t blocks;
  int depth;
};

// What one side (UCX or memcpy) did over all rounds of a case.
struct Tally {
  double bytes = 0;
  double seconds = 0;
  int requests = 0;
  std::vector<double> latencies_us;  // per request
  double gbps() const { return seconds > 0 ? bytes / seconds / 1e9 : 0; }
};

// kDistinctRequests requests of `c.blocks` slices; request i goes to slot i % 2.
std::vector<std::vector<CopyRun>> MakeRequests(const Case& c, std::byte* store,
                                               size_t store_blocks,
                                               std::mt19937_64& rng) {
  std::vector<std::vector<CopyRun>> requests(kDistinctRequests);
  for (int i = 0; i < kDistinctRequests; ++i) {
    const uint64_t slot = (i % 2) * kSlotBytes;
    if (c.contiguous) {
      const size_t first = rng() % (store_blocks - c.blocks);
      requests[i].push_back({store + first * kBlockBytes, slot, c.blocks * kBlockBytes});
      continue;
    }
    for (uint32_t b = 0; b < c.blocks; ++b) {
      requests[i].push_back({store + (rng() % store_blocks) * kBlockBytes,
                             slot + b * kBlockBytes, kBlockBytes});
    }
  }
  return requests;
}

double Percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(q * v.size()))];
}

// Pushes requests in turn, at most `depth` in flight, for about `seconds`.
absl::Status PushFor(SessionTransport& transport,
                     const std::vector<std::vector<CopyRun>>& requests, int depth,
                     double seconds, uint64_t request_bytes, Tally* tally) {
  absl::Mutex mu;
  int in_flight = 0;
  absl::Status failure;
  const absl::Time start = absl::Now();
  const absl::Time end = start + absl::Seconds(seconds);
  int issued = 0;
  while (absl::Now() < end || issued < 2 * depth) {
    {
      absl::MutexLock lock(&mu);
      auto has_room = [&] { return in_flight < depth; };
      mu.Await(absl::Condition(&has_room));
      if (!failure.ok()) break;
      ++in_flight;
    }
    const absl::Time pushed = absl::Now();
    transport.Push(
        requests[tally->requests++ % requests.size()], [&, pushed](absl::Status s) {
          absl::MutexLock lock(&mu);
          if (!s.ok() && failure.ok()) failure = s;
          tally->latencies_us.push_back(absl::ToDoubleMicroseconds(absl::Now() - pushed));
          --in_flight;
        });
    ++issued;
  }
  absl::MutexLock lock(&mu);
  auto drained = [&] { return in_flight == 0; };
  mu.Await(absl::Condition(&drained));
  tally->seconds += absl::ToDoubleSeconds(absl::Now() - start);
  tally->bytes += double(issued) * request_bytes;
  return failure;
}

// The same runs copied with memcpy into a local buffer of the staging region's size.
void CopyFor(const std::vector<std::vector<CopyRun>>& requests, std::byte* destination,
             double seconds, uint64_t request_bytes, Tally* tally) {
  const absl::Time start = absl::Now();
  const absl::Time end = start + absl::Seconds(seconds);
  int done = 0;
  while (absl::Now() < end || done < 4) {
    const absl::Time begin = absl::Now();
    for (const CopyRun& run : requests[tally->requests++ % requests.size()]) {
      std::memcpy(destination + run.remote_offset, run.local, run.bytes);
    }
    tally->latencies_us.push_back(absl::ToDoubleMicroseconds(absl::Now() - begin));
    ++done;
  }
  tally->seconds += absl::ToDoubleSeconds(absl::Now() - start);
  tally->bytes += double(done) * request_bytes;
}

// The last request pushed, compared with what the child's staging holds.
absl::StatusOr<bool> Verify(UcxRegionsChild& child, const std::vector<CopyRun>& last) {
  absl::StatusOr<std::vector<std::byte>> staging = child.ReadStaging();
  if (!staging.ok()) return staging.status();
  for (const CopyRun& run : last) {
    if (std::memcmp(staging->data() + run.remote_offset, run.local, run.bytes) != 0) {
      return false;
    }
  }
  return true;
}

std::string MachineLine() {
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line, model = "unknown CPU";
  while (std::getline(cpuinfo, line)) {
    if (line.rfind("model name", 0) == 0) {
      model = line.substr(line.find(':') + 2);
      break;
    }
  }
  utsname host = {};
  uname(&host);
  return absl::StrFormat("%s, %d CPUs, %s %s", model, std::thread::hardware_concurrency(),
                         host.sysname, host.release);
}

struct Setup {
  std::unique_ptr<UcxRegionsChild> child;
  std::unique_ptr<UcxTransportFactory> factory;
  std::unique_ptr<ChunkAllocator> chunks;
  HostChunk store;
  std::unique_ptr<SessionTransport> transport;
};

absl::StatusOr<Setup> MakeSetup(const std::string& transports, size_t store_bytes) {
  Setup s;
  UcxRegionsChildOptions child_options;
  child_options.staging_bytes = 2 * kSlotBytes;
  child_options.offload_bytes = 1 << 20;
  child_options.transports = transports;
  auto child = UcxRegionsChild::Spawn(child_options);
  if (!child.ok()) return child.status();
  s.child = *std::move(child);
  auto factory = UcxTransportFactory::Create({transports});
  if (!factory.ok()) return factory.status();
  s.factory = *std::move(factory);
  s.chunks = s.factory->WrapChunkAllocator(std::make_unique<HostChunkAllocator>());
  auto store = s.chunks->Allocate(store_bytes);
  if (!store.ok()) return store.status();
  s.store = *std::move(store);
  FillPseudoRandom(absl::MakeSpan(s.store.data(), s.store.size()), 42);
  auto transport = s.factory->Connect(UcxPeerOf(s.child->descriptor()));
  if (!transport.ok()) return transport.status();
  s.transport = *std::move(transport);
  return s;
}

// One contiguous push over the whole staging region: the service's mapping of the
// worker's segment is faulted in once, as in a long-running session, not per case.
absl::Status WarmUp(Setup& s) {
  std::vector<std::vector<CopyRun>> all = {{{s.store.data(), 0, 2 * kSlotBytes}}};
  Tally ignored;
  return PushFor(*s.transport, all, 1, 0, 2 * kSlotBytes, &ignored);
}

// UCX and memcpy take turns in short rounds, so that load from other processes on
// the machine falls on both alike; returns false if the case failed.
bool RunCase(Setup& setup, const Case& c, std::byte* local, double seconds,
             std::mt19937_64& rng) {
  const auto requests =
      MakeRequests(c, setup.store.data(), setup.store.size() / kBlockBytes, rng);
  const uint64_t bytes = uint64_t{c.blocks} * kBlockBytes;
  const int rounds = absl::GetFlag(FLAGS_rounds);
  Tally ucx, copy;
  for (int round = 0; round < rounds; ++round) {
    if (absl::Status s =
            PushFor(*setup.transport, requests, c.depth, seconds / rounds, bytes, &ucx);
        !s.ok()) {
      std::fprintf(stderr, "push: %s\n", s.ToString().c_str());
      return false;
    }
    CopyFor(requests, local, seconds / rounds, bytes, &copy);
  }
  const int last = (ucx.requests - 1) % kDistinctRequests;
  absl::StatusOr<bool> verified = Verify(*setup.child, requests[last]);
  std::printf("| %s | %u | %.0f | %d | %.2f | %.2f | %.2f | %.0f | %.0f | %.0f | %s |\n",
              c.contiguous ? "contiguous" : "scattered", c.blocks, bytes / 1048576.0,
              c.depth, ucx.gbps(), copy.gbps(), ucx.gbps() / copy.gbps(),
              Percentile(ucx.latencies_us, 0.5), Percentile(ucx.latencies_us, 0.99),
              Percentile(copy.latencies_us, 0.5),
              verified.ok() && *verified ? "yes" : "NO");
  std::fflush(stdout);
  return verified.ok() && *verified;
}

int Run() {
  const std::string transports = absl::GetFlag(FLAGS_transports);
  const size_t store_bytes = static_cast<size_t>(absl::GetFlag(FLAGS_store_mib)) << 20;
  const double seconds = absl::GetFlag(FLAGS_seconds_per_case);
  absl::StatusOr<Setup> setup = MakeSetup(transports, store_bytes);
  absl::Status ready = setup.ok() ? WarmUp(*setup) : setup.status();
  if (!ready.ok()) {
    std::fprintf(stderr, "setup: %s\n", ready.ToString().c_str());
    return 1;
  }
  std::vector<std::byte> local(2 * kSlotBytes);
  FillPseudoRandom(absl::MakeSpan(local), 9);  // no first-touch faults while timing
  std::printf("UCX recall, 16 KiB blocks, store %zu MiB, transports: %s\nmachine: %s\n",
              store_bytes >> 20, transports.empty() ? "UCX default" : transports.c_str(),
              MachineLine().c_str());
  std::printf("%s",
              dynamic_cast<UcxSessionTransport&>(*setup->transport).Describe().c_str());
  std::printf(
      "\n| pattern | blocks | MiB/req | depth | UCX GB/s | memcpy GB/s | UCX/memcpy "
      "| UCX p50 us | UCX p99 us | memcpy p50 us | verified |\n"
      "|---|---|---|---|---|---|---|---|---|---|---|\n");
  std::mt19937_64 rng(1);
  for (bool contiguous : {false, true}) {
    for (uint32_t blocks : kBatchBlocks) {
      for (int depth : {1, 2}) {
        if (!RunCase(*setup, Case{contiguous, blocks, depth}, local.data(), seconds,
                     rng)) {
          return 1;
        }
      }
    }
  }
  auto child_cpu = setup->child->ProgressCpuTime();
  std::printf("\nCPU: service UCX engine thread %s, worker progress thread %s\n",
              absl::FormatDuration(setup->factory->engine_cpu_time()).c_str(),
              child_cpu.ok() ? absl::FormatDuration(*child_cpu).c_str() : "?");
  setup->transport.reset();
  return *setup->child->Quit() == 0 ? 0 : 1;
}

}  // namespace
}  // namespace freekv

int main(int argc, char** argv) {
  freekv::RunUcxRegionsChildIfAsked(argc, argv);
  absl::ParseCommandLine(argc, argv);
  return freekv::Run();
}
