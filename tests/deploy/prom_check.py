"""Prometheus HTTP API checks for tests/deploy/prometheus_integration_test.sh.

Every wait is bounded by a timeout in seconds and fails with what it last saw.
  prom_check.py URL ready TIMEOUT
  prom_check.py URL wait QUERY VALUE TIMEOUT    (until the query's one sample == VALUE)
  prom_check.py URL demo DEMO_JSON CAPACITY LINK_CEILING   (values the demo reported)
  prom_check.py URL queries DASHBOARD RULES     (every query runs without error)
  prom_check.py URL rules-healthy TIMEOUT
  prom_check.py URL no-firing
  prom_check.py URL wait-firing ALERTNAME TIMEOUT
  prom_check.py URL moved EXPECTED_NAMES        (every series moved during the run)
"""
import json
import math
import sys
import time
import urllib.parse
import urllib.request

import promql_sources

# One (sequence, head, page) slice of K and V in the demo's default geometry:
# 2 (K and V) * 32 tokens * 128 dims * 2 bytes (bf16).
SLICE_BYTES = 2 * 32 * 128 * 2


def api(url, path, **params):
    query = urllib.parse.urlencode(params)
    with urllib.request.urlopen(f"{url}{path}?{query}", timeout=10) as response:
        body = json.load(response)
    if body.get("status") != "success":
        raise RuntimeError(f"{path} {params}: {body}")
    return body["data"]


def instant(url, query):
    """The samples of an instant query: list of (labels, float value)."""
    data = api(url, "/api/v1/query", query=query)
    if data["resultType"] == "scalar":
        return [({}, float(data["result"][1]))]
    return [(s["metric"], float(s["value"][1])) for s in data["result"]]


def one(url, query):
    samples = instant(url, query)
    if len(samples) != 1:
        raise AssertionError(f"{query}: expected one sample, got {samples}")
    return samples[0][1]


def wait(description, probe, timeout):
    """Calls probe() until it returns (ok, seen) with ok true, for timeout seconds."""
    deadline = time.monotonic() + timeout
    seen = None
    while time.monotonic() < deadline:
        try:
            ok, seen = probe()
            if ok:
                return seen
        except (OSError, RuntimeError, AssertionError) as e:
            seen = e
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout} s waiting for {description}; "
                         f"last seen: {seen}")


def cmd_ready(url, timeout):
    def probe():
        with urllib.request.urlopen(f"{url}/-/ready", timeout=5) as r:
            return r.status == 200, r.status
    wait("Prometheus /-/ready", probe, float(timeout))


def cmd_wait(url, query, value, timeout):
    def probe():
        v = one(url, query)
        return v == float(value), v
    wait(f"{query} == {value}", probe, float(timeout))


class Checks:
    def __init__(self):
        self.failures = []

    def equal(self, what, got, want):
        ok = got == want
        print(f"{'ok  ' if ok else 'FAIL'} {what}: {got} (want {want})")
        if not ok:
            self.failures.append(what)

    def true(self, what, ok, detail=""):
        print(f"{'ok  ' if ok else 'FAIL'} {what} {detail}")
        if not ok:
            self.failures.append(what)


def check_histogram(url, checks, name, count, total=None):
    """Buckets cumulative and ending at count; optionally the sum equals total."""
    buckets = sorted(((float(l["le"]), v) for l, v in
                      instant(url, f'{name}_bucket{{job="freekv"}}')), key=lambda b: b[0])
    values = [v for _, v in buckets]
    checks.true(f"{name} buckets are cumulative", values == sorted(values), str(buckets))
    checks.true(f"{name} ends with le=+Inf", bool(buckets) and math.isinf(buckets[-1][0]))
    checks.equal(f"{name}_bucket{{le=+Inf}}", values[-1] if values else None, count)
    checks.equal(f"{name}_count", one(url, f'{name}_count{{job="freekv"}}'), count)
    s = one(url, f'{name}_sum{{job="freekv"}}')
    if total is None:
        checks.true(f"{name}_sum is a plausible total", 0 < s < 60 * count, str(s))
    else:
        checks.equal(f"{name}_sum", s, total)


