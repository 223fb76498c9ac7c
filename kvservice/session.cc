#include "kvservice/session.h"

#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "common/integrity.h"
#include "common/log.h"
#include "kvservice/copy_runs.h"

namespace freekv {
namespace {

// Destinations and offload sources must allow 16-byte vector accesses on the worker.
constexpr uint64_t kOffsetAlignment = 16;

// Hands blocks back to the store. A refusal means the page table and the store
// disagree -- a bug, never a client's doing -- so it is logged loudly, not hidden.
void ReturnBlocks(BlockAllocator* store, absl::Span<const Block> blocks) {
  if (blocks.empty()) return;
  if (absl::Status s = store->FreeBlocks(blocks); !s.ok()) {
    Log(LogLevel::kError, "page store refused to free %d blocks: %s", blocks.size(),
        s.ToString());
  }
}

}  // namespace

absl::Status ValidateSessionConfig(const SessionConfig& config) {
  if (absl::Status s = ValidateGeometry(config.geometry); !s.ok()) return s;
  const Geometry& g = config.geometry;
  if (config.slot_bytes < g.head_slice_bytes()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "slot_bytes is ", config.slot_bytes, "; a slot must hold at least one (page, ",
        "head) slice of ", g.head_slice_bytes(), " bytes"));
  }
  const uint64_t needed = 2ull * g.num_layers * config.slot_bytes;
  if (config.staging_bytes < needed) {
    return absl::InvalidArgumentError(absl::StrCat(
        "staging.length is ", config.staging_bytes, "; 2 slots x ", g.num_layers,
        " layers x slot_bytes ", config.slot_bytes, " need ", needed));
  }
  if (config.offload_bytes < g.block_bytes()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "offload.length is ", config.offload_bytes,
        "; it must hold at least one block of ", g.block_bytes(), " bytes"));
  }
  return absl::OkStatus();
}

Session::Session(uint64_t id, SessionConfig config, BlockAllocator* store,
                 std::unique_ptr<SessionTransport> transport, absl::Time now)
    : id_(id),
      config_(std::move(config)),
      store_(store),
      transport_(std::move(transport)),
      lease_deadline_(now + config_.lease) {}

Session::~Session() {
  Close();
  absl::MutexLock lock(&mu_);
  auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return inflight_recalls_ == 0;
  };
  mu_.Await(absl::Condition(&idle));
  ReturnBlocks(store_, retired_);
  retired_.clear();
}

void Session::Renew(absl::Time now) {
  absl::MutexLock lock(&mu_);
  lease_deadline_ = now + config_.lease;
}

bool Session::Expired(absl::Time now) const {
  absl::MutexLock lock(&mu_);
  return now > lease_deadline_;
}

