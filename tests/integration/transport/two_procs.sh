#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# two_procs.sh - one server, one client, real processes: every byte checked, on each data path.
. "$(dirname "$0")/lib.sh"
export KVSHARE_LOG=info

start_server a --listen 127.0.0.1:0 --blocks 200 --segments 4 --block-bytes 65536 --seed 7; addr=$ADDR

# Default transports: same host, so UCX offers shared memory/CMA and the client GETs.
out=$("$PEER" fetch --peer "$addr" --blocks 200 --segments 4 --block-bytes 65536 --seed 7 --batch 64 2>"$WORK/c1.err") || fail "GET fetch: $out"
grep -q 'data path GET' "$WORK/c1.err" || fail "expected the GET data path: $(cat "$WORK/c1.err")"
[ "$out" = "ok hits=200 bytes=13107200 status=OK" ] || fail "GET fetch: $out"
ok "GET path: 200 blocks x 64 KiB, every byte checked"

# TCP only: UCX would emulate GET slowly, so the server pushes with active messages.
out=$(UCX_TLS=tcp "$PEER" fetch --peer "$addr" --blocks 200 --segments 4 --block-bytes 65536 --seed 7 --batch 50 2>"$WORK/c2.err") || fail "AM fetch: $out"
grep -q 'data path active-message push' "$WORK/c2.err" || fail "expected the AM path: $(cat "$WORK/c2.err")"
[ "$out" = "ok hits=200 bytes=13107200 status=OK" ] || fail "AM fetch: $out"
ok "AM-push path over TCP: 200 blocks, every byte checked"

# Same host with KVSHARE_SHM=auto on both sides: the client maps the server's arena (memfd).
KVSHARE_SHM=auto start_server m --listen 127.0.0.1:0 --blocks 200 --segments 4 --block-bytes 65536 --seed 7; addrm=$ADDR
out=$(KVSHARE_SHM=auto "$PEER" fetch --peer "$addrm" --blocks 200 --segments 4 --block-bytes 65536 --seed 7 --batch 64 2>"$WORK/cm.err") || fail "mapped fetch: $out"
grep -q 'data path mapped memory' "$WORK/cm.err" || fail "expected the mapped-memory path: $(cat "$WORK/cm.err")"
[ "$out" = "ok hits=200 bytes=13107200 status=OK" ] || fail "mapped fetch: $out"
ok "mapped-memory path (memfd): 200 blocks x 64 KiB, every byte checked"

# Poll mode: no progress thread on the client.
out=$(KVSHARE_PROGRESS=poll "$PEER" fetch --peer "$addr" --blocks 200 --segments 4 --block-bytes 65536 --seed 7 2>"$WORK/c3.err") || fail "poll mode: $out"
ok "poll progress mode: $out"

# Small blocks, many of them, zero-copy on the server.
start_server b --listen 127.0.0.1:0 --blocks 4096 --segments 1 --block-bytes 1024 --seed 9 --zero-copy; addr2=$ADDR
out=$("$PEER" fetch --peer "$addr2" --blocks 4096 --segments 1 --block-bytes 1024 --seed 9 --batch 512 2>"$WORK/c4.err") || fail "zero-copy small blocks: $out"
ok "zero-copy publish, 4096 x 1 KiB blocks: $out"

# 80 segments (one per layer of a 70B model): more pieces per block than a
# small fixed buffer would hold, on both data paths.
start_server deep --listen 127.0.0.1:0 --blocks 32 --segments 80 --block-bytes 81920 --seed 21 --zero-copy; addr3=$ADDR
out=$("$PEER" fetch --peer "$addr3" --blocks 32 --segments 80 --block-bytes 81920 --seed 21 2>"$WORK/c6.err") || fail "80 segments, GET: $out"
out2=$(UCX_TLS=tcp "$PEER" fetch --peer "$addr3" --blocks 32 --segments 80 --block-bytes 81920 --seed 21 2>"$WORK/c7.err") || fail "80 segments, AM: $out2"
ok "80-segment blocks over GET ($out) and AM push ($out2)"

# A different seed means different keys: every lookup misses, nothing is wrong.
out=$("$PEER" fetch --peer "$addr" --blocks 10 --segments 4 --block-bytes 65536 --seed 8 --expect OK 2>"$WORK/c5.err") || fail "miss: $out"
[ "$out" = "done hits=0 bytes=0 status=OK" ] || fail "miss should be 0 hits: $out"
ok "unknown keys are a clean miss"
