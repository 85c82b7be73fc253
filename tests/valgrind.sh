#!/usr/bin/env bash
# valgrind.sh BUILD_DIR TEST... - runs test executables under valgrind's
# memcheck: any error, definite leak or failed test fails. A test that is not
# built is skipped with a note. Each runs in its own session, and whatever it
# leaves behind there (a child that escaped a failing test) is killed after.
# VALGRIND_JOBS of them (the CPU count by default) run at once, in the order
# given, so the longest go first.
#
# Under valgrind the arena is 256 MiB (src/arena.c: memcheck's leak check
# reads the whole mapping at every exit); test_core allocates a 300 MiB
# block, so it gets 1 GiB. Valgrind 3.19 does not know pidfd_open (434) and
# returns ENOSYS for it.
set -u
build=$(cd "$1" && pwd)
shift
src=$(cd "$(dirname "$0")/.." && pwd)
vg="valgrind -q --error-exitcode=1 --trace-children=no --leak-check=full --show-leak-kinds=definite --errors-for-leak-kinds=definite"
jobs=${VALGRIND_JOBS:-$(nproc)}
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT

# one TEST: runs it, its output into $logs/TEST.log and its status into
# $logs/TEST.rc.
one() {
  t=$1
  size=
  [ "$t" = test_core ] && size=1G
  start=$(date +%s)
  (cd "$build/tests" && MPROC_ARENA_SIZE=$size MPROC_TEST_SLOW=${MPROC_TEST_SLOW:-8} \
     MPROC_SOURCE_DIR=$src MPROC_BINARY_DIR=$build \
     setsid -w sh -c "timeout --foreground -k 5 1200 $vg ./$t; rc=\$?; trap '' TERM; kill -TERM 0 2>/dev/null; exit \$rc") \
     >"$logs/$t.log" 2>&1 </dev/null
  rc=$?
  echo "== $t: $( [ $rc = 0 ] && echo clean || echo "FAILED (exit $rc)") in $(( $(date +%s) - start )) s" >>"$logs/$t.log"
  echo $rc >"$logs/$t.rc"
}

# Up to $jobs at once (memcheck runs a process's threads one at a time, so
# one test keeps about one CPU busy); each log is printed whole, in order.
running=0
for t in "$@"; do
  if [ ! -x "$build/tests/$t" ]; then
    echo "test-valgrind: $t not built, skipped"
    continue
  fi
  if [ $running -ge "$jobs" ]; then
    wait -n
    running=$((running - 1))
  fi
  one "$t" &
  running=$((running + 1))
done
wait
failed=""
for t in "$@"; do
  [ -f "$logs/$t.rc" ] || continue
  echo "== valgrind $t"
  cat "$logs/$t.log"
  [ "$(cat "$logs/$t.rc")" = 0 ] || failed="$failed $t"
done
[ -z "$failed" ] || { echo "test-valgrind: failed:$failed"; exit 1; }
