#!/usr/bin/env bash
# Builds every GPU test and GPU benchmark (targets tagged `gpu`) with --config=cuda
# on this machine (no GPU needed) and stages them in .gpu/ for tools/gpu_remote.sh:
#   .gpu/bin/<package>_<name>   the binaries (stripped of host debug symbols)
#   .gpu/lib/                   the shared libraries they need that a bare GPU
#                               machine lacks (gRPC, protobuf, Abseil, UCX,
#                               prometheus-cpp, xxhash, cudart, gtest, ...), from ldd
#   .gpu/manifest.tsv           one line per binary: kind (test|bench) TAB target TAB path
#   .gpu/models/stories15M/     the real model for GPU tests of the worker, as bf16
#                               safetensors (what the GPU runs) and its tokenizer
#   .gpu.pack/bundle.tar.xz     all of .gpu/ compressed, the one path to carry: a run
#                               may carry 64 MiB, and binaries and bf16 weights shrink
#                               3-4x (tools/gpu_remote.sh unpacks it)
# New GPU tests and benchmarks join automatically: tag them `gpu` (tools/cuda.bzl's
# cuda_test and cuda_binary do). Usage:
#   tools/gpu_build.sh [bazel target pattern ...]      (default: //...)
# FREEKV_BAZEL_OUTPUT_BASE selects a Bazel output base (shared machines).
set -euo pipefail
cd "$(dirname "$0")/.."

bazel_cmd=(bazel)
build_flags=()
if [[ -n ${FREEKV_BAZEL_OUTPUT_BASE:-} ]]; then
  bazel_cmd+=(--output_base="$FREEKV_BAZEL_OUTPUT_BASE")
  # No bazel-* links into this other output base: `./freekv test` (the default one)
  # would read them as packages and fail to load.
  build_flags+=(--symlink_prefix=/)
fi
patterns=("$@")
((${#patterns[@]})) || patterns=(//...)
universe=$(IFS=+; echo "${patterns[*]}")

# Query: labels of gpu-tagged tests and binaries. --keep_going tolerates packages
# that other work has left broken; exit code 3 means "partial results".
query() {
  "${bazel_cmd[@]}" query --keep_going --noshow_progress "$1" 2>/dev/null || [[ $? -eq 3 ]]
}
mapfile -t tests < <(query "attr(tags, '\\bgpu\\b', kind(cc_test, $universe))")
mapfile -t benches < <(query "attr(tags, '\\bgpu\\b', kind(cc_binary, $universe))")
if ((${#tests[@]} + ${#benches[@]} == 0)); then
  echo "gpu_build: no targets tagged gpu under ${patterns[*]}" >&2
  exit 1
fi
echo "gpu_build: ${#tests[@]} tests, ${#benches[@]} benchmarks" >&2
"${bazel_cmd[@]}" build --config=cuda "${build_flags[@]}" "${tests[@]}" "${benches[@]}" //worker/model:convert_model \
  //kvservice:kvservice //worker:worker //worker:eval
bin_dir=$("${bazel_cmd[@]}" info --config=cuda bazel-bin 2>/dev/null)

rm -rf .gpu
mkdir -p .gpu/bin .gpu/lib
# Libraries every Linux machine has (glibc, the GCC runtime), the driver's own, and
# cuBLAS (600 MB, over what a run may carry): the GPU machine's CUDA 13 has it in
# /usr/local/cuda/lib64, which the binaries' rpath names.
system_lib='^(linux-vdso|ld-linux|libc|libm|libdl|libpthread|librt|libgcc_s|libstdc\+\+|libcuda|libnvidia|libcublas|libcublasLt)[.-]'
stage() {  # kind label
  local kind=$1 label=$2 pkg name file dest
  pkg=${label#//}
  pkg=${pkg%%:*}
  name=${label##*:}
  file="$bin_dir/$pkg/$name"
  dest="bin/${pkg//\//_}_$name"
  cp "$file" ".gpu/$dest"
  chmod u+w ".gpu/$dest"
  strip --strip-debug ".gpu/$dest"
  printf '%s\t%s\t%s\n' "$kind" "$label" "$dest" >>.gpu/manifest.tsv
  ldd "$file" | awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}' |
    while read -r soname path; do
      if [[ ! $soname =~ $system_lib && ! -e .gpu/lib/$soname ]]; then
        cp -L "$path" ".gpu/lib/$soname"
      fi
    done
}
printf '# kind\ttarget\tpath (relative to .gpu/)\n' >.gpu/manifest.tsv
for t in "${tests[@]}"; do stage test "$t"; done
for b in "${benches[@]}"; do stage bench "$b"; done
if ldd .gpu/bin/* | grep -v libcublas | grep -q 'not found'; then
  echo "gpu_build: a binary has unresolved libraries:" >&2
  ldd .gpu/bin/* | grep 'not found' >&2
  exit 1
fi
du -sh .gpu/bin .gpu/lib >&2
echo "gpu_build: staged $(($(wc -l <.gpu/manifest.tsv) - 1)) binaries in .gpu/ (carry .gpu)" >&2

# Binaries that GPU tests and benchmarks start as child processes (their `data`), staged
# where tests/integration/kvservice_process.cc finds them once tools/gpu_remote.sh sets
# TEST_SRCDIR=.gpu/runfiles (the CUDA IPC test and bench/gpu_recall_bench start the
# kvservice built with CUDA), and the worker and the evaluation for runs by hand
# (.gpu/runfiles/freekv/worker/{worker,eval} --device=gpu).
for support in kvservice/kvservice worker/worker worker/eval; do
  [[ -x $bin_dir/$support ]] || continue
  mkdir -p ".gpu/runfiles/freekv/$(dirname "$support")"
  cp "$bin_dir/$support" ".gpu/runfiles/freekv/$support"
  chmod u+w ".gpu/runfiles/freekv/$support"
  strip --strip-debug ".gpu/runfiles/freekv/$support"
  ldd "$bin_dir/$support" | awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}' |
    while read -r soname path; do
      if [[ ! $soname =~ $system_lib && ! -e .gpu/lib/$soname ]]; then
        cp -L "$path" ".gpu/lib/$soname"
      fi
    done
  echo "gpu_build: staged $support for child processes (.gpu/runfiles)" >&2
done

# The real model (tools/fetch_model.sh puts it in the cache) for the worker's GPU tests.
model_dir=${FREEKV_MODEL_DIR:-${FREEKV_CACHE:-$HOME/.cache/freekv}/stories15M}
if [[ -f $model_dir/model.bin ]]; then
  mkdir -p .gpu/models/stories15M
  "$bin_dir/worker/model/convert_model" --model="$model_dir/model.bin" \
    --out=.gpu/models/stories15M/model.safetensors --dtype=bf16
  cp "$model_dir/tokenizer.bin" .gpu/models/stories15M/
  echo "gpu_build: staged stories15M as bf16 (.gpu/models)" >&2
fi
rm -rf .gpu.pack
mkdir -p .gpu.pack
tar -cf - .gpu | xz -T0 -3 >.gpu.pack/bundle.tar.xz
echo "gpu_build: packed $(du -h .gpu.pack/bundle.tar.xz | cut -f1) (carry .gpu.pack)" >&2
