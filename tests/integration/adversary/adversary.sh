#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# adversary.sh - hostile peers against real kvshare processes (a holder and a pool node).
#
# In every case: the victim survives, legitimate clients are served, and no
# fetch returns OK with bytes the holder did not publish (kvs_peer checks
# every byte of every fetch). Usage: adversary.sh KVS_PEER KVSHARE KVS_ATTACK
. "$(dirname "$0")/../transport/lib.sh"
KVSHARE=$2
ATTACK_BIN=$3
export KVSHARE_LOG=info
# The attackers are test tools, not the product: under the sanitizer build
# their own leaks (they exit mid-protocol on purpose) are not findings. The
# victims run with the caller's full ASAN_OPTIONS.
ATTACK() { ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0" "$ATTACK_BIN" "$@"; }
G="--blocks 256 --segments 2 --block-bytes 16384"

alive() { # alive PID NAME
  kill -0 "$1" 2>/dev/null || fail "$2 died"
}
await() { # await NAME PID PATTERN SECS: $WORK/NAME.out shows PATTERN while PID lives
  local name=$1 pid=$2 pat=$3 deadline=$((SECONDS + $4))
  until grep -q "$pat" "$WORK/$name.out" 2>/dev/null; do
    kill -0 "$pid" 2>/dev/null || fail "$name exited: $(cat "$WORK/$name.out" "$WORK/$name.err")"
    ((SECONDS < deadline)) || fail "$name: no '$pat' within $4 s: $(cat "$WORK/$name.err")"
    sleep 0.05
  done
}
legit() { # legit ADDR [extra kvs_peer fetch args]: a legitimate client, every byte checked
  local addr=$1; shift
  local out
  out=$("$PEER" fetch --peer "$addr" $G --batch 32 "$@" 2>>"$WORK/legit.err") || fail "legitimate fetch: $out"
  [ "$out" = "ok hits=256 bytes=4194304 status=OK" ] || fail "legitimate fetch: $out"
}

start_server holder --listen 127.0.0.1:0 $G; H=$ADDR; HPID=$SERVER_PID_holder
mkfifo "$WORK/node.in"
KVSHARE_FETCH_TIMEOUT_MS=800 KVSHARE_LEASE_TIMEOUT_MS=1500 "$KVSHARE" serve --listen 127.0.0.1:0 --capacity 64MiB --metrics 127.0.0.1:0 \
  <"$WORK/node.in" >"$WORK/node.out" 2>"$WORK/node.err" &
NPID=$!; PIDS+=($NPID)
exec {nfd}>"$WORK/node.in"
await node $NPID '^ready ' 30
N=$(awk '/^ready /{print $2}' "$WORK/node.out")
legit "$H"

# --- 1. garbage on every TCP port each process listens on (ours, UCX's, metrics)
for pid in $HPID $NPID; do
  ports=$(ATTACK ports $pid) || fail "no listening ports found for $pid"
  n=0
  for p in $ports; do
    ATTACK garbage "$p" >/dev/null 2>&1
    n=$((n + 1))
  done
  alive $pid "process $pid after garbage"
  ok "garbage on all $n listening ports of $pid ($(echo $ports | tr '\n' ' ')): still alive"
done
legit "$H"
ok "the holder serves after garbage"

# --- 2. 1,500 silent connections held while a legitimate client keeps working
mkfifo "$WORK/flood.in"
ATTACK flood "$H" 1500 <"$WORK/flood.in" >"$WORK/flood.out" 2>"$WORK/flood.err" &
FPID=$!; PIDS+=($FPID)
exec {ffd}>"$WORK/flood.in"
await flood $FPID '^holding' 60
legit "$H"
legit "$H"
exec {ffd}>&-
wait $FPID
alive $HPID holder
ok "$(head -1 "$WORK/flood.out"), legitimate fetches served meanwhile; $(tail -1 "$WORK/flood.out")"

# --- 3. no token, a wrong token
out=$(KVSHARE_AUTH=none KVSHARE_AUTH_TOKEN_FILE= "$PEER" fetch --peer "$H" $G --expect AUTH 2>/dev/null) || fail "no token: $out"
head -c 32 /dev/urandom | base64 >"$WORK/wrong.token"; chmod 600 "$WORK/wrong.token"
out=$(KVSHARE_AUTH_TOKEN_FILE="$WORK/wrong.token" "$PEER" fetch --peer "$H" $G --expect AUTH 2>/dev/null) || fail "wrong token: $out"
out=$(KVSHARE_AUTH_TOKEN_FILE="$WORK/wrong.token" ATTACK client "$H" inject 2>&1) && fail "wrong token got through: $out"
ok "peers with no token or a wrong one are refused"

# --- 4. injection: from a never-authenticated UCX endpoint, and from an
# authenticated peer into sessions and requests that are not its own, while a
# legitimate client fetches (every byte checked)
for round in 1 2 3; do
  ATTACK client "$H" inject >>"$WORK/inject.out" 2>>"$WORK/inject.err" &
  legit "$H"
  wait $! || fail "inject attacker failed: $(tail -3 "$WORK/inject.err")"
done
out=$(ATTACK client "$H" badsession 2>>"$WORK/inject.err") || fail "a message on a foreign session was answered: $out"
alive $HPID holder
ok "injection: $(grep -c result "$WORK/inject.out") rounds ($(tail -1 "$WORK/inject.out")); nothing answered a foreign session; every legitimate byte correct"

# A hostile holder the victim also talks to sprays DATA at it (its own
# session, random ones, every request id) while it fetches from the real one.
mkfifo "$WORK/evil.in"
ATTACK server --listen 127.0.0.1:0 <"$WORK/evil.in" >"$WORK/evil.out" 2>"$WORK/evil.err" &
EPID=$!; PIDS+=($EPID)
exec {efd}>"$WORK/evil.in"
await evil $EPID '^ready ' 30
E=$(awk '/^ready /{print $2}' "$WORK/evil.out")
legit "$H" --touch "$E" --repeat 5
legit "$H" --touch "$E" --inflight 4 --repeat 5
UCX_TLS=tcp legit "$H" --touch "$E" --repeat 3
exec {efd}>&-
wait $EPID
sprayed=$(sed -n 's/.*sprayed=\([0-9]*\).*/\1/p' "$WORK/evil.out")
[ "${sprayed:-0}" -gt 0 ] || fail "the hostile holder sprayed nothing: $(cat "$WORK/evil.out")"
ok "a hostile authenticated holder sprayed $sprayed DATA messages at the victim; all its fetches from the real holder were exact"

# --- 5. a stalled rendezvous from one peer while others fetch
mkfifo "$WORK/stall.in"
# Over TCP the rendezvous needs the sender to progress, which it never does.
UCX_TLS=tcp ATTACK client "$H" stall <"$WORK/stall.in" >"$WORK/stall.out" 2>"$WORK/stall.err" &
SPID=$!; PIDS+=($SPID)
exec {sfd}>"$WORK/stall.in"
await stall $SPID '^stalling' 30
legit "$H"
UCX_TLS=tcp legit "$H"
exec {sfd}>&-
wait $SPID
alive $HPID holder
legit "$H"
ok "a peer stalled mid-rendezvous; other peers were served meanwhile and after"

# --- 6. PUT pieces duplicated or missing: refused, nothing published
out=$(ATTACK_MODEL=any ATTACK client "$N" dup 2>"$WORK/dup.err") || fail "dup: $out $(cat "$WORK/dup.err")"
case "$out" in *outcome=refused*hits_after=0*) ;; *) fail "duplicate piece: $out";; esac
out2=$(ATTACK_MODEL=any ATTACK client "$N" missing 2>"$WORK/missing.err") || fail "missing: $out2 $(cat "$WORK/missing.err")"
case "$out2" in *outcome=refused*hits_after=0*) ;; *) fail "missing piece: $out2";; esac
grep -q "put refused\|put of .* blocks failed\|came twice" "$WORK/node.err" || fail "the node did not log the refused put"
alive $NPID node
out3=$(KVSHARE_POOL=$N "$PEER" put $G --seed 11 2>"$WORK/put.err") || fail "legitimate put after the attack: $out3"
out3=$(KVSHARE_POOL=$N "$PEER" fetch --from-pool $G --seed 11 --batch 256 2>"$WORK/pf.err") || fail "fetch from the pool: $out3"
ok "PUT with a duplicated piece ($out) and a missing one ($out2): refused, nothing published; the node stores and serves: $out3"

