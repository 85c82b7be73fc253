#!/bin/sh
# abi-check.sh BUILD_DIR [--update] - compares libmproc.so's ABI with the
# committed baseline abi/libmproc.abi (libabigail's abidiff, public types of
# include/ only). Additions pass, with their report; an incompatible change
# (a call or a public struct changed or removed) fails. --update writes the
# baseline from BUILD_DIR, for a release that is allowed to change it.
set -eu
src=$(cd "$(dirname "$0")/.." && pwd)
lib=$1/libmproc.so
base=$src/abi/libmproc.abi
[ -f "$lib" ] || { echo "abi-check: no $lib" >&2; exit 2; }
if [ "${2:-}" = --update ]; then
  abidw --headers-dir "$src/include" --drop-private-types --no-corpus-path \
        --out-file "$base" "$lib"
  echo "abi-check: wrote $base"
  exit 0
fi
set +e
report=$(abidiff --headers-dir2 "$src/include" --drop-private-types "$base" "$lib")
rc=$?
set -e
# abidiff's status is a bit set: 1 tool error, 2 usage, 4 ABI change,
# 8 incompatible change.
if [ $((rc & 3)) -ne 0 ]; then
  echo "$report"; echo "abi-check: abidiff failed (status $rc)" >&2; exit 2
fi
# abidiff calls a changed public struct "an ABI change", not an incompatible
# one: only added functions and variables are allowed through.
changed=$(echo "$report" | grep -E 'changes summary: ' |
          grep -vE 'changes summary: 0 Removed, 0 Changed' || true)
if [ $((rc & 8)) -ne 0 ] || [ -n "$changed" ]; then
  echo "$report"
  echo "abi-check: incompatible ABI change against abi/libmproc.abi" >&2
  exit 1
fi
[ $((rc & 4)) -ne 0 ] && echo "$report"
echo "abi-check: compatible with abi/libmproc.abi"
