// RetrievalPolicy: creation, the per-pass driver, and the worker-side cache (appends,
// digests, storing full pages, dropping pages that left the window). Selection and
// recalls are in retrieval_recall.cc, attention in retrieval_attend.cc.
#include "worker/retrieval_policy.h"

#include <algorithm>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/log.h"

namespace freekv {

const char* RetrievalModeName(RetrievalMode mode) {
  switch (mode) {
    case RetrievalMode::kFreeKv:
      return "freekv";
    case RetrievalMode::kBlocking:
      return "blocking";
    case RetrievalMode::kOracle:
      return "oracle";
  }
  return "?";
}

absl::StatusOr<std::unique_ptr<RetrievalPolicy>> RetrievalPolicy::Create(
    const ModelConfig& model, const RetrievalConfig& config, RetrievalMode mode,
    PageLink* link) {
  if (auto s = ValidateModelConfig(model); !s.ok()) return s;
  if (auto s = ValidateRetrievalConfig(config, model); !s.ok()) return s;
  const bool wants_link = mode != RetrievalMode::kOracle;
  if (wants_link != (link != nullptr)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the ", RetrievalModeName(mode), " policy ",
        wants_link ? "needs a kvservice link (pages live in the service)"
                   : "keeps every page on the worker and takes no kvservice link"));
  }
  return std::unique_ptr<RetrievalPolicy>(new RetrievalPolicy(model, config, mode, link));
}

RetrievalPolicy::RetrievalPolicy(const ModelConfig& model, const RetrievalConfig& config,
                                 RetrievalMode mode, PageLink* link)
    : model_(model),
      config_(config),
      mode_(mode),
      link_(link),
      selector_(model, config),
      speculative_(model.num_layers),
      stats_(model.num_layers),
      reported_(model.num_layers) {
  pools_.reserve(model.num_layers);
  for (int l = 0; l < model.num_layers; ++l) {
    pools_.emplace_back(config.page_tokens, model.num_kv_heads, model.head_dim);
  }
}

RetrievalPolicy::~RetrievalPolicy() {
  // Recalls still in flight would otherwise hold their staging slots.
  if (absl::Status s = Drain(); !s.ok()) {
    Log(LogLevel::kWarning, "dropping in-flight recalls: %s", s.ToString());
  }
}

SequenceLayer& RetrievalPolicy::State(int64_t sequence, int layer) {
  auto [it, inserted] = sequences_.try_emplace(sequence);
  if (inserted) {
    it->second.reserve(model_.num_layers);
    for (int l = 0; l < model_.num_layers; ++l) {
      SequenceLayer state = selector_.NewState();
      if (!keeps_all(l)) {
        for (int i = 0; i < config_.selected_pages; ++i) {
          state.slot_pool.push_back(pools_[l].Allocate());
        }
      }
      it->second.push_back(std::move(state));
    }
  }
  return it->second[layer];
}

absl::Span<const int32_t> RetrievalPolicy::selected(int64_t sequence, int layer) const {
  const auto it = sequences_.find(sequence);
  if (it == sequences_.end()) return {};
  return it->second[layer].selected;
}

absl::Status RetrievalPolicy::BeginForward(absl::Span<const BatchEntry> batch) {
  absl::flat_hash_set<int64_t> seen;
  size_t decode_entries = 0;
  for (const BatchEntry& e : batch) {
    if (!seen.insert(e.sequence).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("sequence ", e.sequence, " appears twice in one batch"));
    }
    decode_entries += e.tokens.size() == 1;
  }
  ++step_;
  decoding_ = decode_entries > 0;
  if (decoding_) {
    ++stats_.decode_steps;
    stats_.decode_tokens += decode_entries;
    pass_start_ = absl::Now();
  }
  return absl::OkStatus();
}

absl::Status RetrievalPolicy::EndForward() {
  if (!decoding_) return absl::OkStatus();
  stats_.decode_seconds += absl::ToDoubleSeconds(absl::Now() - pass_start_);
  if (service() && config_.stats_every > 0 &&
      stats_.decode_steps - reported_.decode_steps >= uint64_t(config_.stats_every)) {
    return ReportStats();
  }
  return absl::OkStatus();
}

absl::Status RetrievalPolicy::ReportStats() {
  if (!service()) return absl::OkStatus();
  if (auto s = link_->ReportStats(stats_.Minus(reported_)); !s.ok()) return s;
  reported_ = stats_;
  return absl::OkStatus();
}

