#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# cli_errors.sh - the kvshare command rejects bad input with a message naming the cause.
set -u
k=$1
fail=0
expect() { # expect EXIT_CODE PATTERN -- args...
  local want=$1 pat=$2; shift 3
  local out rc
  # A command that does not exit (a daemon that started after all) fails here with 124
  # instead of holding the suite up until ctest's own timeout.
  out=$(timeout 60 "$k" "$@" 2>&1); rc=$?
  if [ "$rc" -ne "$want" ] || ! grep -qE -- "$pat" <<<"$out"; then
    echo "FAIL: kvshare $* -> exit $rc, output: $out (wanted exit $want and /$pat/)"; fail=1
  else
    echo "ok: kvshare $*"
  fi
}
# Exit status, every command: 0 success, 1 a failure at run time, 2 a usage error.
expect 2 "--algo 'md5'" -- keys --algo md5 1 2
expect 2 "--block-tokens '0'" -- keys --block-tokens 0 1 2
expect 2 "TOKEN '4294967296'" -- keys 4294967296
expect 2 "TOKEN '-1'" -- keys -- -1
expect 2 "TOKEN 'abc'" -- keys abc
expect 2 "unknown option '--bogus'" -- keys --bogus
expect 2 "no tokens" -- keys
expect 2 "no tokens" -- keys --block-tokens 2
expect 2 "unexpected argument 'x'" -- version x
expect 2 "unexpected argument 'garbage'" -- serve garbage
expect 2 "--listen needs a value" -- serve --listen
expect 2 "--capacity 'abc': expected bytes" -- serve --listen 127.0.0.1:0 --capacity abc
expect 2 "--slot-bytes '1x': expected bytes" -- serve --listen 127.0.0.1:0 --slot-bytes 1x
expect 2 "--capacity '0': expected a size from 1" -- serve --listen 127.0.0.1:0 --capacity 0
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

# Every option parser is getopt_long's: a flag given a value it takes none of, an ambiguous
# abbreviation, an operand where none belongs, each by name; exit 2.
expect 2 "option '--json' takes no value" -- bench keys --json=1
expect 2 "ambiguous option '--events-r'" -- serve --events-r x
expect 2 "unexpected argument 'x'" -- bench keys x
expect 2 "unexpected argument 'foo'" -- demo foo
expect 2 "unknown option '--bogus'" -- bench --bogus
# A bad value names the flag the user set, in every command and benchmark.
expect 2 "--strategy 'fifo': accepted: lru, lfu" -- serve --strategy fifo
expect 2 "--listen 'nocolon': expected HOST:PORT" -- serve --listen nocolon
expect 2 "--events-model 'a@b'" -- serve --events tcp://127.0.0.1:1 --events-model a@b
expect 2 "--tokens 'x': expected an integer" -- demo --tokens x
expect 2 "--layers '0': expected an integer" -- demo --layers 0
expect 2 "--weight-seed needs a value" -- demo --weight-seed
expect 2 "--algo 'md5': accepted" -- bench keys --algo md5
expect 2 "unknown option '--algo'" -- bench lookup --algo sha256_cbor
expect 2 "--inflight '3': expected an integer in 1..2" -- bench transfer --inflight 3
expect 2 "--block-bytes '12': not a multiple of 8" -- bench transfer --block-bytes 12
expect 2 "--tls needs a value" -- bench transfer --tls
expect 2 "--kv-layout 'x': expected nhd or hnd" -- bench transfer --kv-layout x
expect 2 "--nodes '17': expected an integer in 1..16" -- bench pool --nodes 17
expect 2 "--block-bytes '12': not a multiple of 8" -- bench pool --block-bytes 12
expect 2 "--pool needs a value" -- bench pool --pool
expect 2 "--warm fills the nodes it starts" -- bench pool --warm --pool 127.0.0.1:1
expect 2 "--rounds needs --warm" -- bench pool --rounds 3
expect 2 "--rounds '0': expected an integer in 1..100" -- bench pool --warm --rounds 0
if "$k" bench --help | grep -q '^  index '; then
  expect 2 "--samples '1': expected an integer" -- bench index --samples 1
