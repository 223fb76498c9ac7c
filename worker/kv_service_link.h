// The PageLink to a kvservice through the client library (client/kv_client.h): a
// session whose geometry is the model's KV cache in float32 pages, an offload region,
// and two staging slots per layer sized for a full selection of every sequence.
//
// Offload converts pool pages NHD -> HND into the offload region (the kernels' layout
// reference) and stores them in chunks of the region's size. A recall names slices
// laid out back to back in its staging slot; LandRecall converts them HND -> NHD into
// the resident slots' pool pages and releases the slot.
//
// Owns the KvClient (its session closes with it). Safe to call from one thread at a
// time (the policy's); KvClient's own threads run the recall stream and heartbeats.
#ifndef FREEKV_WORKER_KV_SERVICE_LINK_H_
#define FREEKV_WORKER_KV_SERVICE_LINK_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "client/kv_client.h"
#include "worker/model/model_config.h"
#include "worker/page_link.h"
#include "worker/retrieval_config.h"

namespace freekv {

struct KvServiceLinkOptions {
  // gRPC target: "unix:/path/to.sock" or HOST:PORT.
  std::string target;
  std::string client_name = "freekv-worker";
  // Offload region size in blocks (pages of every KV head); larger offloads are sent
  // in chunks.
  uint32_t offload_blocks = 256;
  // How long a recall may take before WaitRecall gives up.
  absl::Duration recall_timeout = absl::Seconds(30);
};

class KvServiceLink : public PageLink {
 public:
  // Opens the session. UNAVAILABLE when no kvservice answers at options.target.
  static absl::StatusOr<std::unique_ptr<KvServiceLink>> Open(
      const KvServiceLinkOptions& options, const ModelConfig& model,
      const RetrievalConfig& config);

  absl::Status Store(int layer, const kernels::PagedKv<const float>& pool,
                     absl::Span<const PageToStore> pages) override;
  absl::StatusOr<RecallTicket> StartRecall(
      uint64_t step, int layer, absl::Span<const SliceToRecall> slices) override;
  absl::Status WaitRecall(const RecallTicket& ticket) override;
  absl::Status LandRecall(const RecallTicket& ticket,
                          absl::Span<const SliceToRecall> slices,
                          const kernels::PagedKv<float>& pool) override;
  absl::Status FreeSequence(int64_t sequence) override;
  absl::Status ReportStats(const DecodeStats& delta) override;

  KvClient& client() { return *client_; }

 private:
  KvServiceLink(std::unique_ptr<KvClient> client, absl::Duration recall_timeout);

  std::unique_ptr<KvClient> client_;
  const absl::Duration recall_timeout_;
  std::vector<OffloadPageRef> offload_refs_;
  std::vector<RecallSliceRef> recall_refs_;
  std::vector<int32_t> pool_pages_, dst_pages_, dst_heads_;
};

}  // namespace freekv

#endif  // FREEKV_WORKER_KV_SERVICE_LINK_H_
