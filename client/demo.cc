// demo: drives a running kvservice the way a decoding worker would, and prints what
// moved. Each session offloads random pages of a few sequences, then for each decode
// step and layer recalls a random selection of (sequence, head, page) slices into the
// layer's staging slots, waits, checks every byte against what was offloaded, and
// releases the slot.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <optional>
#include <random>
#include <set>
#include <tuple>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "client/kv_client.h"
#include "common/random_bytes.h"

ABSL_FLAG(std::string, socket, "/run/freekv/kvservice.sock", "kvservice unix socket.");
ABSL_FLAG(std::string, target, "", "gRPC target instead of --socket (HOST:PORT).");
ABSL_FLAG(int32_t, sessions, 1, "Sessions (workers) at once, one thread each.");
ABSL_FLAG(int32_t, sequences, 2, "Sequences per session.");
ABSL_FLAG(int32_t, pages, 16, "Pages per sequence and layer.");
ABSL_FLAG(int32_t, steps, 8, "Decode steps; each recalls a selection for every layer.");
ABSL_FLAG(int32_t, layers, 4, "Model layers.");
ABSL_FLAG(int32_t, kv_heads, 8, "KV heads.");
ABSL_FLAG(int32_t, head_dim, 128, "Head dimension.");
ABSL_FLAG(int32_t, page_tokens, 32, "Tokens per page.");
ABSL_FLAG(double, drift, 0.1,
          "Share of a layer's selection that changes from one step to the next; what "
          "the speculative recall misses is recalled at once, as a correction.");
ABSL_FLAG(int32_t, lease_ms, 10000, "Session lease asked for.");
ABSL_FLAG(int32_t, hold_ms, 0, "Keep the sessions open this long at the end.");
ABSL_FLAG(bool, abandon, false,
          "Exit without closing the sessions, as a crashed worker would.");
ABSL_FLAG(bool, json, false, "End with one JSON line of totals.");