fi
if "$k" bench --help | grep -q '^  shim '; then
  expect 2 "--calls 'x': expected an integer" -- bench shim --calls x
fi
# serve's settings: flag > KVSHARE_* > file > default, and a value a flag replaces is never
# read, so never an error. A bad one that is used is named by its variable.
KVSHARE_TOTAL_MEMORY_GB=8 KVSHARE_REPLICAS=2x expect 2 "KVSHARE_REPLICAS '2x'" -- serve --listen 127.0.0.1:0
KVSHARE_TOTAL_MEMORY_GB=abc expect 2 "KVSHARE_TOTAL_MEMORY_GB='abc'" -- serve --listen 127.0.0.1:0
KVSHARE_TOTAL_MEMORY_GB=0 expect 2 "KVSHARE_TOTAL_MEMORY_GB='0'" -- serve --listen 127.0.0.1:0
KVSHARE_LISTEN=garbage expect 2 "KVSHARE_LISTEN='garbage'" -- serve --capacity 16MiB
KVSHARE_AUTH=none KVSHARE_STRATEGY=fifo expect 2 "KVSHARE_STRATEGY='fifo'" -- serve --listen 127.0.0.1:0 --capacity 16MiB
serve_ok() { # serve_ok WHAT ENV... -- ARGS...: starts (ready, capacity as said), stops on stdin EOF
  local what=$1 want=$2 out rc envs=(); shift 2
  while [ "$1" != -- ]; do envs+=("$1"); shift; done; shift
  out=$(: | env KVSHARE_AUTH=none "${envs[@]}" timeout 60 "$k" serve "$@" 2>&1); rc=$?
  if [ "$rc" -ne 0 ] || ! grep -q "^ready " <<<"$out" || ! grep -q "capacity $want bytes" <<<"$out"; then
    echo "FAIL: $what: exit $rc, output: $out (wanted ready, capacity $want)"; fail=1
  else
    echo "ok: $what"
  fi
}
serve_ok "--listen replaces a bad KVSHARE_LISTEN" 16777216 KVSHARE_LISTEN=garbage -- --listen 127.0.0.1:0 --capacity 16MiB
serve_ok "--strategy replaces a bad KVSHARE_STRATEGY" 16777216 KVSHARE_STRATEGY=fifo -- --listen 127.0.0.1:0 --capacity 16MiB --strategy lru
serve_ok "--capacity replaces bad KVSHARE_CAPACITY and KVSHARE_TOTAL_MEMORY_GB" 16777216 KVSHARE_CAPACITY=lots \
  KVSHARE_TOTAL_MEMORY_GB=abc KVSHARE_REPLICAS=2x -- --listen 127.0.0.1:0 --capacity 16MiB
serve_ok "KVSHARE_TOTAL_MEMORY_GB/KVSHARE_REPLICAS replace KVSHARE_CAPACITY" 268435456 KVSHARE_TOTAL_MEMORY_GB=1 \
  KVSHARE_REPLICAS=4 KVSHARE_CAPACITY=lots -- --listen 127.0.0.1:0
serve_ok "KVSHARE_LISTEN when no --listen" 16777216 KVSHARE_LISTEN=127.0.0.1:0 -- --capacity 16MiB

