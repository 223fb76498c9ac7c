#include "transport/ucx_memory.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "transport/ucx_status.h"

namespace freekv {

absl::StatusOr<UcxMemory> UcxMemory::Allocate(const UcxContext& context, size_t bytes) {
  if (bytes == 0) return absl::InvalidArgumentError("UcxMemory::Allocate: bytes is 0");
  ucp_mem_map_params_t params = {};
  params.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH |
                      UCP_MEM_MAP_PARAM_FIELD_FLAGS;
  params.address = nullptr;
  params.length = bytes;
  params.flags = UCP_MEM_MAP_ALLOCATE;
  return Map(context, params);
}

absl::StatusOr<UcxMemory> UcxMemory::Register(const UcxContext& context, std::byte* base,
                                              size_t bytes) {
  if (base == nullptr || bytes == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("UcxMemory::Register: base ", base == nullptr ? "is null" : "is set",
                     ", bytes ", bytes, "; both must be non-zero"));
  }
  ucp_mem_map_params_t params = {};
  params.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH;
  params.address = base;
  params.length = bytes;
  return Map(context, params);
}

absl::StatusOr<UcxMemory> UcxMemory::Map(const UcxContext& context,
                                         const ucp_mem_map_params_t& params) {
  ucp_mem_h memh = nullptr;
  if (ucs_status_t s = ucp_mem_map(context.get(), &params, &memh); s != UCS_OK) {
    return UcxStatus(s, absl::StrCat("ucp_mem_map of ", params.length, " bytes"));
  }
  ucp_mem_attr_t attr = {};
  attr.field_mask = UCP_MEM_ATTR_FIELD_ADDRESS | UCP_MEM_ATTR_FIELD_LENGTH;
  if (ucs_status_t s = ucp_mem_query(memh, &attr); s != UCS_OK) {
    ucp_mem_unmap(context.get(), memh);
    return UcxStatus(s, "ucp_mem_query");
  }
  UcxMemory memory;
  memory.context_ = context.get();
  memory.memh_ = memh;
  memory.data_ = static_cast<std::byte*>(attr.address);
  memory.size_ = attr.length;
  return memory;
}

UcxMemory::~UcxMemory() { Reset(); }

UcxMemory::UcxMemory(UcxMemory&& other) noexcept
    : context_(std::exchange(other.context_, nullptr)),
      memh_(std::exchange(other.memh_, nullptr)),
      data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)) {}

UcxMemory& UcxMemory::operator=(UcxMemory&& other) noexcept {
  if (this != &other) {
    Reset();
    context_ = std::exchange(other.context_, nullptr);
    memh_ = std::exchange(other.memh_, nullptr);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

void UcxMemory::Reset() {
  if (memh_ != nullptr) ucp_mem_unmap(context_, memh_);
  context_ = nullptr;
  memh_ = nullptr;
  data_ = nullptr;
  size_ = 0;
}

absl::StatusOr<std::string> UcxMemory::PackRkey() const {
  if (memh_ == nullptr) return absl::FailedPreconditionError("UcxMemory maps nothing");
  void* buffer = nullptr;
  size_t bytes = 0;
  if (ucs_status_t s = ucp_rkey_pack(context_, memh_, &buffer, &bytes); s != UCS_OK) {
    return UcxStatus(s, "ucp_rkey_pack");
  }
  std::string packed(static_cast<const char*>(buffer), bytes);
  ucp_rkey_buffer_release(buffer);
  return packed;
}

}  // namespace freekv