absl::Status Session::ValidateOffload(absl::Span<const OffloadItem> items) const {
  const Geometry& g = config_.geometry;
  if (items.empty()) return absl::InvalidArgumentError("pages is empty");
  if (items.size() > config_.max_request_blocks) {
    return absl::InvalidArgumentError(absl::StrCat(
        "pages has ", items.size(), " entries; at most ", config_.max_request_blocks,
        " per request"));
  }
  absl::flat_hash_set<std::pair<uint64_t, uint64_t>> seen;
  for (size_t i = 0; i < items.size(); ++i) {
    const OffloadItem& item = items[i];
    if (item.layer >= g.num_layers) {
      return absl::InvalidArgumentError(absl::StrCat(
          "pages[", i, "].layer is ", item.layer, "; the session has ", g.num_layers,
          " layers"));
    }
    if (item.offload_offset % kOffsetAlignment != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "pages[", i, "].offload_offset ", item.offload_offset,
          " is not a multiple of ", kOffsetAlignment));
    }
    if (item.offload_offset > config_.offload_bytes ||
        config_.offload_bytes - item.offload_offset < g.block_bytes()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "pages[", i, "].offload_offset ", item.offload_offset, " + block of ",
          g.block_bytes(), " bytes runs past the offload region of ",
          config_.offload_bytes, " bytes"));
    }
    const uint64_t key = PageKey(item.layer, item.page);
    if (!seen.insert({item.sequence_id, key}).second) {
      return absl::InvalidArgumentError(absl::StrCat(
          "pages[", i, "] (sequence ", item.sequence_id, ", layer ", item.layer,
          ", page ", item.page, ") appears twice in the request"));
    }
    auto seq = sequences_.find(item.sequence_id);
    if (seq != sequences_.end() && seq->second.contains(key)) {
      return absl::AlreadyExistsError(absl::StrCat(
          "pages[", i, "] (sequence ", item.sequence_id, ", layer ", item.layer,
          ", page ", item.page, ") is already stored; free the sequence first"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<OffloadResult> Session::Offload(absl::Span<const OffloadItem> items) {
  absl::MutexLock offload_lock(&offload_mu_);
  {
    absl::MutexLock lock(&mu_);
    if (closed_) {
      return absl::FailedPreconditionError(absl::StrCat("session ", id_, " is closed"));
    }
    if (absl::Status s = ValidateOffload(items); !s.ok()) return s;
  }
  const size_t block_bytes = config_.geometry.block_bytes();
  absl::StatusOr<std::vector<Block>> blocks =
      store_->AllocateBlocks(block_bytes, items.size());
  if (!blocks.ok()) return blocks.status();

  std::vector<CopyRun> runs;
  runs.reserve(items.size());
  for (size_t i = 0; i < items.size(); ++i) {
    runs.push_back(CopyRun{(*blocks)[i].data, items[i].offload_offset, block_bytes});
  }
  if (absl::Status s = transport_->Pull(MergeAdjacentRuns(std::move(runs))); !s.ok()) {
    ReturnBlocks(store_, *blocks);
    return s;
  }
  OffloadResult result;
  result.bytes = block_bytes * items.size();
  result.integrity_tags.reserve(items.size());
  for (const Block& block : *blocks) {
    result.integrity_tags.push_back(
        IntegrityTag(absl::MakeConstSpan(block.data, block_bytes)));
  }
  absl::MutexLock lock(&mu_);
  if (closed_) {
    ReturnBlocks(store_, *blocks);
    return absl::FailedPreconditionError(
        absl::StrCat("session ", id_, " was closed during the offload"));
  }
  for (size_t i = 0; i < items.size(); ++i) {
    sequences_[items[i].sequence_id][PageKey(items[i].layer, items[i].page)] =
        StoredPage{(*blocks)[i], result.integrity_tags[i]};
  }
  pages_ += items.size();
  return result;
}

absl::StatusOr<std::vector<CopyRun>> Session::ResolveRecall(
    const RecallSpec& spec, absl::Span<const RecallItem> items) {
  const Geometry& g = config_.geometry;
  const uint64_t slice = g.head_slice_bytes();
  if (spec.layer >= g.num_layers) {
    return absl::InvalidArgumentError(absl::StrCat(
        "layer is ", spec.layer, "; the session has ", g.num_layers, " layers"));
  }
  if (spec.slot > 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("slot is ", spec.slot, "; each layer has slots 0 and 1"));
  }
  if (items.empty()) return absl::InvalidArgumentError("blocks is empty");
  const uint64_t fit = config_.slot_bytes / slice;
  if (items.size() > config_.max_request_blocks || items.size() > fit) {
    return absl::InvalidArgumentError(absl::StrCat(
        "blocks has ", items.size(), " entries; a slot of ", config_.slot_bytes,
        " bytes holds ", fit, " slices and a request may name at most ",
        config_.max_request_blocks));
  }
  const uint64_t slot_base = (2ull * spec.layer + spec.slot) * config_.slot_bytes;
  std::vector<CopyRun> runs;
  runs.reserve(items.size());
  absl::flat_hash_set<const StoredPage*> to_verify;
  for (size_t i = 0; i < items.size(); ++i) {
    const RecallItem& item = items[i];
    if (item.kv_head >= g.num_kv_heads) {
      return absl::InvalidArgumentError(absl::StrCat(
          "blocks[", i, "].kv_head is ", item.kv_head, "; the session has ",
          g.num_kv_heads, " KV heads"));
    }
    if (item.slot_offset % kOffsetAlignment != 0 || item.slot_offset > config_.slot_bytes ||
        config_.slot_bytes - item.slot_offset < slice) {
      return absl::InvalidArgumentError(absl::StrCat(
          "blocks[", i, "].slot_offset ", item.slot_offset, " must be a multiple of ",
          kOffsetAlignment, " with room for ", slice, " bytes in a slot of ",
          config_.slot_bytes));
    }
    auto seq = sequences_.find(item.sequence_id);
    const StoredPage* page = nullptr;
    if (seq != sequences_.end()) {
      auto it = seq->second.find(PageKey(spec.layer, item.page));
      if (it != seq->second.end()) page = &it->second;
    }
    if (page == nullptr) {
      return absl::NotFoundError(absl::StrCat(
          "blocks[", i, "]: sequence ", item.sequence_id, " has no page ", item.page,
          " at layer ", spec.layer, " in session ", id_));
    }
    if (spec.verify_integrity) to_verify.insert(page);
    runs.push_back(CopyRun{page->block.data + item.kv_head * slice,
                           slot_base + item.slot_offset, slice});
  }
  runs = MergeAdjacentRuns(std::move(runs));
  if (absl::Status s = CheckNoRemoteOverlap(runs); !s.ok()) return s;
  for (const StoredPage* page : to_verify) {
    const size_t bytes = g.block_bytes();
    if (IntegrityTag(absl::MakeConstSpan(page->block.data, bytes)) != page->tag) {
      return absl::DataLossError(absl::StrCat(
          "a stored block of session ", id_, " layer ", spec.layer,
          " no longer matches its integrity tag"));
    }
  }
  return runs;
}

absl::Status Session::Recall(
    const RecallSpec& spec, absl::Span<const RecallItem> items,
    absl::AnyInvocable<void(absl::Status, RecallResult) &&> done) {
  std::vector<CopyRun> runs;
  RecallResult result;
  {
    absl::MutexLock lock(&mu_);
    if (closed_) return absl::NotFoundError(absl::StrCat("session ", id_, " is closed"));
    if (spec.signal.has_value()) {
      if (absl::Status s = transport_->CheckSignal(*spec.signal); !s.ok()) return s;
    }
    absl::StatusOr<std::vector<CopyRun>> resolved = ResolveRecall(spec, items);
    if (!resolved.ok()) return resolved.status();
    runs = *std::move(resolved);
    ++inflight_recalls_;
  }
  result.blocks = static_cast<uint32_t>(items.size());
  result.bytes = items.size() * config_.geometry.head_slice_bytes();
  result.transfers = static_cast<uint32_t>(runs.size());
  result.urgent = spec.urgent;
  auto finish = [this, result, done = std::move(done)](absl::Status status) mutable {
    std::move(done)(std::move(status), result);
    OnRecallDone();
  };
  if (spec.signal.has_value()) {
    transport_->PushSignalled(std::move(runs), spec.urgent, *spec.signal, std::move(finish));
  } else if (spec.urgent) {
    transport_->PushUrgent(std::move(runs), std::move(finish));
  } else {
    transport_->Push(std::move(runs), std::move(finish));
  }
  return absl::OkStatus();
}

void Session::OnRecallDone() {
  absl::MutexLock lock(&mu_);
  if (--inflight_recalls_ == 0 && !retired_.empty()) {
    ReturnBlocks(store_, retired_);
    retired_.clear();
  }
}

void Session::RetireLocked(std::vector<Block> blocks) {
  if (inflight_recalls_ == 0) {
    ReturnBlocks(store_, blocks);
    return;
  }
  retired_.insert(retired_.end(), blocks.begin(), blocks.end());
}

FreeResult Session::FreeSequence(uint64_t sequence_id) {
  absl::MutexLock lock(&mu_);
  auto seq = sequences_.find(sequence_id);
  if (seq == sequences_.end()) return {};
  std::vector<Block> blocks;
  blocks.reserve(seq->second.size());
  for (const auto& [key, page] : seq->second) blocks.push_back(page.block);
  sequences_.erase(seq);
  FreeResult freed{static_cast<uint32_t>(blocks.size()),
                   blocks.size() * config_.geometry.block_bytes()};
  pages_ -= blocks.size();
  RetireLocked(std::move(blocks));
  return freed;
}

FreeResult Session::Close() {
  absl::MutexLock lock(&mu_);
  if (closed_) return {};
  closed_ = true;
  std::vector<Block> blocks;
  blocks.reserve(pages_);
  for (const auto& [sequence, pages] : sequences_) {
    for (const auto& [key, page] : pages) blocks.push_back(page.block);
  }
  sequences_.clear();
  pages_ = 0;
  FreeResult freed{static_cast<uint32_t>(blocks.size()),
                   blocks.size() * config_.geometry.block_bytes()};
  RetireLocked(std::move(blocks));
  return freed;
}

FreeResult Session::Usage() const {
  absl::MutexLock lock(&mu_);
  return FreeResult{static_cast<uint32_t>(pages_), pages_ * config_.geometry.block_bytes()};
}

}  // namespace freekv
