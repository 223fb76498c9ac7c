#!/usr/bin/env bash
# deploy/Dockerfile builds what ./freekv builds, installs the runtime libraries that
# match the build's -dev packages, and provides what the manifests run
# (tests/deploy/check_dockerfile.py). A build stage missing a package must be caught.
# (No container engine runs here; the image itself is built where Docker is.)
set -euo pipefail
source tests/deploy/testlib.sh

freekv="$(workspace_root)/freekv"
[[ -f "$freekv" ]] || fail "no ./freekv at $freekv"
check=tests/deploy/check_dockerfile.py
python3 "$check" deploy/Dockerfile "$freekv" deploy

scratch=$(scratch_dir)
sed 's/ libucx-dev / /' deploy/Dockerfile >"$scratch/Dockerfile"
cmp -s deploy/Dockerfile "$scratch/Dockerfile" && fail "the edit did not apply"
if python3 "$check" "$scratch/Dockerfile" "$freekv" deploy >"$scratch/out.txt"; then
  fail "a build stage without libucx-dev passed"
fi
grep -q "libucx-dev" "$scratch/out.txt" || fail "not caught: $(cat "$scratch/out.txt")"
echo "Dockerfile: consistent; a missing build package is caught"
