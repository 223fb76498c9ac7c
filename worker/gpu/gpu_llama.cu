// GpuLlama (gpu_llama.h): weight upload, the cuBLAS projections and the enqueue methods.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/cuda_check.cuh"
#include "kernels/mlp.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope.h"
#include "worker/model/rope_config.h"
#include "kernels/shape.h"
#include "worker/gpu/gpu_llama.h"

namespace freekv {
namespace gpu {

using kernels::BFloat16;
using kernels::DeviceBuffer;

namespace {

// NVIDIA's recommended cuBLAS workspace for Hopper; fixed so that no GEMM allocates.
constexpr size_t kCublasWorkspaceBytes = size_t{32} << 20;
// Weights are converted to bf16 on the host this many elements at a time.
constexpr size_t kUploadChunk = size_t{1} << 22;
// Tensors inside a layer buffer start at multiples of this many bf16 (256 bytes).
constexpr size_t kAlignElems = 128;
constexpr uint16_t kBf16NaN = 0x7fc0;

absl::Status CublasStatus(cublasStatus_t status, const char* what) {
  if (status == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, ": ", cublasGetStatusName(status), " (",
                                          cublasGetStatusString(status), ")"));
}

#define FREEKV_CUBLAS_RETURN_IF_ERROR(call) \
  FREEKV_RETURN_IF_ERROR(CublasStatus((call), #call))

// Converts `src` to bf16 through a host staging buffer of at most kUploadChunk
// elements and copies it to the device array `dst` of src.size() elements.
absl::Status UploadBf16(absl::Span<const float> src, BFloat16* dst) {
  std::vector<BFloat16> staging(std::min(kUploadChunk, src.size()));
  for (size_t begin = 0; begin < src.size(); begin += kUploadChunk) {
    const size_t n = std::min(kUploadChunk, src.size() - begin);
    for (size_t i = 0; i < n; ++i) staging[i] = kernels::ToBFloat16(src[begin + i]);
    FREEKV_CUDA_RETURN_IF_ERROR(cudaMemcpy(dst + begin, staging.data(),
                                           n * sizeof(BFloat16), cudaMemcpyHostToDevice));
  }
  return absl::OkStatus();
}

absl::StatusOr<DeviceBuffer> UploadTensor(absl::Span<const float> src) {
  absl::StatusOr<DeviceBuffer> buf =
      DeviceBuffer::Allocate(src.size() * sizeof(BFloat16));
  if (!buf.ok()) return buf.status();
  FREEKV_RETURN_IF_ERROR(UploadBf16(src, buf->span<BFloat16>().data()));
  return buf;
}

// hidden[b] = table[tokens[b]], one block per row; bf16 moved as raw bits.
__global__ void EmbedKernel(const uint16_t* table, const int32_t* tokens, int32_t vocab,
                            int32_t dim, uint16_t* hidden) {
  const int32_t token = tokens[blockIdx.x];
  const bool valid = token >= 0 && token < vocab;
  const uint16_t* src = table + int64_t{valid ? token : 0} * dim;
  uint16_t* dst = hidden + int64_t{blockIdx.x} * dim;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) dst[i] = valid ? src[i] : kBf16NaN;
}

// A projection y[batch][out] = x[batch][in] * W^T + beta * y with W row-major
// [out][in]. In cuBLAS's column-major terms W is an (in x out) matrix, so
// y^T (out x batch) = op_T(W) * x^T: transa = T, lda = ldb = in, ldc = out.
// count > 1 runs `count` projections of the same x through weights w_stride elements
// apart into outputs y_stride elements apart (one strided-batched launch).
struct Projection {
  const BFloat16* w = nullptr;
  int out = 0;
  int in = 0;
  int count = 1;
  long long w_stride = 0;
  long long y_stride = 0;
};

absl::Status Project(cublasHandle_t handle, const Projection& p, const BFloat16* x,
                     int batch, void* y, cudaDataType y_type, float beta) {
  const float alpha = 1.0f;
  const cublasStatus_t status =
      p.count == 1
          ? cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, p.out, batch, p.in, &alpha,
                         p.w, CUDA_R_16BF, p.in, x, CUDA_R_16BF, p.in, &beta, y, y_type,
                         p.out, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT)
          : cublasGemmStridedBatchedEx(
                handle, CUBLAS_OP_T, CUBLAS_OP_N, p.out, batch, p.in, &alpha, p.w,
                CUDA_R_16BF, p.in, p.w_stride, x, CUDA_R_16BF, p.in, 0, &beta, y, y_type,
                p.out, p.y_stride, p.count, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  if (status == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  const std::string what =
      absl::StrCat(p.count == 1 ? "cublasGemmEx" : "cublasGemmStridedBatchedEx", " (out ",
                   p.out, ", in ", p.in, ", batch ", batch, ", count ", p.count, ")");
  return CublasStatus(status, what.c_str());
}

// The first rows * width elements of an activation buffer.
template <typename T>
absl::Span<T> Rows(const DeviceBuffer& buf, size_t rows, size_t width) {
  return buf.span<T>().subspan(0, rows * width);
}

}  // namespace

// Owns a cuBLAS handle and its workspace. Bind() points the handle at a stream and
// the workspace again each time, because cublasSetStream resets the workspace to
// cuBLAS's own pool, which would allocate during capture.
class CublasHandle {
 public:
  static absl::StatusOr<std::unique_ptr<CublasHandle>> Create() {
    std::unique_ptr<CublasHandle> h(new CublasHandle());
    absl::StatusOr<DeviceBuffer> ws = DeviceBuffer::Allocate(kCublasWorkspaceBytes);
    if (!ws.ok()) return ws.status();
    h->workspace_ = *std::move(ws);
    FREEKV_CUBLAS_RETURN_IF_ERROR(cublasCreate(&h->handle_));
    return h;
  }
  ~CublasHandle() {
    if (handle_ != nullptr) cublasDestroy(handle_);
  }
  CublasHandle(const CublasHandle&) = delete;
  CublasHandle& operator=(const CublasHandle&) = delete;

  absl::StatusOr<cublasHandle_t> Bind(cudaStream_t stream) {
    FREEKV_CUBLAS_RETURN_IF_ERROR(cublasSetStream(handle_, stream));
    FREEKV_CUBLAS_RETURN_IF_ERROR(
        cublasSetWorkspace(handle_, workspace_.data(), workspace_.bytes()));
    return handle_;
  }

 private:
  CublasHandle() = default;
  cublasHandle_t handle_ = nullptr;
  DeviceBuffer workspace_;
};

GpuLlama::GpuLlama(const ModelConfig& config, int32_t max_batch)
    : config_(config), max_batch_(max_batch), offsets_(OffsetsOf(config)) {}

GpuLlama::~GpuLlama() = default;

GpuLlama::LayerOffsets GpuLlama::OffsetsOf(const ModelConfig& config) {
  const LayerShapes s = LayerShapesOf(config);
  LayerOffsets o;
  auto place = [&o](size_t elems) {
    const size_t at = o.total;
    o.total += (elems + kAlignElems - 1) / kAlignElems * kAlignElems;
    return at;
  };
  o.attn_norm = place(s.norm);
  o.ffn_norm = place(s.norm);
  o.wq = place(s.wq);
  o.wk = place(s.wkv);
  o.wv = place(s.wkv);
  o.wo = place(s.wo);
  o.w1 = place(s.w_up);
  o.w3 = place(s.w_up);
  o.w2 = place(s.w_down);
  return o;
}

absl::StatusOr<std::unique_ptr<GpuLlama>> GpuLlama::Create(const ModelWeights& weights,
                                                           int32_t max_batch) {
  FREEKV_RETURN_IF_ERROR(ValidateModelWeights(weights));
  if (max_batch <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("GpuLlama max_batch is ", max_batch, "; it must be > 0"));
  }
  std::unique_ptr<GpuLlama> model(new GpuLlama(weights.config, max_batch));
  FREEKV_RETURN_IF_ERROR(model->UploadWeights(weights));
  FREEKV_RETURN_IF_ERROR(model->AllocateActivations());
  absl::StatusOr<std::unique_ptr<CublasHandle>> cublas = CublasHandle::Create();
  if (!cublas.ok()) return cublas.status();
  model->cublas_ = *std::move(cublas);
  return model;
}

absl::Status GpuLlama::UploadWeights(const ModelWeights& w) {
  absl::StatusOr<std::vector<float>> inv_freq =
      kernels::RopeInvFreq(RopeConfigOf(config_));
  if (!inv_freq.ok()) return inv_freq.status();
  absl::StatusOr<DeviceBuffer> freq = DeviceBuffer::Upload<float>(*inv_freq);
  if (!freq.ok()) return freq.status();
  inv_freq_ = *std::move(freq);
  for (auto [src, dst] : {std::make_pair(&w.embedding, &embedding_),
                          std::make_pair(&w.classifier, &classifier_),
                          std::make_pair(&w.final_norm, &final_norm_)}) {
    absl::StatusOr<DeviceBuffer> buf = UploadTensor(*src);  // empty when tied
    if (!buf.ok()) return buf.status();
    *dst = *std::move(buf);
  }
  classifier_data_ =
      (w.tied_classifier() ? embedding_ : classifier_).span<BFloat16>().data();
  // Each layer gets its own buffer even when LayerWeights are shared, so that every
  // layer reads distinct memory as a real model's would.
  for (const std::shared_ptr<const LayerWeights>& layer : w.layers) {
    absl::StatusOr<DeviceBuffer> buf =
        DeviceBuffer::Allocate(offsets_.total * sizeof(BFloat16));
    if (!buf.ok()) return buf.status();
    BFloat16* base = buf->span<BFloat16>().data();
    const LayerOffsets& o = offsets_;
    for (auto [tensor, offset] :
         {std::make_pair(&layer->attn_norm, o.attn_norm),
          std::make_pair(&layer->ffn_norm, o.ffn_norm), std::make_pair(&layer->wq, o.wq),
          std::make_pair(&layer->wk, o.wk), std::make_pair(&layer->wv, o.wv),
          std::make_pair(&layer->wo, o.wo), std::make_pair(&layer->w1, o.w1),
          std::make_pair(&layer->w3, o.w3), std::make_pair(&layer->w2, o.w2)}) {
      FREEKV_RETURN_IF_ERROR(UploadBf16(*tensor, base + offset));
    }
    layers_.push_back(*std::move(buf));
  }
  return absl::OkStatus();
}

absl::Status GpuLlama::AllocateActivations() {
  const ModelConfig& c = config_;
  const size_t b = static_cast<size_t>(max_batch_);
  for (auto [buf, bytes] : {
           std::make_pair(&tokens_, b * sizeof(int32_t)),
           std::make_pair(&positions_, b * sizeof(int32_t)),
           std::make_pair(&hidden_, b * c.dim * sizeof(BFloat16)),
           std::make_pair(&normed_, b * c.dim * sizeof(BFloat16)),
           std::make_pair(&q_, b * c.q_width() * sizeof(BFloat16)),
           std::make_pair(&kv_, 2 * b * c.kv_width() * sizeof(BFloat16)),
           std::make_pair(&attn_out_, b * c.q_width() * sizeof(BFloat16)),
           std::make_pair(&gate_up_, 2 * b * c.hidden_dim * sizeof(BFloat16)),
           std::make_pair(&logits_, b * c.vocab_size * sizeof(float)),
       }) {
    absl::StatusOr<DeviceBuffer> allocated = DeviceBuffer::Allocate(bytes);
    if (!allocated.ok()) return allocated.status();
    *buf = *std::move(allocated);
    // Poisoned (NaN, token -1) so that a row read before it is written shows up.
    FREEKV_RETURN_IF_ERROR(buf->Poison());
  }
  return absl::OkStatus();
}

absl::Span<int32_t> GpuLlama::tokens() const { return tokens_.span<int32_t>(); }
absl::Span<int32_t> GpuLlama::positions() const { return positions_.span<int32_t>(); }
absl::Span<BFloat16> GpuLlama::hidden() const { return hidden_.span<BFloat16>(); }
absl::Span<BFloat16> GpuLlama::q() const { return q_.span<BFloat16>(); }
absl::Span<BFloat16> GpuLlama::k() const {
  return kv_.span<BFloat16>().subspan(
      0, size_t{static_cast<uint32_t>(max_batch_)} * config_.kv_width());
}
absl::Span<BFloat16> GpuLlama::v() const {
  return kv_.span<BFloat16>().subspan(size_t{static_cast<uint32_t>(max_batch_)} *
                                      config_.kv_width());
}
absl::Span<BFloat16> GpuLlama::attn_out() const { return attn_out_.span<BFloat16>(); }
absl::Span<float> GpuLlama::logits() const { return logits_.span<float>(); }

size_t GpuLlama::weight_bytes() const {
  size_t bytes = embedding_.bytes() + classifier_.bytes() + final_norm_.bytes();
  for (const DeviceBuffer& layer : layers_) bytes += layer.bytes();
  return bytes;
}

absl::Status GpuLlama::CheckBatch(int32_t batch) const {
  if (batch >= 1 && batch <= max_batch_) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("GpuLlama batch is ", batch, "; it must be in [1, ", max_batch_, "]"));
}

absl::Status GpuLlama::CheckLayer(int layer) const {
  if (layer >= 0 && layer < config_.num_layers) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      "GpuLlama layer is ", layer, "; it must be in [0, ", config_.num_layers, ")"));
}

