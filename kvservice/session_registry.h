// The open sessions of one kvservice, by id, with their leases.
//
// Owns the sessions (shared: a handler that found a session keeps it alive until it
// is done, even if the session is closed meanwhile). Thread-safe.
#ifndef FREEKV_KVSERVICE_SESSION_REGISTRY_H_
#define FREEKV_KVSERVICE_SESSION_REGISTRY_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "kvservice/session.h"

namespace freekv {

class SessionRegistry {
 public:
  SessionRegistry(BlockAllocator* store, uint32_t max_sessions);

  // Creates a session with a fresh id. RESOURCE_EXHAUSTED at max_sessions;
  // UNAVAILABLE once draining.
  absl::StatusOr<std::shared_ptr<Session>> Open(
      SessionConfig config, std::unique_ptr<SessionTransport> transport,
      absl::Time now);

  // NOT_FOUND (naming the id) for a session never opened, closed or reclaimed.
  absl::StatusOr<std::shared_ptr<Session>> Find(uint64_t session_id) const;

  // Removes and closes the session. NOT_FOUND if it is not open.
  absl::StatusOr<FreeResult> Close(uint64_t session_id);

  // Removes and closes every session whose lease lapsed; returns their ids.
  std::vector<uint64_t> ReapExpired(absl::Time now);

  // Refuses new sessions from now on (graceful shutdown).
  void StopAccepting();

  // Closes every session (shutdown); returns how many there were.
  size_t CloseAll();

  size_t size() const;

 private:
  BlockAllocator* const store_;
  const uint32_t max_sessions_;
  mutable absl::Mutex mu_;
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  bool accepting_ ABSL_GUARDED_BY(mu_) = true;
  absl::flat_hash_map<uint64_t, std::shared_ptr<Session>> sessions_
      ABSL_GUARDED_BY(mu_);
};

}  // namespace freekv

#endif  // FREEKV_KVSERVICE_SESSION_REGISTRY_H_
