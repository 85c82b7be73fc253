#!/bin/sh
# run.sh BUILD_DIR [CC] - installs BUILD_DIR into a scratch prefix and uses it
# the way a user would: an outside CMake project with find_package(mproc)
# linking mproc::mproc and mproc::mproc_static, a pkg-config consumer (shared
# and static libmproc.a), the versioned soname, the exported symbols and the
# mproc-manager program, the programs of docs/getting-started.md built
# with pkg-config and run without LD_LIBRARY_PATH, and a binary of the
# first contract (old_binary.c) running against the installed library.
set -eu
build=$(cd "$1" && pwd)
cc=${2:-cc}
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
prefix=$tmp/prefix
fail() { echo "FAIL: $*" >&2; exit 1; }

echo "== cmake --install into $prefix"
cmake --install "$build" --prefix "$prefix" >/dev/null
libdir=$(dirname "$(find "$prefix" -name 'libmproc.so' | head -1)")
[ -f "$prefix/include/mproc.h" ] || fail "header not installed"
[ -f "$libdir/libmproc.a" ] || fail "static library not installed"
[ -f "$libdir/pkgconfig/mproc.pc" ] || fail "mproc.pc not installed"
[ -f "$libdir/cmake/mproc/mprocConfig.cmake" ] || fail "CMake package not installed"

if [ -x "$build/tools/mproc-manager" ]; then
  "$prefix/bin/mproc-manager" --help 2>&1 | grep -q '^usage: mproc-manager' ||
    fail "mproc-manager not installed or not runnable"
fi

echo "== soname and exported symbols"
soname=$(readelf -d "$libdir/libmproc.so" | sed -n 's/.*Library soname: \[\(.*\)\]/\1/p')
[ "$soname" = libmproc.so.0 ] || fail "soname is '$soname', want libmproc.so.0"
[ -e "$libdir/libmproc.so.0" ] || fail "libmproc.so.0 missing"
# Exactly the header's names, each versioned by src/libmproc.map, plus the
# private seams libmproc_mpi uses.
src=$(cd "$here/../.." && pwd)
nm -D --defined-only "$libdir/libmproc.so" | awk '$3 !~ /^MPROC_/ {print $3}' | sort >"$tmp/exported"
{ "$src/tools/public-symbols.sh" "$src/include/mproc.h" | sed 's/$/@@MPROC_0.2/'
  sed -n 's/^ *\(mp__[a-z_]*\);$/\1@@MPROC_PRIVATE/p' "$src/src/libmproc.map"
  sed -n 's/^ \* compat: \(mp_[a-z_]*@MPROC_[0-9.]*\)$/\1/p' "$src/src/libmproc.map"; } | sort >"$tmp/wanted"
# Names added after 0.2 carry a later version: compare names, then versions.
sed 's/@.*//' "$tmp/exported" >"$tmp/exported_names"
sed 's/@.*//' "$tmp/wanted" | sort >"$tmp/wanted_names"
diff "$tmp/wanted_names" "$tmp/exported_names" >"$tmp/symdiff" ||
  { sed 's/^/    /' "$tmp/symdiff"; fail "exports differ from include/mproc.h (<: missing, >: extra); update src/libmproc.map"; }
grep -q '@@MPROC_0\.2$' "$tmp/exported" || fail "exports carry no symbol version"
# The older versions of calls whose options grew (src/abi_compat.c).
for v in $(sed -n 's/^ \* compat: \(mp_[a-z_]*@MPROC_[0-9.]*\)$/\1/p' "$src/src/libmproc.map"); do
  grep -qx "$v" "$tmp/exported" || fail "$v (src/abi_compat.c) is not exported"
done

echo "== outside CMake project: find_package(mproc)"
cmake -S "$here" -B "$tmp/consumer" -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_C_COMPILER="$cc" \
      -DCMAKE_C_FLAGS="-Wall -Wextra -Werror" >"$tmp/configure.log" 2>&1 ||
  { cat "$tmp/configure.log"; fail "configure"; }
