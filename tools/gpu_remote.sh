#!/usr/bin/env bash
# Runs on the GPU machine, from the repository root, everything tools/gpu_build.sh
# staged in .gpu/: each test and benchmark of .gpu/manifest.tsv in order, printing its
# output, then one line "N passed, N failed". Exit status 0 only when all passed.
#   tools/gpu_remote.sh [test|bench]     (default: both kinds)
# Each binary gets FREEKV_GPU_TIMEOUT seconds (default 300). When $OUT is set (the
# lent device machine), every binary's full output is also written to $OUT/<name>.log.
set -uo pipefail
cd "$(dirname "$0")/.."
if [[ ! -f .gpu/manifest.tsv ]]; then
  echo "gpu_remote: .gpu/manifest.tsv is missing; run tools/gpu_build.sh first" >&2
  exit 2
fi
export LD_LIBRARY_PATH="$PWD/.gpu/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# Tests that start the kvservice find it here (tools/gpu_build.sh stages it).
export TEST_SRCDIR="$PWD/.gpu/runfiles" TEST_WORKSPACE=freekv
only=${1:-}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null ||
  echo "gpu_remote: nvidia-smi unavailable" >&2

passed=0
failed=0
failures=()
while IFS=$'\t' read -r kind label path; do
  [[ -z $kind || $kind == \#* ]] && continue
  [[ -n $only && $kind != "$only" ]] && continue
  echo "=== $kind $label"
  log=/dev/null
  [[ -n ${OUT:-} ]] && log="$OUT/$(basename "$path").log"
  start=$SECONDS
  timeout "${FREEKV_GPU_TIMEOUT:-300}" ".gpu/$path" 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  if [[ $rc -eq 0 ]]; then
    passed=$((passed + 1))
    echo "--- PASS $label ($((SECONDS - start)) s)"
  else
    failed=$((failed + 1))
    failures+=("$label (exit $rc)")
    echo "--- FAIL $label (exit $rc, $((SECONDS - start)) s)"
  fi
done <.gpu/manifest.tsv

for f in "${failures[@]}"; do echo "failed: $f"; done
echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
