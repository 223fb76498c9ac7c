// The decode rows of one layer's step, gathered for the sparse paged decode kernel:
// each row's query and, per KV head of the row, a page list (kernels::PageTable), then
// one call of the CPU reference over all of them. The policies that attend through page
// lists (RetrievalPolicy, ExactSelection) build one per layer step.
//
// Owns its buffers, reused from one layer to the next. One thread.
#ifndef FREEKV_WORKER_PAGED_DECODE_BATCH_H_
#define FREEKV_WORKER_PAGED_DECODE_BATCH_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kernels/paged_kv.h"
#include "worker/model/model_config.h"

namespace freekv {

class PagedDecodeBatch {
 public:
  // Starts a layer step: no rows, no lists.
  void Clear();
  // Adds a row: its query, model.q_width() floats. Its num_kv_heads lists follow.
  void AddQuery(absl::Span<const float> q);
  // The pages of the list being built, in the order attention visits them.
  std::vector<int32_t>& indices() { return indices_; }
  // Closes the list being built; its last page holds `last_page_len` tokens.
  void EndList(int32_t last_page_len);
  bool empty() const { return q_rows_.empty(); }

  // Attends every row over its lists of `pool` (scale 1/sqrt(head_dim)); returns the
  // outputs, q_width() floats a row, in the order the rows were added. Valid until the
  // next call.
  absl::StatusOr<absl::Span<const float>> Attend(const kernels::PagedKv<const float>& pool,
                                                 const ModelConfig& model);

 private:
  std::vector<float> q_rows_, out_rows_;
  std::vector<int32_t> indptr_{0}, indices_, last_len_;
};

}  // namespace freekv

#endif  // FREEKV_WORKER_PAGED_DECODE_BATCH_H_
