#!/usr/bin/env bash
# The real kvservice, started with the DaemonSet's flagfile (the ConfigMap), scraped by
# a real Prometheus (Debian's) on loopback with the project's scrape job and alert
# rules; the demo client drives sessions, and Prometheus's HTTP query API must hold
# exactly the recall counters and histograms the demo reports. Then:
#   - every dashboard and alert query runs, every rule evaluates healthy, none fires;
#   - an abandoned session is reclaimed by lease expiry and its alert fires;
#   - a rejected request shows up in freekv_request_errors_total;
#   - the exposition has exactly the names of tests/deploy/expected_metrics.txt, and
#     every one of them moved during the run (the failure counters stay at 0);
#   - SIGTERM drains and exits 0 within --shutdown_grace_ms plus 5 s, as the
#     DaemonSet's terminationGracePeriodSeconds assumes.
# Every wait is bounded; every process started here is stopped on exit.
#
# usage: prometheus_integration_test.sh KVSERVICE DEMO HEALTH_CHECK
set -euo pipefail
source tests/deploy/testlib.sh

kvservice=$(readlink -f "$1")
demo=$(readlink -f "$2")
probe=$(readlink -f "$3")
here=$PWD
scratch=$(scratch_dir)
# A unix socket path must fit in 108 bytes; Bazel's scratch directories may not.
sock_dir=$(mktemp -d /tmp/freekv-it.XXXXXX)
socket=$sock_dir/kvservice.sock
capacity=$((256 << 20))

setup() { python3 tests/deploy/integration_setup.py "$@"; }
check() { python3 tests/deploy/prom_check.py "$prom_url" "$@"; }

# Whether PID (a child of this shell) is still running; a zombie is not.
running() {
  local state
  state=$(sed -E 's/^.*\) (.).*$/\1/' "/proc/$1/stat" 2>/dev/null) || return 1
  [[ -n "$state" && "$state" != Z ]]
}

# wait_pid PID TIMEOUT_S: the exit status of child PID, or 124 after TIMEOUT_S.
wait_pid() {
  local deadline=$((SECONDS + $2))
  while running "$1"; do
    if ((SECONDS >= deadline)); then
      echo "pid $1 still running after $2 s" >&2
      return 124
    fi
    sleep 0.2
  done
  wait "$1"
}

pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do
    if running "$pid"; then
      kill -TERM "$pid" 2>/dev/null || true
      wait_pid "$pid" 5 >/dev/null 2>&1 || kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  rm -rf "$sock_dir"
}
trap cleanup EXIT

logs() {
  echo "--- kvservice log"; tail -n 30 "$scratch/kvservice.log" 2>/dev/null || true
  echo "--- prometheus log"; tail -n 15 "$scratch/prometheus.log" 2>/dev/null || true
}
die() {
  logs >&2
  fail "$@"
}

# --- kvservice, with the ConfigMap's flags; test-sized values override them after.
setup flagfile deploy/kubernetes/10-configmap.yaml "$scratch/kvservice.flags"
link_ceiling=$(setup flag "$scratch/kvservice.flags" link_ceiling_bytes_per_second)
grace_ms=$(setup flag "$scratch/kvservice.flags" shutdown_grace_ms)
metrics_port=$(setup free-port)
"$kvservice" --flagfile="$scratch/kvservice.flags" --socket="$socket" \
  --metrics_address="127.0.0.1:$metrics_port" --capacity=256M --chunk_bytes=16M \
  --default_lease_ms=2000 --reap_interval_ms=100 >"$scratch/kvservice.log" 2>&1 &
kv_pid=$!
pids+=("$kv_pid")

# Ready: gRPC health SERVING on the socket and /metrics answering.
deadline=$((SECONDS + 30))
until "$probe" --socket="$socket" --timeout_ms=500 >/dev/null 2>&1 &&
  curl -sf --max-time 2 "http://127.0.0.1:$metrics_port/metrics" >/dev/null; do
  running "$kv_pid" || die "kvservice exited before it was ready"
  ((SECONDS < deadline)) || die "kvservice not SERVING with /metrics after 30 s"
  sleep 0.2
done

