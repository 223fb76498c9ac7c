# Helpers sourced by the deploy tests (sh_test, run from the runfiles root, where
# deploy/... and tests/deploy/... are the repository's files).

fail() {
  echo "FAIL: $*" >&2
  exit 1
}

# The repository's working tree: runfiles are symlinks into it.
workspace_root() {
  local real
  real=$(readlink -f tests/deploy/testlib.sh) || fail "cannot resolve tests/deploy/testlib.sh"
  echo "${real%/tests/deploy/testlib.sh}"
}

# Where tools/install_deploy_tools.sh put the pinned npm packages. Bazel passes no
# environment to tests unless told (--test_env=FREEKV_DEPLOY_TOOLS=...), so the
# default is found through the working tree, as the install script chooses it.
deploy_tools_dir() {
  local dir="${FREEKV_DEPLOY_TOOLS:-$(workspace_root)/.cache/deploy-tools}"
  [[ -d "$dir/node_modules/kubernetes-models" ]] ||
    fail "no schema validators in $dir: run tools/install_deploy_tools.sh (./freekv test does)"
  echo "$dir"
}

# A scratch directory that Bazel removes after the test.
scratch_dir() {
  mktemp -d "${TEST_TMPDIR:-/tmp}/deploy.XXXXXX"
}
