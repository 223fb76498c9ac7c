// kvservice: the node-local KV-cache tier. Owns the HND page store in host memory and
// the recall pipeline; workers talk to it over gRPC (unix socket, TCP optional) and
// receive pages over UCX into memory they registered, or, built with CUDA, over CUDA
// IPC into their device memory (the store is then pinned).
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "common/byte_size.h"
#include "common/log.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "kvservice/block_allocator.h"
#include "kvservice/copy_method.h"
#include "kvservice/cuda_support.h"
#include "kvservice/kv_service.h"
#include "kvservice/metrics.h"
#include "kvservice/session_registry.h"
#include "kvservice/transport_router.h"
#include "kvservice/ucx_transport.h"
#include "kvservice/usable_cpus.h"

ABSL_FLAG(std::string, socket, "/run/freekv/kvservice.sock",
          "Unix domain socket the gRPC API listens on (created with mode 0660; its "
          "directory is created if missing). Empty disables it.");
ABSL_FLAG(std::string, listen, "",
          "Optional TCP address for the gRPC API, HOST:PORT (e.g. 127.0.0.1:50051).");
ABSL_FLAG(std::string, metrics_address, "0.0.0.0:9464",
          "HOST:PORT of the Prometheus exposer (path /metrics). Empty disables it.");
ABSL_FLAG(freekv::ByteSize, capacity, freekv::ByteSize{uint64_t{4} << 30},
          "Page store capacity in bytes; suffixes K, M, G, T (binary), e.g. 64G.");
ABSL_FLAG(freekv::ByteSize, chunk_bytes, freekv::ByteSize{uint64_t{64} << 20},
          "Bytes per host-memory chunk of the store (memory is taken chunk by chunk).");
ABSL_FLAG(int32_t, default_lease_ms, 10000,
          "Lease given to sessions that ask for none; a session that neither "
          "heartbeats nor calls within it is reclaimed and its pages freed.");
ABSL_FLAG(int32_t, max_lease_ms, 600000, "Longest lease a session may ask for.");
ABSL_FLAG(int32_t, reap_interval_ms, 500, "How often expired leases are reclaimed.");
ABSL_FLAG(int32_t, max_sessions, 1024, "Sessions open at once, at most.");
ABSL_FLAG(int32_t, max_request_blocks, 65536,
          "Pages (offload) or slices (recall) one request may name, at most.");
ABSL_FLAG(double, link_ceiling_bytes_per_second, 0,
          "The recall link's measured ceiling, exported for dashboards (0: unknown).");
namespace freekv {
// --pin_store: auto pins when the kvservice is built with CUDA and sees a GPU.
enum class PinStore { kAuto, kTrue, kFalse };
bool AbslParseFlag(absl::string_view text, PinStore* value, std::string* error) {
  for (const auto& [name, pin] : {std::pair<const char*, PinStore>{"auto", PinStore::kAuto},
                                  {"true", PinStore::kTrue},
                                  {"false", PinStore::kFalse}}) {
    if (text == name) {
      *value = pin;
      return true;
    }
  }
  *error = "use auto, true or false";
  return false;
}
std::string AbslUnparseFlag(PinStore value) {
  return value == PinStore::kAuto ? "auto" : value == PinStore::kTrue ? "true" : "false";
}
}  // namespace freekv

ABSL_FLAG(freekv::PinStore, pin_store, freekv::PinStore::kAuto,
          "auto, true or false: pin the store's chunks for DMA (cudaHostRegister), as "
          "CUDA IPC recall needs for full speed. auto pins when the kvservice is built "
          "with CUDA and sees a GPU; true fails start-up without them. A chunk that "
          "cannot be pinned is an error, never pageable memory.");
ABSL_FLAG(std::string, cuda_copy_method, "gather",
          "CUDA IPC recalls: 'gather' (CPU threads pack every block into pinned bounce "
          "buffers sent as large copies; the fastest while the worker decodes on the "
          "H100), 'split' (a share goes straight from the store in one "
          "cudaMemcpyBatchAsync meanwhile; faster for recalls alone, slower under "
          "decode), 'batch' (one cudaMemcpyBatchAsync per request), 'auto' (batch for "
          "requests of at most --cuda_direct_max_blocks copies, gather for larger ones) "
          "or 'per_run' (one cudaMemcpyAsync per run; benchmarks only). "
          "bench/RESULTS.md has them all.");
