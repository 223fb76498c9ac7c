#include "kvservice/cuda_copy.h"

#include <algorithm>
#include <utility>
#include <vector>

#include "kvservice/cuda_handles.cuh"

namespace freekv {

int VisibleCudaDeviceCount() {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess) {
    cudaGetLastError();  // no driver or no device: not an error for the caller
    return 0;
  }
  return devices;
}

namespace {

// Copies per cudaMemcpyBatchAsync call: large enough that the call's fixed cost
// vanishes, small enough that its argument arrays stay in cache.
constexpr size_t kMaxBatch = 4096;

}  // namespace

struct CopyStreams::Impl {
  int device = 0;
  CopyOptions options;
  std::vector<gpu::Stream> streams;  // [0] is main; kSplit's direct copies use [1]
  gpu::Event fork;                   // recorded on main, waited by the others
  std::vector<gpu::Event> joins;     // [i] recorded on streams[i + 1], waited by main
  // kGather, kSplit, kAuto: two bounce buffers used in turn, each with the event of its last
  // copy.
  gpu::PinnedHostBuffer bounce[2];
  gpu::Event bounce_free[2];
  int next_bounce = 0;
  // Scratch, reused to keep Enqueue allocation-free.
  std::vector<void*> dsts;
  std::vector<const void*> srcs;
  std::vector<size_t> sizes;
  std::vector<HostCopy> packing;
  std::vector<DeviceCopy> drained;

  absl::Status Issue(cudaStream_t stream, absl::Span<const DeviceCopy> copies);
  absl::Status IssueBatch(cudaStream_t stream, absl::Span<const DeviceCopy> copies);
  absl::Status Spread(absl::Span<const DeviceCopy> copies);
  absl::Status Gather(absl::Span<const DeviceCopy> copies);
  absl::Status GatherOne(absl::Span<const DeviceCopy> copies);
  void PlanPacking(absl::Span<const DeviceCopy> copies, std::byte* bounce);
  absl::Status IssueDirect(absl::Span<const DeviceCopy> copies);
};

absl::Status CopyStreams::Impl::Issue(cudaStream_t stream,
                                      absl::Span<const DeviceCopy> copies) {
  if (options.method != CopyMethod::kPerRun) return IssueBatch(stream, copies);
  for (const DeviceCopy& copy : copies) {
    FREEKV_GPU_RETURN_IF_ERROR(
        cudaMemcpyAsync(copy.dst, copy.src, copy.bytes, cudaMemcpyDefault, stream));
  }
  return absl::OkStatus();
}

absl::Status CopyStreams::Impl::IssueBatch(cudaStream_t stream,
                                           absl::Span<const DeviceCopy> copies) {
  cudaMemcpyAttributes attrs = {};
  attrs.srcAccessOrder = options.any_source_order ? cudaMemcpySrcAccessOrderAny
                                                  : cudaMemcpySrcAccessOrderStream;
  attrs.flags = options.prefer_overlap ? cudaMemcpyFlagPreferOverlapWithCompute
                                       : cudaMemcpyFlagDefault;
  size_t attrs_index = 0;
  for (size_t begin = 0; begin < copies.size(); begin += kMaxBatch) {
    const size_t n = std::min(kMaxBatch, copies.size() - begin);
    dsts.resize(n);
    srcs.resize(n);
    sizes.resize(n);
    for (size_t i = 0; i < n; ++i) {
      dsts[i] = copies[begin + i].dst;
      srcs[i] = copies[begin + i].src;
      sizes[i] = copies[begin + i].bytes;
    }
    FREEKV_GPU_RETURN_IF_ERROR(cudaMemcpyBatchAsync(dsts.data(), srcs.data(), sizes.data(),
                                                    n, &attrs, &attrs_index, 1, stream));
  }
  return absl::OkStatus();
}

