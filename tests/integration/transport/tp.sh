#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# tp.sh - heterogeneous prefill and decode (issue 13) over the real UCX transport, real
# processes: holders and readers of one model at different TP sizes, NHD/HND, K/V orders
# and block sizes; every byte of each reader's heads checked, on the GET and AM paths.
# Usage: tp.sh KVS_TP
. "$(dirname "$0")/lib.sh"
export KVSHARE_LOG=info
TP=$1

# bytes NAME-PATH: what the reader's kvs_stats said crossed the wire.
bytes() { sed -n 's/^kvs_tp: fetched_bytes=//p' "$WORK/$1.err"; }
# The prompt's KV once: 8 keys x 16 tokens x 4 heads x 32 dims x 4 bytes x 2 (K, V) x 2 layers.
PROMPT_KV=$((8 * 16 * 4 * 32 * 4 * 2 * 2))

# fetch NAME EXPECTED_OUTPUT [kvs_tp fetch options]: over GET (default transports) and
# over TCP only (the holder pushes the planned ranges with active messages).
fetch() {
  local name=$1 want=$2; shift 2
  local out
  out=$("$TP" fetch "$@" 2>"$WORK/$name-get.err") || fail "$name (GET): $out"
  [ "$out" = "$want" ] || fail "$name (GET): '$out', want '$want'"
  grep -q 'fetches are planned' "$WORK/$name-get.err" || fail "$name: no plan was made"
  out=$(UCX_TLS=tcp "$TP" fetch "$@" 2>"$WORK/$name-am.err") || fail "$name (AM): $out"
  [ "$out" = "$want" ] || fail "$name (AM): '$out', want '$want'"
  grep -q 'active-message push' "$WORK/$name-am.err" || fail "$name: expected the AM path"
}

# Prefill at TP=2, NHD, a K and a V segment per layer, zero-copy; decode at TP=1, HND,
# one segment per layer. The reader assembles its 4 heads from both holders.
start_server p0 --listen 127.0.0.1:0 --tp 2 --rank 0 --layout nhd --order kv --zero-copy; P0=$ADDR
start_server p1 --listen 127.0.0.1:0 --tp 2 --rank 1 --layout nhd --order kv --zero-copy; P1=$ADDR
fetch tp2to1 "ok hits=8 heads=0+2,2+2 missing=0 status=success" \
  --peer "$P0" --peer "$P1" --tp 1 --rank 0 --layout hnd --order block
for path in get am; do
  [ "$(bytes tp2to1-$path)" = "$PROMPT_KV" ] || fail "tp2to1 $path moved $(bytes tp2to1-$path) bytes, want $PROMPT_KV"
done
ok "TP=2 NHD holders -> TP=1 HND reader: 4 heads from 2 holders, every byte, the prompt's KV once"

# Only one of the two holders asked: the lease says which heads it fills, the rest of
# the reader's blocks stay as they were (checked byte for byte too).
fetch tp2to1_half "ok hits=8 heads=2+2 missing=2 status=success" \
  --peer "$P1" --tp 1 --rank 0 --layout hnd --order block
[ "$(bytes tp2to1_half-get)" = $((PROMPT_KV / 2)) ] || fail "one holder: moved $(bytes tp2to1_half-get)"
ok "one holder of two: kvs_lease_heads says 2+2, the other heads untouched, half the KV moved"

# The reverse: prefill at TP=1, HND, 32-token blocks (keys of 16), copy mode; decode at
# TP=2, NHD, 16-token blocks: each rank reads only its 2 heads.
start_server q --listen 127.0.0.1:0 --tp 1 --rank 0 --layout hnd --order block --block-tokens 32; Q=$ADDR
for r in 0 1; do
  fetch tp1to2_r$r "ok hits=8 heads=0+2 missing=0 status=success" \
    --peer "$Q" --tp 2 --rank $r --layout nhd --order kv --block-tokens 16
done
for path in get am; do
  sum=$(($(bytes tp1to2_r0-$path) + $(bytes tp1to2_r1-$path)))
  [ "$sum" = "$PROMPT_KV" ] || fail "tp1to2 $path: the decode ranks moved $sum bytes, want $PROMPT_KV"
done
ok "TP=1 HND 32-token holder -> TP=2 NHD 16-token readers: each rank its own heads, the prompt's KV once in all"

# Both HND, TP=1 -> TP=2: each reader's heads are one 4 KiB run per K/V plane, read in
# place (no staging) on the GET path; K/V order differs.
start_server h --listen 127.0.0.1:0 --tp 1 --rank 0 --layout hnd --order block --zero-copy; H=$ADDR
for r in 0 1; do
  fetch hnd_r$r "ok hits=8 heads=0+2 missing=0 status=success" \
    --peer "$H" --tp 2 --rank $r --layout hnd --order kv
done
sum=$(($(bytes hnd_r0-get) + $(bytes hnd_r1-get)))
[ "$sum" = "$PROMPT_KV" ] || fail "hnd: the decode ranks moved $sum bytes, want $PROMPT_KV"
ok "TP=1 HND holder -> TP=2 HND readers: head slices read in place, the prompt's KV once in all"

# GQA: 2 KV heads. Holders at TP=1; readers at TP=4 hold one head each (replicated).
start_server g --listen 127.0.0.1:0 --heads 2 --tp 1 --rank 0 --layout nhd --order block; G=$ADDR
for r in 0 3; do
  fetch gqa_r$r "ok hits=8 heads=0+1 missing=0 status=success" \
    --peer "$G" --heads 2 --tp 4 --rank $r --layout hnd --order kv
done
ok "GQA: 2 KV heads, TP=4 readers each read their one head"

# Another model is refused at the handshake, with the reason logged by the holder.
out=$("$TP" fetch --peer "$P0" --model other/model --tp 1 --rank 0 --expect "layout mismatch" \
  2>"$WORK/other.err") || fail "another model: $out"
grep -q 'another model' "$WORK/p0.err" || fail "the holder did not log why: $(tail -3 "$WORK/p0.err")"
ok "another model: $out"
