#!/usr/bin/env bash
# Runs on the GPU machine, from the repository root, everything tools/gpu_build.sh
# staged in .gpu/: each test and benchmark of .gpu/manifest.tsv in order, printing its
# output, then one line "N passed, N failed". Exit status 0 only when all passed.
#   tools/gpu_remote.sh [test|bench]     (default: both kinds)
# Each binary gets FREEKV_GPU_TIMEOUT seconds (default 300). When $OUT is set (the
# lent device machine), every binary's full output is also kept, as $OUT/logs/<name>.log
# while it runs and all of them in $OUT/gpu_logs.tar.gz at the end (the device returns
# only a few files from $OUT, so one archive instead of a dozen logs).
# FREEKV_TRACE_RECALLS=1 makes the GPU decoder log each recall's progress.
# FREEKV_GPU_ONLY (an extended regex) runs only the targets whose label matches it;
# FREEKV_BENCH_ARGS are passed to every benchmark (e.g. smaller sweeps).
# A binary still running at its limit has every thread's stack written to its log
# (cuda-gdb, the GPU machine's debugger) before it is killed: a hang shows where.
set -uo pipefail
cd "$(dirname "$0")/.."
if [[ -f .gpu.pack/bundle.tar.xz && ! -f .gpu/manifest.tsv ]]; then
  xz -dc .gpu.pack/bundle.tar.xz | tar -xf - || exit 2
fi
if [[ ! -f .gpu/manifest.tsv ]]; then
  echo "gpu_remote: .gpu/manifest.tsv is missing; run tools/gpu_build.sh first" >&2
  exit 2
fi
export LD_LIBRARY_PATH="$PWD/.gpu/lib:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# Tests that start the kvservice find it here (tools/gpu_build.sh stages it).
export TEST_SRCDIR="$PWD/.gpu/runfiles" TEST_WORKSPACE=freekv
# The worker's GPU tests load the real model staged beside the binaries.
[[ -d .gpu/models/stories15M ]] && export FREEKV_MODEL_DIR="$PWD/.gpu/models/stories15M"
only=${1:-}
log_dir=${TMPDIR:-/tmp}
[[ -n ${OUT:-} ]] && log_dir=$OUT/logs && mkdir -p "$log_dir"
on_exit() {
  [[ ${mps:-0} == 1 ]] && echo quit | nvidia-cuda-mps-control
  if [[ -n ${OUT:-} ]]; then
    tar -czf "$OUT/gpu_logs.tar.gz" -C "$OUT" logs && rm -rf "$OUT/logs"
  fi
}
trap on_exit EXIT
# The kvservice and the worker are two processes on one GPU. Without MPS the GPU
# time-slices their contexts, and a recall's copies wait for the worker's slice to
# end (measured on the H100: 2.4 ms per recall instead of 0.26 ms; bench/RESULTS.md).
# So everything runs under a private MPS daemon when the machine has one
# (FREEKV_MPS=0 turns it off, to measure that).
if [[ ${FREEKV_MPS:-1} != 0 ]] && command -v nvidia-cuda-mps-control >/dev/null; then
  export CUDA_MPS_PIPE_DIRECTORY=${TMPDIR:-/tmp}/freekv-mps-pipe
  export CUDA_MPS_LOG_DIRECTORY=${TMPDIR:-/tmp}/freekv-mps-log
  mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
  if nvidia-cuda-mps-control -d; then
    mps=1
    echo "gpu_remote: running under MPS ($CUDA_MPS_PIPE_DIRECTORY)"
  else
    unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
    echo "gpu_remote: MPS did not start; the GPU time-slices the processes" >&2
  fi
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null ||
  echo "gpu_remote: nvidia-smi unavailable" >&2

passed=0
failed=0
failures=()
while IFS=$'\t' read -r kind label path; do
  [[ -z $kind || $kind == \#* ]] && continue
  [[ -n $only && $kind != "$only" ]] && continue
  [[ -n ${FREEKV_GPU_ONLY:-} && ! $label =~ ${FREEKV_GPU_ONLY} ]] && continue
  args=()
  [[ $kind == bench && -n ${FREEKV_BENCH_ARGS:-} ]] && read -ra args <<<"$FREEKV_BENCH_ARGS"
  echo "=== $kind $label"
  log=$log_dir/$(basename "$path").log
  start=$SECONDS
  # Into a file, not a pipe: a child the binary leaves behind (a kvservice whose test
  # died) cannot then hold the run open. Its own session (setsid), away from this
  # script's signals. Past the limit: its stacks, SIGTERM, SIGKILL 10 s later; then
  # anything still running from .gpu/ (such a leftover child) is killed.
  setsid ".gpu/$path" "${args[@]}" >"$log" 2>&1 &
  pid=$!
  limit=${FREEKV_GPU_TIMEOUT:-300}
  while kill -0 "$pid" 2>/dev/null && ((SECONDS - start < limit)); do sleep 0.2; done
  if kill -0 "$pid" 2>/dev/null; then
    echo "gpu_remote: still running after $limit s; the stacks of its threads:" >>"$log"
    if command -v cuda-gdb >/dev/null; then
      timeout 90 cuda-gdb -p "$pid" -batch -ex 'set pagination off' \
        -ex 'thread apply all bt 30' >>"$log" 2>&1
    fi
    kill -TERM -- -"$pid" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL -- -"$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    rc=124
  else
    wait "$pid"
    rc=$?
  fi
  pkill -KILL -f '\.gpu/(bin|runfiles)/' 2>/dev/null
  # A client killed mid-run can leave the MPS server refusing the next one
  # (cudaErrorDevicesUnavailable, seen after a hung test): start a fresh server.
  if [[ $rc -ne 0 && ${mps:-0} == 1 ]]; then
    echo quit | timeout 30 nvidia-cuda-mps-control
    sleep 1
    nvidia-cuda-mps-control -d || echo "gpu_remote: MPS did not restart" >&2
  fi
  cat "$log"
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
