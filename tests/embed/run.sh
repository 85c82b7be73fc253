#!/bin/sh
# run.sh SOURCE_DIR [CC] - builds tests/embed, an outside project that takes
# mproc in with add_subdirectory, and runs what it built.
set -eu
src=$(cd "$1" && pwd)
cc=${2:-cc}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

cmake -S "$src/tests/embed" -B "$tmp/b" -DMPROC_DIR="$src" -DCMAKE_C_COMPILER="$cc" \
      >"$tmp/configure.log" 2>&1 || { cat "$tmp/configure.log"; fail "configure"; }
cmake --build "$tmp/b" -j 2 >"$tmp/build.log" 2>&1 || { cat "$tmp/build.log"; fail "build"; }
"$tmp/b/embed_shared" || fail "embed_shared"
"$tmp/b/embed_static" || fail "embed_static"
echo "embed test passed"
