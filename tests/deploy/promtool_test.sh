#!/usr/bin/env bash
# promtool accepts the scrape configuration and the alert rules, and the rules' unit
# tests pass. Then a deliberately weakened rule must make the unit tests fail, which
# shows they test the thresholds rather than pass whatever the rules say.
set -euo pipefail
source tests/deploy/testlib.sh

promtool check config deploy/prometheus/prometheus.yml
promtool check rules deploy/prometheus/alerts.yml
promtool test rules deploy/prometheus/alerts_test.yml

scratch=$(scratch_dir)
cp deploy/prometheus/alerts.yml deploy/prometheus/alerts_test.yml "$scratch/"
chmod u+w "$scratch"/*
# Correction-rate threshold 0.3 -> 0.5: the 40% case must no longer fire.
sed -i 's/correction_checks_total\[10m\]) > 0.3$/correction_checks_total[10m]) > 0.5/' \
  "$scratch/alerts.yml"
cmp -s deploy/prometheus/alerts.yml "$scratch/alerts.yml" &&
  fail "the mutation did not apply; update promtool_test.sh with alerts.yml"
if promtool test rules "$scratch/alerts_test.yml" >"$scratch/out.txt" 2>&1; then
  fail "promtool test rules passed against a weakened FreekvCorrectionRateHigh"
fi
grep -q "FreekvCorrectionRateHigh" "$scratch/out.txt" ||
  fail "the weakened rule failed for another reason: $(cat "$scratch/out.txt")"
echo "promtool: config, rules and unit tests pass; a weakened rule is caught"