// kBatch, kPerRun: contiguous parts of about equal bytes, one per stream, forked from
// and joined back into main.
absl::Status CopyStreams::Impl::Spread(absl::Span<const DeviceCopy> copies) {
  const size_t parts = std::min(streams.size(), copies.size());
  cudaStream_t main = streams[0].get();
  if (parts == 1) return Issue(main, copies);
  size_t total = 0;
  for (const DeviceCopy& copy : copies) total += copy.bytes;
  FREEKV_GPU_RETURN_IF_ERROR(cudaEventRecord(fork.get(), main));
  size_t begin = 0;
  size_t running = 0;
  for (size_t part = 0; part < parts; ++part) {
    const size_t target = total / parts * (part + 1);
    size_t end = begin;
    while (end < copies.size() && (part + 1 == parts || running < target)) {
      running += copies[end++].bytes;
    }
    if (end == begin) continue;
    cudaStream_t stream = streams[part].get();
    if (part > 0) FREEKV_GPU_RETURN_IF_ERROR(cudaStreamWaitEvent(stream, fork.get(), 0));
    if (absl::Status s = Issue(stream, copies.subspan(begin, end - begin)); !s.ok()) {
      return s;
    }
    if (part > 0) {
      FREEKV_GPU_RETURN_IF_ERROR(cudaEventRecord(joins[part - 1].get(), stream));
      FREEKV_GPU_RETURN_IF_ERROR(cudaStreamWaitEvent(main, joins[part - 1].get(), 0));
    }
    begin = end;
  }
  return absl::OkStatus();
}

// kGather, kSplit, kAuto: pieces of at most piece_bytes (or a bounce buffer); a copy larger
// than a piece goes alone, straight from its source (it is large enough for the copy
// engine on its own).
absl::Status CopyStreams::Impl::Gather(absl::Span<const DeviceCopy> copies) {
  const size_t capacity = options.piece_bytes > 0 ? options.piece_bytes : options.bounce_bytes;
  size_t begin = 0;
  while (begin < copies.size()) {
    if (copies[begin].bytes > capacity) {
      if (absl::Status s = IssueBatch(streams[0].get(), copies.subspan(begin, 1)); !s.ok()) {
        return s;
      }
      ++begin;
      continue;
    }
    size_t end = begin;
    size_t bytes = 0;
    while (end < copies.size() && bytes + copies[end].bytes <= capacity) {
      bytes += copies[end++].bytes;
    }
    if (absl::Status s = GatherOne(copies.subspan(begin, end - begin)); !s.ok()) return s;
    begin = end;
  }
  return absl::OkStatus();
}

// Fills `packing` (sources into `bounce`, in order) and `drained` (the bounce out to
// the destinations, one copy per run of adjacent destinations).
void CopyStreams::Impl::PlanPacking(absl::Span<const DeviceCopy> copies,
                                    std::byte* bounce) {
  packing.clear();
  drained.clear();
  std::byte* cursor = bounce;
  for (const DeviceCopy& copy : copies) {
    packing.push_back(HostCopy{cursor, copy.src, copy.bytes});
    std::byte* dst = static_cast<std::byte*>(copy.dst);
    if (!drained.empty() &&
        static_cast<std::byte*>(drained.back().dst) + drained.back().bytes == dst) {
      drained.back().bytes += copy.bytes;
    } else {
      drained.push_back(DeviceCopy{dst, cursor, copy.bytes});
    }
    cursor += copy.bytes;
  }
}

// kSplit: `copies` straight from their sources on streams[1], joined back into main
// through joins[0]. No fork from main: waiting for main would hold these copies until
// the previous piece's copy-out ends; they wait only for the caller's WaitEvent events
// and the side stream's own earlier copies.
absl::Status CopyStreams::Impl::IssueDirect(absl::Span<const DeviceCopy> copies) {
  cudaStream_t side = streams[1].get();
  if (absl::Status s = IssueBatch(side, copies); !s.ok()) return s;
  return gpu::CudaStatus(cudaEventRecord(joins[0].get(), side), "cudaEventRecord of a join");
}

// Packs `copies` (which fit) into the next bounce buffer once its previous copy is
// done, then copies it out. While the pool packs, this thread already issued the
// copy-out of the other buffer (previous call), and under kSplit it issues the direct
// share of this piece, so the copy engines always have work.
absl::Status CopyStreams::Impl::GatherOne(absl::Span<const DeviceCopy> copies) {
  const int b = next_bounce;
  next_bounce ^= 1;
  FREEKV_GPU_RETURN_IF_ERROR(cudaEventSynchronize(bounce_free[b].get()));
  const size_t direct =
      options.method == CopyMethod::kSplit
          ? static_cast<size_t>(static_cast<double>(copies.size()) * options.direct_share)
          : 0;
  PlanPacking(copies.first(copies.size() - direct), bounce[b].data());
  cudaStream_t main = streams[0].get();
  absl::Status side = absl::OkStatus();
  options.gather_pool->Copy(packing, [&] {
    if (direct > 0) side.Update(IssueDirect(copies.last(direct)));
  });
  if (!side.ok()) return side;
  if (absl::Status s = IssueBatch(main, drained); !s.ok()) return s;
  FREEKV_GPU_RETURN_IF_ERROR(cudaEventRecord(bounce_free[b].get(), main));
  if (direct > 0) FREEKV_GPU_RETURN_IF_ERROR(cudaStreamWaitEvent(main, joins[0].get(), 0));
  return absl::OkStatus();
}