namespace freekv {
namespace {

struct Totals {
  uint64_t offloaded_pages = 0, offload_bytes = 0, recall_requests = 0;
  uint64_t recalled_blocks = 0, recall_bytes = 0, verified_blocks = 0, mismatches = 0;
  uint64_t speculation_needed = 0, speculation_hits = 0;
  absl::Duration recall_time;
};

absl::Status RunSession(int index, Totals& totals) {
  KvClientOptions options;
  const std::string target = absl::GetFlag(FLAGS_target);
  options.target = target.empty() ? "unix:" + absl::GetFlag(FLAGS_socket) : target;
  options.geometry.num_layers = absl::GetFlag(FLAGS_layers);
  options.geometry.num_kv_heads = absl::GetFlag(FLAGS_kv_heads);
  options.geometry.head_dim = absl::GetFlag(FLAGS_head_dim);
  options.geometry.page_tokens = absl::GetFlag(FLAGS_page_tokens);
  options.geometry.dtype = DType::kBFloat16;
  const int sequences = absl::GetFlag(FLAGS_sequences);
  const int pages = absl::GetFlag(FLAGS_pages);
  options.offload_blocks = options.geometry.num_layers * pages;
  options.slot_slices = 256;
  options.client_name = absl::StrFormat("demo-%d", index);
  options.lease = absl::Milliseconds(absl::GetFlag(FLAGS_lease_ms));
  absl::StatusOr<std::unique_ptr<KvClient>> opened = KvClient::Open(options);
  if (!opened.ok()) return opened.status();
  KvClient& client = **opened;
  const Geometry& g = client.geometry();
  const size_t block = g.block_bytes(), slice = g.head_slice_bytes();
  std::mt19937_64 rng(1234 + index);

  // What was offloaded, per (sequence, layer, page), to check recalls against.
  std::vector<std::byte> originals(size_t{sequences} * g.num_layers * pages * block);
  auto original = [&](int seq, uint32_t layer, uint32_t page) {
    return originals.data() + ((size_t{seq} * g.num_layers + layer) * pages + page) * block;
  };
  for (int seq = 0; seq < sequences; ++seq) {
    std::vector<OffloadPageRef> refs;
    for (uint32_t layer = 0; layer < g.num_layers; ++layer) {
      for (int page = 0; page < pages; ++page) {
        const uint64_t offset = refs.size() * block;
        FillRandomBytes(client.offload_region().subspan(offset, block), rng());
        std::memcpy(original(seq, layer, page), client.offload_region().data() + offset,
                    block);
        refs.push_back(OffloadPageRef{uint64_t(seq), layer, uint32_t(page), offset});
      }
    }
    absl::StatusOr<std::vector<uint64_t>> tags = client.Offload(refs);
    if (!tags.ok()) return tags.status();
    totals.offloaded_pages += refs.size();
    totals.offload_bytes += refs.size() * block;
  }

  // FreeKV's access pattern: the selection of step t+1 is speculated from step t's and
  // recalled a step ahead, into the layer's other slot; at step t+1 the true selection
  // has drifted (--drift), and what the speculation missed is recalled at once (a
  // correction) before the slots are read.
  const uint32_t per_request = std::min<uint32_t>(
      client.slot_bytes() / slice, uint32_t(sequences * pages * g.num_kv_heads) / 2 + 1);
  const int steps = absl::GetFlag(FLAGS_steps);
  const double drift = absl::GetFlag(FLAGS_drift);
  auto key = [](const RecallSliceRef& s) {
    return std::make_tuple(s.sequence_id, s.kv_head, s.page);
  };
  auto random_slice = [&] {
    return RecallSliceRef{rng() % sequences, uint32_t(rng() % g.num_kv_heads),
                          uint32_t(rng() % pages), 0};
  };
  // Recalls `slices` packed from offset 0 for (step, layer); returns the ticket. They
  // are laid out in store order (sequence, page, head), so that the heads of one page
  // land side by side and the service can move them as one run.
  auto recall = [&](uint64_t step, uint32_t layer, std::vector<RecallSliceRef>& slices,
                    RecallOptions options = {}) {
    std::sort(slices.begin(), slices.end(), [](const auto& a, const auto& b) {
      return std::tie(a.sequence_id, a.page, a.kv_head) <
             std::tie(b.sequence_id, b.page, b.kv_head);
    });
    for (size_t i = 0; i < slices.size(); ++i) slices[i].slot_offset = i * slice;
    ++totals.recall_requests;
    totals.recalled_blocks += slices.size();
    totals.recall_bytes += slices.size() * slice;
    return client.Recall(step, layer, slices, options);
  };
  // Waits for a recall, checks every slice it brought, and releases its slot.
  auto wait_check_release = [&](const RecallTicket& ticket, uint32_t layer,
                                const std::vector<RecallSliceRef>& slices) {
    const absl::Time start = absl::Now();
    absl::Status s = client.Wait(ticket, absl::Now() + absl::Seconds(30));
    totals.recall_time += absl::Now() - start;
    if (!s.ok()) return s;
    absl::Span<std::byte> slot = client.staging_slot(layer, ticket.slot);
    for (const RecallSliceRef& r : slices) {
      const bool same =
          std::memcmp(slot.data() + r.slot_offset,
                      original(r.sequence_id, layer, r.page) + r.kv_head * slice,
                      slice) == 0;
      totals.verified_blocks += same;
      totals.mismatches += !same;
    }
    return client.Release(ticket);
  };

  std::vector<std::vector<RecallSliceRef>> speculated(g.num_layers);
  std::vector<std::optional<RecallTicket>> in_flight(g.num_layers);
  DecodeStatsDelta stats;
  const absl::Time decode_start = absl::Now();
  for (int step = 0; step < steps; ++step) {
    for (uint32_t layer = 0; layer < g.num_layers; ++layer) {
      // This step's true selection: the speculated one, a share of it replaced.
      std::set<std::tuple<uint64_t, uint32_t, uint32_t>> chosen, speculated_keys;
      for (const RecallSliceRef& r : speculated[layer]) speculated_keys.insert(key(r));
      std::vector<RecallSliceRef> wanted;
      for (const RecallSliceRef& r : speculated[layer]) {
        const bool drifts = std::uniform_real_distribution<>(0, 1)(rng) < drift;
        RecallSliceRef pick = drifts ? random_slice() : r;
        if (chosen.insert(key(pick)).second) wanted.push_back(pick);
      }
      while (wanted.size() < per_request) {
        RecallSliceRef pick = random_slice();
        if (chosen.insert(key(pick)).second) wanted.push_back(pick);
      }
      std::vector<RecallSliceRef> missing;
      for (const RecallSliceRef& r : wanted) {
        if (speculated_keys.count(key(r)) == 0) missing.push_back(r);
      }
      if (in_flight[layer].has_value()) {
        stats.speculation_needed_blocks += wanted.size();
        stats.speculation_hit_blocks += wanted.size() - missing.size();
        ++stats.correction_checks;
        stats.corrections += !missing.empty();
        if (absl::Status s =
                wait_check_release(*in_flight[layer], layer, speculated[layer]);
            !s.ok()) {
          return s;
        }
        in_flight[layer].reset();
      }
      if (!missing.empty()) {
        absl::StatusOr<RecallTicket> urgent =
            recall(step, layer, missing, RecallOptions::Urgent());
        if (!urgent.ok()) return urgent.status();
        if (absl::Status s = wait_check_release(*urgent, layer, missing); !s.ok()) return s;
      }
      // Speculate step + 1 with this step's selection; waited for only next step.
      speculated[layer] = wanted;
      if (step + 1 < steps) {
        absl::StatusOr<RecallTicket> next = recall(step + 1, layer, speculated[layer]);
        if (!next.ok()) return next.status();
        in_flight[layer] = *next;
      }
    }
  }
  stats.decode_steps = steps;
  stats.decode_seconds = absl::ToDoubleSeconds(absl::Now() - decode_start);
  stats.stall_seconds = absl::ToDoubleSeconds(totals.recall_time);
  totals.speculation_needed += stats.speculation_needed_blocks;
  totals.speculation_hits += stats.speculation_hit_blocks;
  if (absl::Status s = client.ReportStats(stats); !s.ok()) return s;
  absl::SleepFor(absl::Milliseconds(absl::GetFlag(FLAGS_hold_ms)));
  if (absl::GetFlag(FLAGS_abandon)) {
    client.Abandon();
    return absl::OkStatus();
  }
  return client.Close();
}

int Main() {
  const int sessions = absl::GetFlag(FLAGS_sessions);
  std::vector<Totals> totals(sessions);
  std::vector<absl::Status> results(sessions);
  std::vector<std::thread> threads;
  for (int i = 0; i < sessions; ++i) {
    threads.emplace_back([&, i] { results[i] = RunSession(i, totals[i]); });
  }
  for (std::thread& t : threads) t.join();
  Totals sum;
  int failed = 0;
  std::printf("%-8s %10s %12s %9s %10s %12s %10s %12s\n", "session", "offloaded",
              "offload_MiB", "recalls", "slices", "recall_MiB", "verified", "stall_ms");
  for (int i = 0; i < sessions; ++i) {
    const Totals& t = totals[i];
    if (!results[i].ok()) {
      std::fprintf(stderr, "session %d: %s\n", i, results[i].ToString().c_str());
      ++failed;
    }
    std::printf("%-8d %10llu %12.1f %9llu %10llu %12.1f %10llu %12.2f\n", i,
                (unsigned long long)t.offloaded_pages, t.offload_bytes / 1048576.0,
                (unsigned long long)t.recall_requests, (unsigned long long)t.recalled_blocks,
                t.recall_bytes / 1048576.0, (unsigned long long)t.verified_blocks,
                absl::ToDoubleMilliseconds(t.recall_time));
    sum.offloaded_pages += t.offloaded_pages;
    sum.offload_bytes += t.offload_bytes;
    sum.recall_requests += t.recall_requests;
    sum.recalled_blocks += t.recalled_blocks;
    sum.recall_bytes += t.recall_bytes;
    sum.verified_blocks += t.verified_blocks;
    sum.mismatches += t.mismatches;
    sum.speculation_needed += t.speculation_needed;
    sum.speculation_hits += t.speculation_hits;
  }
  std::printf("every recalled slice %s the bytes offloaded (%llu checked, %llu differ)\n",
              sum.mismatches == 0 ? "matches" : "DOES NOT match",
              (unsigned long long)(sum.verified_blocks + sum.mismatches),
              (unsigned long long)sum.mismatches);
  std::printf("speculation hit rate %.3f (%llu of %llu slices needed were already there)\n",
              sum.speculation_needed ? double(sum.speculation_hits) / sum.speculation_needed
                                     : 0.0,
              (unsigned long long)sum.speculation_hits,
              (unsigned long long)sum.speculation_needed);
  if (absl::GetFlag(FLAGS_json)) {
    std::printf(
        "{\"sessions\":%d,\"offloaded_pages\":%llu,\"offload_bytes\":%llu,"
        "\"recall_requests\":%llu,\"recalled_blocks\":%llu,\"recall_bytes\":%llu,"
        "\"verified_blocks\":%llu,\"mismatches\":%llu,\"failed_sessions\":%d}\n",
        sessions, (unsigned long long)sum.offloaded_pages,
        (unsigned long long)sum.offload_bytes, (unsigned long long)sum.recall_requests,
        (unsigned long long)sum.recalled_blocks, (unsigned long long)sum.recall_bytes,
        (unsigned long long)sum.verified_blocks, (unsigned long long)sum.mismatches,
        failed);
  }
  std::fflush(stdout);
  return failed == 0 && sum.mismatches == 0 ? 0 : 1;
}

}  // namespace
}  // namespace freekv

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Drives a kvservice like a decoding worker: offload random pages, recall "
      "selections into double-buffered slots, verify every byte.");
  absl::ParseCommandLine(argc, argv);
  return freekv::Main();
}
