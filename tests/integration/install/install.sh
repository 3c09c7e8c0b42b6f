#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# install.sh - `cmake --install` to two prefixes works as a packager and a user need: each
# prefix's kvshare.pc points into that prefix and a program built with pkg-config runs against
# that prefix's library; the installed programs find libkvshare.so.0 through RUNPATH
# $ORIGIN/../lib; the installed `kvshare demo` finds the installed kvshare-engine and its
# tokens come out identical; the vLLM plugin package is installed and importable.
# Usage: install.sh BUILD_DIR CC "CFLAGS" PROGRAM...   (PROGRAM: what must be in PREFIX/bin)
set -u
build=$1 cc=$2 cflags=$3
shift 3
programs=("$@")
WORK=$(mktemp -d "${TMPDIR:-/tmp}/kvs-install.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
WORK=$(realpath "$WORK")
fail() { echo "FAIL: $*"; exit 1; }
ok() { echo "ok: $*"; }
# Nothing from the caller's environment may point at the build tree or a token.
unset LD_LIBRARY_PATH PKG_CONFIG_PATH KVSHARE_ENGINE_BIN KVSHARE_INDEX_BIN KVSHARE_AUTH KVSHARE_AUTH_TOKEN_FILE

cat >"$WORK/prog.c" <<'PROG'
/* Built with `pkg-config --cflags --libs kvshare`: prints the library's version, a status
 * string and the file the library was loaded from. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <kvshare.h>
#include <stdio.h>

int main(void)
{
    Dl_info info;
    void *fn = dlsym(RTLD_DEFAULT, "kvs_version");
    if (fn == NULL || dladdr(fn, &info) == 0 || info.dli_fname == NULL)
        return 1;
    printf("%s\n%s\n%s\n", kvs_version(), kvs_status_string(KVS_OK), info.dli_fname);
    return 0;
}
PROG

cat >"$WORK/prog_dl.c" <<'PROG'
/* Built with `pkg-config --cflags kvshare` only (no -lkvshare): loads the library named in
 * argv[1] through the installed kvshare_dl.h and prints its version. */
#include <kvshare_dl.h>

int main(int argc, char **argv)
{
    kvs_dl_t kvs;
    char err[256];
    if (argc != 2 || kvs_dl_open(&kvs, argv[1], err, sizeof(err)) != KVS_OK) {
        fprintf(stderr, "%s\n", argc == 2 ? err : "usage: prog_dl LIB");
        return 1;
    }
    printf("%s\n", kvs.version());
    kvs_dl_close(&kvs);
    return 0;
}
PROG

# check_prefix P: install to P, then check the .pc, a program built against it, and RUNPATH.
check_prefix() {
  local p=$1 pc pcdir flags libdir out prog want rp
  cmake --install "$build" --prefix "$p" >"$WORK/install.log" 2>&1 ||
    fail "cmake --install --prefix $p: $(tail -n 20 "$WORK/install.log")"
  pc=$(find "$p" -name kvshare.pc -path '*/pkgconfig/*')
  [ -n "$pc" ] || fail "$p: no pkgconfig/kvshare.pc installed"
  pcdir=$(dirname "$pc")
  flags=$(PKG_CONFIG_PATH=$pcdir pkg-config --cflags --libs kvshare) || fail "$p: pkg-config failed"
  libdir=$(PKG_CONFIG_PATH=$pcdir pkg-config --variable=libdir kvshare)
  grep -qF -- "-I$p/include" <<<"$flags" || fail "$p: cflags lack -I$p/include: $flags"
  grep -qF -- "-L$libdir" <<<"$flags" || fail "$p: libs lack -L$libdir: $flags"
  [ "${libdir#"$p"/}" != "$libdir" ] || fail "$p: libdir $libdir is outside the prefix"
  [ -e "$libdir/libkvshare.so.0" ] || fail "$p: $libdir/libkvshare.so.0 not installed"
  # shellcheck disable=SC2086 # flags are words
  $cc -std=c11 -Wall -Wextra -Werror $cflags "$WORK/prog.c" -o "$WORK/prog" $flags -ldl \
    >"$WORK/cc.log" 2>&1 || fail "$p: compiling with '$flags': $(cat "$WORK/cc.log")"
  out=$(LD_LIBRARY_PATH=$libdir "$WORK/prog") || fail "$p: the program built against it failed"
  want=$(PKG_CONFIG_PATH=$pcdir pkg-config --modversion kvshare)
  [ "$(sed -n 1p <<<"$out")" = "$want" ] || fail "$p: kvs_version() '$(sed -n 1p <<<"$out")' != .pc Version '$want'"
  [ -n "$(sed -n 2p <<<"$out")" ] || fail "$p: empty kvs_status_string(KVS_OK)"
  [ "$(realpath "$(sed -n 3p <<<"$out")")" = "$(realpath "$libdir/libkvshare.so.0")" ] ||
    fail "$p: the program loaded $(sed -n 3p <<<"$out"), not $libdir/libkvshare.so.0"
  ok "$p: pkg-config gives '$flags'; a program built with it runs against $(sed -n 3p <<<"$out")"

  # kvshare_dl.h is installed and works from the prefix: a program that never links
  # libkvshare loads it through the table.
  [ -e "$p/include/kvshare_dl.h" ] || fail "$p: include/kvshare_dl.h not installed"
  # shellcheck disable=SC2086 # flags are words
  $cc -std=c11 -Wall -Wextra -Werror -Wpedantic $cflags "$WORK/prog_dl.c" -o "$WORK/prog_dl" \
    $(PKG_CONFIG_PATH=$pcdir pkg-config --cflags kvshare) -ldl >"$WORK/cc.log" 2>&1 ||
    fail "$p: compiling with kvshare_dl.h: $(cat "$WORK/cc.log")"
  ! readelf -d "$WORK/prog_dl" | grep -q 'NEEDED.*libkvshare' || fail "$p: prog_dl links libkvshare"
  out=$("$WORK/prog_dl" "$libdir/libkvshare.so.0") || fail "$p: kvs_dl_open of the installed library"
  [ "$out" = "$(PKG_CONFIG_PATH=$pcdir pkg-config --modversion kvshare)" ] ||
    fail "$p: version through kvshare_dl.h is '$out'"
  ok "$p: a program built with kvshare_dl.h loads $libdir/libkvshare.so.0 (version $out)"
  # The shim loads libkvshare itself, at its first KV region: no NEEDED entry, and RUNPATH
  # $ORIGIN (it looks beside itself first anyway).
  if [ -e "$libdir/libkvshare_preload.so" ]; then
    ! readelf -d "$libdir/libkvshare_preload.so" | grep -q 'NEEDED.*libkvshare\.so' ||
      fail "$p: libkvshare_preload.so has libkvshare.so.0 as NEEDED"
    ok "$p: libkvshare_preload.so does not NEED libkvshare.so.0"
  fi

  want="\$ORIGIN/$(realpath --relative-to="$p/bin" "$libdir")"
  for prog in "${programs[@]}"; do
    [ -x "$p/bin/$prog" ] || fail "$p: bin/$prog not installed"
    rp=$(readelf -d "$p/bin/$prog" | sed -n 's/.*(RUNPATH).*\[\(.*\)\]$/\1/p')
    [ "$rp" = "$want" ] || fail "$p: bin/$prog RUNPATH is '$rp', want '$want'"
    ! readelf -d "$p/bin/$prog" | grep -q '(RPATH)' || fail "$p: bin/$prog has an old-style RPATH"
    if readelf -d "$p/bin/$prog" | grep -q 'NEEDED.*\[libkvshare\.so\.0\]'; then
      ldd "$p/bin/$prog" | grep -q "libkvshare\.so\.0 => $p/bin/\.\./" ||
        fail "$p: bin/$prog does not resolve libkvshare.so.0 in the prefix: $(ldd "$p/bin/$prog" | grep kvshare)"
    fi
  done
  ok "$p: ${programs[*]} have RUNPATH $want"
}

# check_python P: the vLLM package and its dist-info are in P/share/kvshare/python, with no
# __pycache__, and /usr/bin/python3 imports the plugin and finds its entry point with only
# PYTHONPATH set to that folder (as the webhook does in a pod): no pip.
check_python() {
  local p=$1 dir=$1/share/kvshare/python want out
  want=$(PKG_CONFIG_PATH=$(dirname "$(find "$p" -name kvshare.pc -path '*/pkgconfig/*')") \
    pkg-config --modversion kvshare)
  [ -f "$dir/kvshare_vllm/plugin.py" ] || fail "$p: share/kvshare/python/kvshare_vllm/plugin.py not installed"
  [ -f "$dir/kvshare_vllm-$want.dist-info/entry_points.txt" ] ||
    fail "$p: share/kvshare/python/kvshare_vllm-$want.dist-info/entry_points.txt not installed"
  [ -z "$(find "$dir" \( -name __pycache__ -o -name '*.pyc' \))" ] ||
    fail "$p: __pycache__ installed: $(find "$dir" -name __pycache__)"
  out=$(cd / && env -u VLLM_PLUGINS PYTHONDONTWRITEBYTECODE=1 PYTHONPATH="$dir" /usr/bin/python3 -c '
import importlib.metadata as m, kvshare_vllm.plugin as p
eps = [e for e in m.entry_points(group="vllm.general_plugins") if e.name == "kvshare"]
assert len(eps) == 1 and eps[0].load() is p.register, eps
print(m.version("kvshare_vllm"), p.__file__)' 2>&1) || fail "$p: python3 with PYTHONPATH=$dir: $out"
  [ "$out" = "$want $dir/kvshare_vllm/plugin.py" ] ||
    fail "$p: want kvshare_vllm $want from $dir, got: $out"
  ok "$p: PYTHONPATH=$dir imports kvshare_vllm.plugin; entry point vllm.general_plugins:kvshare, version $want"
}

p1=$WORK/one
p2=$WORK/two/levels/deeper
check_prefix "$p1"
check_prefix "$p2"
check_python "$p1"
check_python "$p2"
[ "$(readlink -f "$p1/bin/kvshare")" != "$(readlink -f "$p2/bin/kvshare")" ] || fail "one install"

# `kvshare index` and `kvshare bench index` run the kvshare-index installed beside kvshare.
if [[ " ${programs[*]} " == *" kvshare-index "* ]]; then
  for sub in "index" "bench index"; do
    # shellcheck disable=SC2086 # $sub is two words for bench
    "$p2/bin/kvshare" $sub --help >"$WORK/ix.out" 2>"$WORK/ix.err" ||
      fail "installed kvshare $sub --help exited $?: $(cat "$WORK/ix.err")"
    grep -q "^usage: kvshare $sub" "$WORK/ix.out" ||
      fail "installed kvshare $sub --help: $(head -n 3 "$WORK/ix.out")"
  done
  ok "installed kvshare index --help and kvshare bench index --help run bin/kvshare-index"
  rm "$p1/bin/kvshare-index"
  "$p1/bin/kvshare" index --help >/dev/null 2>"$WORK/noix.err" &&
    fail "installed kvshare index ran without an installed kvshare-index"
  grep -qF "$p1/bin/kvshare-index" "$WORK/noix.err" ||
    fail "without kvshare-index: message does not name $p1/bin/kvshare-index: $(cat "$WORK/noix.err")"
  ok "without bin/kvshare-index the installed kvshare index fails naming $p1/bin/kvshare-index"
fi

# The installed demo, with no token, engine or library path from the environment: it makes
# its own token (in TMPDIR, removed at exit), finds the kvshare-engine installed beside it
# (from PREFIX/bin there is no build tree at ../../examples) and the tokens must be identical.
mkdir "$WORK/tmp"
TMPDIR=$WORK/tmp "$p2/bin/kvshare" demo --tokens 512 --decode 8 --json \
  >"$WORK/demo.out" 2>"$WORK/demo.err" || fail "installed kvshare demo exited $?: $(tail -n 20 "$WORK/demo.err")"
/usr/bin/python3 - "$WORK/demo.out" <<'PY' || fail "installed demo: $(cat "$WORK/demo.out")"
import json, sys
r = json.loads(open(sys.argv[1]).read())
sys.exit(0 if r.get("identical") is True and r.get("reuse_identical") is True else 1)
PY
[ -z "$(ls -A "$WORK/tmp")" ] || fail "installed demo left in TMPDIR: $(ls -A "$WORK/tmp")"
ok "installed kvshare demo --tokens 512 --decode 8 --json: identical tokens (fetched and reused)"

# The control: without the installed engine the same demo fails, naming where it looked.
rm "$p2/bin/kvshare-engine"
TMPDIR=$WORK/tmp "$p2/bin/kvshare" demo --tokens 512 --decode 8 --json >/dev/null 2>"$WORK/noeng.err" &&
  fail "installed demo ran without an installed kvshare-engine"
grep -qF "$p2/bin/kvshare-engine" "$WORK/noeng.err" ||
  fail "without the engine: message does not name $p2/bin/kvshare-engine: $(cat "$WORK/noeng.err")"
ok "without bin/kvshare-engine the installed demo fails naming $p2/bin/kvshare-engine"