# --json is one object per line that Python's json reads, numbers as numbers and the
# figures --help states as defaults as the run used them.
json_check() { # json_check WHAT PYTHON-EXPR -- ARGS...: run, parse every line, assert EXPR on d
  local what=$1 expr=$2 out rc; shift 3
  out=$("$k" "$@" 2>/dev/null); rc=$?
  if [ "$rc" -ne 0 ]; then echo "FAIL: $what: kvshare $* exited $rc"; fail=1; return; fi
  if ! /usr/bin/python3 -c '
import json, sys
lines = [l for l in sys.stdin.read().splitlines() if l.strip()]
assert lines, "no output"
for l in lines:
    d = json.loads(l)
    assert isinstance(d, dict), l
    assert '"$expr"', l
' <<<"$out"; then
    echo "FAIL: $what: output: $out"; fail=1
  else
    echo "ok: $what"
  fi
}
defaults_of() { # the "--flag value" pairs of a --help's Defaults lines, as JSON keys
  sed -n '/^Defaults:/,/^[^ ]/p' | grep -oE -- '--[a-z-]+ [^ ]+' | sed 's/^--//; s/-/_/g'
}
num='all(isinstance(v, (int, float)) for k, v in d.items() if k not in ("bench", "algo", "call", "driver", "tls", "ids", "perftest_test"))'
json_check "bench keys --json" "d['bench'] == 'keys' and $num" -- bench keys --blocks 256 --repeats 1 --json
json_check "bench lookup --json" "d['bench'] == 'lookup' and $num" -- bench lookup --blocks 4096 --chain 64 --repeats 1 --json
# bench keys at its defaults: each default --help states is what the run reports.
kd=$("$k" bench keys --help | defaults_of | awk '{printf "d.get(\"%s\") in (%s, \"%s\") and ", $1, ($2 ~ /^[0-9]+$/ ? $2 : "None"), $2}')
[ -n "$kd" ] || { echo "FAIL: bench keys --help states no defaults"; fail=1; }
json_check "bench keys: the defaults --help states are the ones used" "${kd}True" -- bench keys --json
if "$k" bench --help | grep -q '^  index '; then
  json_check "bench index --json" "d['bench'] == 'index' and $num" -- bench index --pairs 2000 --setup-s 1 --samples 100 --json
fi
if "$k" bench --help | grep -q '^  shim '; then
  json_check "bench shim --json" "d['bench'] == 'shim' and $num" -- bench shim --repeats 1 --calls 1000 --json
fi
# A value that needs escaping: the demo's "engine" is a path, here with a quote and a
# backslash in its name (a printf-built object would not parse).
engine=$(dirname "$k")/../../examples/kvshare-engine
if [ -x "$engine" ]; then
  jd=$(mktemp -d)
  ln -s "$(cd "$(dirname "$engine")" && pwd)/kvshare-engine" "$jd/eng\"ine\\x"
  KVSHARE_AUTH=none KVSHARE_ENGINE_BIN="$jd/eng\"ine\\x" json_check "demo --json escapes the engine path" \
    "d['engine'].endswith('eng\"ine\\\\x') and d['tokens'] == 32 and isinstance(d['ttft_fetched_ms'], (int, float))" \
    -- demo --tokens 32 --decode 1 --no-reuse --json --layers 1 --d-model 32 --heads 2 --kv-heads 1 \
    --head-dim 16 --ffn 32 --vocab 64 --threads 1
  rm -rf "$jd"
else
  echo "skip: no kvshare-engine beside this build: demo --json escaping not checked"
fi