ABSL_FLAG(std::string, cuda_urgent_copy_method, "gather",
          "CUDA IPC: how urgent recalls (a correction the worker's decode waits for) "
          "move, in a lane of their own (threads, streams, bounce buffers) beside the "
          "speculative recalls already queued: 'gather' (packed by the shared packing "
          "threads, between the other lane's pieces), 'batch' (one cudaMemcpyBatchAsync "
          "straight from the store), 'split', or 'off' (they queue behind the others, in "
          "order). Under --cuda_copy_method=split an urgent recall can still wait for an "
          "earlier one held at its slot (bench/RESULTS.md, GPU recall run 9).");
ABSL_FLAG(int32_t, cuda_direct_max_blocks, 512,
          "CUDA IPC, --cuda_copy_method=auto (either lane): a push of at most this many "
          "copies (after adjacent blocks merge) goes straight from the store in one "
          "cudaMemcpyBatchAsync; a larger one is packed. 0 packs every push.");
ABSL_FLAG(int32_t, cuda_copy_streams, 1,
          "CUDA IPC: streams a session's batch/per_run recall copies and its offload "
          "copies are spread over.");
ABSL_FLAG(double, cuda_direct_share, 1.0 / 3,
          "CUDA IPC, --cuda_copy_method=split: the share (0 to 1) of each piece's "
          "blocks copied straight from the store while the packing threads pack the "
          "rest. The best share depends on the host's CPU and memory (bench/RESULTS.md).");
ABSL_FLAG(int32_t, cuda_gather_threads, 0,
          "CUDA IPC: threads that pack recalled blocks (gather, split), shared by all "
          "sessions. 0: half the CPUs this process may use (affinity and cgroup "
          "quota), 1 to 14.");
ABSL_FLAG(int32_t, cuda_gather_prefetch_kib, 8,
          "CUDA IPC: how far ahead of their copy (KiB, 0 to 1024; 0: not at all) the "
          "packing threads prefetch the store. Each block starts at a random place, "
          "so without it a thread waits out DRAM latency at every block and page.");
ABSL_FLAG(int32_t, cuda_gather_piece_kib, 0,
          "CUDA IPC, gather and split: KiB packed and sent at a time (64 to 8192; 0: a "
          "whole 8 MiB bounce buffer). Smaller pieces start the copy sooner, so a lone "
          "recall (a correction the decode waits for) returns sooner.");
ABSL_FLAG(int32_t, shutdown_grace_ms, 5000,
          "On SIGTERM: how long in-flight calls may finish before they are cancelled.");

