// One worker's session: its geometry, its regions, its transport, its lease, and the
// page table mapping (sequence, layer, page) to the store block holding that page.
//
// Owns: the transport to the worker and, through the page table, the store blocks of
// its pages (returned to the BlockAllocator when freed or when the session ends).
//
// Thread-safe. Offloads of one session are serialised; recalls may run beside them.
// Blocks that an accepted recall is still reading are never handed back to the store
// until that recall completes, so freeing a sequence or closing the session while a
// recall is in flight cannot let another page overwrite the bytes being sent.
#ifndef FREEKV_KVSERVICE_SESSION_H_
#define FREEKV_KVSERVICE_SESSION_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "common/geometry.h"
#include "kvservice/block_allocator.h"
#include "kvservice/transport.h"

namespace freekv {

struct SessionConfig {
  Geometry geometry;
  uint64_t staging_bytes = 0;  // length of the worker's staging region
  uint64_t slot_bytes = 0;     // one staging slot; 2 per layer, layer-major
  uint64_t offload_bytes = 0;  // length of the worker's offload region
  absl::Duration lease = absl::Seconds(10);
  std::string client_name;
  uint32_t max_request_blocks = 65536;
};

// OK, or INVALID_ARGUMENT naming the field: geometry, slot size against a slice, the
// staging region against 2 * num_layers slots.
absl::Status ValidateSessionConfig(const SessionConfig& config);

struct OffloadItem {
  uint64_t sequence_id = 0;
  uint32_t layer = 0;
  uint32_t page = 0;
  uint64_t offload_offset = 0;
};

struct RecallItem {
  uint64_t sequence_id = 0;
  uint32_t kv_head = 0;
  uint32_t page = 0;
  uint64_t slot_offset = 0;
};

struct RecallSpec {
  uint64_t step = 0;
  uint32_t layer = 0;
  uint32_t slot = 0;
  bool verify_integrity = false;
  bool urgent = false;  // SessionTransport::PushUrgent
  // Written once the bytes landed (SessionTransport::PushSignalled); the transport
  // refuses one it cannot write before anything is sent.
  std::optional<PushSignal> signal;
};

struct OffloadResult {
  uint64_t bytes = 0;
  std::vector<uint64_t> integrity_tags;  // in request order
};

// What a recall moved; reported with its completion.
struct RecallResult {
  uint64_t bytes = 0;
  uint32_t blocks = 0;
  uint32_t transfers = 0;
  bool urgent = false;  // the request asked for it (RecallSpec::urgent)
};

struct FreeResult {
  uint32_t pages = 0;
  uint64_t bytes = 0;
};

class Session {
 public:
  Session(uint64_t id, SessionConfig config, BlockAllocator* store,
          std::unique_ptr<SessionTransport> transport, absl::Time now);
  ~Session();

  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  uint64_t id() const { return id_; }
  const SessionConfig& config() const { return config_; }

  // Lease bookkeeping.
  void Renew(absl::Time now);
  bool Expired(absl::Time now) const;

  // Pulls full blocks from the worker's offload region into new store blocks. All or
  // nothing: INVALID_ARGUMENT (field named), ALREADY_EXISTS for a page stored before,
  // RESOURCE_EXHAUSTED when the store is full, FAILED_PRECONDITION once closed.
  absl::StatusOr<OffloadResult> Offload(absl::Span<const OffloadItem> items);

  // Validates the request and starts pushing the named slices into the staging slot.
  // On a validation error nothing is sent and done is not called. Otherwise done is
  // called exactly once, after every byte landed or with the transport's error; it
  // runs on the transport's thread and must be cheap.
  absl::Status Recall(const RecallSpec& spec, absl::Span<const RecallItem> items,
                      absl::AnyInvocable<void(absl::Status, RecallResult) &&> done);

  // Frees every page of a sequence. Unknown sequences free nothing.
  FreeResult FreeSequence(uint64_t sequence_id);

  // Refuses new work, frees every page (once in-flight recalls are done) and returns
  // what was freed. Idempotent.
  FreeResult Close();

  // Pages and bytes stored now.
  FreeResult Usage() const;

 private:
  struct StoredPage {
    Block block;
    uint64_t tag = 0;
  };
  using PageMap = absl::flat_hash_map<uint64_t, StoredPage>;  // (layer << 32) | page

  static uint64_t PageKey(uint32_t layer, uint32_t page) {
    return (uint64_t{layer} << 32) | page;
  }
  absl::Status ValidateOffload(absl::Span<const OffloadItem> items) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<std::vector<CopyRun>> ResolveRecall(
      const RecallSpec& spec, absl::Span<const RecallItem> items)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Hands blocks back to the store now, or after in-flight recalls complete.
  void RetireLocked(std::vector<Block> blocks) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void OnRecallDone();

  const uint64_t id_;
  const SessionConfig config_;
  BlockAllocator* const store_;
  std::unique_ptr<SessionTransport> transport_;

  absl::Mutex offload_mu_;  // serialises Offload: validate, pull, insert
  mutable absl::Mutex mu_;
  absl::Time lease_deadline_ ABSL_GUARDED_BY(mu_);
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t pages_ ABSL_GUARDED_BY(mu_) = 0;
  absl::flat_hash_map<uint64_t, PageMap> sequences_ ABSL_GUARDED_BY(mu_);
  int inflight_recalls_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<Block> retired_ ABSL_GUARDED_BY(mu_);  // freed while recalls ran
};

}  // namespace freekv

#endif  // FREEKV_KVSERVICE_SESSION_H_
