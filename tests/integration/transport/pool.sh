#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# pool.sh - `kvshare serve` nodes: put, fetch from the pool, placement, eviction, restart, SIGTERM.
. "$(dirname "$0")/lib.sh"
KVSHARE=$2
export KVSHARE_LOG=info
G="--segments 2 --block-bytes 32768"

serve() { # serve NAME [kvshare serve options]: a node; sets ADDR
  local name=$1; shift
  mkfifo "$WORK/$name.in"
  "$KVSHARE" serve "$@" <"$WORK/$name.in" >"$WORK/$name.out" 2>"$WORK/$name.err" &
  PIDS+=($!)
  eval "NODE_PID_$name=$!"
  exec {fd}>"$WORK/$name.in"
  local deadline=$((SECONDS + 30))
  until grep -q '^ready ' "$WORK/$name.out" 2>/dev/null; do
    kill -0 "${PIDS[-1]}" 2>/dev/null || fail "node $name exited: $(cat "$WORK/$name.err")"
    ((SECONDS < deadline)) || fail "node $name not ready"; sleep 0.05
  done
  ADDR=$(awk '/^ready /{print $2}' "$WORK/$name.out")
}

# --- one node: put, then fetch from the pool on both data paths
serve one --listen 127.0.0.1:0 --capacity 64MiB; one=$ADDR
out=$(KVSHARE_POOL=$one "$PEER" put --blocks 300 $G --seed 3 2>"$WORK/p1.err") || fail "put: $out"
out=$(KVSHARE_POOL=$one "$PEER" fetch --from-pool --blocks 300 $G --seed 3 --batch 300 2>"$WORK/f1.err") || fail "fetch: $out"
out2=$(UCX_TLS=tcp KVSHARE_POOL=$one "$PEER" fetch --from-pool --blocks 300 $G --seed 3 --batch 300 2>"$WORK/f2.err") || fail "fetch over tcp: $out2"
ok "put 300 blocks, fetched them back from the pool (GET: $out; TCP: $out2)"

# --- 40 puts in flight at once over TCP, where the client pushes: more than the node takes at
# once from one connection (16, then BUSY). They all land. (The node takes a connection's
# messages in order, each PUT behind the last one's landing data, so pushes seldom reach the
# 16 the client counts; test_peer's pull twin is the check that fails without the count.)
out=$(UCX_TLS=tcp KVSHARE_POOL=$one "$PEER" put --blocks 1200 $G --seed 9 --inflight 40 2>"$WORK/p5.err") \
  || fail "40 puts at once over tcp: $out $(tail -3 "$WORK/p5.err")"
out=$(KVSHARE_POOL=$one "$PEER" fetch --from-pool --blocks 1200 $G --seed 9 --batch 300 2>"$WORK/f5.err") \
  || fail "fetch of the 40 puts: $out"
ok "40 puts in flight at once over tcp all landed, fetched back whole ($out)"

# --- same host with KVSHARE_SHM=auto: the node reads each put straight out
# of the client's memory (process_vm_readv after the same-host handover),
# not through UCX's GET (an active-message emulation in UCX 1.13)
KVSHARE_LOG=debug KVSHARE_SHM=auto serve near --listen 127.0.0.1:0 --capacity 64MiB; near=$ADDR
out=$(KVSHARE_SHM=auto KVSHARE_POOL=$near "$PEER" put --blocks 300 $G --seed 7 2>"$WORK/p3.err") || fail "put: $out"
out=$(KVSHARE_SHM=auto KVSHARE_POOL=$near "$PEER" fetch --from-pool --blocks 300 $G --seed 7 --batch 300 2>"$WORK/f3.err") || fail "fetch: $out"
grep -q "its puts are read directly" "$WORK/near.err" \
  || fail "the node did not read the same-host put directly: $(grep -i put "$WORK/near.err" | head -5)"
! grep -q "directly failed" "$WORK/near.err" || fail "$(grep 'directly failed' "$WORK/near.err" | head -3)"
ok "same host: the node read the put straight from the client's memory, fetched back whole ($out)"
# Its PUTs went over the same-host control channel, a Unix socket beside the transport (UCX
# over TCP, whose loopback cost the nodes a quarter of their time in `kvshare bench pool`);
# over the transport alone (KVSHARE_SHM=off) none does.
out=$(KVSHARE_SHM=auto KVSHARE_POOL=$near "$PEER" put --blocks 40 $G --seed 70 2>"$WORK/p3d.err") \
  || fail "put of 40: $out"
[[ "$out" =~ ctl=([0-9]+) ]] && [ "${BASH_REMATCH[1]}" -ge 1 ] \
  || fail "same-host pull PUTs took no control channel: $out"
