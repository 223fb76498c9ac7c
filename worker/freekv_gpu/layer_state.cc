#include "worker/freekv_gpu/layer_state.h"

#include <algorithm>
#include <utility>

namespace freekv::gpu {
namespace {

using kernels::DeviceBuffer;

size_t DiffInts(int32_t lists, int32_t selected) {
  return 2 * size_t(lists) * selected + lists + 1 + (size_t(lists) + 3) / 4;
}

uint64_t DigestBytes(const StateShape& s) {
  return uint64_t(s.batch) * s.digest_pages * s.kv_heads * 2 * s.head_dim *
         sizeof(BFloat16);
}

}  // namespace

size_t DiffSet::block_ints() const { return DiffInts(lists, selected); }

absl::StatusOr<DiffSet> DiffSet::Create(int32_t lists, int32_t selected) {
  DiffSet d;
  d.lists = lists;
  d.selected = selected;
  auto host = kernels::PinnedBuffer::Allocate((d.block_ints() + 2) * sizeof(int32_t));
  if (!host.ok()) return host.status();
  d.host = *std::move(host);
  std::fill_n(d.host.span<int32_t>().data(), d.block_ints(), 0);
  auto device = DeviceBuffer::Allocate(kernels::DiffCopyInts(lists, selected) * sizeof(int32_t));
  if (!device.ok()) return device.status();
  d.device = *std::move(device);
  FREEKV_RETURN_IF_ERROR(d.device.Zero());  // no recalls, as in the pinned block
  *d.stamp() = *d.spec_stamp() = -1;  // no step yet
  return d;
}

kernels::ResidentDiff DiffSet::Diff() const {
  const kernels::DiffBlockParts<int32_t> parts =
      kernels::SplitDiffBlock(host.span<int32_t>(), lists, selected);
  return {parts.pages, parts.slots, parts.counts, {}, device.span<int32_t>()};
}

RecallDiff DiffSet::HostDiff() const {
  const kernels::ResidentDiff d = Diff();
  return {d.recall_pages, d.recall_slots, d.num_recall};
}

RecallDiff DiffSet::DeviceDiff() const {
  const kernels::DiffBlockParts<const int32_t> parts =
      kernels::SplitDiffBlock(device.span<const int32_t>(), lists, selected);
  return {parts.pages, parts.slots, parts.counts};
}

absl::Status DiffSet::Publish(const int32_t* step, cudaStream_t stream) const {
  return StampCuda(stamp(), step, stream);
}

uint64_t LayerStateBytes(const StateShape& s, bool recalls) {
  uint64_t bytes = s.pool_pages() * 2 * s.page_elems() * sizeof(BFloat16);
  if (s.sparse) {
    bytes += DigestBytes(s) + uint64_t(s.lists()) * s.layout.capacity() * sizeof(int32_t);
  }
  if (recalls) {
    bytes += uint64_t(s.batch) * s.q_heads * s.head_dim * sizeof(BFloat16) +
             s.lists() * sizeof(float) +
             kernels::DiffCopyInts(s.lists(), s.layout.selected) * sizeof(int32_t);
    if (s.sparse && s.layout.cache > 0) bytes += uint64_t(s.lists()) * s.layout.selected * 4;
  }
  return bytes;
}

absl::StatusOr<LayerState> LayerState::Create(const StateShape& s, bool recalls,
                                              uint64_t seed, cudaStream_t stream) {
  LayerState l;
  const int64_t page = s.page_elems();
  auto pool = DeviceBuffer::Allocate(s.pool_pages() * 2 * page * sizeof(BFloat16));
  if (!pool.ok()) return pool.status();
  l.pool = *std::move(pool);
  BFloat16* base = l.pool.span<BFloat16>().data();
  l.view = {base,           base + page, 2 * page, static_cast<int32_t>(s.pool_pages()),
            s.page_tokens,  s.kv_heads,  s.head_dim};
  // Random K and V (keys of unit scale): what attention reads before any recall. A
  // resident pool's sink and window pages get the same values whatever the slots
  // between them (a run with a resident cache attends the pages one without does).
  const absl::Span<BFloat16> all = l.pool.span<BFloat16>();
  if (!s.resident()) {
    FREEKV_RETURN_IF_ERROR(FillUniformCuda(all, seed, 1.0f, stream));
  } else {
    const ResidentLayout& lay = s.layout;
    const int32_t parts[] = {lay.sink, lay.capacity(), lay.window};
    size_t first = 0;  // pool page
    for (int32_t b = 0; b < s.batch; ++b) {
      for (int part = 0; part < 3; ++part) {
        if (parts[part] > 0) {
          FREEKV_RETURN_IF_ERROR(FillUniformCuda(
              all.subspan(first * 2 * page, size_t(parts[part]) * 2 * page),
              seed * 1'000'003 + b * 3 + part, 1.0f, stream));
        }
        first += parts[part];
      }
    }
  }
  if (s.sparse) {
    auto digests = DeviceBuffer::Allocate(DigestBytes(s));
    if (!digests.ok()) return digests.status();
    l.digests = *std::move(digests);
    FREEKV_RETURN_IF_ERROR(
        FillDigestsCuda(l.digests.span<BFloat16>(), s.head_dim, seed + 1, stream));
    auto resident = DeviceBuffer::Allocate(size_t(s.lists()) * s.layout.capacity() * 4);
    if (!resident.ok()) return resident.status();
    l.resident = *std::move(resident);
    FREEKV_RETURN_IF_ERROR(l.resident.Poison());  // every slot empty (-1)
  }
  if (!recalls) return l;
  auto q_prev = DeviceBuffer::Allocate(size_t(s.batch) * s.q_heads * s.head_dim * 2);
  auto similarity = DeviceBuffer::Allocate(size_t(s.lists()) * sizeof(float));
  auto diff = DiffSet::Create(s.lists(), s.layout.selected);
  for (const absl::Status& st : {q_prev.status(), similarity.status(), diff.status()}) {
    FREEKV_RETURN_IF_ERROR(st);
  }
  if (s.sparse && s.layout.cache > 0) {
    auto attend = DeviceBuffer::Allocate(size_t(s.lists()) * s.layout.selected * 4);
    if (!attend.ok()) return attend.status();
    l.attend = *std::move(attend);
    FREEKV_RETURN_IF_ERROR(l.attend.Poison());  // no selection yet: the table's default
  }
  l.q_prev = *std::move(q_prev);
  l.similarity = *std::move(similarity);
  l.diff = *std::move(diff);
  return l;
}

}  // namespace freekv::gpu
