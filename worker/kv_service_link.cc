#include "worker/kv_service_link.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "kernels/layout.h"

namespace freekv {
namespace {

// The region's bytes as floats (the regions are page-aligned allocations).
absl::Span<float> AsFloats(absl::Span<std::byte> bytes) {
  return absl::MakeSpan(reinterpret_cast<float*>(bytes.data()),
                        bytes.size() / sizeof(float));
}

}  // namespace

absl::StatusOr<std::unique_ptr<KvServiceLink>> KvServiceLink::Open(
    const KvServiceLinkOptions& options, const ModelConfig& model,
    const RetrievalConfig& config) {
  if (auto s = ValidateRetrievalConfig(config, model); !s.ok()) return s;
  if (options.offload_blocks < 1) {
    return absl::InvalidArgumentError("offload_blocks must be >= 1");
  }
  KvClientOptions client;
  client.target = options.target;
  client.geometry = KvGeometry(model, config.page_tokens, DType::kFloat32);
  // Room for the worst case of one request: every slot of every sequence at once.
  client.slot_slices = static_cast<uint32_t>(config.max_sequences) * model.num_kv_heads *
                       config.selected_pages;
  client.offload_blocks = options.offload_blocks;
  client.client_name = options.client_name;
  absl::StatusOr<std::unique_ptr<KvClient>> opened = KvClient::Open(client);
  if (!opened.ok()) return opened.status();
  return std::unique_ptr<KvServiceLink>(
      new KvServiceLink(*std::move(opened), options.recall_timeout));
}

KvServiceLink::KvServiceLink(std::unique_ptr<KvClient> client,
                             absl::Duration recall_timeout)
    : client_(std::move(client)), recall_timeout_(recall_timeout) {}

absl::Status KvServiceLink::Store(int layer, const kernels::PagedKv<const float>& pool,
                                  absl::Span<const PageToStore> pages) {
  const size_t block = client_->geometry().block_bytes();
  const size_t per_chunk = client_->offload_region().size() / block;
  const absl::Span<float> region = AsFloats(client_->offload_region());
  for (size_t first = 0; first < pages.size(); first += per_chunk) {
    const size_t n = std::min(per_chunk, pages.size() - first);
    pool_pages_.clear();
    offload_refs_.clear();
    for (size_t i = 0; i < n; ++i) {
      const PageToStore& p = pages[first + i];
      pool_pages_.push_back(p.pool_page);
      offload_refs_.push_back(OffloadPageRef{static_cast<uint64_t>(p.sequence),
                                             static_cast<uint32_t>(layer),
                                             static_cast<uint32_t>(p.page), i * block});
    }
    if (auto s = kernels::NhdToHndRef<float>(pool, pool_pages_,
                                             region.first(n * block / sizeof(float)));
        !s.ok()) {
      return s;
    }
    absl::StatusOr<std::vector<uint64_t>> tags = client_->Offload(offload_refs_);
    if (!tags.ok()) return tags.status();
  }
  return absl::OkStatus();
}

absl::StatusOr<RecallTicket> KvServiceLink::StartRecall(
    uint64_t step, int layer, absl::Span<const SliceToRecall> slices) {
  const size_t slice = client_->geometry().head_slice_bytes();
  if (slices.size() * slice > client_->slot_bytes()) {
    return absl::ResourceExhaustedError(
        absl::StrCat("a recall of ", slices.size(), " slices needs ",
                     slices.size() * slice, " bytes; a staging slot holds ",
                     client_->slot_bytes(), " (more sequences than max_sequences?)"));
  }
  recall_refs_.clear();
  for (size_t i = 0; i < slices.size(); ++i) {
    const SliceToRecall& s = slices[i];
    recall_refs_.push_back(RecallSliceRef{static_cast<uint64_t>(s.sequence),
                                          static_cast<uint32_t>(s.kv_head),
                                          static_cast<uint32_t>(s.page), i * slice});
  }
  return client_->Recall(step, static_cast<uint32_t>(layer), recall_refs_);
}

absl::Status KvServiceLink::WaitRecall(const RecallTicket& ticket) {
  return client_->Wait(ticket, absl::Now() + recall_timeout_);
}

absl::Status KvServiceLink::LandRecall(const RecallTicket& ticket,
                                       absl::Span<const SliceToRecall> slices,
                                       const kernels::PagedKv<float>& pool) {
  const size_t slice_floats = client_->geometry().head_slice_bytes() / sizeof(float);
  dst_pages_.clear();
  dst_heads_.clear();
  for (const SliceToRecall& s : slices) {
    dst_pages_.push_back(s.dst_page);
    dst_heads_.push_back(s.kv_head);
  }
  const absl::Span<float> slot =
      AsFloats(client_->staging_slot(ticket.layer, ticket.slot));
  absl::Status landed = kernels::HndToNhdRef<float>(
      slot.first(slices.size() * slice_floats), dst_pages_, dst_heads_, pool);
  // The slot is free again either way: its bytes are no longer needed.
  absl::Status released = client_->Release(ticket);
  return landed.ok() ? released : landed;
}

absl::Status KvServiceLink::FreeSequence(int64_t sequence) {
  absl::StatusOr<uint32_t> freed = client_->FreeSequence(static_cast<uint64_t>(sequence));
  return freed.ok() ? absl::OkStatus() : freed.status();
}

absl::Status KvServiceLink::ReportStats(const DecodeStats& delta) {
  const LayerStats total = delta.Total();
  DecodeStatsDelta d;
  d.decode_steps = delta.decode_steps;
  d.correction_checks = total.correction_checks;
  d.corrections = total.corrections;
  d.speculation_needed_blocks = total.needed_pages;
  d.speculation_hit_blocks = total.hit_pages;
  d.stall_seconds = delta.stall_seconds;
  d.decode_seconds = delta.decode_seconds;
  return client_->ReportStats(d);
}

}  // namespace freekv