on=${BASH_REMATCH[1]}
out=$(KVSHARE_SHM=off KVSHARE_POOL=$near "$PEER" put --blocks 40 $G --seed 71 2>"$WORK/p3e.err") \
  || fail "put of 40 without same-host sharing: $out"
[[ "$out" == *"status=OK ctl=0" ]] || fail "a put without same-host sharing used a control channel: $out"
out=$(KVSHARE_SHM=auto KVSHARE_POOL=$near "$PEER" fetch --from-pool --blocks 40 $G --seed 70 --batch 40 2>"$WORK/f3d.err") \
  || fail "fetch of 40: $out"
[[ "$out" == *"hits=40 "* ]] || fail "fetch of the put sent over the control channel: $out"
ok "same host: pull PUTs went over the control channel (ctl=$on; KVSHARE_SHM=off: 0), fetched back whole"
# The same chain again: the node's mapped index shows it holds every block, so the client
# offers none of them (no PUT reaches the node), and a chain that extends it offers only its
# new blocks.
batches=$(grep -c "put blocks" "$WORK/near.err")
out=$(KVSHARE_SHM=auto KVSHARE_POOL=$near "$PEER" put --blocks 300 $G --seed 7 2>"$WORK/p3b.err") || fail "put again: $out"
[ "$(grep -c "put blocks" "$WORK/near.err")" = "$batches" ] \
  || fail "a put of blocks the node's index shows sent PUTs: $(grep "put blocks" "$WORK/near.err" | tail -3)"
out=$(KVSHARE_SHM=auto KVSHARE_POOL=$near "$PEER" put --blocks 310 $G --seed 7 2>"$WORK/p3c.err") || fail "put of 310: $out"
grep "put blocks" "$WORK/near.err" | tail -1 | grep -q "stored 10 of 10 put blocks" \
  || fail "a chain extending a held one: $(grep "put blocks" "$WORK/near.err" | tail -2)"
out=$(KVSHARE_SHM=auto KVSHARE_POOL=$near "$PEER" fetch --from-pool --blocks 310 $G --seed 7 --batch 310 2>"$WORK/f3c.err") || fail "fetch of 310: $out"
[[ "$out" == *"hits=310 "* ]] || fail "fetch of the extended chain: $out"
ok "same host: a chain the node's index shows is not offered again, one that extends it offers only its 10 new blocks ($out)"

# --- same host, the client's blocks in kvs_mem_alloc memory (a sealed memfd): the
# client offers the memfd over the same-host socket and the node copies the put
# from its own read-only mapping of it, no kernel copy
out=$(KVSHARE_SHM=auto KVSHARE_POOL=$near "$PEER" put --mem-alloc --blocks 300 $G --seed 8 2>"$WORK/p4.err") || fail "put from kvs_mem_alloc memory: $out"
out=$(KVSHARE_SHM=auto KVSHARE_POOL=$near "$PEER" fetch --from-pool --blocks 300 $G --seed 8 --batch 300 2>"$WORK/f4.err") || fail "fetch: $out"
grep -q "is mapped here for its puts" "$WORK/near.err" \
  || fail "the node did not map the client's offered memory: $(grep -iE 'offer|mapped' "$WORK/near.err" "$WORK/p4.err" | head -5)"
grep -q "its puts are copied from its memory mapped here" "$WORK/near.err" \
  || fail "the node did not copy the put from the mapping: $(grep -i put "$WORK/near.err" | tail -5)"
! grep -q "took no offer" "$WORK/p4.err" || fail "$(grep 'took no offer' "$WORK/p4.err")"
ok "same host, kvs_mem_alloc memory: the node mapped the client's memfd and copied the put from it, fetched back whole ($out)"

# --- capacity: 64 MiB holds 2048 blocks of 32 KiB; put 3000 -> the node evicts, keeps serving
out=$(KVSHARE_POOL=$one "$PEER" put --blocks 3000 $G --seed 4 2>"$WORK/p2.err") || fail "put beyond capacity: $out"
out=$(KVSHARE_POOL=$one "$PEER" fetch --from-pool --blocks 100 $G --seed 4 --batch 100 --expect OK 2>/dev/null) || fail "$out"
[ "$out" = "done hits=0 bytes=0 status=OK" ] || fail "the oldest blocks should have been evicted: $out"
out=$(KVSHARE_POOL=$one "$PEER" put --blocks 50 $G --seed 5 2>/dev/null) || fail "put after eviction: $out"
out=$(KVSHARE_POOL=$one "$PEER" fetch --from-pool --blocks 50 $G --seed 5 --batch 50 2>/dev/null) || fail "fetch after eviction: $out"
ok "beyond capacity the node evicted the oldest chain (a clean miss) and keeps storing and serving: $out"