# --- 7. a lease never released ends at its deadline, while its peer stays connected
M=$(sed -n 's/.*metrics on \([0-9.]*:[0-9]*\).*/\1/p' "$WORK/node.err")
[ -n "$M" ] || fail "the node printed no metrics address"
leased() { curl -fsS "http://$M/metrics" | awk '/^kvshare_pool_leased_blocks /{print $2}'; }
# (and the node says whether its arena may have huge pages: 0 under shmem_enabled never)
huge=$(curl -fsS "http://$M/metrics" | awk '/^kvshare_pool_shmem_huge_pages /{print $2}')
thp=/sys/kernel/mm/transparent_hugepage
mode=$(sed -n 's/.*\[\(.*\)\].*/\1/p' $thp/hugepages-2048kB/shmem_enabled 2>/dev/null)
[ -n "$mode" ] && [ "$mode" != inherit ] || mode=$(sed -n 's/.*\[\(.*\)\].*/\1/p' $thp/shmem_enabled 2>/dev/null)
case $mode in never|deny) want=0 ;; *) want=1 ;; esac
[ "$huge" = "$want" ] || fail "kvshare_pool_shmem_huge_pages is '$huge', the kernel's shmem mode is '$mode'"
mkfifo "$WORK/hold.in"
ATTACK_MODEL=any ATTACK client "$N" hold <"$WORK/hold.in" >"$WORK/hold.out" 2>"$WORK/hold.err" &
HOLD=$!; PIDS+=($HOLD)
exec {hfd}>"$WORK/hold.in"
await hold $HOLD '^holding' 20
grep -q 'holding leases=4' "$WORK/hold.out" || fail "hold: $(cat "$WORK/hold.out")"
t0=$SECONDS
while [ "$(leased)" != 0 ]; do
  ((SECONDS - t0 < 10)) || fail "leases still held $((SECONDS - t0)) s after a 1.5 s lease timeout: $(leased)"
  sleep 0.1
