#!/usr/bin/env bash
# The DaemonSet, the ConfigMap's flags, the Service, the scrape job and the example
# worker agree (tests/deploy/check_manifests.py lists the checks). Then copies of
# deploy/ with one value changed must each be caught.
set -euo pipefail
source tests/deploy/testlib.sh

check=tests/deploy/check_manifests.py
python3 "$check" deploy

scratch=$(scratch_dir)
# caught NAME FILE SED_EXPRESSION EXPECTED_PROBLEM_TEXT
caught() {
  local copy="$scratch/$1"
  cp -rL deploy "$copy"
  chmod -R u+w "$copy"
  sed -i -e "$3" "$copy/kubernetes/$2"
  cmp -s "deploy/kubernetes/$2" "$copy/kubernetes/$2" && fail "$1: the edit did not apply"
  if python3 "$check" "$copy" >"$copy.out"; then
    fail "$1: the change passed: $(cat "$copy.out")"
  fi
  grep -q -- "$4" "$copy.out" || fail "$1: not caught for its reason: $(cat "$copy.out")"
}
caught capacity 10-configmap.yaml 's/--capacity=32G/--capacity=64G/' 'memory limit'
caught grace 10-configmap.yaml 's/--shutdown_grace_ms=5000/--shutdown_grace_ms=20000/' \
  'terminationGracePeriodSeconds'
caught socket 10-configmap.yaml 's|--socket=/run/freekv/|--socket=/var/run/kv/|' \
  'is not in a hostPath mount'
caught port 10-configmap.yaml 's/0.0.0.0:9464/0.0.0.0:9100/' "containerPort 'metrics'"
caught gpu 20-daemonset.yaml 's/^              memory: 34Gi$/&\n              nvidia.com\/gpu: 1/' \
  'requests a GPU'
caught liveness 20-daemonset.yaml '/--allow_not_serving/d' 'liveness would restart'
caught worker_pid examples/worker-pod.yaml 's/^  hostPID: true/  hostPID: false/' \
  'IPC and PID namespaces'
caught worker_group examples/worker-pod.yaml 's/supplementalGroups: \[2000\]/supplementalGroups: [3000]/' \
  "socket's group"
echo "manifests consistent; 8 inconsistent copies caught"
