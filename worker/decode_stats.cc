#include "worker/decode_stats.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace freekv {
namespace {

std::optional<double> Ratio(uint64_t num, uint64_t den) {
  if (den == 0) return std::nullopt;
  return static_cast<double>(num) / static_cast<double>(den);
}

std::string Percent(std::optional<double> value) {
  return value ? absl::StrFormat("%.1f%%", 100 * *value) : "-";
}

}  // namespace

void LayerStats::Add(const LayerStats& other) {
  correction_checks += other.correction_checks;
  corrections += other.corrections;
  needed_pages += other.needed_pages;
  hit_pages += other.hit_pages;
  recalled_pages += other.recalled_pages;
}

void LayerStats::Subtract(const LayerStats& other) {
  correction_checks -= other.correction_checks;
  corrections -= other.corrections;
  needed_pages -= other.needed_pages;
  hit_pages -= other.hit_pages;
  recalled_pages -= other.recalled_pages;
}

LayerStats DecodeStats::Total() const {
  LayerStats total;
  for (const LayerStats& l : layers) total.Add(l);
  return total;
}

std::optional<double> DecodeStats::correction_rate() const {
  const LayerStats t = Total();
  return Ratio(t.corrections, t.correction_checks);
}

std::optional<double> DecodeStats::layer_correction_rate(int layer) const {
  return Ratio(layers[layer].corrections, layers[layer].correction_checks);
}

std::optional<double> DecodeStats::speculation_hit_rate() const {
  const LayerStats t = Total();
  return Ratio(t.hit_pages, t.needed_pages);
}

double DecodeStats::pages_recalled_per_step() const {
  return decode_steps == 0 ? 0.0
                           : static_cast<double>(Total().recalled_pages) / decode_steps;
}

DecodeStats DecodeStats::Minus(const DecodeStats& earlier) const {
  DecodeStats d = *this;
  d.decode_steps -= earlier.decode_steps;
  d.decode_tokens -= earlier.decode_tokens;
  d.recall_requests -= earlier.recall_requests;
  d.stall_seconds -= earlier.stall_seconds;
  d.decode_seconds -= earlier.decode_seconds;
  for (size_t i = 0; i < d.layers.size() && i < earlier.layers.size(); ++i) {
    d.layers[i].Subtract(earlier.layers[i]);
  }
  return d;
}

std::string FormatStats(const DecodeStats& stats) {
  const LayerStats t = stats.Total();
  std::string out = absl::StrFormat(
      "decode steps %d, pages recalled %d (%.1f per step, %d requests), stalled %.3f s "
      "waiting for recalls of %.3f s in the layers\ncorrection rate %s, speculation hit "
      "rate %s\n",
      stats.decode_steps, t.recalled_pages, stats.pages_recalled_per_step(),
      stats.recall_requests, stats.stall_seconds, stats.decode_seconds,
      Percent(stats.correction_rate()), Percent(stats.speculation_hit_rate()));
  absl::StrAppend(&out, "layer  corrections  correction_rate  recalled  spec_hit_rate\n");
  for (size_t i = 0; i < stats.layers.size(); ++i) {
    const LayerStats& l = stats.layers[i];
    absl::StrAppendFormat(&out, "%5d  %11d  %15s  %8d  %13s\n", i, l.corrections,
                          Percent(stats.layer_correction_rate(static_cast<int>(i))),
                          l.recalled_pages, Percent(Ratio(l.hit_pages, l.needed_pages)));
  }
  return out;
}

std::string JsonNumber(std::optional<double> value) {
  return value ? absl::StrFormat("%.6g", *value) : "null";
}

}  // namespace freekv
