#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# pidns.sh - a pool node in its own PID namespace, as a node and an engine in two pods share a
# host (and a network namespace here) but not their PIDs: the node cannot name the client's
# process, so process_vm_readv is out; a client whose blocks are kvs_mem_alloc memory offers its
# memfds and the node copies the put from its mapping of them. A client with its own memory still
# gets its put stored (over UCX's GET), never a wrong byte.
. "$(dirname "$0")/lib.sh"
KVSHARE=$2
[ "$(id -u)" -eq 0 ] || { echo "SKIP: needs root for a PID namespace"; exit 77; }
unshare --pid --fork true 2>/dev/null || { echo "SKIP: cannot create PID namespaces here"; exit 77; }
export KVSHARE_LOG=debug KVSHARE_SHM=auto
G="--segments 2 --block-bytes 32768"

mkfifo "$WORK/node.in"
unshare --pid --fork "$KVSHARE" serve --listen 127.0.0.1:0 --capacity 64MiB \
  <"$WORK/node.in" >"$WORK/node.out" 2>"$WORK/node.err" &
PIDS+=($!)
exec {nfd}>"$WORK/node.in"
deadline=$((SECONDS + 30))
until grep -q '^ready ' "$WORK/node.out" 2>/dev/null; do
  kill -0 "${PIDS[-1]}" 2>/dev/null || fail "node exited: $(cat "$WORK/node.err")"
  ((SECONDS < deadline)) || fail "node not ready"; sleep 0.05
done
N=$(awk '/^ready /{print $2}' "$WORK/node.out")

out=$(KVSHARE_POOL=$N "$PEER" put --mem-alloc --blocks 300 $G --seed 9 2>"$WORK/p1.err") || fail "put from kvs_mem_alloc memory: $out"
out=$(KVSHARE_POOL=$N "$PEER" fetch --from-pool --blocks 300 $G --seed 9 --batch 300 2>"$WORK/f1.err") || fail "fetch: $out"
grep -q "its puts are copied from its memory mapped here" "$WORK/node.err" \
  || fail "the node did not copy the put from the offered mapping: $(grep -iE 'mapped|direct|offer' "$WORK/node.err" | head -5)"
! grep -q "its puts are read directly" "$WORK/node.err" \
  || fail "the node named a client pid across PID namespaces (the test proves nothing here)"
ok "node in its own PID namespace: no pid to read from, the offered memfd mapped and the put copied from it; fetched back whole ($out)"

out=$(KVSHARE_POOL=$N "$PEER" put --blocks 300 $G --seed 10 2>"$WORK/p2.err") || fail "put from the client's own memory: $out"
out=$(KVSHARE_POOL=$N "$PEER" fetch --from-pool --blocks 300 $G --seed 10 --batch 300 2>"$WORK/f2.err") || fail "fetch: $out"
ok "the client's own memory across PID namespaces: stored another way (UCX), fetched back whole ($out)"
