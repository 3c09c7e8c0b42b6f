#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# tp.sh - heterogeneous prefill and decode (issue 13) over the real UCX transport, real
# processes: holders and readers of one model at different TP sizes, NHD/HND, K/V orders
# and block sizes; every byte of each reader's heads checked, on the GET and AM paths and
# from the holder's mapped memory (the same-host memfd path, which runs the same plan).
# Usage: tp.sh KVS_TP
. "$(dirname "$0")/lib.sh"
export KVSHARE_LOG=info
TP=$1

# Holders offer their memfds (readers take them only with KVSHARE_SHM=auto: lib.sh sets off).
export KVSHARE_SHM=auto
# bytes NAME-PATH: what the reader's kvs_stats said crossed the wire; shm NAME-PATH: what
# it read from the holder's mapped memory.
bytes() { sed -n 's/^kvs_tp: fetched_bytes=\([0-9]*\) .*/\1/p' "$WORK/$1.err"; }
shm() { sed -n 's/^kvs_tp: .*shm_fetched_bytes=//p' "$WORK/$1.err"; }
# mapped NAME BYTES: the memfd pass of NAME read BYTES from mapped memory, none over UCX.
mapped() {
  [ "$(shm "$1-shm")" = "$2" ] && [ "$(bytes "$1-shm")" = 0 ] ||
    fail "$1 (memfd): $(shm "$1-shm") bytes mapped, $(bytes "$1-shm") over UCX; want $2 and 0"
}
# The prompt's KV once: 8 keys x 16 tokens x 4 heads x 32 dims x 4 bytes x 2 (K, V) x 2 layers.
PROMPT_KV=$((8 * 16 * 4 * 32 * 4 * 2 * 2))

# fetch NAME EXPECTED_OUTPUT [kvs_tp fetch options]: with the same-host path on (mapped
# memory where the holder's blocks are in a memfd, else UCX), then with it off
# (KVSHARE_SHM=off) over GET (default transports) and over TCP only (the holder pushes the
# planned ranges with active messages).
fetch() {
  local name=$1 want=$2; shift 2
  local out
  out=$(KVSHARE_SHM=auto "$TP" fetch "$@" 2>"$WORK/$name-shm.err") || fail "$name (memfd): $out"
  [ "$out" = "$want" ] || fail "$name (memfd): '$out', want '$want'"
  grep -q 'data path mapped memory' "$WORK/$name-shm.err" || fail "$name: no same-host path"
  export KVSHARE_SHM=off
  out=$("$TP" fetch "$@" 2>"$WORK/$name-get.err") || fail "$name (GET): $out"
  [ "$out" = "$want" ] || fail "$name (GET): '$out', want '$want'"
  grep -q 'fetches are planned' "$WORK/$name-get.err" || fail "$name: no plan was made"
  out=$(UCX_TLS=tcp "$TP" fetch "$@" 2>"$WORK/$name-am.err") || fail "$name (AM): $out"
  [ "$out" = "$want" ] || fail "$name (AM): '$out', want '$want'"
  grep -q 'active-message push' "$WORK/$name-am.err" || fail "$name: expected the AM path"
  [ "$(shm "$name-get")$(shm "$name-am")" = 00 ] || fail "$name: KVSHARE_SHM=off mapped memory"
  export KVSHARE_SHM=auto
}

# Prefill at TP=2, NHD, a K and a V segment per layer, zero-copy; decode at TP=1, HND,
# one segment per layer. The reader assembles its 4 heads from both holders.
start_server p0 --listen 127.0.0.1:0 --tp 2 --rank 0 --layout nhd --order kv --zero-copy; P0=$ADDR
start_server p1 --listen 127.0.0.1:0 --tp 2 --rank 1 --layout nhd --order kv --zero-copy; P1=$ADDR
fetch tp2to1 "ok hits=8 heads=0+2,2+2 missing=0 status=success" \
  --peer "$P0" --peer "$P1" --tp 1 --rank 0 --layout hnd --order block
for path in get am shm; do
  [ "$(bytes tp2to1-$path)" = "$PROMPT_KV" ] || fail "tp2to1 $path moved $(bytes tp2to1-$path) bytes, want $PROMPT_KV"
