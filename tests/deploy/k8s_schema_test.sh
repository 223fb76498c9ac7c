#!/usr/bin/env bash
# Every Kubernetes manifest of deploy/kubernetes validates against the Kubernetes API
# schemas, offline (tests/deploy/k8s_validate.mjs says how). Then mutants of those very
# manifests, each with one mistake, must be rejected for that mistake: the validator is
# shown to look at the fields we rely on, not merely to parse YAML.
set -euo pipefail
source tests/deploy/testlib.sh

tools=$(deploy_tools_dir)
validate=tests/deploy/k8s_validate.mjs

mapfile -t manifests < <(find -L deploy/kubernetes -name '*.yaml' | sort)
((${#manifests[@]} >= 5)) || fail "found only ${#manifests[@]} manifests: ${manifests[*]}"
node "$validate" "$tools" valid "${manifests[@]}"

scratch=$(scratch_dir)
n=0
# mutant FILE SED_EXPRESSION EXPECTED_ERROR_TEXT
mutant() {
  local source="deploy/kubernetes/$1" out
  n=$((n + 1))
  out="$scratch/mutant_$n.yaml"
  { echo "# expect: $3"; sed -e "$2" "$source"; } >"$out"
  # The mutation must change the manifest, or the case would test nothing.
  if diff -q <(tail -n +2 "$out") "$source" >/dev/null; then
    fail "mutant $n ($2) left $source unchanged"
  fi
}
mutant 20-daemonset.yaml 's/^      hostIPC: true/      hostIpc: true/' \
  'unknown field "hostIpc"'
mutant 20-daemonset.yaml 's/^      hostPID: true/      hostPID: "yes"/' \
  'hostPID must be boolean'
mutant 20-daemonset.yaml 's/memory: 34Gi/memory: 34 GiB/' \
  'limits/memory must match format "quantity"'
mutant 20-daemonset.yaml 's/^    type: RollingUpdate/    type: Rolling/' \
  'updateStrategy/type must be equal to one of the allowed values'
mutant 20-daemonset.yaml 's/^        - name: kvservice$/        - stdin: false/' \
  'containers/0 must have required property name'
mutant 20-daemonset.yaml 's/containerPort: 9464/containerPort: "9464"/' \
  'containerPort must be integer'
mutant 20-daemonset.yaml 's/^      terminationGracePeriodSeconds: 15/&s/' \
  'terminationGracePeriodSeconds must be integer'
mutant 20-daemonset.yaml 's/^kind: DaemonSet/kind: DaemonSett/' \
  'no schema for apiVersion apps/v1, kind DaemonSett'
mutant 20-daemonset.yaml 's/^            periodSeconds: 2$/            periodSecond: 2/' \
  'unknown field "periodSecond"'
mutant 30-service.yaml 's/clusterIP: None/clusterIp: None/' \
  'unknown field "clusterIp"'
mutant 10-configmap.yaml 's/^data:/date:/' \
  'unknown field "date"'
mutant examples/worker-pod.yaml 's/supplementalGroups: \[2000\]/supplementalGroups: 2000/' \
  'supplementalGroups must be array'

node "$validate" "$tools" invalid "$scratch"/mutant_*.yaml
echo "k8s schemas: ${#manifests[@]} manifests valid; $n mutants rejected for their mistake"