# --- one node, several block sizes: small blocks, then big, then small again all
# stay retrievable (the node once fixed its slot size at the first put)
serve mix --listen 127.0.0.1:0 --capacity 64MiB; mix=$ADDR
for spec in "4096 21 small" "131072 22 big" "4096 23 small" "20000 24 odd"; do
  read -r bb seed model <<<"$spec"
  out=$(KVSHARE_POOL=$mix "$PEER" put --blocks 40 --segments 2 --block-bytes "$bb" --seed "$seed" --model "$model" 2>"$WORK/mix$seed.err") \
    || fail "put of $bb-byte blocks after others: $out"
done
for spec in "4096 21 small" "131072 22 big" "4096 23 small" "20000 24 odd"; do
  read -r bb seed model <<<"$spec"
  out=$(KVSHARE_POOL=$mix "$PEER" fetch --from-pool --blocks 40 --segments 2 --block-bytes "$bb" --seed "$seed" --model "$model" --batch 40 2>/dev/null) \
    || fail "fetch of $bb-byte blocks: $out"
  [ "$out" = "ok hits=40 bytes=$((40 * bb)) status=OK" ] || fail "$bb-byte blocks, seed $seed: $out"
done
ok "one node stores and serves blocks of 4096, 131072 and 20000 bytes side by side, put in turns"

# --- three nodes: each chain lives on one node; all chains come back.
# Chain s has 30+s blocks, so each node's log ("stored N of N") says which
# chains it holds.
KVSHARE_LOG=debug serve a --listen 127.0.0.1:0 --capacity 64MiB; a=$ADDR
serve b --listen 127.0.0.1:0 --capacity 64MiB; b=$ADDR
serve c --listen 127.0.0.1:0 --capacity 64MiB; c=$ADDR
export KVSHARE_POOL="$a,$b,$c"
SEEDS="11 12 13 14 15 16 17 18 19 20 21 22"
for s in $SEEDS; do
  out=$("$PEER" put --blocks $((30 + s)) $G --seed $s 2>/dev/null) || fail "put seed $s: $out"
done
on_a=""
for s in $SEEDS; do
  out=$("$PEER" fetch --from-pool --blocks $((30 + s)) $G --seed $s --batch 100 2>/dev/null) || fail "fetch seed $s: $out"
  grep -q "stored $((30 + s)) of $((30 + s)) put blocks" "$WORK/a.err" && on_a="$on_a $s"
done
ok "12 chains over three nodes, every chain fetched whole; node a holds:${on_a:- none}"

# --- a node stops: exactly its chains miss (no error), the others still hit;
# restarted empty on the same address, it takes new chains again
aport=${a##*:}
kill -9 "$NODE_PID_a"   # killed mid-run: no goodbye to anyone
wait "$NODE_PID_a" 2>/dev/null
for s in $SEEDS; do
  n=$((30 + s))
  out=$("$PEER" fetch --from-pool --blocks $n $G --seed $s --batch 100 --expect OK 2>/dev/null) || fail "with a node down: $out"
  if [[ " $on_a " == *" $s "* ]]; then want="hits=0"; else want="hits=$n"; fi
  [[ "$out" == *"$want "* ]] || fail "seed $s with node a down: $out (wanted $want)"
done
serve a2 --listen "127.0.0.1:$aport" --capacity 64MiB
for s in $SEEDS; do
  n=$((30 + s))
  out=$("$PEER" fetch --from-pool --blocks $n $G --seed $s --batch 100 --expect OK 2>/dev/null) || fail "after restart: $out"
  if [[ " $on_a " == *" $s "* ]]; then want="hits=0"; else want="hits=$n"; fi
  [[ "$out" == *"$want "* ]] || fail "seed $s after restart: $out (wanted $want)"
  out=$("$PEER" put --blocks $n $G --seed $s 2>/dev/null) || fail "re-put seed $s: $out"
  out=$("$PEER" fetch --from-pool --blocks $n $G --seed $s --batch 100 2>/dev/null) || fail "re-fetch seed $s: $out"
done
ok "a node killed mid-run: while down and after an empty restart exactly its chains miss, the rest hit, and re-offloaded chains come back"

# --- SIGTERM: a clean stop, exit status 0
kill -TERM "$NODE_PID_b"
wait "$NODE_PID_b"; rc=$?
((rc == 0)) || fail "SIGTERM exit status $rc"
grep -q 'stopping (SIGTERM)' "$WORK/b.err" || fail "no clean stop: $(cat "$WORK/b.err")"
ok "SIGTERM stops a node cleanly (exit 0)"
