#include "kvservice/cuda_copy.h"

#include <algorithm>
#include <utility>
#include <vector>

#include "kvservice/cuda_handles.cuh"

namespace freekv {

absl::StatusOr<CopyMethod> ParseCopyMethod(absl::string_view name) {
  if (name == "batch") return CopyMethod::kBatch;
  if (name == "per_run") return CopyMethod::kPerRun;
  return absl::InvalidArgumentError(
      absl::StrCat("copy method is '", name, "'; use 'batch' or 'per_run'"));
}

const char* CopyMethodName(CopyMethod method) {
  return method == CopyMethod::kBatch ? "batch" : "per_run";
}

int VisibleCudaDeviceCount() {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess) {
    cudaGetLastError();  // no driver or no device: not an error for the caller
    return 0;
  }
  return devices;
}

struct CopyStreams::Impl {
  int device = 0;
  CopyMethod method = CopyMethod::kBatch;
  std::vector<gpu::Stream> streams;  // [0] is main
  gpu::Event fork;                   // recorded on main, waited by the others
  std::vector<gpu::Event> joins;     // [i] recorded on streams[i + 1], waited by main
  // Scratch for cudaMemcpyBatchAsync's arrays, reused to keep Enqueue allocation-free.
  std::vector<void*> dsts;
  std::vector<const void*> srcs;
  std::vector<size_t> sizes;

  absl::Status Issue(cudaStream_t stream, absl::Span<const DeviceCopy> copies);
};

namespace {

// Copies per cudaMemcpyBatchAsync call: large enough that the call's fixed cost
// vanishes, small enough that its argument arrays stay in cache.
constexpr size_t kMaxBatch = 4096;

}  // namespace

absl::Status CopyStreams::Impl::Issue(cudaStream_t stream,
                                      absl::Span<const DeviceCopy> copies) {
  if (method == CopyMethod::kPerRun) {
    for (const DeviceCopy& copy : copies) {
      FREEKV_GPU_RETURN_IF_ERROR(
          cudaMemcpyAsync(copy.dst, copy.src, copy.bytes, cudaMemcpyDefault, stream));
    }
    return absl::OkStatus();
  }
  // The source is read in stream order (a store block stays valid until its push
  // completes); copies should leave the SMs to the worker's kernels.
  cudaMemcpyAttributes attrs = {};
  attrs.srcAccessOrder = cudaMemcpySrcAccessOrderStream;
  attrs.flags = cudaMemcpyFlagPreferOverlapWithCompute;
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

CopyStreams::CopyStreams(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
CopyStreams::~CopyStreams() = default;

absl::StatusOr<std::unique_ptr<CopyStreams>> CopyStreams::Create(int device, int streams,
                                                                 CopyMethod method) {
  if (streams < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("copy streams is ", streams, "; at least 1"));
  }
  auto impl = std::make_unique<Impl>();
  impl->device = device;
  impl->method = method;
  for (int i = 0; i < streams; ++i) {
    absl::StatusOr<gpu::Stream> stream = gpu::Stream::Create(device);
    if (!stream.ok()) return stream.status();
    impl->streams.push_back(*std::move(stream));
  }
  absl::StatusOr<gpu::Event> fork = gpu::Event::Create(device, cudaEventDisableTiming);
  if (!fork.ok()) return fork.status();
  impl->fork = *std::move(fork);
  for (int i = 1; i < streams; ++i) {
    absl::StatusOr<gpu::Event> join = gpu::Event::Create(device, cudaEventDisableTiming);
    if (!join.ok()) return join.status();
    impl->joins.push_back(*std::move(join));
  }
  return std::unique_ptr<CopyStreams>(new CopyStreams(std::move(impl)));
}

int CopyStreams::device() const { return impl_->device; }
int CopyStreams::streams() const { return static_cast<int>(impl_->streams.size()); }
cudaStream_t CopyStreams::main() const { return impl_->streams[0].get(); }

absl::Status CopyStreams::Enqueue(absl::Span<const DeviceCopy> copies) {
  if (copies.empty()) return absl::OkStatus();
  gpu::DeviceGuard guard(impl_->device);
  const size_t parts = std::min(impl_->streams.size(), copies.size());
  if (parts == 1) return impl_->Issue(main(), copies);

  size_t total = 0;
  for (const DeviceCopy& copy : copies) total += copy.bytes;
  FREEKV_GPU_RETURN_IF_ERROR(cudaEventRecord(impl_->fork.get(), main()));
  size_t begin = 0;
  size_t done_bytes = 0;
  for (size_t part = 0; part < parts; ++part) {
    // Part `part` ends where the running byte count first reaches its share.
    const size_t target = total / parts * (part + 1);
    size_t end = begin;
    while (end < copies.size() && (part + 1 == parts || done_bytes < target)) {
      done_bytes += copies[end++].bytes;
    }
    if (end == begin) continue;
    cudaStream_t stream = impl_->streams[part].get();
    if (part > 0) {
      FREEKV_GPU_RETURN_IF_ERROR(cudaStreamWaitEvent(stream, impl_->fork.get(), 0));
    }
    if (absl::Status s = impl_->Issue(stream, copies.subspan(begin, end - begin)); !s.ok()) {
      return s;
    }
    if (part > 0) {
      cudaEvent_t join = impl_->joins[part - 1].get();
      FREEKV_GPU_RETURN_IF_ERROR(cudaEventRecord(join, stream));
      FREEKV_GPU_RETURN_IF_ERROR(cudaStreamWaitEvent(main(), join, 0));
    }
    begin = end;
  }
  return absl::OkStatus();
}

absl::Status CopyStreams::Synchronize() {
  gpu::DeviceGuard guard(impl_->device);
  return gpu::CudaStatus(cudaStreamSynchronize(main()), "cudaStreamSynchronize");
}

}  // namespace freekv
