#include "worker/eval_report.h"

#include <cmath>
#include <functional>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "worker/decode_stats.h"

namespace freekv {
namespace {

std::string Percent(std::optional<double> v, int digits = 1) {
  return v ? absl::StrFormat("%.*f%%", digits, 100 * *v) : "-";
}

// Cells pooled into one figure.
struct Pool {
  AgreementMeter meter;
  Tally corrections;
  Tally speculation_hits;
  int cells = 0;

  void Add(const EvalCell& c) {
    meter.Merge(c.meter);
    corrections.Add(c.stats.corrections);
    speculation_hits.Add(c.stats.speculation_hits);
    ++cells;
  }
  std::string Agreement() const {
    return cells == 0 ? "null" : JsonNumber(meter.agreement());
  }
  std::string MeanKl() const { return cells == 0 ? "null" : JsonNumber(meter.mean_kl()); }
};

// The value of `values` nearest `target`.
double Nearest(const std::vector<double>& values, double target) {
  double best = std::numeric_limits<double>::quiet_NaN();
  for (double v : values) {
    if (std::isnan(best) || std::abs(v - target) < std::abs(best - target)) best = v;
  }
  return best;
}

std::string CellJson(const EvalCell& c, const EvalContext& context) {
  const BackendStats& stats = c.stats;
  return absl::StrFormat(
      "{\"context\":%d,\"policy\":\"%s\",\"budget\":%s,\"budget_pages\":%d,"
      "\"selected_pages\":%d,\"tau\":%s,\"compared\":%d,\"agreement\":%s,\"mean_kl\":%s,"
      "\"max_kl\":%s,\"correction_rate\":%s,\"speculation_hit_rate\":%s,"
      "\"pages_recalled_per_step\":%s,\"stall_s\":%s,\"seconds\":%s}",
      context.target_tokens, c.policy, JsonNumber(c.budget_fraction),
      c.config.sink_pages + c.config.window_pages + c.config.selected_pages,
      c.config.selected_pages, JsonNumber(c.config.tau), c.meter.compared(),
      JsonNumber(c.meter.agreement()), JsonNumber(c.meter.mean_kl()),
      JsonNumber(c.meter.max_kl()), JsonNumber(stats.corrections.rate()),
      JsonNumber(stats.speculation_hits.rate()),
      JsonNumber(stats.pages_recalled_per_step()), JsonNumber(stats.stall_seconds),
      JsonNumber(c.seconds));
}

}  // namespace

std::string FormatEvalTable(const std::vector<EvalCell>& cells,
                            const std::vector<EvalContext>& contexts,
                            int trained_tokens) {
  std::string out =
      "| context | policy | budget | tau | agreement | mean KL | max KL | correction "
      "rate "
      "| spec. hit rate | recalled/step | stall s |\n"
      "|---|---|---|---|---|---|---|---|---|---|---|\n";
  for (const EvalCell& c : cells) {
    const EvalContext& ctx = contexts[c.context];
    const bool speculative = c.speculative();
    const BackendStats& stats = c.stats;
    const int32_t pages =
        c.config.sink_pages + c.config.window_pages + c.config.selected_pages;
    absl::StrAppendFormat(
        &out,
        "| %d (%s) | %s | %g (%d pages = %d tokens) | %s | %s | %.4f | %.3f | %s | %s | "
        "%.1f | %.3f |\n",
        ctx.target_tokens, ctx.within(trained_tokens) ? "trained" : "beyond", c.policy,
        c.budget_fraction, pages, pages * c.config.page_tokens,
        speculative ? absl::StrFormat("%.2f", c.config.tau) : "-",
        Percent(c.meter.agreement(), 2), c.meter.mean_kl(), c.meter.max_kl(),
        speculative ? Percent(stats.corrections.rate()) : "-",
        speculative ? Percent(stats.speculation_hits.rate()) : "-",
        stats.pages_recalled_per_step(), stats.stall_seconds);
  }
  return out;
}

std::string EvalJson(const std::vector<EvalCell>& cells,
                     const std::vector<EvalContext>& contexts, int trained_tokens) {
  std::vector<double> budgets, taus;
  for (const EvalCell& c : cells) {
    if (c.policy != "freekv") continue;
    budgets.push_back(c.budget_fraction);
    taus.push_back(c.config.tau);
  }
  const double budget = Nearest(budgets, 0.25);
  const double tau = Nearest(taus, 0.8);
  bool any_within = false;
  for (const EvalContext& c : contexts) any_within |= c.within(trained_tokens);
  Pool within, beyond, blocking;
  for (const EvalCell& c : cells) {
    if (c.budget_fraction != budget) continue;
    const bool in = !any_within || contexts[c.context].within(trained_tokens);
    if (c.policy == "freekv" && c.config.tau == static_cast<float>(tau)) {
      (in ? within : beyond).Add(c);
    } else if (c.policy == "blocking" && in) {
      blocking.Add(c);
    }
  }
  std::vector<std::string> rows;
  for (const EvalCell& c : cells) rows.push_back(CellJson(c, contexts[c.context]));
  return absl::StrFormat(
      "{\"agreement\":%s,\"mean_kl\":%s,\"correction_rate\":%s,\"speculation_hit_rate\":%"
      "s,"
      "\"compared\":%d,\"agreement_beyond\":%s,\"mean_kl_beyond\":%s,"
      "\"blocking_agreement\":%s,\"blocking_mean_kl\":%s,\"budget\":%s,\"tau\":%s,"
      "\"device\":\"%s\",\"rows\":[%s]}",
      within.Agreement(), within.MeanKl(),
      JsonNumber(within.corrections.rate()), JsonNumber(within.speculation_hits.rate()),
      within.meter.compared(), beyond.Agreement(), beyond.MeanKl(), blocking.Agreement(),
      blocking.MeanKl(),
      JsonNumber(budgets.empty() ? std::nullopt : std::optional(budget)),
      JsonNumber(taus.empty() ? std::nullopt : std::optional(tau)),
      DeviceName(cells.empty() ? Device::kCpu : cells.front().stats.device),
      absl::StrJoin(rows, ","));
}

}  // namespace freekv