namespace freekv {
namespace {

absl::Status CheckFlags() {
  for (const auto& [name, value] :
       {std::pair<const char*, int32_t>{"default_lease_ms",
                                        absl::GetFlag(FLAGS_default_lease_ms)},
        {"max_lease_ms", absl::GetFlag(FLAGS_max_lease_ms)},
        {"reap_interval_ms", absl::GetFlag(FLAGS_reap_interval_ms)},
        {"max_sessions", absl::GetFlag(FLAGS_max_sessions)},
        {"max_request_blocks", absl::GetFlag(FLAGS_max_request_blocks)}}) {
    if (value <= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("--", name, " is ", value, "; it must be positive"));
    }
  }
  const double share = absl::GetFlag(FLAGS_cuda_direct_share);
  if (!(share >= 0.0 && share <= 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--cuda_direct_share is ", share, "; it must be within 0 to 1"));
  }
  if (const int32_t threads = absl::GetFlag(FLAGS_cuda_gather_threads);
      threads < 0 || threads > 256) {
    return absl::InvalidArgumentError(
        absl::StrCat("--cuda_gather_threads is ", threads,
                     "; give 1 to 256 threads, or 0 to size it from the usable CPUs"));
  }
  const int32_t prefetch = absl::GetFlag(FLAGS_cuda_gather_prefetch_kib);
  if (prefetch < 0 || prefetch > 1024) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--cuda_gather_prefetch_kib is ", prefetch, "; it must be within 0 to 1024"));
  }
  const int32_t piece = absl::GetFlag(FLAGS_cuda_gather_piece_kib);
  if (piece != 0 && (piece < 64 || piece > 8192)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--cuda_gather_piece_kib is ", piece, "; it must be 0 or within 64 to 8192"));
  }
  if (const int32_t direct = absl::GetFlag(FLAGS_cuda_direct_max_blocks); direct < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--cuda_direct_max_blocks is ", direct, "; it must be 0 or more"));
  }
  // Checked here too, so that a kvservice built without CUDA refuses a misspelt method.
  if (absl::StatusOr<CopyMethod> m = ParseCopyMethod(absl::GetFlag(FLAGS_cuda_copy_method));
      !m.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--cuda_copy_method: ", m.status().message()));
  }
  if (const std::string urgent = absl::GetFlag(FLAGS_cuda_urgent_copy_method);
      urgent != "off") {
    if (absl::StatusOr<CopyMethod> m = ParseCopyMethod(urgent); !m.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--cuda_urgent_copy_method: ", m.status().message(), ", or 'off'"));
    }
  }
  if (absl::GetFlag(FLAGS_socket).empty() && absl::GetFlag(FLAGS_listen).empty()) {
    return absl::InvalidArgumentError("give --socket, --listen, or both");
  }
  return absl::OkStatus();
}

// Removes a stale socket file and creates its directory.
absl::Status PrepareSocketPath(const std::string& path) {
  std::error_code error;
  const std::filesystem::path dir = std::filesystem::path(path).parent_path();
  if (!dir.empty()) std::filesystem::create_directories(dir, error);
  if (error) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot create the socket directory ", dir.string(), ": ",
                     error.message()));
  }
  if (std::filesystem::is_socket(path, error)) std::filesystem::remove(path, error);
  return absl::OkStatus();
}

// Blocks SIGTERM and SIGINT in every thread (call before starting any) and waits for
// them on a thread of its own, which notifies `stop`.
std::thread WatchSignals(absl::Notification* stop) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  return std::thread([set, stop] {
    int signal = 0;
    sigwait(&set, &signal);
    Log(LogLevel::kInfo, "signal %d: draining", signal);
    stop->Notify();
  });
}

// The store's chunk source: pinned when --pin_store holds and CUDA is here.
absl::StatusOr<std::unique_ptr<ChunkAllocator>> StoreChunks(size_t chunk_bytes) {
  auto host = std::make_unique<HostChunkAllocator>();
  const PinStore pin = absl::GetFlag(FLAGS_pin_store);
  if (pin == PinStore::kFalse) return host;
  const char* missing = !BuiltWithCuda()          ? "this kvservice was built without CUDA"
                        : VisibleGpuCount() == 0 ? "this kvservice sees no GPU"
                                                 : nullptr;
  if (missing != nullptr) {
    if (pin == PinStore::kTrue) {
      return absl::FailedPreconditionError(
          absl::StrCat("--pin_store=true, but ", missing));
    }
    Log(LogLevel::kInfo, "store not pinned: %s", missing);
    return host;
  }
  absl::StatusOr<std::unique_ptr<ChunkAllocator>> pinned =
      MakePinnedChunkAllocator(std::move(host), chunk_bytes);
  if (!pinned.ok()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "--pin_store: ", pinned.status().message(),
        " (run with --pin_store=false to serve from pageable memory)"));
  }
  Log(LogLevel::kInfo, "store chunks are pinned (cudaHostRegister)");
  return pinned;
}

