#!/usr/bin/env bash
# The Grafana dashboard is well formed, has the panels the issue lists, and each of its
# queries parses as PromQL (promtool). A query with a syntax error must be caught.
set -euo pipefail
source tests/deploy/testlib.sh

scratch=$(scratch_dir)
dashboard=deploy/grafana/freekv-dashboard.json
python3 tests/deploy/check_dashboard.py "$dashboard" "$scratch/queries.yml"
promtool check rules "$scratch/queries.yml"

# One unbalanced parenthesis in one query must fail the promtool step.
sed '0,/"expr": "sum by (instance) (rate(/s//"expr": "sum by (instance) ((rate(/' \
  "$dashboard" >"$scratch/broken.json"
cmp -s "$dashboard" "$scratch/broken.json" && fail "the mutation did not apply"
python3 tests/deploy/check_dashboard.py "$scratch/broken.json" "$scratch/broken.yml" \
  >/dev/null
if promtool check rules "$scratch/broken.yml" >/dev/null 2>&1; then
  fail "promtool accepted a query with an unbalanced parenthesis"
fi
echo "dashboard: well formed, required panels present, every query parses"