# serve --metrics 127.0.0.1:0 listens on 127.0.0.1 only, not on every interface: the kernel's
# socket table shows the loopback address, and another local address (127.0.0.2, which any
# wildcard socket would answer) refuses the connection.
# Every command and benchmark, as `kvshare --help` and `kvshare bench --help` list them:
# --help prints its usage to stdout, nothing to stderr, and exits 0; an unknown option is a
# usage error: exit 2, nothing on stdout, a message naming the option on stderr.
listed() { sed -n 's/^  \([a-z][a-z]*\) .*/\1/p'; } # "  name  what it does" lines
commands=$("$k" --help | listed)
benches=$("$k" bench --help | listed)
[ -n "$commands" ] && [ -n "$benches" ] || { echo "FAIL: no commands listed by --help"; fail=1; }
help_and_usage() { # help_and_usage WORDS...: the command `kvshare WORDS...`
  local out err rc
  out=$("$k" "$@" --help 2>"$tmpd/err"); rc=$?; err=$(cat "$tmpd/err")
  if [ "$rc" -ne 0 ] || [ -n "$err" ] || ! grep -q "^usage: kvshare" <<<"$out"; then
    echo "FAIL: kvshare $* --help -> exit $rc, stdout '$(head -n 1 <<<"$out")', stderr '$err'"; fail=1
  else
    echo "ok: kvshare $* --help: usage on stdout, exit 0"
  fi
  [ "$1" = help ] && return # `kvshare help` takes no options and ignores them
  out=$("$k" "$@" --no-such-option 2>"$tmpd/err" </dev/null); rc=$?; err=$(cat "$tmpd/err")
  if [ "$rc" -ne 2 ] || [ -n "$out" ] || ! grep -q -- "--no-such-option" <<<"$err"; then
    echo "FAIL: kvshare $* --no-such-option -> exit $rc, stdout '$out', stderr '$err'"; fail=1
  else
    echo "ok: kvshare $* --no-such-option: exit 2, named on stderr"
  fi
}
tmpd=$(mktemp -d)
for c in $commands; do help_and_usage "$c"; done
for b in $benches; do help_and_usage bench "$b"; done
rm -rf "$tmpd"
# Failures at run time exit 1: the demo without its engine, bench shim without its helper.
KVSHARE_ENGINE_BIN=/nonexistent/kvshare-engine expect 1 "/nonexistent/kvshare-engine" -- demo
if grep -qx shim <<<"$benches"; then
  KVSHARE_BENCH_SHIM_HELPER=/nonexistent/helper expect 1 "/nonexistent/helper" -- bench shim
fi

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
    # A second node on the same metrics port: a failure at run time, exit 1.
    expect 1 "--metrics '127.0.0.1:$port'" -- serve --listen 127.0.0.1:0 --metrics "127.0.0.1:$port"
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
  expect 2 "--shards '0': expected an integer in 1..64" -- index --source tcp://127.0.0.1:1 --http 127.0.0.1:0 --shards 0
  expect 2 "--shard-queue 3: a power of two" -- index --source tcp://127.0.0.1:1 --http 127.0.0.1:0 --shards 2 --shard-queue 3
  expect 2 "--redis-cluster needs redis\\[s\\]://HOST:PORT without a /DB|built without libhiredis" -- index --source tcp://127.0.0.1:1 --http 127.0.0.1:0 --shards 2 --redis-cluster --redis redis://127.0.0.1:1/3
  expect 2 "--redis-cluster needs --redis|built without libhiredis" -- index --source tcp://127.0.0.1:1 --http 127.0.0.1:0 --redis-cluster
  expect 2 "--shards '65': expected an integer in 1..64" -- bench index --shards 65
  expect 2 "--source 'nope://x'" -- index --source nope://x --http 127.0.0.1:0
  expect 2 "--source '@replay=tcp://h:1'" -- index --source @replay=tcp://h:1 --http 127.0.0.1:0
  expect 2 "--http 'nocolon'" -- index --source tcp://127.0.0.1:1 --http nocolon
  expect 2 "a bound endpoint serves many pods" -- index --source bind:tcp://127.0.0.1:1@replay=tcp://127.0.0.1:2 --http 127.0.0.1:0
  expect 2 "unknown option '--frob'" -- index --frob
  expect 2 "--max-pairs needs a value" -- index --max-pairs
  expect 2 "--keys 'engine': accepted: hashes, tokens" -- index --source tcp://127.0.0.1:1 --http 127.0.0.1:0 --keys engine
  expect 2 "--redis-id needs --redis" -- index --source tcp://127.0.0.1:1 --http 127.0.0.1:0 --redis-id a
  expect 2 "--redis-lease-ms '5': expected an integer" -- index --http 127.0.0.1:0 --redis redis://h --redis-lease-ms 5
  if "$k" index --help | grep -q -- --redis; then
    expect 2 "--redis 'http://h': expected redis\\[s\\]://" -- index --http 127.0.0.1:0 --redis http://h
    expect 2 "--redis-ca, --redis-cert and --redis-key need --redis rediss://" -- index --http 127.0.0.1:0 --redis redis://h --redis-ca /x
    expect 2 "CA file '/nonexistent/ca.pem'" -- index --http 127.0.0.1:0 --redis rediss://h --redis-ca /nonexistent/ca.pem
    expect 2 "client key '/nonexistent/k.pem'" -- index --http 127.0.0.1:0 --redis rediss://h --redis-cert /etc/ssl/certs/ca-certificates.crt --redis-key /nonexistent/k.pem
    expect 2 "needs both a certificate and its key" -- index --http 127.0.0.1:0 --redis rediss://h --redis-cert /x
    expect 2 "--redis-anchor needs --redis" -- bench index --redis-anchor redis://h
  fi
  # serve --events (built with the index): bad values refused before the node starts.
  expect 2 "--events-pod/-model/-queue/-replay need --events" -- serve --events-pod p
  expect 2 "--events-replay needs --events-model" -- serve --events tcp://127.0.0.1:1 --events-replay tcp://127.0.0.1:2
  expect 2 "without '@'" -- serve --events tcp://127.0.0.1:1 --events-model a@b
  expect 2 "--events-queue 'x': expected an integer" -- serve --events tcp://127.0.0.1:1 --events-queue x
  expect 2 "--events 'nope://x'" -- serve --events nope://x
