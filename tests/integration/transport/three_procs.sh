#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# three_procs.sh - two servers and concurrent clients: each client gets each server's own bytes.
. "$(dirname "$0")/lib.sh"
start_server a --listen 127.0.0.1:0 --blocks 300 --segments 2 --block-bytes 16384 --seed 11; a=$ADDR
start_server b --listen 127.0.0.1:0 --blocks 300 --segments 2 --block-bytes 16384 --seed 12; b=$ADDR
"$PEER" fetch --peer "$a" --blocks 300 --segments 2 --block-bytes 16384 --seed 11 >"$WORK/c1.out" 2>"$WORK/c1.err" &
c1=$!
"$PEER" fetch --peer "$b" --blocks 300 --segments 2 --block-bytes 16384 --seed 12 >"$WORK/c2.out" 2>"$WORK/c2.err" &
c2=$!
UCX_TLS=tcp "$PEER" fetch --peer "$a" --blocks 300 --segments 2 --block-bytes 16384 --seed 11 --batch 7 >"$WORK/c3.out" 2>"$WORK/c3.err" &
c3=$!
wait $c1 || fail "client 1: $(cat "$WORK/c1.out")"
wait $c2 || fail "client 2: $(cat "$WORK/c2.out")"
wait $c3 || fail "client 3: $(cat "$WORK/c3.out")"
ok "two servers, three concurrent clients: $(cat "$WORK/c1.out") | $(cat "$WORK/c2.out") | $(cat "$WORK/c3.out")"
# Server b's keys are not server a's: asking a for b's keys is a miss.
out=$("$PEER" fetch --peer "$a" --blocks 5 --segments 2 --block-bytes 16384 --seed 12 --expect OK 2>/dev/null) || fail "$out"
[ "$out" = "done hits=0 bytes=0 status=OK" ] || fail "cross-server keys must miss: $out"
ok "no server hands out another's blocks"
