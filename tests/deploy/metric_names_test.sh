#!/usr/bin/env bash
# Every metric that the Grafana dashboard and the alert rules name is one the
# kvservice exposes (tests/deploy/expected_metrics.txt). A rules file that uses a name
# the service does not have must be caught.
set -euo pipefail
source tests/deploy/testlib.sh

check=tests/deploy/check_metric_names.py
expected=tests/deploy/expected_metrics.txt
python3 "$check" "$expected" \
  --dashboard deploy/grafana/freekv-dashboard.json \
  --rules deploy/prometheus/alerts.yml

scratch=$(scratch_dir)
sed 's/freekv_worker_corrections_total/freekv_worker_correction_total/' \
  deploy/prometheus/alerts.yml >"$scratch/typo.yml"
if python3 "$check" "$expected" --rules "$scratch/typo.yml" >"$scratch/out.txt"; then
  fail "a rule naming freekv_worker_correction_total (not exposed) passed"
fi
grep -q "freekv_worker_correction_total is not exposed" "$scratch/out.txt" ||
  fail "the typo was not named: $(cat "$scratch/out.txt")"
echo "metric names: all exposed; a misspelt name is caught"
