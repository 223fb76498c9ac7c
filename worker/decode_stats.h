// The FreeKV statistics of a retrieval policy, cumulative since it was created:
// pages recalled per decode step, correction rate per layer, speculation hit rate,
// time stalled waiting for recalls. A "page" here is one (page, KV head) slice, the
// unit that selection picks and recall moves.
//
//   correction rate       corrections / correction_checks: the share of (sequence,
//                         KV head group) similarity tests that fell below tau.
//   speculation hit rate  hit_pages / needed_pages over speculative steps: needed are
//                         the selected slices attention reads at step t+1, hits those
//                         already resident once the recall issued at step t (with q_t)
//                         is counted, i.e. every slice no urgent recall had to bring.
//
// A plain value type; safe to copy between threads.
#ifndef FREEKV_WORKER_DECODE_STATS_H_
#define FREEKV_WORKER_DECODE_STATS_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace freekv {

struct LayerStats {
  uint64_t correction_checks = 0;
  uint64_t corrections = 0;
  uint64_t needed_pages = 0;
  uint64_t hit_pages = 0;
  uint64_t recalled_pages = 0;

  // Field by field; Subtract requires other <= *this (an earlier snapshot).
  void Add(const LayerStats& other);
  void Subtract(const LayerStats& other);
};

struct DecodeStats {
  uint64_t decode_steps = 0;   // forward passes with at least one single-token entry
  uint64_t decode_tokens = 0;  // single-token entries over those passes
  uint64_t recall_requests = 0;
  double stall_seconds = 0;   // blocked waiting for recalls to land
  double decode_seconds = 0;  // wall time of the decode passes' layers (BeginForward
                              // to EndForward: no embedding, no classifier)
  std::vector<LayerStats> layers;

  explicit DecodeStats(int num_layers = 0) : layers(num_layers) {}

  LayerStats Total() const;
  // NaN-free rates: nullopt when the denominator is zero.
  std::optional<double> correction_rate() const;
  std::optional<double> layer_correction_rate(int layer) const;
  std::optional<double> speculation_hit_rate() const;
  double pages_recalled_per_step() const;

  // this - earlier, field by field (for the deltas reported to the kvservice).
  DecodeStats Minus(const DecodeStats& earlier) const;
};

// A few human-readable lines: per-step and per-layer figures.
std::string FormatStats(const DecodeStats& stats);

// "null" for nullopt, else the value with enough digits.
std::string JsonNumber(std::optional<double> value);

}  // namespace freekv

#endif  // FREEKV_WORKER_DECODE_STATS_H_
