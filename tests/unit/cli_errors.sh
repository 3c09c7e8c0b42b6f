#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# cli_errors.sh - the kvshare command rejects bad input with a message naming the cause.
set -u
k=$1
fail=0
expect() { # expect EXIT_CODE PATTERN -- args...
  local want=$1 pat=$2; shift 3
  local out rc
  out=$("$k" "$@" 2>&1); rc=$?
  if [ "$rc" -ne "$want" ] || ! grep -qE -- "$pat" <<<"$out"; then
    echo "FAIL: kvshare $* -> exit $rc, output: $out (wanted exit $want and /$pat/)"; fail=1
  else
    echo "ok: kvshare $*"
  fi
}
expect 1 "--algo 'md5'" -- keys --algo md5 1 2
expect 1 "--block-tokens '0'" -- keys --block-tokens 0 1 2
expect 1 "TOKEN '4294967296'" -- keys 4294967296
expect 1 "TOKEN '-1'" -- keys -- -1
expect 1 "TOKEN 'abc'" -- keys abc
expect 1 "unknown option '--bogus'" -- keys --bogus
expect 2 "unknown command 'frobnicate'" -- frobnicate
expect 2 "unknown benchmark 'nope'" -- bench nope
expect 2 "--chain 'x': expected an integer" -- bench lookup --chain x
expect 2 "usage: kvshare bench lookup" -- bench lookup --frob
expect 0 "^0 0-1 [0-9]+ [0-9a-f]{64}$" -- keys --block-tokens 2 7 8 9
expect 0 "partial block" -- keys --block-tokens 2 7 8 9
expect 0 "kvshare [0-9]+\.[0-9]+\.[0-9]+" -- version
# serve --metrics HOST:PORT: bad values are refused before the node starts.
expect 2 "--metrics 'nocolon': expected HOST:PORT" -- serve --metrics nocolon
expect 2 "port '99999': expected an integer from 0 to 65535" -- serve --metrics 127.0.0.1:99999
expect 2 "port 'x': expected an integer" -- serve --metrics 127.0.0.1:x
expect 2 "IPv6 address goes in brackets" -- serve --metrics ::1:9090
expect 2 "IPv6 address goes in brackets" -- serve --metrics '[::1:9090'
expect 2 "cannot resolve host 'no-such-host.invalid'" -- serve --metrics no-such-host.invalid:9090

# serve --metrics 127.0.0.1:0 listens on 127.0.0.1 only, not on every interface: the kernel's
# socket table shows the loopback address, and another local address (127.0.0.2, which any
# wildcard socket would answer) refuses the connection.
metrics_bind() {
  local tmp pid port hex line ok=1
  tmp=$(mktemp -d)
  mkfifo "$tmp/in" "$tmp/err"
  KVSHARE_AUTH=none KVSHARE_AUTH_TOKEN_FILE= "$k" serve --listen 127.0.0.1:0 --capacity 16MiB --metrics 127.0.0.1:0 \
    <"$tmp/in" >/dev/null 2>"$tmp/err" &
  pid=$!
  exec 9>"$tmp/in" 8<"$tmp/err" # holding stdin open keeps it serving; closing it stops it
  while IFS= read -r -t 20 line <&8; do # wait for the listening line, 20 s deadline
    port=$(sed -n 's/.*metrics on 127\.0\.0\.1:\([0-9][0-9]*\).*/\1/p' <<<"$line")
    [ -n "$port" ] && break
  done
  if [ -z "${port:-}" ]; then
    echo "FAIL: serve --metrics 127.0.0.1:0 printed no 'metrics on 127.0.0.1:PORT' line"; ok=0
  else
    hex=$(printf '%04X' "$port")
    if ! awk -v p=":$hex" '$2 == "0100007F" p && $4 == "0A" {f=1} END {exit !f}' /proc/net/tcp; then
      echo "FAIL: no LISTEN socket on 127.0.0.1:$port in /proc/net/tcp"; ok=0
    fi
    if awk -v p=":$hex" '$2 == "00000000" p {f=1} END {exit !f}' /proc/net/tcp; then
      echo "FAIL: metrics port $port is bound to 0.0.0.0"; ok=0
    fi
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "FAIL: metrics not reachable on 127.0.0.1:$port"; ok=0
    fi
    if (exec 3<>"/dev/tcp/127.0.0.2/$port") 2>/dev/null; then
      echo "FAIL: metrics reachable on 127.0.0.2:$port (bound to every interface?)"; ok=0
    fi
  fi
  exec 9>&- 8<&-
  wait "$pid"
  rm -rf "$tmp"
  if [ "$ok" = 1 ]; then echo "ok: serve --metrics 127.0.0.1:0 binds 127.0.0.1 only"; else fail=1; fi
}
# index: bad flags exit 2 with a message naming the flag (only where it is built in).
if "$k" index --help >/dev/null 2>&1; then
  expect 2 "--source is required" -- index --http 127.0.0.1:0
  expect 2 "--http is required" -- index --source tcp://127.0.0.1:1
  expect 2 "--block-size 'x': expected an integer" -- index --source tcp://127.0.0.1:1 --http 127.0.0.1:0 --block-size x
  expect 2 "--hash-algo 'sha256': accepted" -- index --source tcp://127.0.0.1:1 --http 127.0.0.1:0 --hash-algo sha256
  expect 2 "--source 'nope://x'" -- index --source nope://x --http 127.0.0.1:0
  expect 2 "--source '@replay=tcp://h:1'" -- index --source @replay=tcp://h:1 --http 127.0.0.1:0
  expect 2 "--http 'nocolon'" -- index --source tcp://127.0.0.1:1 --http nocolon
  expect 2 "a bound endpoint serves many pods" -- index --source bind:tcp://127.0.0.1:1@replay=tcp://127.0.0.1:2 --http 127.0.0.1:0
  expect 2 "unknown option '--frob'" -- index --frob
  expect 2 "--max-pairs needs a value" -- index --max-pairs
fi
metrics_bind
exit $fail
