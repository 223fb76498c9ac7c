#include "kvservice/session_registry.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace freekv {

SessionRegistry::SessionRegistry(BlockAllocator* store, uint32_t max_sessions)
    : store_(store), max_sessions_(max_sessions) {}

absl::StatusOr<std::shared_ptr<Session>> SessionRegistry::Open(
    SessionConfig config, std::unique_ptr<SessionTransport> transport, absl::Time now) {
  absl::MutexLock lock(&mu_);
  if (!accepting_) {
    return absl::UnavailableError("the kvservice is shutting down; open the session "
                                  "on its replacement");
  }
  if (sessions_.size() >= max_sessions_) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the kvservice already has ", sessions_.size(),
        " sessions open (--max_sessions); close one first"));
  }
  const uint64_t id = next_id_++;
  auto session = std::make_shared<Session>(id, std::move(config), store_,
                                           std::move(transport), now);
  sessions_.emplace(id, session);
  return session;
}

absl::StatusOr<std::shared_ptr<Session>> SessionRegistry::Find(
    uint64_t session_id) const {
  absl::MutexLock lock(&mu_);
  auto it = sessions_.find(session_id);
  if (it == sessions_.end()) {
    return absl::NotFoundError(absl::StrCat(
        "session ", session_id, " is not open (never opened, closed, or reclaimed "
        "after its lease lapsed); open a new session"));
  }
  return it->second;
}

absl::StatusOr<FreeResult> SessionRegistry::Close(uint64_t session_id) {
  std::shared_ptr<Session> session;
  {
    absl::MutexLock lock(&mu_);
    auto it = sessions_.find(session_id);
    if (it == sessions_.end()) {
      return absl::NotFoundError(
          absl::StrCat("session ", session_id, " is not open"));
    }
    session = std::move(it->second);
    sessions_.erase(it);
  }
  // Closed outside the registry's lock: freeing many blocks must not stall others.
  return session->Close();
}

std::vector<uint64_t> SessionRegistry::ReapExpired(absl::Time now) {
  std::vector<std::shared_ptr<Session>> expired;
  {
    absl::MutexLock lock(&mu_);
    for (auto it = sessions_.begin(); it != sessions_.end();) {
      if (it->second->Expired(now)) {
        expired.push_back(std::move(it->second));
        sessions_.erase(it++);
      } else {
        ++it;
      }
    }
  }
  std::vector<uint64_t> ids;
  for (const auto& session : expired) {
    session->Close();
    ids.push_back(session->id());
  }
  return ids;
}

void SessionRegistry::StopAccepting() {
  absl::MutexLock lock(&mu_);
  accepting_ = false;
}

size_t SessionRegistry::CloseAll() {
  absl::flat_hash_map<uint64_t, std::shared_ptr<Session>> all;
  {
    absl::MutexLock lock(&mu_);
    all.swap(sessions_);
  }
  for (auto& [id, session] : all) session->Close();
  return all.size();
}

size_t SessionRegistry::size() const {
  absl::MutexLock lock(&mu_);
  return sessions_.size();
}

}  // namespace freekv
