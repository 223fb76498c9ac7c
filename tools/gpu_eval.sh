#!/usr/bin/env bash
# Runs on the GPU machine, after tools/gpu_build.sh staged .gpu/ (or .gpu.pack/): the
# worker and the accuracy evaluation on the GPU with the real stories15M weights
# (bf16, .gpu/models), against a kvservice this script starts with a pinned store,
# under a private MPS daemon (tools/gpu_remote.sh says why). Prints the worker's text
# and JSON and the evaluation's tables; the same cells also run on that machine's CPU
# with the same bf16 weights, so the two devices' agreements sit side by side.
#   tools/gpu_eval.sh            (FREEKV_EVAL_ARGS: more flags for both evaluations;
#                                 FREEKV_GPU_ARGS: flags for the GPU's worker and
#                                 evaluation only, e.g. --resident_cache_pages=8;
#                                 FREEKV_EVAL_DEVICES: default "gpu cpu")
set -uo pipefail
cd "$(dirname "$0")/.."
if [[ -f .gpu.pack/bundle.tar.xz && ! -f .gpu/manifest.tsv ]]; then
  xz -dc .gpu.pack/bundle.tar.xz | tar -xf - || exit 2
fi
bin=.gpu/runfiles/freekv
model=.gpu/models/stories15M
for f in "$bin/kvservice/kvservice" "$bin/worker/worker" "$bin/worker/eval" "$model"; do
  [[ -e $f ]] || { echo "gpu_eval: $f is missing; run tools/gpu_build.sh" >&2; exit 2; }
done
export LD_LIBRARY_PATH="$PWD/.gpu/lib:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if command -v nvidia-cuda-mps-control >/dev/null; then
  export CUDA_MPS_PIPE_DIRECTORY=${TMPDIR:-/tmp}/freekv-eval-mps-pipe
  export CUDA_MPS_LOG_DIRECTORY=${TMPDIR:-/tmp}/freekv-eval-mps-log
  mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
  nvidia-cuda-mps-control -d && trap 'echo quit | nvidia-cuda-mps-control' EXIT
fi
sock=${TMPDIR:-/tmp}/freekv-eval.sock
"$bin/kvservice/kvservice" --socket="$sock" --metrics_address=127.0.0.1:0 \
  --pin_store=true --capacity=8G >"${OUT:-/tmp}/kvservice.log" 2>&1 &
service=$!
trap 'kill $service 2>/dev/null; echo quit | nvidia-cuda-mps-control 2>/dev/null' EXIT
for _ in $(seq 100); do [[ -S $sock ]] && break; sleep 0.1; done
read -ra extra <<<"${FREEKV_EVAL_ARGS:-}"
read -ra gpu_extra <<<"${FREEKV_GPU_ARGS:-}"
status=0
echo "=== worker --device=gpu ${gpu_extra[*]}"
"$bin/worker/worker" --device=gpu --model="$model" --socket="$sock" --policy=freekv \
  --prompt="Once upon a time, there was a little girl named Lily." --steps=200 --json \
  "${gpu_extra[@]}" || status=1
for device in ${FREEKV_EVAL_DEVICES:-gpu cpu}; do
  device_extra=()
  [[ $device == gpu ]] && device_extra=("${gpu_extra[@]}")
  echo "=== eval --device=$device ${device_extra[*]}"
  "$bin/worker/eval" --device="$device" --model="$model" --socket="$sock" \
    --threads=8 "${extra[@]}" "${device_extra[@]}" || status=1
done
exit $status