CopyStreams::CopyStreams(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
CopyStreams::~CopyStreams() = default;

namespace {

absl::Status CheckOptions(const CopyOptions& options) {
  if (options.streams < 1 || options.streams > 16) {
    return absl::InvalidArgumentError(
        absl::StrCat("copy streams is ", options.streams, "; use 1 to 16"));
  }
  if (UsesBounce(options.method) &&
      (options.gather_pool == nullptr || options.bounce_bytes == 0)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "copy method ", CopyMethodName(options.method),
        " needs a GatherPool and bounce buffers of non-zero size"));
  }
  if (options.piece_bytes > options.bounce_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("piece_bytes ", options.piece_bytes,
                                                   " is more than bounce_bytes ",
                                                   options.bounce_bytes));
  }
  if (!(options.direct_share >= 0.0 && options.direct_share <= 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("direct_share is ", options.direct_share, "; use 0 to 1"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<CopyStreams>> CopyStreams::Create(int device,
                                                                 const CopyOptions& options) {
  if (absl::Status s = CheckOptions(options); !s.ok()) return s;
  auto impl = std::make_unique<Impl>();
  impl->device = device;
  impl->options = options;
  const int streams = options.method == CopyMethod::kGather  ? 1
                      : options.method == CopyMethod::kAuto  ? 1
                      : options.method == CopyMethod::kSplit ? 2
                                                             : options.streams;
  for (int i = 0; i < streams; ++i) {
    absl::StatusOr<gpu::Stream> stream = gpu::Stream::Create(device);
    if (!stream.ok()) return stream.status();
    impl->streams.push_back(*std::move(stream));
  }
  std::vector<gpu::Event*> events = {&impl->fork};
  impl->joins.resize(streams - 1);
  for (gpu::Event& join : impl->joins) events.push_back(&join);
  if (UsesBounce(options.method)) {
    for (int b = 0; b < 2; ++b) {
      absl::StatusOr<gpu::PinnedHostBuffer> buffer =
          gpu::PinnedHostBuffer::Create(options.bounce_bytes);
      if (!buffer.ok()) return buffer.status();
      impl->bounce[b] = *std::move(buffer);
      events.push_back(&impl->bounce_free[b]);
    }
  }
  for (gpu::Event* event : events) {
    absl::StatusOr<gpu::Event> made = gpu::Event::Create(device, cudaEventDisableTiming);
    if (!made.ok()) return made.status();
    *event = *std::move(made);
  }
  return std::unique_ptr<CopyStreams>(new CopyStreams(std::move(impl)));
}

int CopyStreams::device() const { return impl_->device; }
const CopyOptions& CopyStreams::options() const { return impl_->options; }
cudaStream_t CopyStreams::main() const { return impl_->streams[0].get(); }

bool CopyStreams::Packs(size_t copies) const {
  const CopyOptions& options = impl_->options;
  if (options.method == CopyMethod::kAuto) return copies > options.direct_max_copies;
  return UsesBounce(options.method);
}

absl::Status CopyStreams::Enqueue(absl::Span<const DeviceCopy> copies) {
  if (copies.empty()) return absl::OkStatus();
  gpu::DeviceGuard guard(impl_->device);
  if (Packs(copies.size())) return impl_->Gather(copies);
  return impl_->Spread(copies);
}

absl::Status CopyStreams::WaitEvent(cudaEvent_t event) {
  gpu::DeviceGuard guard(impl_->device);
  for (const gpu::Stream& stream : impl_->streams) {
    FREEKV_GPU_RETURN_IF_ERROR(cudaStreamWaitEvent(stream.get(), event, 0));
  }
  return absl::OkStatus();
}

absl::Status CopyStreams::Synchronize() {
  gpu::DeviceGuard guard(impl_->device);
  return gpu::CudaStatus(cudaStreamSynchronize(main()), "cudaStreamSynchronize");
}

}  // namespace freekv