grep 'readme_example:' "$tmp/configure.log" || true
cmake --build "$tmp/consumer" >"$tmp/build.log" 2>&1 || { cat "$tmp/build.log"; fail "build"; }
"$tmp/consumer/consumer_shared" || fail "consumer_shared"
"$tmp/consumer/consumer_static" || fail "consumer_static"
readelf -d "$tmp/consumer/consumer_static" | grep -q 'libmproc' &&
  fail "consumer_static needs libmproc.so"
if [ -x "$tmp/consumer/readme_example" ]; then
  out=$(timeout 60 "$tmp/consumer/readme_example") || fail "readme_example"
  [ "$(echo $out)" = "0 1 4 9 16 25 36 49 64 81" ] || fail "readme_example printed '$out'"
  echo "readme_example: $out"
fi

echo "== pkg-config consumer"
export PKG_CONFIG_PATH="$libdir/pkgconfig"
# shellcheck disable=SC2046
$cc -o "$tmp/pc_shared" "$here/consumer.c" $(pkg-config --cflags --libs mproc) || fail "pkg-config shared build"
env -u LD_LIBRARY_PATH "$tmp/pc_shared" || fail "pc_shared (no LD_LIBRARY_PATH: mproc.pc's rpath)"
pkg-config --static --libs mproc | grep -q -- '-lcrypto' || fail "mproc.pc lacks Libs.private"
static_libs=$(pkg-config --static --libs mproc | sed 's/-lmproc\( \|$\)/-l:libmproc.a /')
# shellcheck disable=SC2046,SC2086
$cc -o "$tmp/pc_static" "$here/consumer.c" $(pkg-config --cflags mproc) $static_libs || fail "pkg-config static build"
env -u LD_LIBRARY_PATH "$tmp/pc_static" || fail "pc_static"
readelf -d "$tmp/pc_static" | grep -q 'libmproc' && fail "pc_static needs libmproc.so"
echo "== docs/getting-started.md programs, built as the page says"
src=$(cd "$here/../.." && pwd)
awk -v dir="$tmp" '/^<!-- getting-started: .* -->$/ { name = $3; next }
     name && /^```c$/ { out = dir "/" name; printf "" > out; next }
     out && /^```$/ { close(out); out = ""; name = ""; next }
     out { print >> out }' "$src/docs/getting-started.md"
for want in "hello_process.c:exit code 0" "queue.c:got 16" "pool.c:1 8 27" "manager.c:3 keys:"; do
  prog=${want%%:*}
  [ -f "$tmp/$prog" ] || fail "getting-started.md has no $prog"
  # shellcheck disable=SC2046
  $cc -Wall -Wextra -Werror -o "$tmp/${prog%.c}" "$tmp/$prog" $(pkg-config --cflags --libs mproc) ||
    fail "getting-started $prog does not build"
  out=$(env -u LD_LIBRARY_PATH timeout 60 "$tmp/${prog%.c}") || fail "getting-started $prog failed"
  echo "$out" | grep -q "${want#*:}" || fail "getting-started $prog printed: $out"
  echo "$prog: ok"
done

echo "== a binary of the first contract (no versions, shorter options structs)"
# Built against an unversioned stand-in with the same names, as programs
# were before 0.2; run against the installed library, its calls must bind
# to the MPROC_0.1 shims (src/abi_compat.c, docs/abi.md), which read no
# further than the old structs (each ends where an unreadable page begins).
mkdir "$tmp/then"
for f in mp_pool_new mp_pool_close mp_pool_join mp_pool_free mp_process_new mp_process_start \
         mp_process_join mp_process_exitcode mp_process_free; do
  echo "int $f(void) { return 0; }"
done >"$tmp/then/stub.c"
$cc -shared -fPIC -Wl,-soname,libmproc.so.0 -o "$tmp/then/libmproc.so.0" "$tmp/then/stub.c" ||
  fail "stand-in library"
ln -s libmproc.so.0 "$tmp/then/libmproc.so"
$cc -o "$tmp/old_binary" "$here/old_binary.c" -L"$tmp/then" -lmproc || fail "old binary"
readelf -V "$tmp/old_binary" | grep -q MPROC_ && fail "the old binary asks for symbol versions"
LD_LIBRARY_PATH="$libdir" "$tmp/old_binary" || fail "a binary of the first contract failed"
echo "install test passed"
