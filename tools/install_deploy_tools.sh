#!/usr/bin/env bash
# Installs the npm packages that the deploy checks (tests/deploy) validate Kubernetes
# manifests with, pinned by tests/deploy/k8s_validator/package-lock.json (exact versions
# and sha512 integrity), into .cache/deploy-tools/ (git-ignored). ./freekv calls this
# before `bazel test //...`; the Bazel test finds the directory through the workspace.
#
# Idempotent and cheap when nothing changed: a stamp holds the hash of package.json and
# package-lock.json, and a matching stamp skips npm entirely (offline re-runs work).
#
# Environment: FREEKV_DEPLOY_TOOLS overrides the install directory.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
src="$root/tests/deploy/k8s_validator"
dest="${FREEKV_DEPLOY_TOOLS:-$root/.cache/deploy-tools}"

stamp=$(cat "$src/package.json" "$src/package-lock.json" | sha256sum | cut -c1-32)
if [[ -f "$dest/.stamp" && "$(cat "$dest/.stamp")" == "$stamp" &&
      -d "$dest/node_modules/kubernetes-models" ]]; then
  exit 0
fi

if ! command -v npm >/dev/null; then
  echo "install_deploy_tools: npm is missing (./freekv installs it from Debian)" >&2
  exit 1
fi

# Install into a fresh sibling directory and swap it in, so an interrupted install
# never leaves a half-filled tree that the stamp would vouch for.
tmp="$dest.tmp.$$"
trap 'rm -rf "$tmp"' EXIT
rm -rf "$tmp"
mkdir -p "$tmp"
cp "$src/package.json" "$src/package-lock.json" "$tmp/"
echo "install_deploy_tools: npm ci (Kubernetes schema validators) into $dest" >&2
(cd "$tmp" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
echo "$stamp" >"$tmp/.stamp"
rm -rf "$dest"
mkdir -p "$(dirname "$dest")"
mv "$tmp" "$dest"
