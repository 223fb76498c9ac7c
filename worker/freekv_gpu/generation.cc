// GpuDecoder::Impl's real decoding (decoder_impl.h, generation.h): prefill, placing
// the prompt's pages, and the page work around each decode step.
#include "worker/freekv_gpu/generation.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "kernels/attention.h"
#include "kernels/digest.h"
#include "kernels/layout.h"
#include "worker/freekv_gpu/decoder_impl.h"
#include "worker/freekv_gpu/generate_ops.h"

namespace freekv::gpu {
GpuDecoder::Impl::~Impl() = default;

absl::Status GpuDecoder::Impl::InitGeneration(absl::Span<const int32_t> first_forced) {
  const ModelConfig& c = model->config();
  auto g = std::make_unique<Generation>();
  const int32_t B = options.batch, P = shape.page_tokens;
  FREEKV_RETURN_IF_ERROR(Assign(
      kernels::PinnedBuffer::Allocate(size_t(options.max_steps + 1) * B * 4), &g->picked));
  FREEKV_RETURN_IF_ERROR(Assign(
      kernels::PinnedBuffer::Allocate(size_t(B) * c.vocab_size * sizeof(float)), &g->logits));
  FREEKV_RETURN_IF_ERROR(Assign(kernels::DeviceBuffer::Allocate(size_t(B) * 4), &g->first_tokens));
  FREEKV_RETURN_IF_ERROR(
      Assign(kernels::DeviceBuffer::Allocate(size_t(B) * 4), &g->prefill_forced));
  const int64_t longest = *std::max_element(options.prompt_lengths.begin(),
                                            options.prompt_lengths.end());
  g->prefill_capacity = (longest + P - 1) / P * P;
  const size_t row = size_t(c.num_kv_heads) * c.head_dim;
  FREEKV_RETURN_IF_ERROR(Assign(
      kernels::DeviceBuffer::Allocate(size_t(L()) * 2 * g->prefill_capacity * row * 2),
      &g->prefill_kv));
  // Uploads: a prefill chunk's tokens and positions, or a sequence's page lists (at
  // most 6 per page of the longest prompt).
  const size_t ints = std::max<size_t>(2 * size_t(model->max_batch()),
                                       6 * size_t(g->prefill_capacity / P) + 16);
  FREEKV_RETURN_IF_ERROR(Assign(kernels::PinnedBuffer::Allocate(ints * 4), &g->staging));
  FREEKV_RETURN_IF_ERROR(Assign(kernels::DeviceBuffer::Allocate(ints * 4), &g->uploads));
  if (shape.resident()) {
    g->resident.assign(size_t(shape.lists()) * options.layout.capacity(), -1);
  }
  if (NeedsSession(options)) {
    FREEKV_RETURN_IF_ERROR(Assign(PageOffloader::Create(*kv), &g->offloader));
  }
  FREEKV_RETURN_IF_ERROR(g->prefill_forced.CopyFromHost(first_forced.data(), size_t(B) * 4));
  for (int64_t len : options.prompt_lengths) {
    g->offload_job.emplace_back((len + options.max_steps) / P + 2, -1);
  }
  generation = std::move(g);
  return absl::OkStatus();
}

absl::StatusOr<absl::Span<const int32_t>> GpuDecoder::Impl::Upload(
    absl::Span<const int32_t> host) {
  Generation& g = *generation;
  if (host.size() * 4 > g.staging.bytes()) {
    return absl::InternalError(absl::StrCat("upload of ", host.size(), " ints over the ",
                                            g.staging.bytes() / 4, " staged"));
  }
  FREEKV_RETURN_IF_ERROR(WaitForStream("the read of the last upload"));
  std::copy(host.begin(), host.end(), g.staging.span<int32_t>().begin());
  FREEKV_RETURN_IF_ERROR(kernels::CopyAsync(g.uploads.data(), g.staging.data(),
                                            host.size() * 4, stream));
  return g.uploads.span<const int32_t>().subspan(0, host.size());
}

kernels::PagedKv<BFloat16> GpuDecoder::Impl::PrefillView(int layer) const {
  const ModelConfig& c = model->config();
  const Generation& g = *generation;
  const int32_t P = shape.page_tokens;
  const int64_t row = int64_t{c.num_kv_heads} * c.head_dim;
  const int64_t layer_elems = 2 * g.prefill_capacity * row;
  BFloat16* k = g.prefill_kv.span<BFloat16>().data() + layer * layer_elems;
  return {k, k + layer_elems / 2, P * row, static_cast<int32_t>(g.prefill_capacity / P), P,
          c.num_kv_heads, c.head_dim};
}

absl::Status GpuDecoder::Impl::Prefill(int32_t b, absl::Span<const int32_t> prompt) {
  const ModelConfig& c = model->config();
  Generation& g = *generation;
  const int64_t T = static_cast<int64_t>(prompt.size());
  const int32_t chunk = model->max_batch();
  const size_t row = size_t(c.num_kv_heads) * c.head_dim;
  const kernels::AttentionDims dims{c.num_heads, c.num_kv_heads, c.head_dim,
                                    1.0f / std::sqrt(static_cast<float>(c.head_dim))};
  auto words = [](BFloat16* p, size_t elems) {
    return absl::MakeSpan(reinterpret_cast<int32_t*>(p), elems / 2);
  };
  int32_t last_rows = 0;
  for (int64_t r0 = 0; r0 < T; r0 += chunk) {
    const int32_t rows = static_cast<int32_t>(std::min<int64_t>(chunk, T - r0));
    std::vector<int32_t> in(prompt.begin() + r0, prompt.begin() + r0 + rows);
    for (int32_t i = 0; i < rows; ++i) in.push_back(static_cast<int32_t>(r0 + i));
    auto dev = Upload(in);
    if (!dev.ok()) return dev.status();
    FREEKV_RETURN_IF_ERROR(CopyWordsCuda(model->tokens().subspan(0, rows),
                                         dev->subspan(0, rows), stream));
    FREEKV_RETURN_IF_ERROR(CopyWordsCuda(model->positions().subspan(0, rows),
                                         dev->subspan(rows, rows), stream));
    FREEKV_RETURN_IF_ERROR(model->Embed(rows, stream));
    for (int l = 0; l < L(); ++l) {
      const kernels::PagedKv<BFloat16> view = PrefillView(l);
      BFloat16* k_all = view.k;
      BFloat16* v_all = view.v;
      FREEKV_RETURN_IF_ERROR(model->PreAttention(l, rows, stream));
      const size_t n = rows * row;
      for (auto [dst, src] : {std::pair{k_all, model->k()}, std::pair{v_all, model->v()}}) {
        FREEKV_RETURN_IF_ERROR(CopyWordsCuda(
            words(dst + r0 * row, n),
            absl::MakeConstSpan(reinterpret_cast<const int32_t*>(src.data()), n / 2), stream));
      }
      const size_t end = (r0 + rows) * row;
      FREEKV_RETURN_IF_ERROR(kernels::CausalAttentionCuda<BFloat16>(
          model->q().subspan(0, size_t(rows) * c.num_heads * c.head_dim),
          absl::MakeConstSpan(k_all, end), absl::MakeConstSpan(v_all, end), dims,
          model->attn_out().subspan(0, size_t(rows) * c.num_heads * c.head_dim), {}, stream));
      FREEKV_RETURN_IF_ERROR(model->PostAttention(l, rows, stream));
    }
    last_rows = rows;
  }
  // The last prompt token's row gives step 0's logits and the first decode token.
  const size_t dim_words = size_t(c.dim) / 2;
  const absl::Span<int32_t> hidden(reinterpret_cast<int32_t*>(model->hidden().data()),
                                   dim_words * model->max_batch());
  FREEKV_RETURN_IF_ERROR(CopyWordsCuda(
      hidden.subspan(0, dim_words), hidden.subspan((last_rows - 1) * dim_words, dim_words),
      stream));
  FREEKV_RETURN_IF_ERROR(model->Classify(1, stream));
  FREEKV_RETURN_IF_ERROR(PickTokensCuda(
      model->logits().subspan(0, c.vocab_size), c.vocab_size,
      g.prefill_forced.span<const int32_t>().subspan(b, 1),
      g.first_tokens.span<int32_t>().subspan(b, 1),
      g.picked.span<int32_t>().subspan(b, 1), stream));
  return PlacePrefill(b, T);
}

absl::Status GpuDecoder::Impl::PlacePrefill(int32_t b, int64_t T) {
  Generation& g = *generation;
  const PrefillPlan plan = PlanPrefill(PlanShape(), b, T);
  for (size_t i = 0; i < plan.resident_index.size(); ++i) {
    g.resident[plan.resident_index[i]] = plan.resident_page[i];
  }
  std::vector<std::pair<int32_t, int64_t>> kept;
  for (int32_t p : plan.kept) kept.emplace_back(b, p);
  const std::vector<int32_t> seqs(plan.kept.size(), b);
  std::vector<int32_t> host = plan.src;
  for (const auto* part : {&plan.dst, &plan.kept, &seqs}) {
    host.insert(host.end(), part->begin(), part->end());
  }
  auto dev = Upload(host);
  if (!dev.ok()) return dev.status();
  const size_t m = plan.src.size(), k = plan.kept.size();
  std::vector<kernels::PagedKv<BFloat16>> prefill_views;
  for (int l = 0; l < L(); ++l) {
    prefill_views.push_back(PrefillView(l));
    FREEKV_RETURN_IF_ERROR(CopyPagesCuda(ConstView(prefill_views.back()),
                                         dev->subspan(0, m), layers[l].view,
                                         dev->subspan(m, m), stream));
  }
  if (k == 0) return absl::OkStatus();
  std::vector<const kernels::PagedKv<BFloat16>*> views;
  for (const auto& v : prefill_views) views.push_back(&v);
  // The keys' pages are their logical pages in the prefill pool.
  return KeepPages(views, dev->subspan(2 * m, k), dev->subspan(2 * m + k, k),
                   dev->subspan(2 * m, k), kept);
}

absl::Status GpuDecoder::Impl::KeepPages(
    const std::vector<const kernels::PagedKv<BFloat16>*>& views,
    absl::Span<const int32_t> pool_pages, absl::Span<const int32_t> seqs,
    absl::Span<const int32_t> logical,
    const std::vector<std::pair<int32_t, int64_t>>& pages) {
  const ModelConfig& c = model->config();
  const kernels::DigestJobs jobs{pool_pages, seqs, logical};
  for (int l = 0; l < L(); ++l) {
    const kernels::DigestTable<BFloat16> table{layers[l].digests.span<BFloat16>(),
                                               options.batch, shape.digest_pages,
                                               c.num_kv_heads, c.head_dim};
    FREEKV_RETURN_IF_ERROR(
        kernels::PageDigestCuda<BFloat16>(ConstView(*views[l]), jobs, table, stream));
  }
  Generation& g = *generation;
  if (g.offloader == nullptr) return absl::OkStatus();
  PageOffloader& off = *g.offloader;
  const uint64_t block = kv->client().geometry().block_bytes();
  if (off.area_blocks() == 0) return off.AreaFor(0).status();  // its error
  // Jobs of up to area_blocks() blocks: groups of pages, times the layers that fit.
  const size_t group = std::min<size_t>(pages.size(), off.area_blocks());
  for (size_t p0 = 0; p0 < pages.size(); p0 += group) {
    const size_t n = std::min(group, pages.size() - p0);
    const int per_job = static_cast<int>(std::min<uint64_t>(L(), off.area_blocks() / n));
    for (int l0 = 0; l0 < L(); l0 += per_job) {
      const int l1 = std::min(L(), l0 + per_job);
      const int64_t job = off.next_job();
      auto area = off.AreaFor(job);
      if (!area.ok()) return area.status();
      std::vector<OffloadPageRef> refs;
      for (int l = l0; l < l1; ++l) {
        const uint64_t at = *area + uint64_t(l - l0) * n * block;
        FREEKV_RETURN_IF_ERROR(kernels::NhdToHndCuda<BFloat16>(
            ConstView(*views[l]), pool_pages.subspan(p0, n),
            absl::MakeSpan(reinterpret_cast<BFloat16*>(kv->regions().offload() + at),
                           n * block / sizeof(BFloat16)),
            stream));
        for (size_t i = p0; i < p0 + n; ++i) {
          refs.push_back({options.sequence_ids[pages[i].first], static_cast<uint32_t>(l),
                          static_cast<uint32_t>(pages[i].second), at + (i - p0) * block});
        }
      }
      FREEKV_RETURN_IF_ERROR(off.MarkWritten(job, stream));
      off.Push(std::move(refs));
      // Jobs finish in order: the last one that holds a page's layers stores it.
      for (size_t i = p0; i < p0 + n; ++i) g.offload_job[pages[i].first][pages[i].second] = job;
    }
  }
  return absl::OkStatus();
}

absl::Status GpuDecoder::Impl::StartDecode() {
  Generation& g = *generation;
  FREEKV_RETURN_IF_ERROR(WaitForStream("the end of the prefills"));
  // Step 0 may recall any page the prefills stored.
  if (g.offloader != nullptr) FREEKV_RETURN_IF_ERROR(g.offloader->Finish());
  for (LayerState& l : layers) {
    if (!g.resident.empty()) {
      FREEKV_RETURN_IF_ERROR(l.resident.CopyFromHost(g.resident.data(), g.resident.size() * 4));
    }
  }
  return CopyWordsCuda(model->tokens().subspan(0, options.batch),
                       g.first_tokens.span<const int32_t>(), stream);
}

}  // namespace freekv::gpu
