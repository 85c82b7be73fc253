#!/bin/sh
# public-symbols.sh HEADER... - the public function names a header declares
# (its MP_EXTERN lines), sorted, one a line. The install test compares them
# with what libmproc.so exports, and src/libmproc.map must list every one.
set -eu
grep -hE '^MP_EXTERN' "$@" | sed -nE 's/^MP_EXTERN[^(]*[^a-z0-9_](mp_[a-z0-9_]+) *\(.*/\1/p' | sort -u