done
kill -0 $HOLD 2>/dev/null || fail "the holder of the lease should still be connected"
exec {hfd}>&-
wait $HOLD
ok "a lease never released ended within $((SECONDS - t0 + 1)) s (lease timeout 1.5 s) with its peer still connected"

# --- 8. FETCH amplification
# READs go only to a holder with a block index: one on the same-host path (KVSHARE_SHM=auto).
export KVSHARE_SHM=auto
start_server iholder --listen 127.0.0.1:0 $G; IH=$ADDR; IHPID=$SERVER_PID_iholder
export KVSHARE_SHM=off
out=$(ATTACK client "$IH" reads 2>"$WORK/reads.err") || fail "reads: $out $(cat "$WORK/reads.err")"
alive $IHPID iholder
legit "$IH"
ok "READs of 4 x 65536 entries that are not there: counted nothing, the connection still answers ($out); the holder serves on"
out=$(ATTACK client "$H" amplify 2>"$WORK/amp.err") || fail "amplify: $out $(cat "$WORK/amp.err")"
alive $HPID holder
legit "$H"
ok "FETCH of 65535 x 1024 empty chunks: connection dropped ($out); the holder serves on"

# --- 9. many batches in flight at once, over TCP and shared memory, repeated
for tls in tcp default; do
  for i in $(seq 1 10); do
    if [ $tls = tcp ]; then
      UCX_TLS=tcp legit "$H" --inflight 8 --batch 8 --repeat 5
    else
      legit "$H" --inflight 8 --batch 8 --repeat 5
    fi
  done
  ok "$tls: 10 runs x 5 passes with 8 fetches in flight at once, every byte checked"
done
alive $HPID holder
alive $NPID node
grep -q "AddressSanitizer\|runtime error" "$WORK"/*.err && fail "sanitizer report in a victim's log"
ok "every victim alive, no sanitizer report"
