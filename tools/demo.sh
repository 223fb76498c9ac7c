#!/usr/bin/env bash
# ./freekv demo: starts a kvservice on a private socket and decodes a story with
# stories15M under the freekv policy, with pages of 8 tokens and a budget of a quarter
# of the 256-token context (1 sink + 5 selected + 2 window pages = 64 tokens per KV
# head), so most of the context lives only in the kvservice. Prints the text and the
# FreeKV statistics, compares the text with full attention's, measures top-1
# agreement and KL with full attention (teacher-forced, //worker:eval), shows what
# the kvservice's metrics say, and stops the service. Arguments go to the freekv
# worker run (e.g. --tau=0.9).
set -euo pipefail
cd "$(dirname "$0")/.."
# FREEKV_BIN: where the binaries are, when they were built with another output base.
bin=${FREEKV_BIN:-$(bazel info bazel-bin 2>/dev/null)}
dir=$(mktemp -d /tmp/freekv-demo.XXXXXX)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$bin/kvservice/kvservice" --socket="$dir/kv.sock" --metrics_address="127.0.0.1:$port" \
  --capacity=1G 2>"$dir/kvservice.log" &
service=$!
trap 'kill $service 2>/dev/null; wait $service 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 100); do
  [[ -S "$dir/kv.sock" ]] && break
  sleep 0.1
done

prompt="Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her friends."
echo "$prompt" >"$dir/prompt.txt"
budget=(--page_tokens=8 --sink_pages=1 --window_pages=2 --selected_pages=5 --tau=0.8)
context=256

echo "== kvservice pid $service on $dir/kv.sock, metrics on 127.0.0.1:$port"
echo "== freekv: stories15M, pages of 8 tokens, budget 8 of the 32 pages of a $context-token context"
# The prompt is 27 tokens; 224 more make 251, and ~3/4 of the pages then live only in
# the service.
steps=224
"$bin/worker/worker" --policy=freekv --socket="$dir/kv.sock" --prompt_file="$dir/prompt.txt" \
  --steps=$steps "${budget[@]}" --stats_every=16 --json "$@" | tee "$dir/freekv.out" |
  grep -v '^{'
echo "== full attention, same prompt"
"$bin/worker/worker" --policy=full --prompt_file="$dir/prompt.txt" --steps=$steps \
  --json >"$dir/full.out"
grep '^== full' "$dir/full.out"
python3 - "$dir/freekv.out" "$dir/full.out" <<'EOF'
import json, sys
freekv, full = (json.loads(open(p).read().splitlines()[-1]) for p in sys.argv[1:3])
a, b = freekv["token_ids"][0], full["token_ids"][0]
same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a))
print(f"== free-running: freekv's text equals full's for the first {same} of {len(a)} tokens "
      f"(greedy decoding diverges for good after one different token)")
print(f"== freekv: {freekv['tokens_per_s']:.1f} tokens/s, {freekv['pages_recalled']} pages "
      f"recalled ({freekv['pages_recalled_per_step']:.1f} per step), correction rate "
      f"{freekv['correction_rate']:.3f}, speculation hit rate "
      f"{freekv['speculation_hit_rate']:.3f}, stalled {freekv['stall_s']:.3f} s")
EOF
echo "== agreement with full attention, teacher-forced on full's continuation (//worker:eval)"
"$bin/worker/eval" --socket="$dir/kv.sock" --prompt_file="$dir/prompt.txt" --contexts=$context \
  --budgets=0.25 --taus=0.8 --policies=freekv,blocking "${budget[@]:0:3}" >"$dir/eval.out"
grep -v '^{' "$dir/eval.out"
python3 - "$dir/eval.out" <<'EOF'
import json, sys
r = json.loads(open(sys.argv[1]).read().splitlines()[-1])
print(f"== freekv agrees with full on {100 * r['agreement']:.2f}% of next tokens "
      f"(blocking: {100 * r['blocking_agreement']:.2f}%), mean KL {r['mean_kl']:.4f} nats")
EOF
echo "== what the kvservice's metrics say"
metrics='offload_pages_total|recall_(requests|blocks|bytes)_total|store_pages|worker_[a-z_]+_total'
curl -s "127.0.0.1:$port/metrics" | grep -E "^freekv_($metrics) "
kill -TERM $service
wait $service || true