def cmd_demo(url, demo_json, capacity, link_ceiling):
    with open(demo_json) as f:
        demo = json.load(f)
    print(f"demo reported {demo}")
    c = Checks()
    q = lambda name: one(url, f'{name}{{job="freekv"}}')  # noqa: E731
    c.equal("up", one(url, 'up{job="freekv"}'), 1)
    c.equal("freekv_build_info", q("freekv_build_info"), 1)
    c.equal("freekv_recall_requests_total", q("freekv_recall_requests_total"),
            demo["recall_requests"])
    c.equal("freekv_recall_blocks_total", q("freekv_recall_blocks_total"),
            demo["recalled_blocks"])
    c.equal("freekv_recall_bytes_total", q("freekv_recall_bytes_total"), demo["recall_bytes"])
    c.equal("recall bytes per slice", demo["recall_bytes"] / max(demo["recalled_blocks"], 1),
            SLICE_BYTES)
    transfers = q("freekv_recall_transfers_total")
    c.true("0 < transfers <= slices", 0 < transfers <= demo["recalled_blocks"],
           f"({transfers} transfers)")
    check_histogram(url, c, "freekv_recall_latency_seconds", demo["recall_requests"])
    check_histogram(url, c, "freekv_recall_request_bytes", demo["recall_requests"],
                    total=demo["recall_bytes"])
    c.equal("freekv_offload_pages_total", q("freekv_offload_pages_total"),
            demo["offloaded_pages"])
    c.equal("freekv_offload_bytes_total", q("freekv_offload_bytes_total"), demo["offload_bytes"])
    c.equal("freekv_sessions_opened_total", q("freekv_sessions_opened_total"), demo["sessions"])
    c.equal('freekv_sessions_closed_total{reason="client"}',
            one(url, 'freekv_sessions_closed_total{job="freekv", reason="client"}'),
            demo["sessions"])
    c.equal("freekv_sessions_open", q("freekv_sessions_open"), 0)
    c.equal("freekv_store_bytes_used after every session closed", q("freekv_store_bytes_used"), 0)
    c.equal("freekv_store_pages after every session closed", q("freekv_store_pages"), 0)
    c.equal("freekv_store_bytes_capacity", q("freekv_store_bytes_capacity"), float(capacity))
    c.equal("freekv_recall_link_ceiling_bytes_per_second",
            q("freekv_recall_link_ceiling_bytes_per_second"), float(link_ceiling))
    c.equal("freekv_integrity_failures_total", q("freekv_integrity_failures_total"), 0)
    c.equal("freekv_store_chunk_allocation_failures_total",
            q("freekv_store_chunk_allocation_failures_total"), 0)
    c.equal("demo verified every recalled block", demo["verified_blocks"],
            demo["recalled_blocks"])
    c.true("the demo recalled something", demo["recall_requests"] > 0 and
           demo["recalled_blocks"] > 0)
    if c.failures:
        raise AssertionError(f"{len(c.failures)} checks failed: {c.failures}")


def cmd_queries(url, dashboard, rules):
    """Every dashboard and alert query runs against the live server without error."""
    expressions = promql_sources.dashboard_expressions(dashboard)
    expressions += promql_sources.rule_expressions(rules)
    for where, expr in expressions:
        samples = instant(url, promql_sources.to_promql(expr))
        print(f"ok   {where}: {len(samples)} series")


def cmd_rules_healthy(url, timeout):
    def probe():
        groups = api(url, "/api/v1/rules")["groups"]
        rules = [r for g in groups for r in g["rules"]]
        bad = [(r["name"], r.get("health"), r.get("lastError")) for r in rules
               if r.get("health") != "ok"]
        return bool(rules) and not bad, bad or f"{len(rules)} rules"
    print(wait("every rule evaluated with health ok", probe, float(timeout)))


def cmd_no_firing(url):
    firing = [a for a in api(url, "/api/v1/alerts")["alerts"] if a["state"] == "firing"]
    if firing:
        raise AssertionError(f"alerts firing on a healthy run: {firing}")
    print("ok   no alert firing")


def cmd_wait_firing(url, alertname, timeout):
    def probe():
        alerts = api(url, "/api/v1/alerts")["alerts"]
        mine = [a for a in alerts if a["labels"].get("alertname") == alertname]
        return any(a["state"] == "firing" for a in mine), mine
    print(f"ok   {alertname} firing: {wait(alertname + ' firing', probe, float(timeout))}")


# Counters of failures that a healthy run must leave at 0 (checked in cmd_demo).
STAY_ZERO = {"freekv_integrity_failures_total", "freekv_store_chunk_allocation_failures_total"}
# Series only the CUDA IPC transport moves: this run's sessions use UCX (no GPU here).
# tests/integration/cuda_ipc_test checks them on the GPU machine.
CUDA_IPC_ONLY = {"freekv_recall_push_seconds_bucket", "freekv_recall_push_seconds_sum",
                 "freekv_recall_push_seconds_count", "freekv_recall_pushes_total"}


def cmd_moved(url, expected_names):
    """Every exposed series other than STAY_ZERO and CUDA_IPC_ONLY was above 0 at some
    point of the run: the dashboard and the alerts are tested against metrics that
    move."""
    with open(expected_names) as f:
        names = [l.strip() for l in f if l.strip() and not l.startswith("#")]
    still = []
    for name in names:
        if name in STAY_ZERO or name in CUDA_IPC_ONLY:
            continue
        peak = [v for _, v in instant(url, f'max_over_time({{__name__="{name}", '
                                           f'job="freekv"}}[1h])')]
        print(f"{'ok  ' if any(v > 0 for v in peak) else 'FAIL'} {name} peaked at "
              f"{max(peak) if peak else 'no series'}")
        if not any(v > 0 for v in peak):
            still.append(name)
    if still:
        raise AssertionError(f"these series never moved during the run: {still}")


COMMANDS = {"ready": cmd_ready, "wait": cmd_wait, "demo": cmd_demo, "queries": cmd_queries,
            "rules-healthy": cmd_rules_healthy, "no-firing": cmd_no_firing,
            "wait-firing": cmd_wait_firing, "moved": cmd_moved}

if __name__ == "__main__":
    try:
        COMMANDS[sys.argv[2]](sys.argv[1], *sys.argv[3:])
    except AssertionError as e:
        print(f"FAIL: {e}")
        sys.exit(1)
