#include "client/ucx_regions.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace freekv {
namespace {

// Maps `bytes` of UCX-allocated memory and packs its rkey; `name` is for errors.
absl::Status MapRegion(const UcxContext& context, uint64_t bytes, const char* name,
                       UcxMemory* memory, std::string* rkey) {
  if (bytes == 0) {
    return absl::InvalidArgumentError(absl::StrCat(name, "_bytes is 0"));
  }
  absl::StatusOr<UcxMemory> mapped = UcxMemory::Allocate(context, bytes);
  if (!mapped.ok()) {
    return absl::Status(
        mapped.status().code(),
        absl::StrCat(name, " region of ", bytes, " bytes: ", mapped.status().message()));
  }
  absl::StatusOr<std::string> packed = mapped->PackRkey();
  if (!packed.ok()) return packed.status();
  *memory = *std::move(mapped);
  *rkey = *std::move(packed);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<UcxRegions>> UcxRegions::Create(
    uint64_t staging_bytes, uint64_t offload_bytes, const UcxRegionsOptions& options) {
  std::unique_ptr<UcxRegions> regions(new UcxRegions());
  absl::StatusOr<std::unique_ptr<UcxContext>> context =
      UcxContext::Create(UcxContextOptions{options.transports});
  if (!context.ok()) return context.status();
  regions->context_ = *std::move(context);
  if (absl::Status s = MapRegion(*regions->context_, staging_bytes, "staging",
                                 &regions->staging_, &regions->staging_rkey_);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = MapRegion(*regions->context_, offload_bytes, "offload",
                                 &regions->offload_, &regions->offload_rkey_);
      !s.ok()) {
    return s;
  }
  regions->staging_span_ = regions->staging_.span().first(staging_bytes);
  regions->offload_span_ = regions->offload_.span().first(offload_bytes);
  absl::StatusOr<std::unique_ptr<UcxEngine>> engine =
      UcxEngine::Start(*regions->context_, "ucx-progress");
  if (!engine.ok()) return engine.status();
  regions->engine_ = *std::move(engine);
  return regions;
}

}  // namespace freekv
