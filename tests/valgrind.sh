#!/bin/sh
# valgrind.sh BUILD_DIR TEST... - runs test executables under valgrind's
# memcheck: any error, definite leak or failed test fails. A test that is not
# built is skipped with a note. Each runs in its own session, and whatever it
# leaves behind there (a child that escaped a failing test) is killed after.
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
failed=""
for t in "$@"; do
  if [ ! -x "$build/tests/$t" ]; then
    echo "test-valgrind: $t not built, skipped"
    continue
  fi
  size=
  [ "$t" = test_core ] && size=1G
  echo "== valgrind $t"
  start=$(date +%s)
  (cd "$build/tests" && MPROC_ARENA_SIZE=$size MPROC_TEST_SLOW=${MPROC_TEST_SLOW:-8} \
     MPROC_SOURCE_DIR=$src MPROC_BINARY_DIR=$build \
     setsid -w sh -c "timeout --foreground -k 5 1200 $vg ./$t; rc=\$?; trap '' TERM; kill -TERM 0 2>/dev/null; exit \$rc")
  rc=$?
  echo "== $t: $( [ $rc = 0 ] && echo clean || echo "FAILED (exit $rc)") in $(( $(date +%s) - start )) s"
  [ $rc = 0 ] || failed="$failed $t"
done
[ -z "$failed" ] || { echo "test-valgrind: failed:$failed"; exit 1; }