// Packing threads for --cuda_gather_threads=0: half the usable CPUs, because the
// workers' host threads (which open their GPU's gates when replies come) share these
// CPUs unless the kvservice has its own. On the lent 16-CPU H100 host under decode, 8
// threads beat 14 at batch 16 (20.0 against 23.7 ms a step, bench/RESULTS.md decode
// run 11), though 14 did better in the recall benchmark alone. Past 14 the gather is
// bound by host memory, not threads: it reads and writes each byte and the DMA reads it
// again (GPU recall run 7).
int AutoGatherThreads() { return std::clamp(UsableCpus() / 2, 1, 14); }

// The CUDA IPC factory when CUDA and a GPU are here; otherwise null and why not. Its
// pushes' stages go to `metrics`, which outlives it.
absl::StatusOr<std::unique_ptr<TransportFactory>> CudaIpcFactory(ServiceMetrics* metrics,
                                                                  std::string* absent) {
  if (!BuiltWithCuda()) {
    *absent = "this kvservice was built without CUDA";
    return nullptr;
  }
  if (VisibleGpuCount() == 0) {
    *absent = "this kvservice sees no GPU";
    return nullptr;
  }
  CudaSupportOptions options;
  options.copy_method = absl::GetFlag(FLAGS_cuda_copy_method);
  options.urgent_copy_method = absl::GetFlag(FLAGS_cuda_urgent_copy_method);
  options.copy_streams = absl::GetFlag(FLAGS_cuda_copy_streams);
  options.gather_threads = absl::GetFlag(FLAGS_cuda_gather_threads);
  if (options.gather_threads == 0) options.gather_threads = AutoGatherThreads();
  Log(LogLevel::kInfo, "CUDA IPC recalls: %s, %d packing threads; urgent recalls: %s",
      options.copy_method, options.gather_threads, options.urgent_copy_method);
  options.gather_prefetch_kib = absl::GetFlag(FLAGS_cuda_gather_prefetch_kib);
  options.gather_piece_kib = absl::GetFlag(FLAGS_cuda_gather_piece_kib);
  options.direct_share = absl::GetFlag(FLAGS_cuda_direct_share);
  options.direct_max_blocks = absl::GetFlag(FLAGS_cuda_direct_max_blocks);
  options.on_push_landed = [metrics](const PushStages& stages) {
    metrics->OnPushLanded(stages);
  };
  return MakeCudaIpcTransportFactory(options);
}

