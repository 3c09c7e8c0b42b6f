#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# failures.sh - layout mismatch, auth, malformed messages, a stopped peer and a killed peer.
. "$(dirname "$0")/lib.sh"
export KVSHARE_LOG=info
G="--blocks 128 --segments 2 --block-bytes 32768"

# --- layout mismatch: refused, and the message names both layout ids
start_server lay --listen 127.0.0.1:0 $G --model model-a; a=$ADDR
out=$("$PEER" fetch --peer "$a" $G --model model-b --expect LAYOUT_MISMATCH 2>"$WORK/lay.c.err") || fail "layout: $out"
grep -qE 'layout mismatch: peer has [0-9a-f]{16}, this node serves [0-9a-f]{16}' "$WORK/lay.c.err" \
  || fail "the refusal must name both layout ids: $(cat "$WORK/lay.c.err")"
out=$("$PEER" fetch --peer "$a" $G --model model-a) || fail "same layout after a refusal: $out"
ok "layout mismatch refused with both ids named; the server keeps serving"

# --- auth: a node that requires it refuses peers without the secret
# (lib.sh gives every process the run's token; these override it.)
printf 'sesame\n' >"$WORK/token"
printf 'not-sesame\n' >"$WORK/wrong"
chmod 600 "$WORK/token" "$WORK/wrong"
KVSHARE_AUTH_TOKEN_FILE="$WORK/token" start_server auth --listen 127.0.0.1:0 $G; s=$ADDR
out=$(KVSHARE_AUTH=none KVSHARE_AUTH_TOKEN_FILE= "$PEER" fetch --peer "$s" $G --expect AUTH 2>"$WORK/auth1.err") || fail "no secret: $out"
grep -q 'requires authentication' "$WORK/auth1.err" || fail "no secret: $(cat "$WORK/auth1.err")"
out=$(KVSHARE_AUTH_TOKEN_FILE="$WORK/wrong" "$PEER" fetch --peer "$s" $G --expect AUTH 2>"$WORK/auth2.err") || fail "wrong secret: $out"
out=$(KVSHARE_AUTH_TOKEN_FILE="$WORK/token" "$PEER" fetch --peer "$s" $G) || fail "right secret: $out"
# A client holding a secret will not give its trust to a node that proves
# none: the one place a node runs open on purpose.
KVSHARE_AUTH=none KVSHARE_AUTH_TOKEN_FILE= start_server open --listen 127.0.0.1:0 $G --model model-a; o=$ADDR
out=$(KVSHARE_AUTH_TOKEN_FILE="$WORK/token" "$PEER" fetch --peer "$o" $G --model model-a --expect AUTH 2>/dev/null) || fail "unauthenticated server: $out"
ok "auth: refused without or with a wrong secret, served with the right one"

# --- malformed messages: logged, the connection dropped, the process serves on
start_server mal --listen 127.0.0.1:0 $G; m=$ADDR
"$PEER" garbage --peer "$m" >/dev/null 2>&1 || fail "garbage sender failed"
deadline=$((SECONDS + 10))
until grep -q 'handshake refused' "$WORK/mal.err"; do
  ((SECONDS < deadline)) || fail "no malformed-message log line"; sleep 0.05
done
out=$("$PEER" fetch --peer "$m" $G) || fail "after garbage: $out"
ok "malformed messages rejected and logged ($(grep -c 'handshake refused' "$WORK/mal.err") lines); still serving: $out"

# --- a stopped peer: the request ends at its deadline, never hangs
start_server stop --listen 127.0.0.1:0 $G; st=$ADDR
kill -STOP "$SERVER_PID_stop"
t0=$(date +%s%N)
out=$("$PEER" fetch --peer "$st" $G --timeout-ms 1500 2>/dev/null)
ms=$((($(date +%s%N) - t0) / 1000000))
kill -CONT "$SERVER_PID_stop"
case "$out" in *status=TIMED_OUT*) ;; *) fail "stopped peer: $out";; esac
((ms < 10000)) || fail "took ${ms} ms for a 1500 ms deadline"
ok "stopped peer: TIMED_OUT after ${ms} ms (deadline 1500 ms)"

# --- a killed peer: the fetch in flight fails with PEER_FAILED within its
# deadline, other peers are unaffected, and the next use reconnects. The
# deadline is 10 s: each batch is 16 MiB over UCX's GET (an active-message
# emulation between processes here), and under ASan beside other tests on 2
# cores one batch from the other peer once took over 5 s (the check is that
# it fails within its deadline and the other peer serves, not how fast).
SOAK_MS=10000
start_server victim --listen 127.0.0.1:0 --blocks 512 --segments 2 --block-bytes 262144; v=$ADDR
vport=${v##*:}
start_server other --listen 127.0.0.1:0 --blocks 512 --segments 2 --block-bytes 262144; o=$ADDR
mkfifo "$WORK/soak.in"
"$PEER" soak --peer "$v" --peer2 "$o" --blocks 512 --segments 2 --block-bytes 262144 --batch 64 \
  --timeout-ms "$SOAK_MS" <"$WORK/soak.in" >"$WORK/soak.out" 2>"$WORK/soak.err" &
soak=$!
PIDS+=($soak)
exec {sfd}>"$WORK/soak.in"
deadline=$((SECONDS + 60))
until grep -q passing "$WORK/soak.out"; do
  ((SECONDS < deadline)) || fail "soak never passed: $(cat "$WORK/soak.out")"; sleep 0.02
done
kill -9 "$SERVER_PID_victim"
until grep -q 'other peer' "$WORK/soak.out"; do
  ((SECONDS < deadline)) || fail "soak did not notice the kill: $(cat "$WORK/soak.out")"; sleep 0.05
done
line=$(grep '^failed' "$WORK/soak.out")
case "$line" in *status=PEER_FAILED*|*status=TIMED_OUT*) ;; *) fail "killed peer: $line";; esac
after=$(sed -n 's/.*after_ms=\([0-9]*\).*/\1/p' <<<"$line")
((after <= SOAK_MS + 500)) || fail "failure took ${after} ms, deadline $SOAK_MS ms"
grep -q 'other peer: status=OK hits=512' "$WORK/soak.out" || fail "other peer: $(cat "$WORK/soak.out")"
# Restart the victim on the same port; the same client process reconnects.
start_server victim2 --listen "127.0.0.1:$vport" --blocks 512 --segments 2 --block-bytes 262144
echo again >&$sfd
wait $soak || fail "soak: $(cat "$WORK/soak.out")"
grep -q 'reconnect: status=OK hits=512' "$WORK/soak.out" || fail "reconnect: $(cat "$WORK/soak.out")"
ok "killed peer: '$line'; other peer unaffected; reconnected after restart"
