#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# demo_tp.sh - `kvshare demo` with TP ranks and KV layouts (issue 13) at a small size.
#   demo_tp.sh KVSHARE [demo options]     e.g. --prefill-tp 2 --decode-tp 2
#     identical tokens, exit 0, prefill_tp/decode_tp in the JSON, one fetched-bytes entry per
#     decode rank adding up to the prompt's KV once (per replica of a head), no process and no
#     share file left behind.
#   demo_tp.sh KVSHARE --errors KVSHARE_ENGINE
#     bad TP options are refused, naming the flag, before anything starts.
set -u
K=$1
shift
WORK=$(mktemp -d)
TAG="demo-tp-test-$$-$RANDOM"
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

if [ "${1:-}" = "--errors" ]; then
  E=$2
  expect() { # expect PATTERN command...: non-zero exit and PATTERN on stderr
    local pat=$1
    shift
    "$@" >"$WORK/e.out" 2>"$WORK/e.err" && fail "$* accepted"
    grep -qF -- "$pat" "$WORK/e.err" || fail "$*: no '$pat' in: $(cat "$WORK/e.err")"
  }
  expect "--tp-rank 2: must be below --tp-size 2" "$E" --role decode --tp-rank 2 --tp-size 2
  expect "--tp-size 3: the 2 KV heads (--kv-heads) do not split over 3 ranks" \
    "$E" --role decode --tp-size 3
  expect "--tp-size '0'" "$E" --role decode --tp-size 0
  expect "--kv-layout 'nch': accepted: nhd, hnd" "$E" --kv-layout nch
  expect "--tp-size 2: --role both" "$E" --tp-size 2
  expect "--dump-slice: only with --role decode" "$E" --role prefill --dump-slice "$WORK/x"
  expect "--prefill-tp 3: the 2 KV heads (--kv-heads) do not split over 3 ranks" \
    "$K" demo --prefill-tp 3
  expect "--decode-tp 3: the 4 KV heads" "$K" demo --kv-heads 4 --heads 4 --decode-tp 3
  expect "--decode-tp '9'" "$K" demo --decode-tp 9
  expect "--decode-kv-layout 'xyz': accepted: nhd, hnd" "$K" demo --decode-kv-layout xyz
  ok "bad TP options refused with the flag's name"
  exit 0
fi

ptp=1 dtp=1
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[i]}" in
  --prefill-tp) ptp=${args[i + 1]} ;;
  --decode-tp) dtp=${args[i + 1]} ;;
  esac
done
# The decode ranks' share files go to TMPDIR: it must be empty afterwards.
mkdir "$WORK/tmp"
TMPDIR="$WORK/tmp" KVSHARE_DEMO_TEST_TAG=$TAG "$K" demo --tokens 256 --decode 4 --json "$@" \
  >"$WORK/run.out" 2>"$WORK/run.err"
rc=$?
[ "$rc" -eq 0 ] || fail "kvshare demo $* exited $rc"
[ "$(wc -l <"$WORK/run.out")" -eq 1 ] || fail "--json printed more than one line"
j=$(cat "$WORK/run.out")
for f in '"identical":true' "\"prefill_tp\":$ptp," "\"decode_tp\":$dtp," '"kv_bytes":[1-9]' \
  '"ttft_fetched_ms":[0-9.]' '"fetch_gbps_cold":[0-9.]' '"fetch_gbps_warm":[0-9.]'; do
  grep -qE "$f" <<<"$j" || fail "no $f in $j"
done
if grep -q '"reuse":"ran"' <<<"$j"; then
  grep -q '"reuse_identical":true' <<<"$j" || fail "prefix reuse ran but differs: $j"
fi
per=$(grep -oE '"decode_fetch_bytes":\[[0-9,]*\]' <<<"$j" | sed 's/.*\[\(.*\)\]/\1/')
kv=$(grep -oE '"kv_bytes":[0-9]+' <<<"$j" | cut -d: -f2)
repl=$(grep -oE '"kv_replication":[0-9]+' <<<"$j" | cut -d: -f2)
IFS=, read -r -a each <<<"$per"
[ "${#each[@]}" -eq "$dtp" ] || fail "decode_fetch_bytes has ${#each[@]} entries for $dtp ranks: $j"
sum=0
for b in "${each[@]}"; do
  [ "$b" -gt 0 ] || fail "a decode rank fetched nothing: $j"
  sum=$((sum + b))
done
[ "$sum" -eq $((kv * repl)) ] || fail "decode ranks fetched $sum bytes, the prompt's KV is $kv (x$repl)"
left=$(orphans)
[ -z "$left" ] || fail "processes left behind: $left"
[ -z "$(ls -A "$WORK/tmp")" ] || fail "left in TMPDIR: $(ls -A "$WORK/tmp")"
ok "kvshare demo $*: identical; decode ranks fetched $per = $sum bytes (KV $kv x$repl)"
