#include "kvservice/ucx_transport.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "kvservice/ucx_session_transport.h"

namespace freekv {

absl::StatusOr<std::unique_ptr<UcxTransportFactory>> UcxTransportFactory::Create(
    const UcxTransportOptions& options) {
  absl::StatusOr<std::unique_ptr<UcxContext>> context =
      UcxContext::Create(UcxContextOptions{options.transports});
  if (!context.ok()) return context.status();
  absl::StatusOr<std::unique_ptr<UcxEngine>> engine =
      UcxEngine::Start(**context, "kvservice-ucx");
  if (!engine.ok()) return engine.status();
  return std::unique_ptr<UcxTransportFactory>(
      new UcxTransportFactory(*std::move(context), *std::move(engine)));
}

UcxTransportFactory::~UcxTransportFactory() {
  absl::MutexLock lock(&mu_);
  if (!registered_.empty()) {
    Log(LogLevel::kWarning, "UCX transport closing with %d store regions still mapped",
        registered_.size());
  }
}

absl::StatusOr<std::unique_ptr<SessionTransport>> UcxTransportFactory::Connect(
    const SessionPeer& peer) {
  absl::StatusOr<std::unique_ptr<UcxSessionTransport>> transport =
      UcxSessionTransport::Connect(*engine_, peer);
  if (!transport.ok()) return transport.status();
  return std::unique_ptr<SessionTransport>(*std::move(transport));
}

absl::Status UcxTransportFactory::RegisterLocalMemory(std::byte* base, size_t bytes) {
  absl::StatusOr<UcxMemory> memory = UcxMemory::Register(*context_, base, bytes);
  if (!memory.ok()) return memory.status();
  absl::MutexLock lock(&mu_);
  if (!registered_.emplace(base, *std::move(memory)).second) {
    return absl::AlreadyExistsError(
        absl::StrCat("store memory at ", absl::Hex(base), " is registered already"));
  }
  return absl::OkStatus();
}

absl::Status UcxTransportFactory::UnregisterLocalMemory(std::byte* base) {
  UcxMemory memory;  // unmapped after the lock is released
  absl::MutexLock lock(&mu_);
  auto it = registered_.find(base);
  if (it == registered_.end()) {
    return absl::NotFoundError(
        absl::StrCat("store memory at ", absl::Hex(base), " is not registered"));
  }
  memory = std::move(it->second);
  registered_.erase(it);
  return absl::OkStatus();
}

size_t UcxTransportFactory::registered_regions() const {
  absl::MutexLock lock(&mu_);
  return registered_.size();
}

std::unique_ptr<ChunkAllocator> UcxTransportFactory::WrapChunkAllocator(
    std::unique_ptr<ChunkAllocator> inner) {
  ChunkObserver observer;
  observer.on_chunk_added = [this](std::byte* base, size_t bytes) {
    return RegisterLocalMemory(base, bytes);
  };
  observer.on_chunk_removed = [this](std::byte* base, size_t /*bytes*/) {
    if (absl::Status s = UnregisterLocalMemory(base); !s.ok()) {
      Log(LogLevel::kWarning, "UCX: %s", s.ToString());
    }
  };
  return std::make_unique<ObservedChunkAllocator>(std::move(inner), std::move(observer));
}

}  // namespace freekv
