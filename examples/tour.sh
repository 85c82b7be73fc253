#!/usr/bin/env bash
# The tour of the seed scenarios: runs every example in order, each under a
# heading taken from its first line ("/* NN_name.c - what it shows"). An
# example that fails or hangs (60 s) fails the tour.
set -u
build=${1:-build}
dir="$build/examples"
status=0
for src in "$(dirname "$0")"/[0-9]*.c; do
  name=$(basename "$src" .c)
  title=$(head -1 "$src" | sed -e 's|^/\* *[^ ]* - ||' -e 's| *\*/ *$||')
  printf '\n\033[1m=== %s: %s\033[0m\n' "$name" "$title"
  case $name in *_mpi_*) if [ ! -x "$dir/$name" ]; then echo "(built only with MPI: skipped)"; continue; fi ;; esac
  if ! timeout 60 "$dir/$name"; then
    echo "*** $name failed"
    status=1
  fi
done
exit $status