absl::Status RetrievalPolicy::Attend(int layer, absl::Span<const BatchEntry> batch,
                                     absl::Span<const float> q, absl::Span<const float> k,
                                     absl::Span<const float> v, absl::Span<float> out) {
  if (layer < 0 || layer >= model_.num_layers) {
    return absl::InvalidArgumentError(absl::StrCat("layer ", layer, " is out of range"));
  }
  const size_t kv_row = model_.kv_width();
  std::vector<size_t> rows;  // first row of each entry
  size_t total = 0;
  for (const BatchEntry& e : batch) {
    rows.push_back(total);
    total += e.tokens.size();
  }
  if (q.size() != total * model_.q_width() || k.size() != total * kv_row ||
      v.size() != k.size() || out.size() != q.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("attention inputs for ", total, " tokens have sizes q ", q.size(),
                     ", k ", k.size(), ", v ", v.size(), ", out ", out.size()));
  }
  for (size_t i = 0; i < batch.size(); ++i) {
    const size_t n = batch[i].tokens.size();
    if (auto s = Append(layer, batch[i], k.subspan(rows[i] * kv_row, n * kv_row),
                        v.subspan(rows[i] * kv_row, n * kv_row));
        !s.ok()) {
      return s;
    }
  }
  if (auto s = StoreFilled(layer, batch); !s.ok()) return s;
  const bool retrieves = !config_.IsFullLayer(layer);
  if (retrieves) {
    if (auto s = PrepareDecode(layer, batch, rows, q); !s.ok()) return s;
  }
  for (size_t i = 0; i < batch.size(); ++i) {
    if (batch[i].tokens.size() == 1) continue;
    if (auto s = AttendPrefill(batch[i], rows[i], q, k, v, out); !s.ok()) return s;
  }
  if (auto s = AttendDecode(layer, batch, rows, q, out); !s.ok()) return s;
  if (retrieves && mode_ != RetrievalMode::kBlocking)
    return Speculate(layer, batch, rows, q);
  return absl::OkStatus();
}

absl::Status RetrievalPolicy::Append(int layer, const BatchEntry& entry,
                                     absl::Span<const float> k,
                                     absl::Span<const float> v) {
  SequenceLayer& s = State(entry.sequence, layer);
  const size_t n = entry.tokens.size();
  if (entry.start_pos != s.length) {
    return absl::InvalidArgumentError(
        absl::StrCat("sequence ", entry.sequence, " layer ", layer, " holds ", s.length,
                     " tokens; append at start_pos ", entry.start_pos));
  }
  if (n > 1 && s.length != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "sequence ", entry.sequence, " passes ", n, " tokens at position ", s.length,
        "; the ", RetrievalModeName(mode_),
        " policy prefills from position 0 only, then decodes one token per pass"));
  }
  PagePool& pool = pools_[layer];
  const size_t row = pool.row();
  const int32_t page_tokens = config_.page_tokens;
  for (size_t t = 0; t < n; ++t) {
    const int32_t slot = s.length % page_tokens;
    if (slot == 0) s.local.push_back(pool.Allocate());
    std::copy_n(k.data() + t * row, row, pool.k_token(s.local.back(), slot));
    std::copy_n(v.data() + t * row, row, pool.v_token(s.local.back(), slot));
    ++s.length;
    if (s.length % page_tokens != 0 || config_.IsFullLayer(layer)) continue;
    const int32_t page = s.length / page_tokens - 1;
    if (auto st = selector_.AddDigest(s, pool.const_view(), s.local[page], page);
        !st.ok()) {
      return st;
    }
    if (service()) to_store_.push_back(PageToStore{entry.sequence, page, s.local[page]});
  }
  return absl::OkStatus();
}

absl::Status RetrievalPolicy::StoreFilled(int layer, absl::Span<const BatchEntry> batch) {
  if (!to_store_.empty()) {
    absl::Status s = link_->Store(layer, pools_[layer].const_view(), to_store_);
    to_store_.clear();
    if (!s.ok()) return s;
  }
  if (keeps_all(layer)) return absl::OkStatus();
  // Candidates live in the service now; the worker keeps sinks, window and slots.
  for (const BatchEntry& e : batch) {
    SequenceLayer& s = State(e.sequence, layer);
    const PageRanges r = RangesFor(config_, s.length);
    for (int32_t p = r.window_begin - 1; p >= r.sink_end && s.local[p] >= 0; --p) {
      pools_[layer].Free(s.local[p]);
      s.local[p] = -1;
    }
  }
  return absl::OkStatus();
}

absl::Status RetrievalPolicy::Release(int64_t sequence) {
  if (auto s = Drain(); !s.ok()) return s;
  const auto it = sequences_.find(sequence);
  if (it == sequences_.end()) {
    return absl::NotFoundError(absl::StrCat("sequence ", sequence, " is not cached"));
  }
  for (int l = 0; l < model_.num_layers; ++l) {
    const SequenceLayer& s = it->second[l];
    for (int32_t page : s.local) {
      if (page >= 0) pools_[l].Free(page);
    }
    for (int32_t page : s.slot_pool) pools_[l].Free(page);
  }
  sequences_.erase(it);
  return service() ? link_->FreeSequence(sequence) : absl::OkStatus();
}

}  // namespace freekv
