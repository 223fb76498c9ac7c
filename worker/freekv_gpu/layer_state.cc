#include "worker/freekv_gpu/layer_state.h"

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

absl::StatusOr<DiffSet> DiffSet::Create(int32_t lists, int32_t selected) {
  DiffSet d;
  d.lists = lists;
  d.selected = selected;
  const size_t bytes = DiffInts(lists, selected) * sizeof(int32_t);
  auto device = DeviceBuffer::Allocate(bytes);
  if (!device.ok()) return device.status();
  d.device = *std::move(device);
  FREEKV_RETURN_IF_ERROR(d.device.Zero());
  auto host = kernels::PinnedBuffer::Allocate(bytes + sizeof(int32_t));  // + the stamp
  if (!host.ok()) return host.status();
  d.host = *std::move(host);
  d.mirror()[bytes / sizeof(int32_t)] = -1;  // no step yet
  return d;
}

kernels::ResidentDiff DiffSet::Diff() const {
  const absl::Span<int32_t> all = device.span<int32_t>();
  return {all.subspan(0, entries()), all.subspan(entries(), entries()),
          all.subspan(2 * entries(), lists)};
}

RecallDiff DiffSet::ReadOnlyDiff() const {
  const kernels::ResidentDiff d = Diff();
  return {d.recall_pages, d.recall_slots, d.num_recall};
}

absl::Status DiffSet::CopyToHost(const int32_t* step, cudaStream_t stream) const {
  FREEKV_RETURN_IF_ERROR(kernels::CopyAsync(host.data(), device.data(), device.bytes(), stream));
  return kernels::CopyAsync(const_cast<int32_t*>(stamp()), step, sizeof(int32_t), stream);
}

uint64_t LayerStateBytes(const StateShape& s, bool recalls) {
  uint64_t bytes = s.pool_pages() * 2 * s.page_elems() * sizeof(BFloat16);
  if (s.sparse) {
    bytes += DigestBytes(s) + uint64_t(s.lists()) * s.layout.selected * sizeof(int32_t);
  }
  if (recalls) {
    bytes += uint64_t(s.batch) * s.q_heads * s.head_dim * sizeof(BFloat16) +
             s.lists() * sizeof(float) +
             2 * DiffInts(s.lists(), s.layout.selected) * sizeof(int32_t);
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
  // Random K and V (keys of unit scale): what attention reads before any recall.
  FREEKV_RETURN_IF_ERROR(FillUniformCuda(l.pool.span<BFloat16>(), seed, 1.0f, stream));
  if (s.sparse) {
    auto digests = DeviceBuffer::Allocate(DigestBytes(s));
    if (!digests.ok()) return digests.status();
    l.digests = *std::move(digests);
    FREEKV_RETURN_IF_ERROR(
        FillDigestsCuda(l.digests.span<BFloat16>(), s.head_dim, seed + 1, stream));
    auto resident = DeviceBuffer::Allocate(size_t(s.lists()) * s.layout.selected * 4);
    if (!resident.ok()) return resident.status();
    l.resident = *std::move(resident);
    FREEKV_RETURN_IF_ERROR(l.resident.Poison());  // every slot empty (-1)
  }
  if (!recalls) return l;
  auto q_prev = DeviceBuffer::Allocate(size_t(s.batch) * s.q_heads * s.head_dim * 2);
  auto similarity = DeviceBuffer::Allocate(size_t(s.lists()) * sizeof(float));
  auto spec = DiffSet::Create(s.lists(), s.layout.selected);
  auto corr = DiffSet::Create(s.lists(), s.layout.selected);
  for (const absl::Status& st : {q_prev.status(), similarity.status(), spec.status(),
                                 corr.status()}) {
    FREEKV_RETURN_IF_ERROR(st);
  }
  l.q_prev = *std::move(q_prev);
  l.similarity = *std::move(similarity);
  l.spec = *std::move(spec);
  l.corr = *std::move(corr);
  return l;
}

}  // namespace freekv::gpu