int Run() {
  if (absl::Status s = CheckFlags(); !s.ok()) {
    Log(LogLevel::kError, "%s", s.ToString());
    return 2;
  }
  absl::Notification stop;
  std::thread signals = WatchSignals(&stop);
  signals.detach();

  ServiceMetrics::Options metrics_options;
  metrics_options.address = absl::GetFlag(FLAGS_metrics_address);
  metrics_options.link_ceiling_bytes_per_second =
      absl::GetFlag(FLAGS_link_ceiling_bytes_per_second);
  absl::StatusOr<std::unique_ptr<ServiceMetrics>> metrics =
      ServiceMetrics::Create(metrics_options);
  if (!metrics.ok()) {
    Log(LogLevel::kError, "metrics: %s", metrics.status().ToString());
    return 1;
  }

  absl::StatusOr<std::unique_ptr<UcxTransportFactory>> ucx = UcxTransportFactory::Create();
  if (!ucx.ok()) {
    Log(LogLevel::kError, "UCX: %s", ucx.status().ToString());
    return 1;
  }
  std::string cuda_ipc_absent;
  absl::StatusOr<std::unique_ptr<TransportFactory>> cuda_ipc =
      CudaIpcFactory(metrics->get(), &cuda_ipc_absent);
  if (!cuda_ipc.ok()) {
    Log(LogLevel::kError, "CUDA IPC: %s", cuda_ipc.status().ToString());
    return 1;
  }
  UcxTransportFactory* const ucx_factory = ucx->get();
  // Declared before the store: chunk release hooks use the factories.
  auto transports = std::make_unique<TransportRouter>(
      *std::move(ucx), *std::move(cuda_ipc), cuda_ipc_absent);
  BlockAllocator::Options store_options;
  store_options.capacity_bytes = absl::GetFlag(FLAGS_capacity).bytes;
  store_options.chunk_bytes = absl::GetFlag(FLAGS_chunk_bytes).bytes;
  absl::StatusOr<std::unique_ptr<ChunkAllocator>> chunks =
      StoreChunks(store_options.chunk_bytes);
  if (!chunks.ok()) {
    Log(LogLevel::kError, "store: %s", chunks.status().ToString());
    return 2;
  }
  absl::StatusOr<std::unique_ptr<BlockAllocator>> store = BlockAllocator::Create(
      store_options, ucx_factory->WrapChunkAllocator(*std::move(chunks)));
  if (!store.ok()) {
    Log(LogLevel::kError, "store: %s", store.status().ToString());
    return 2;
  }

  SessionRegistry registry(store->get(),
                           static_cast<uint32_t>(absl::GetFlag(FLAGS_max_sessions)));
  KvServiceOptions options;
  options.default_lease = absl::Milliseconds(absl::GetFlag(FLAGS_default_lease_ms));
  options.max_lease = absl::Milliseconds(absl::GetFlag(FLAGS_max_lease_ms));
  options.max_request_blocks =
      static_cast<uint32_t>(absl::GetFlag(FLAGS_max_request_blocks));
  KvServiceImpl service(options, &registry, store->get(), transports.get(),
                        metrics->get());
  service.UpdateStoreMetrics();

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  const std::string socket = absl::GetFlag(FLAGS_socket);
  if (!socket.empty()) {
    if (absl::Status s = PrepareSocketPath(socket); !s.ok()) {
      Log(LogLevel::kError, "%s", s.ToString());
      return 1;
    }
    builder.AddListeningPort("unix:" + socket, grpc::InsecureServerCredentials());
  }
  if (!absl::GetFlag(FLAGS_listen).empty()) {
    builder.AddListeningPort(absl::GetFlag(FLAGS_listen),
                             grpc::InsecureServerCredentials());
  }
  builder.SetMaxReceiveMessageSize(64 << 20);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr) {
    Log(LogLevel::kError, "could not listen on --socket=%s --listen=%s", socket,
        absl::GetFlag(FLAGS_listen));
    return 1;
  }
  if (!socket.empty() && chmod(socket.c_str(), 0660) != 0) {
    Log(LogLevel::kWarning, "chmod 0660 %s failed", socket);
  }
  server->GetHealthCheckService()->SetServingStatus(true);
  Log(LogLevel::kInfo, "kvservice ready: socket %s, tcp %s, metrics %s, capacity %s",
      socket.empty() ? "-" : socket,
      absl::GetFlag(FLAGS_listen).empty() ? "-" : absl::GetFlag(FLAGS_listen),
      absl::GetFlag(FLAGS_metrics_address).empty() ? "-"
                                                   : absl::GetFlag(FLAGS_metrics_address),
      FormatByteSize(store_options.capacity_bytes));

  const absl::Duration reap_interval =
      absl::Milliseconds(absl::GetFlag(FLAGS_reap_interval_ms));
  while (!stop.WaitForNotificationWithTimeout(reap_interval)) {
    service.ReapExpiredSessions(absl::Now());
  }

  // Drain: refuse new sessions, report NOT_SERVING, let in-flight calls finish.
  registry.StopAccepting();
  server->GetHealthCheckService()->SetServingStatus(false);
  server->Shutdown(absl::ToChronoTime(
      absl::Now() + absl::Milliseconds(absl::GetFlag(FLAGS_shutdown_grace_ms))));
  const size_t closed = registry.CloseAll();
  if (!socket.empty()) unlink(socket.c_str());
  Log(LogLevel::kInfo, "kvservice stopped; %d sessions closed", closed);
  return 0;
}

}  // namespace
}  // namespace freekv

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "The freekv kvservice: a node-local KV-cache tier (page store + recall over "
      "UCX or CUDA IPC). Usage: kvservice [--socket=PATH] [--listen=HOST:PORT] "
      "[--metrics_address=HOST:PORT] [--capacity=64G] ...");
  absl::ParseCommandLine(argc, argv);
  return freekv::Run();
}
