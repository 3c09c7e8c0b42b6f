#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# demo.sh - `kvshare demo` end to end at a small size: identical tokens and exit 0, clear
# errors, and no process left behind on any exit path (success, failure, SIGTERM).
set -u
K=$1
WORK=$(mktemp -d)
# Every process the demo starts inherits this tag, so /proc/*/environ finds
# any that outlives it (an orphan) without guessing at names. Only the demo
# gets it (through kdemo), not this script's own grep and sed.
TAG="demo-test-$$-$RANDOM"
kdemo() { KVSHARE_DEMO_TEST_TAG=$TAG "$K" demo "$@"; }
cleanup() {
  for p in $(orphans); do kill -9 "$p" 2>/dev/null; done
  rm -rf "$WORK"
}
trap cleanup EXIT
orphans() {
  grep -lsz "^KVSHARE_DEMO_TEST_TAG=$TAG\$" /proc/[0-9]*/environ 2>/dev/null |
    sed -n 's#^/proc/\([0-9]*\)/environ$#\1#p' | grep -vx "$$" || true
}
fail() { echo "FAIL: $*"; for f in "$WORK"/*.out "$WORK"/*.err; do [ -s "$f" ] && { echo "--- $f"; tail -n 40 "$f"; }; done; exit 1; }
ok() { echo "ok: $*"; }
no_orphans() {
  local left
  left=$(orphans)
  [ -z "$left" ] || fail "$1: processes left behind: $(for p in $left; do tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null; echo; done)"
}

# 1. The demo at a small size: fetched and recomputed tokens are identical.
kdemo --tokens 512 --decode 8 >"$WORK/small.out" 2>"$WORK/small.err"
rc=$?
[ "$rc" -eq 0 ] || fail "kvshare demo --tokens 512 --decode 8 exited $rc"
grep -qE '^  tokens +identical' "$WORK/small.out" || fail "no 'identical' line"
grep -qE '^  TTFT fetched +[0-9.]+ ms' "$WORK/small.out" || fail "no 'TTFT fetched' line"
grep -qE '^  TTFT recompute +[0-9.]+ ms' "$WORK/small.out" || fail "no 'TTFT recompute' line"
grep -qE '^  ratio +[0-9.]+' "$WORK/small.out" || fail "no ratio line"
grep -qE '^  moved .* [0-9.]+ GB/s' "$WORK/small.out" || fail "no bytes/GB/s line"
grep -qE '^  fetch warm +[0-9.]+ ms' "$WORK/small.out" || fail "no 'fetch warm' line"
grep -qE '^  anchor +[0-9.]+ GB/s' "$WORK/small.out" || fail "no anchor line (bench transfer)"
grep -qE '^prefix reuse' "$WORK/small.out" || fail "no prefix-reuse line (ran or skipped: reason)"
grep -q '^\[7/7\]' "$WORK/small.err" || fail "no progress lines on stderr"
no_orphans "after the demo"
ok "kvshare demo --tokens 512 --decode 8: identical, exit 0 ($(grep -E '^  ratio' "$WORK/small.out" | tr -s ' '))"

# 2. --json: one object on stdout with every figure.
kdemo --tokens 256 --decode 4 --no-reuse --json >"$WORK/json.out" 2>"$WORK/json.err" ||
  fail "kvshare demo --json exited $?"
[ "$(wc -l <"$WORK/json.out")" -eq 1 ] || fail "--json printed more than one line"
for f in '"ttft_fetched_ms":[0-9.]' '"ttft_recompute_ms":[0-9.]' '"ratio":[0-9.]' '"bytes":[1-9]' \
  '"gbps":[0-9.]' '"identical":true' '"reuse_hit_tokens":null' '"reuse_ttft_ms":null' \
  '"reuse_skip_reason":"--no-reuse"' '"fetch_gbps_cold":[0-9.]' '"fetch_gbps_warm":[0-9.]' \
  '"bench_transfer_gbps":[0-9.]' '"ratio_warm_bench":[0-9.]'; do
  grep -qE "$f" "$WORK/json.out" || fail "--json: no $f in $(cat "$WORK/json.out")"
done
no_orphans "after --json"
ok "kvshare demo --json"

# 3. A missing engine binary: non-zero exit and a message naming the path.
KVSHARE_ENGINE_BIN=/nonexistent/kvshare-engine kdemo --tokens 512 --decode 8 \
  >"$WORK/missing.out" 2>"$WORK/missing.err"
rc=$?
[ "$rc" -ne 0 ] || fail "KVSHARE_ENGINE_BIN=/nonexistent: exit 0"
grep -q '/nonexistent/kvshare-engine' "$WORK/missing.err" || fail "the message does not name the path"
no_orphans "after a missing engine"
ok "KVSHARE_ENGINE_BIN=/nonexistent/kvshare-engine -> exit $rc: $(head -n 1 "$WORK/missing.err")"

# 4. Bad options are refused before anything starts.
kdemo --tokens 3 >"$WORK/bad.out" 2>&1 && fail "--tokens 3 accepted"
grep -q -- "--tokens '3'" "$WORK/bad.out" || fail "--tokens 3: message does not name it"
kdemo --frobnicate >"$WORK/bad.out" 2>&1 && fail "--frobnicate accepted"
grep -q "unknown option '--frobnicate'" "$WORK/bad.out" || fail "--frobnicate: no message"
kdemo --help | grep -q 'usage: kvshare demo' || fail "--help"
ok "bad options refused, --help"

# 5. SIGTERM in the middle (once the prefill engine runs): the demo stops
#    every process it started and exits non-zero, within a deadline.
KVSHARE_DEMO_TEST_TAG=$TAG "$K" demo --tokens 4096 --decode 8 >"$WORK/term.out" 2>"$WORK/term.err" &
demo=$!
deadline=$((SECONDS + 60))
until grep -q '^\[2/7\]' "$WORK/term.err" 2>/dev/null; do
  kill -0 "$demo" 2>/dev/null || fail "the demo ended before step 2"
  ((SECONDS < deadline)) || { kill -9 "$demo"; fail "step 2 not reached in 60 s"; }
  sleep 0.05
done
kill -TERM "$demo"
deadline=$((SECONDS + 30))
while kill -0 "$demo" 2>/dev/null; do
  ((SECONDS < deadline)) || { kill -9 "$demo"; fail "the demo did not exit within 30 s of SIGTERM"; }
  sleep 0.05
done
wait "$demo"
rc=$?
[ "$rc" -ne 0 ] || fail "SIGTERM: exit 0"
grep -q 'interrupted by signal' "$WORK/term.err" || fail "SIGTERM: no message"
no_orphans "after SIGTERM"
ok "SIGTERM mid-run -> exit $rc, nothing left behind"