fi
metrics_bind

# bench transfer --help states the --inflight default; a tiny run without --inflight reports
# the one it used. Skipped where the transfer cannot run (no UCX transport).
inflight_default() {
  local said used
  said=$("$k" bench transfer --help | sed -n 's/.*--inflight batches moving at once (default \([0-9]*\).*/\1/p')
  used=$("$k" bench transfer --blocks 4 --batch 2 --repeats 1 --block-bytes 4096 --no-perftest --json \
    2>/dev/null | sed -n 's/.*"inflight":\([0-9]*\).*/\1/p')
  if [ -z "$said" ]; then
    echo "FAIL: bench transfer --help states no --inflight default"; fail=1
  elif [ -z "$used" ]; then
    echo "skip: bench transfer did not run here; --help says --inflight default $said"
  elif [ "$said" != "$used" ]; then
    echo "FAIL: bench transfer --help says --inflight default $said, a run uses $used"; fail=1
  else
    echo "ok: bench transfer --inflight default $said, as --help says"
  fi
}
inflight_default
# bench transfer's round-trip anchor (shared memory): a bare Unix socket between the same two
# processes timed with a batch's lookup, reply and release sizes, and the bound they set;
# the bound is a batch of the memcpy anchor over that batch plus both. Not run over TCP.
# Beside it, the streaming-stores copy anchor and its ratio.
rtt_anchor() {
  local out tcp
  out=$("$k" bench transfer --blocks 64 --batch 16 --repeats 2 --block-bytes 65536 --path memfd \
    --no-perftest --json 2>/dev/null)
  tcp=$("$k" bench transfer --tls tcp --blocks 8 --batch 4 --repeats 1 --block-bytes 4096 \
    --no-perftest --json 2>/dev/null)
  if [ -z "$out" ]; then
    echo "skip: bench transfer --path memfd did not run here"
    return
  fi
  if /usr/bin/python3 - "$out" "$tcp" <<'PY'
import json, sys
j = json.loads(sys.argv[1])
rtt, rel, b = j.get("rtt_bare_p50_us", 0), j.get("release_bare_us", 0), j.get("ratio_memcpy_bound", 0)
mb = j["batch"] * j["block_bytes"] / (j["memcpy_gbps"] * 1e9) * 1e6  # a batch of memcpy, us
want = mb / (mb + rtt + rel)
ok = rtt > 0 and rel > 0 and 0 < b < 1 and abs(b - want) <= 0.01
# The streaming-stores anchor beside memcpy's, and its ratio of the same fetch.
sg = j.get("stream_gbps", 0)
ok = ok and sg > 0 and abs(j.get("ratio_stream", -1) - j["gbps"] / sg) <= 0.002
if sys.argv[2]:  # over TCP lookups do not take a Unix socket: no anchor
    ok = ok and "rtt_bare_p50_us" not in json.loads(sys.argv[2])
sys.exit(0 if ok else 1)
PY
  then
    echo "ok: bench transfer rtt_bare_p50_us, release_bare_us, ratio_memcpy_bound (none over tcp), stream_gbps, ratio_stream"
  else
    echo "FAIL: bench transfer round-trip anchor: $out / tcp: $tcp"; fail=1
  fi
}

