// The evaluation's results: one cell per (context, policy, budget, tau), printed as a
// Markdown table and summarised in one JSON line. Stateless functions; any thread.
#ifndef FREEKV_WORKER_EVAL_REPORT_H_
#define FREEKV_WORKER_EVAL_REPORT_H_

#include <optional>
#include <string>
#include <vector>

#include "worker/agreement.h"
#include "worker/decode_backend.h"
#include "worker/eval.h"
#include "worker/retrieval_config.h"

namespace freekv {

// The policies the evaluation compares with full: freekv, blocking, oracle, and
// exact (exact_selection.h, the ceiling of page selection).
struct EvalCell {
  size_t context = 0;  // index into the contexts
  std::string policy;
  double budget_fraction = 0;
  RetrievalConfig config;  // the budget in pages and tau

  // freekv and oracle select a step ahead and correct with tau.
  bool speculative() const { return policy == "freekv" || policy == "oracle"; }
  AgreementMeter meter;
  BackendStats stats;  // of the cell's backend (empty figures for full and exact)
  double seconds = 0;
};

// One row per cell: context (and whether it is within the trained length), policy,
// budget, tau, agreement, mean and max KL, correction rate, speculation hit rate,
// pages recalled per step, stall time.
std::string FormatEvalTable(const std::vector<EvalCell>& cells,
                            const std::vector<EvalContext>& contexts, int trained_tokens);

// {"agreement", "mean_kl", "correction_rate", "speculation_hit_rate": freekv at the
// budget nearest 0.25 and the tau nearest 0.8, pooled over contexts within the trained
// length (all contexts if none is); "agreement_beyond", "mean_kl_beyond": the same
// cells beyond it (null if none); "blocking_agreement", "blocking_mean_kl": blocking
// at that budget within the trained length; "budget", "tau"; "device": the first
// cell's ("cpu" or "gpu"); "rows": every cell}.
std::string EvalJson(const std::vector<EvalCell>& cells,
                     const std::vector<EvalContext>& contexts, int trained_tokens);

}  // namespace freekv

#endif  // FREEKV_WORKER_EVAL_REPORT_H_
