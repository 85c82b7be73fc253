#!/bin/sh
# tour_text.sh - what a newcomer reads in `make demo` stays readable: the
# tour prints no terminal escapes into a file or a pipe, every example gets
# its heading, and no example speaks of things a reader cannot know (the
# word "seed"; "the Python version" says what is meant). Stand-in programs
# replace the examples, so this runs in a moment.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

if grep -il 'seed' "$here"/[0-9]*.c "$here"/tour.sh "$here"/echo.h; then
  fail "the files above say 'seed': say 'the Python version' or 'the Python tutorials'"
fi

mkdir -p "$tmp/examples"
n=0
for src in "$here"/[0-9]*.c; do
  name=$(basename "$src" .c)
  printf '#!/bin/sh\necho "output of %s"\n' "$name" >"$tmp/examples/$name"
  chmod +x "$tmp/examples/$name"
  n=$((n + 1))
done
"$here/tour.sh" "$tmp" >"$tmp/out" 2>&1 || fail "the tour failed on stand-ins"
if grep -q "$(printf '\033')" "$tmp/out"; then
  fail "escape sequences in the tour's output to a file"
fi
headings=$(grep -c '^=== [0-9][0-9]_[a-z0-9_]*: .' "$tmp/out" || true)
[ "$headings" -eq "$n" ] || fail "$headings headings for $n examples"
echo "tour text: $n headings, no escapes, no unexplained words"
