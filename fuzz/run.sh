#!/usr/bin/env bash
# fuzz/run.sh BUILD_DIR [SECONDS] - runs every libFuzzer target built in
# BUILD_DIR/fuzz for SECONDS each (default 20), starting from the seeds in
# fuzz/corpus/<target>/. New inputs go to a scratch corpus, so the seeds in
# the repository stay as they are. A crash fails the run and leaves the
# reproducer (crash-*) in the current directory.
set -eu
build=${1:-build-fuzz}
seconds=${2:-20}
[ -n "$seconds" ] || seconds=20
here=$(cd "$(dirname "$0")" && pwd)
shopt -s nullglob
targets=("$build"/fuzz/fuzz_*)
if [ ${#targets[@]} -eq 0 ]; then
  echo "no fuzz targets in $build/fuzz (configure with -DMPROC_FUZZ=ON and clang)" >&2
  exit 1
fi
status=0
for bin in "${targets[@]}"; do
  [ -x "$bin" ] || continue
  name=$(basename "$bin"); name=${name#fuzz_}
  seeds="$here/corpus/$name"
  work=$(mktemp -d "${TMPDIR:-/tmp}/mproc-fuzz-$name.XXXXXX")
  echo "=== fuzz $name for ${seconds}s"
  if ! ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1} "$bin" -max_total_time="$seconds" -timeout=10 \
        -rss_limit_mb=2048 -max_len=4096 -print_final_stats=1 "$work" "$seeds" 2>"$work.log"; then
    tail -40 "$work.log"
    echo "*** fuzz target $name failed" >&2
    status=1
  else
    grep -E "^(stat::number_of_executed_runs|Done)" "$work.log" || tail -2 "$work.log"
  fi
  rm -rf "$work" "$work.log"
done
exit $status