# bench transfer names where lookups were answered: the holder's mapped index on the same
# host (no message to the holder), the holder itself with KVSHARE_SHM_INDEX=off or over TCP.
lookup_path() {
  local on off tcp
  on=$("$k" bench transfer --blocks 64 --batch 16 --repeats 2 --block-bytes 65536 --path memfd \
    --no-perftest --json 2>/dev/null)
  off=$(KVSHARE_SHM_INDEX=off "$k" bench transfer --blocks 64 --batch 16 --repeats 2 \
    --block-bytes 65536 --path memfd --no-perftest --json 2>/dev/null)
  tcp=$("$k" bench transfer --tls tcp --path ucx --blocks 8 --batch 4 --repeats 1 \
    --block-bytes 4096 --no-perftest --json 2>/dev/null)
  if [ -z "$on" ] || [ -z "$off" ]; then
    echo "skip: bench transfer --path memfd did not run here"
    return
  fi
  if /usr/bin/python3 - "$on" "$off" "$tcp" <<'PY'
import json, sys
on, off = json.loads(sys.argv[1]), json.loads(sys.argv[2])
# 64 blocks in batches of 16, 2 timed passes and a warm-up: 12 lookups, the first asks
ok = on["lookup"] == "index" and on["index_lookups"] >= 8 and on["index_asked"] >= 1
ok = ok and off["lookup"] == "holder" and off["index_lookups"] == 0 and off["index_asked"] == 0
if sys.argv[3]:
    t = json.loads(sys.argv[3])
    ok = ok and t["lookup"] == "holder" and t["index_lookups"] == 0
sys.exit(0 if ok else 1)
PY
  then
    echo "ok: bench transfer lookup: index on the same host, holder with KVSHARE_SHM_INDEX=off and over tcp"
  else
    echo "FAIL: bench transfer lookup path: $on / off: $off / tcp: $tcp"; fail=1
  fi
}
lookup_path

