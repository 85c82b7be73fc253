#!/usr/bin/env bash
# The tour of the Python tutorials' scenarios in C: runs every example in
# order, each under a heading taken from its first line ("/* NN_name.c -
# what it shows"). Headings are bold on a terminal, plain text otherwise.
# An example that fails or hangs (60 s) fails the tour.
set -u
build=${1:-build}
dir="$build/examples"
bold='' plain=''
if [ -t 1 ]; then
  bold=$(printf '\033[1m') plain=$(printf '\033[0m')
fi
echo "Each example below is a scenario of the Python multiprocessing tutorials,"
echo "written in C with mproc; its output says what happened and why."
status=0
for src in "$(dirname "$0")"/[0-9]*.c; do
  name=$(basename "$src" .c)
  title=$(head -1 "$src" | sed -e 's|^/\* *[^ ]* - ||' -e 's| *\*/ *$||')
  printf '\n%s=== %s: %s%s\n' "$bold" "$name" "$title" "$plain"
  case $name in *_mpi_*) if [ ! -x "$dir/$name" ]; then echo "(needs MPI, which this build lacks: skipped)"; continue; fi ;; esac
  if ! timeout 60 "$dir/$name"; then
    echo "*** $name failed"
    status=1
  fi
done
exit $status