# --- Prometheus, with the project's job and rules adapted to loopback.
prom_port=$(setup free-port)
prom_url="http://127.0.0.1:$prom_port"
setup prometheus-config deploy/prometheus/prometheus.yml "$here/deploy/prometheus/alerts.yml" \
  "127.0.0.1:$metrics_port" "$scratch/prometheus.yml"
promtool check config "$scratch/prometheus.yml" >/dev/null
prometheus --config.file="$scratch/prometheus.yml" --storage.tsdb.path="$scratch/tsdb" \
  --web.listen-address="127.0.0.1:$prom_port" --log.level=warn \
  >"$scratch/prometheus.log" 2>&1 &
pids+=("$!")
check ready 30 || die "Prometheus not ready"
check wait 'up{job="freekv"}' 1 30 || die "Prometheus does not scrape the kvservice"

# --- Phase 1: two sessions offload, recall and close; the counters must match.
timeout 120 "$demo" --socket="$socket" --sessions=2 --hold_ms=4000 --json \
  >"$scratch/demo1.out" 2>"$scratch/demo1.err" &
demo_pid=$!
pids+=("$demo_pid")
check wait 'freekv_sessions_open{job="freekv"}' 2 60 ||
  die "sessions_open never showed the demo's 2 sessions: $(tail -5 "$scratch/demo1.err")"
wait_pid "$demo_pid" 130 || die "demo failed: $(tail -20 "$scratch/demo1.err")"
tail -n 1 "$scratch/demo1.out" >"$scratch/demo1.json"
recalls=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["recall_requests"])' \
  "$scratch/demo1.json") || die "the demo's last line is not its JSON: $(cat "$scratch/demo1.out")"
check wait 'freekv_recall_requests_total{job="freekv"}' "$recalls" 20 || die "recalls not scraped"
check wait 'freekv_sessions_open{job="freekv"}' 0 20 || die "sessions still open"
check demo "$scratch/demo1.json" "$capacity" "$link_ceiling" || die "counters differ"
check queries deploy/grafana/freekv-dashboard.json deploy/prometheus/alerts.yml ||
  die "a dashboard or alert query failed"
check rules-healthy 20 || die "a rule does not evaluate"
check no-firing || die "an alert fired on a healthy run"

# --- Phase 2: a session abandoned without closing is reclaimed when its lease lapses.
timeout 60 "$demo" --socket="$socket" --sessions=1 --abandon --json \
  >"$scratch/demo2.out" 2>&1 || die "demo --abandon failed: $(tail -20 "$scratch/demo2.out")"
check wait 'freekv_sessions_closed_total{job="freekv", reason="lease_expired"}' 1 30 ||
  die "the abandoned session was not reclaimed"
check wait 'freekv_sessions_open{job="freekv"}' 0 10 || die "a reclaimed session stays open"
check wait 'freekv_store_bytes_used{job="freekv"}' 0 10 || die "reclaimed pages not freed"
check wait-firing FreekvSessionsReclaimedByLeaseExpiry 30 || die "the reclaim alert did not fire"

# --- Phase 3: a request the service rejects is counted by method and code.
if timeout 60 "$demo" --socket="$socket" --kv_heads=0 --json >"$scratch/demo3.out" 2>&1; then
  die "the demo succeeded with --kv_heads=0"
fi
check wait 'sum(freekv_request_errors_total{job="freekv"}) > bool 0' 1 20 ||
  die "the rejected request is not in freekv_request_errors_total: $(tail -5 "$scratch/demo3.out")"

# --- The exposition has exactly the expected names, and each of them moved.
curl -sf --max-time 5 "http://127.0.0.1:$metrics_port/metrics" >"$scratch/metrics.txt" ||
  die "no /metrics"
setup exposition "$scratch/metrics.txt" tests/deploy/expected_metrics.txt ||
  die "the exposition differs from tests/deploy/expected_metrics.txt"
check moved tests/deploy/expected_metrics.txt || die "some series never moved"

# --- Graceful shutdown within the DaemonSet's grace period.
kill -TERM "$kv_pid"
limit_s=$(((grace_ms + 999) / 1000 + 5))
wait_pid "$kv_pid" "$limit_s" || die "kvservice did not exit 0 within $limit_s s of SIGTERM"
[[ ! -S "$socket" ]] || die "kvservice left its socket behind"
echo "prometheus integration: counters, histograms, alerts, errors and shutdown as expected"
