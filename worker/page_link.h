// Where the retrieval policies keep the pages they do not hold: the kvservice, in the
// worker's vocabulary. The policy names pages of its NHD pool; the link converts them
// to the service's HND blocks on the way out (offload) and back on the way in
// (recall), so a GPU build swaps in CUDA kernels and copy engines here without
// touching the policy. KvServiceLink (kv_service_link.h) is the KvClient-backed link.
//
// Recall is asynchronous and double-buffered: StartRecall sends one request for a
// (step, layer) into a free staging slot of the layer and returns at once; WaitRecall
// blocks until its bytes are there; LandRecall writes them into the pool and frees
// the slot. At most two recalls per layer are outstanding.
//
// Implementations state their own thread safety; the policies drive a link from one
// thread.
#ifndef FREEKV_WORKER_PAGE_LINK_H_
#define FREEKV_WORKER_PAGE_LINK_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "client/slot_tracker.h"
#include "kernels/paged_kv.h"
#include "worker/decode_stats.h"

namespace freekv {

// A full page of `sequence` at the layer being stored, held in pool page `pool_page`,
// stored as logical page `page`.
struct PageToStore {
  int64_t sequence = 0;
  int32_t page = 0;
  int32_t pool_page = 0;
};

// The (sequence, kv_head, page) slice to recall into KV head kv_head of pool page
// dst_page (a resident slot).
struct SliceToRecall {
  int64_t sequence = 0;
  int32_t kv_head = 0;
  int32_t page = 0;
  int32_t dst_page = 0;
};

class PageLink {
 public:
  virtual ~PageLink() = default;

  // Stores full pages of `layer` from `pool` (all K and V heads of each).
  virtual absl::Status Store(int layer, const kernels::PagedKv<const float>& pool,
                             absl::Span<const PageToStore> pages) = 0;

  // Sends one recall request; returns at once.
  virtual absl::StatusOr<RecallTicket> StartRecall(
      uint64_t step, int layer, absl::Span<const SliceToRecall> slices) = 0;
  // Blocks until the recall's bytes are in its staging slot (or its error).
  virtual absl::Status WaitRecall(const RecallTicket& ticket) = 0;
  // Writes the landed slices (those given to StartRecall) into `pool` and frees the
  // staging slot. REQUIRES: WaitRecall returned OK for the ticket.
  virtual absl::Status LandRecall(const RecallTicket& ticket,
                                  absl::Span<const SliceToRecall> slices,
                                  const kernels::PagedKv<float>& pool) = 0;
  // Frees the sequence's pages in the service.
  virtual absl::Status FreeSequence(int64_t sequence) = 0;
  // Adds a statistics delta to what the service exports.
  virtual absl::Status ReportStats(const DecodeStats& delta) = 0;
};

}  // namespace freekv

#endif  // FREEKV_WORKER_PAGE_LINK_H_