done
# Their pools are malloc'd (no memfd): the same-host pass fell back to UCX, and said so.
[ "$(shm tp2to1-shm)" = 0 ] || fail "tp2to1: malloc'd blocks read from mapped memory?"
grep -q 'is not in shared memory' "$WORK/tp2to1-shm.err" || fail "tp2to1: the fallback was not logged"
ok "TP=2 NHD holders -> TP=1 HND reader: 4 heads from 2 holders, every byte, the prompt's KV once"

# The same with the holders' pools in kvs_mem_alloc memory: the plan is copied from the
# mapped memfds (short NHD runs through staging), nothing over UCX.
start_server p0m --listen 127.0.0.1:0 --tp 2 --rank 0 --layout nhd --order kv --zero-copy --mem-alloc; P0M=$ADDR
start_server p1m --listen 127.0.0.1:0 --tp 2 --rank 1 --layout nhd --order kv --zero-copy --mem-alloc; P1M=$ADDR
fetch tp2to1m "ok hits=8 heads=0+2,2+2 missing=0 status=success" \
  --peer "$P0M" --peer "$P1M" --tp 1 --rank 0 --layout hnd --order block
mapped tp2to1m "$PROMPT_KV"
ok "TP=2 NHD memfd holders -> TP=1 HND reader: the plan copied from mapped memory, every byte"

# Only one of the two holders asked: the lease says which heads it fills, the rest of
# the reader's blocks stay as they were (checked byte for byte too).
fetch tp2to1_half "ok hits=8 heads=2+2 missing=2 status=success" \
  --peer "$P1" --tp 1 --rank 0 --layout hnd --order block
[ "$(bytes tp2to1_half-get)" = $((PROMPT_KV / 2)) ] || fail "one holder: moved $(bytes tp2to1_half-get)"
fetch tp2to1m_half "ok hits=8 heads=2+2 missing=2 status=success" \
  --peer "$P1M" --tp 1 --rank 0 --layout hnd --order block
mapped tp2to1m_half $((PROMPT_KV / 2))
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
mapped tp1to2_r0 $((PROMPT_KV / 2))
mapped tp1to2_r1 $((PROMPT_KV / 2))
ok "TP=1 HND 32-token holder -> TP=2 NHD 16-token readers: each rank its own heads, the prompt's KV once in all"

# Both HND, TP=1 -> TP=2: each reader's heads are one 4 KiB run per K/V plane, read in
# place (no staging) on the GET path and from the mapping; K/V order differs.
start_server h --listen 127.0.0.1:0 --tp 1 --rank 0 --layout hnd --order block --zero-copy --mem-alloc; H=$ADDR
for r in 0 1; do
  fetch hnd_r$r "ok hits=8 heads=0+2 missing=0 status=success" \
    --peer "$H" --tp 2 --rank $r --layout hnd --order kv
done
sum=$(($(bytes hnd_r0-get) + $(bytes hnd_r1-get)))
[ "$sum" = "$PROMPT_KV" ] || fail "hnd: the decode ranks moved $sum bytes, want $PROMPT_KV"
mapped hnd_r0 $((PROMPT_KV / 2))
mapped hnd_r1 $((PROMPT_KV / 2))
ok "TP=1 HND holder -> TP=2 HND readers: head slices read in place, the prompt's KV once in all"

# GQA: 2 KV heads. Holders at TP=1; readers at TP=4 hold one head each (replicated).
start_server g --listen 127.0.0.1:0 --heads 2 --tp 1 --rank 0 --layout nhd --order block; G=$ADDR
for r in 0 3; do
  fetch gqa_r$r "ok hits=8 heads=0+1 missing=0 status=success" \
    --peer "$G" --heads 2 --tp 4 --rank $r --layout hnd --order kv
  mapped gqa_r$r $((PROMPT_KV / 4))
done
ok "GQA: 2 KV heads, TP=4 readers each read their one head"

# Another model is refused at the handshake, with the reason logged by the holder.
out=$("$TP" fetch --peer "$P0" --model other/model --tp 1 --rank 0 --expect "layout mismatch" \
  2>"$WORK/other.err") || fail "another model: $out"
grep -q 'another model' "$WORK/p0.err" || fail "the holder did not log why: $(tail -3 "$WORK/p0.err")"
ok "another model: $out"
