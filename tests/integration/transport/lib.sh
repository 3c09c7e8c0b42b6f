# SPDX-License-Identifier: Apache-2.0
# lib.sh - helpers for the transport tests: start real kvs_peer servers, wait for them, clean up.
set -u
PEER=$1
PEER_PREFIX=()   # e.g. (ip netns exec NS) to start servers inside a namespace
WORK=$(mktemp -d)
PIDS=()
# Auth is on by default: every process of a run (servers, clients, pool
# nodes) shares one random token. A test that checks the open mode says so
# with KVSHARE_AUTH=none and an empty KVSHARE_AUTH_TOKEN_FILE.
(umask 077; head -c 32 /dev/urandom | base64 >"$WORK/run.token") || { echo "FAIL: no token"; exit 1; }
chmod 600 "$WORK/run.token"
export KVSHARE_AUTH_TOKEN_FILE="$WORK/run.token"
unset KVSHARE_AUTH
# These tests are about the UCX data paths: the same-host memfd path (which
# every process here would take) is off unless a test turns it on with
# KVSHARE_SHM=auto (transport_shm covers it).
export KVSHARE_SHM=off
cleanup() {
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
  wait 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

fail() { echo "FAIL: $*"; for f in "$WORK"/*.err; do [ -s "$f" ] && { echo "--- $f"; tail -n 20 "$f"; }; done; exit 1; }
ok() { echo "ok: $*"; }

# start_server NAME [kvs_peer serve options...]: sets ADDR once the server
# says "ready"; the server lives until its stdin (a fifo) closes. Call it
# directly, not in $(...): the fifo must stay open in this shell.
start_server() {
  local name=$1; shift
  mkfifo "$WORK/$name.in"
  "${PEER_PREFIX[@]}" "$PEER" serve "$@" <"$WORK/$name.in" >"$WORK/$name.out" 2>"$WORK/$name.err" &
  PIDS+=($!)
  eval "SERVER_PID_$name=$!"
  exec {fd}>"$WORK/$name.in"      # hold the fifo open: closing it stops the server
  eval "SERVER_FD_$name=$fd"
  local deadline=$((SECONDS + 30))
  while ! grep -q '^ready ' "$WORK/$name.out" 2>/dev/null; do
    kill -0 "${PIDS[-1]}" 2>/dev/null || fail "server $name exited: $(cat "$WORK/$name.err")"
    ((SECONDS < deadline)) || fail "server $name not ready in 30 s"
    sleep 0.05
  done
  ADDR=$(awk '/^ready /{print $2}' "$WORK/$name.out")
}