# bench transfer reports the share of mapped bytes the copy helpers copied: a number in
# [0, 1], and 0 with KVSHARE_COPY_THREADS=0 (transport_shm helpers checks that they copy).
helper_share() {
  local on off
  on=$("$k" bench transfer --blocks 64 --batch 64 --repeats 2 --block-bytes 65536 --path memfd \
    --no-perftest --json 2>/dev/null | sed -n 's/.*"helper_share":\([0-9.]*\).*/\1/p')
  off=$(KVSHARE_COPY_THREADS=0 "$k" bench transfer --blocks 64 --batch 64 --repeats 2 \
    --block-bytes 65536 --path memfd --no-perftest --json 2>/dev/null |
    sed -n 's/.*"helper_share":\([0-9.]*\).*/\1/p')
  if [ -z "$on" ] && [ -z "$off" ]; then
    echo "skip: bench transfer --path memfd did not run here"
  elif [ -z "$on" ] || [ -z "$off" ] || [ "$off" != 0 ] ||
    ! awk -v s="$on" 'BEGIN { exit !(s >= 0 && s <= 1) }'; then
    echo "FAIL: bench transfer helper_share: '$on' with helpers, '$off' with KVSHARE_COPY_THREADS=0"
    fail=1
  else
    echo "ok: bench transfer helper_share $on (0 with KVSHARE_COPY_THREADS=0)"
  fi
}
helper_share
rtt_anchor
# bench transfer across TP sizes: sliced fetches (prefill TP 2 -> decode TP 4, HND) timed next
# to whole-block fetches of the same bytes, in one run. Required wherever the plain run works.
tp_sliced_whole() {
  local out f
  out=$("$k" bench transfer --prefill-tp 2 --decode-tp 4 --kv-layout hnd --blocks 8 --batch 4 \
    --repeats 1 --block-bytes 4096 --no-perftest --json 2>&1)
  if [ -z "$("$k" bench transfer --blocks 4 --batch 2 --repeats 1 --block-bytes 4096 \
    --no-perftest --json 2>/dev/null)" ]; then
    echo "skip: bench transfer did not run here"
    return
  fi
  for f in sliced_gbps whole_gbps ratio_sliced_whole; do
    if ! grep -qE "\"$f\":[0-9.]*[1-9]" <<<"$out"; then
      echo "FAIL: bench transfer --prefill-tp 2 --decode-tp 4: no positive $f in: $out"; fail=1
      return
    fi
  done
  # decode rank 0 of 4 holds 2 of the 8 heads, all of which prefill rank 0 of 2 holds too
  if ! grep -q '"block_bytes":1024,' <<<"$out"; then
    echo "FAIL: bench transfer TP 2 -> 4 should move 1024 of 4096 bytes a block: $out"; fail=1
    return
  fi
  echo "ok: bench transfer TP 2 -> 4 reports sliced and whole fetches"
}
tp_sliced_whole
# bench transfer --lookup-thread: lookups on a second thread, leases handed over; the run checks
# the fetched bytes itself (a wrong block fails it) and reports where a batch's time went.
lookup_thread() {
  local out f
  if [ -z "$("$k" bench transfer --blocks 4 --batch 2 --repeats 1 --block-bytes 4096 \
    --no-perftest --json 2>/dev/null)" ]; then
    echo "skip: bench transfer did not run here"
    return
  fi
  out=$("$k" bench transfer --lookup-thread --blocks 37 --batch 4 --repeats 2 \
    --block-bytes 4096 --no-perftest --json 2>&1)
  if ! grep -q '"lookup_thread":true' <<<"$out"; then
    echo "FAIL: bench transfer --lookup-thread did not run: $out"; fail=1
    return
  fi
  for f in lookup_us fetch_us; do
    if ! grep -qE "\"$f\":[0-9.]*[1-9]" <<<"$out"; then
      echo "FAIL: bench transfer --lookup-thread: no positive $f in: $out"; fail=1
      return
    fi
  done
  echo "ok: bench transfer --lookup-thread fetches every block right and says where time went"
}
lookup_thread
# A run's own token (demo, bench: no KVSHARE_AUTH_TOKEN_FILE given) is a secret in TMPDIR: a run
# stopped by SIGTERM removes it too, not only one that exits.
token_on_signal() {
  local d pid i
  d=$(mktemp -d)
  env -u KVSHARE_AUTH -u KVSHARE_AUTH_TOKEN_FILE TMPDIR="$d" "$k" bench transfer --no-perftest --repeats 1000 \
    >/dev/null 2>&1 &
  pid=$!
  for i in $(seq 200); do compgen -G "$d/kvshare-token-*" >/dev/null && break; sleep 0.05; done
  if ! compgen -G "$d/kvshare-token-*" >/dev/null; then
    echo "skip: bench transfer made no token file here (exited: $(kill -0 $pid 2>/dev/null && echo no || echo yes))"
  else
    kill -TERM $pid; wait $pid 2>/dev/null
    if compgen -G "$d/kvshare-token-*" >/dev/null; then
      echo "FAIL: bench transfer stopped by SIGTERM left its token file in TMPDIR"; fail=1
    else
      echo "ok: bench transfer stopped by SIGTERM removed its token file"
    fi
  fi
  kill -KILL $pid 2>/dev/null; wait $pid 2>/dev/null
  rm -rf "$d"
}
token_on_signal
exit $fail
