#!/usr/bin/env bash
# ./freekv demo: starts a kvservice on a private socket, runs the demo worker against
# it (offload random pages, recall selections into double-buffered slots, verify every
# byte), shows what the service's metrics say, and stops the service.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(bazel info bazel-bin 2>/dev/null)
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
echo "== kvservice pid $service on $dir/kv.sock, metrics on 127.0.0.1:$port"
echo "== demo worker: 2 sessions, 2 sequences x 4 layers x 16 pages each, 8 decode steps"
"$bin/client/demo" --socket="$dir/kv.sock" --sessions=2 "$@"
echo "== what the kvservice's metrics say"
curl -s "127.0.0.1:$port/metrics" | grep -E '^freekv_(sessions_(open|opened_total)|offload_(pages|bytes)_total|recall_(requests|blocks|bytes|transfers)_total|recall_latency_seconds_(count|sum)|store_bytes_used) '
kill -TERM $service
wait $service || true
echo "== kvservice log"
cat "$dir/kvservice.log"