const BFloat16* GpuLlama::LayerTensor(int layer, size_t offset) const {
  return layers_[layer].span<const BFloat16>().data() + offset;
}

absl::Status GpuLlama::Embed(int32_t batch, cudaStream_t stream) {
  FREEKV_RETURN_IF_ERROR(CheckBatch(batch));
  constexpr int kThreads = 256;
  EmbedKernel<<<batch, kThreads, 0, stream>>>(
      reinterpret_cast<const uint16_t*>(embedding_.data()),
      tokens_.span<int32_t>().data(), config_.vocab_size, config_.dim,
      reinterpret_cast<uint16_t*>(hidden_.data()));
  return kernels::LaunchStatus("EmbedKernel");
}

absl::Status GpuLlama::PreAttention(int layer, int32_t batch, cudaStream_t stream) {
  FREEKV_RETURN_IF_ERROR(CheckLayer(layer));
  FREEKV_RETURN_IF_ERROR(CheckBatch(batch));
  absl::StatusOr<cublasHandle_t> handle = cublas_->Bind(stream);
  if (!handle.ok()) return handle.status();
  const ModelConfig& c = config_;
  const LayerOffsets& o = offsets_;
  const BFloat16* normed = normed_.span<BFloat16>().data();
  FREEKV_RETURN_IF_ERROR(kernels::RmsNormCuda<BFloat16>(
      Rows<const BFloat16>(hidden_, batch, c.dim),
      absl::MakeConstSpan(LayerTensor(layer, o.attn_norm), c.dim), c.norm_eps,
      Rows<BFloat16>(normed_, batch, c.dim), stream));
  FREEKV_RETURN_IF_ERROR(Project(*handle, {LayerTensor(layer, o.wq), c.q_width(), c.dim},
                                 normed, batch, q_.data(), CUDA_R_16BF, 0.0f));
  const Projection kv{LayerTensor(layer, o.wk),
                      c.kv_width(),
                      c.dim,
                      2,
                      static_cast<long long>(o.wv - o.wk),
                      static_cast<long long>(max_batch_) * c.kv_width()};
  FREEKV_RETURN_IF_ERROR(
      Project(*handle, kv, normed, batch, kv_.data(), CUDA_R_16BF, 0.0f));
  const auto positions = Rows<const int32_t>(positions_, batch, 1);
  const auto style = kernels::RopeStyle::kInterleaved;
  FREEKV_RETURN_IF_ERROR(kernels::ApplyRopeCuda<BFloat16>(
      Rows<BFloat16>(q_, batch, c.q_width()), positions, inv_freq_.span<const float>(),
      c.num_heads, style, stream));
  return kernels::ApplyRopeCuda<BFloat16>(Rows<BFloat16>(kv_, batch, c.kv_width()),
                                          positions, inv_freq_.span<const float>(),
                                          c.num_kv_heads, style, stream);
}

