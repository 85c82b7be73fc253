#!/usr/bin/env bash
# run.sh BUILD_DIR [AREA...] - runs every benchmark beside its Python peer
# and the other libraries' contenders.
#
# For each area (bench/<area>.c and/or bench/<area>.py) it runs the built C
# program BUILD_DIR/bench/bench_<area>, then every contender built from
# bench/peers/<area>_<peer>.c or .cpp (BUILD_DIR/bench/peer_<area>_<peer>),
# then `python3 bench/<area>.py`, each under a timeout, and hands their rows
# to bench/report.py, which pairs them by workload id, prints the table,
# writes bench/results/latest.json and regenerates docs/BENCHMARKS.md. A
# missing program, a crash or a timeout is reported and the run carries on.
# AREA arguments run only those areas; the others keep their previous results.
#
# Environment: BENCH_TIMEOUT (seconds per program, default 120; contenders
# get five times as long, ZeroMQ's round trips being slow), BENCH_REPS
# (repetitions, passed through to the programs), PYTHON (default python3).
set -u
here=$(cd "$(dirname "$0")" && pwd)
build=${1:-build}
shift || true
build=$(cd "$build" 2>/dev/null && pwd) || { echo "run.sh: no build dir '${1:-build}'" >&2; exit 2; }
timeout_s=${BENCH_TIMEOUT:-120}
peer_timeout_s=$((timeout_s * 5))
python=${PYTHON:-python3}
raw=$(mktemp -d)
trap 'rm -rf "$raw"' EXIT

# Areas: every bench/<area>.c or .py except the shared helpers.
areas=$(cd "$here" && ls -1 ./*.c ./*.py 2>/dev/null | sed -e 's|^\./||' -e 's|\.c$||' -e 's|\.py$||' |
        grep -vx -e common -e report -e report_test -e bench | sort -u)
if [ $# -gt 0 ]; then
  wanted=" $* "
  areas=$(for a in $areas; do case "$wanted" in *" $a "*) echo "$a";; esac; done)
  for a in "$@"; do
    echo "$areas" | grep -qx "$a" || echo "run.sh: no benchmark area '$a'" >&2
  done
fi

# run_one AREA SIDE CMD...: stdout -> $raw/AREA.SIDE.out, status -> .status
# (under $limit seconds when set, else $timeout_s)
run_one() {
  local area=$1 side=$2; shift 2
  local base="$raw/$area.$side" start rc timeout_s=${limit:-$timeout_s}
  start=$(date +%s)
  printf '%-10s %-22s ' "$area" "$side" >&2
  # timeout signals the program's whole process group, so no child lingers.
  # The outer 2>/dev/null hides bash's own "Segmentation fault" notice.
  (timeout -k 5 "$timeout_s" "$@" >"$base.out" 2>"$base.err" </dev/null; exit $?) 2>/dev/null
  rc=$?
  case $rc in
    0) echo "ok" >"$base.status" ;;
    124) echo "timeout after ${timeout_s}s" >"$base.status" ;;
    *) if [ $rc -gt 128 ]; then echo "killed by signal $((rc - 128))" >"$base.status"
       else echo "exit code $rc" >"$base.status"; fi ;;
  esac
  echo "$(cat "$base.status") ($(( $(date +%s) - start )) s)" >&2
  [ $rc -ne 0 ] && tail -n 5 "$base.err" | sed 's/^/    | /' >&2
  return 0
}

for area in $areas; do
  exe="$build/bench/bench_$area"
  if [ -f "$here/$area.c" ]; then
    if [ -x "$exe" ]; then run_one "$area" c "$exe"
    else echo "not built: $exe" >"$raw/$area.c.status"; printf '%-10s %-22s not built\n' "$area" c >&2; fi
  fi
  # Contenders: a program whose library was not found at configure time is
  # not built; that is noted, not a failure.
  for src in "$here"/peers/"$area"_*.c "$here"/peers/"$area"_*.cpp; do
    [ -f "$src" ] || continue
    name=$(basename "${src%.*}")
    exe="$build/bench/peer_$name"
    if [ -x "$exe" ]; then limit=$peer_timeout_s run_one "$area" "peer-$name" "$exe"
    else echo "not built: $exe" >"$raw/$area.peer-$name.status"
         printf '%-10s %-22s not built (library not found)\n' "$area" "peer-$name" >&2; fi
  done
  if [ -f "$here/$area.py" ]; then
    (cd "$here" && run_one "$area" python "$python" "$here/$area.py")
  fi
done

"$python" "$here/report.py" --raw "$raw" --areas "$(echo $areas)" \
     --json "$here/results/latest.json" --doc "$here/../docs/BENCHMARKS.md" \
     --build "$build"
