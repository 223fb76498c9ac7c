#!/usr/bin/env bash
# yamllint, strict (warnings fail), over every YAML file of deploy/. A file with a
# duplicate key, the mistake that silently drops half a Kubernetes manifest, must fail.
set -euo pipefail
source tests/deploy/testlib.sh

mapfile -t files < <(find -L deploy -name '*.yaml' -o -name '*.yml' | sort)
((${#files[@]} >= 8)) || fail "found only ${#files[@]} YAML files under deploy/: ${files[*]}"
yamllint -s -c deploy/yamllint.yaml "${files[@]}"

scratch=$(scratch_dir)
printf 'apiVersion: v1\nkind: Pod\nmetadata:\n  name: a\n  name: b\n' >"$scratch/dup.yaml"
if yamllint -s -c deploy/yamllint.yaml "$scratch/dup.yaml" >/dev/null; then
  fail "yamllint accepted a duplicate key"
fi
echo "yamllint: ${#files[@]} files clean; a duplicate key is caught"