absl::Status GpuLlama::PostAttention(int layer, int32_t batch, cudaStream_t stream) {
  FREEKV_RETURN_IF_ERROR(CheckLayer(layer));
  FREEKV_RETURN_IF_ERROR(CheckBatch(batch));
  absl::StatusOr<cublasHandle_t> handle = cublas_->Bind(stream);
  if (!handle.ok()) return handle.status();
  const ModelConfig& c = config_;
  const LayerOffsets& o = offsets_;
  // beta = 1: the GEMM adds its product to the residual stream in fp32, rounding once.
  FREEKV_RETURN_IF_ERROR(Project(*handle, {LayerTensor(layer, o.wo), c.dim, c.q_width()},
                                 attn_out_.span<BFloat16>().data(), batch, hidden_.data(),
                                 CUDA_R_16BF, 1.0f));
  FREEKV_RETURN_IF_ERROR(kernels::RmsNormCuda<BFloat16>(
      Rows<const BFloat16>(hidden_, batch, c.dim),
      absl::MakeConstSpan(LayerTensor(layer, o.ffn_norm), c.dim), c.norm_eps,
      Rows<BFloat16>(normed_, batch, c.dim), stream));
  const long long up_offset = static_cast<long long>(max_batch_) * c.hidden_dim;
  const Projection gate_up{LayerTensor(layer, o.w1),
                           c.hidden_dim,
                           c.dim,
                           2,
                           static_cast<long long>(o.w3 - o.w1),
                           up_offset};
  FREEKV_RETURN_IF_ERROR(Project(*handle, gate_up, normed_.span<BFloat16>().data(), batch,
                                 gate_up_.data(), CUDA_R_16BF, 0.0f));
  const absl::Span<BFloat16> gate = Rows<BFloat16>(gate_up_, batch, c.hidden_dim);
  const absl::Span<const BFloat16> up =
      gate_up_.span<const BFloat16>().subspan(up_offset, gate.size());
  FREEKV_RETURN_IF_ERROR(kernels::SiluMulCuda<BFloat16>(gate, up, gate, stream));
  return Project(*handle, {LayerTensor(layer, o.w2), c.dim, c.hidden_dim}, gate.data(),
                 batch, hidden_.data(), CUDA_R_16BF, 1.0f);
}

absl::Status GpuLlama::Classify(int32_t batch, cudaStream_t stream) {
  FREEKV_RETURN_IF_ERROR(CheckBatch(batch));
  absl::StatusOr<cublasHandle_t> handle = cublas_->Bind(stream);
  if (!handle.ok()) return handle.status();
  const ModelConfig& c = config_;
  FREEKV_RETURN_IF_ERROR(kernels::RmsNormCuda<BFloat16>(
      Rows<const BFloat16>(hidden_, batch, c.dim), final_norm_.span<const BFloat16>(),
      c.norm_eps, Rows<BFloat16>(normed_, batch, c.dim), stream));
  return Project(*handle, {classifier_data_, c.vocab_size, c.dim},
                 normed_.span<BFloat16>().data(), batch, logits_.data(), CUDA_R_32F,
                 0.0f);
}

}  // namespace gpu
}  // namespace freekv
