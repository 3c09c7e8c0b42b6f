#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# bench_pool_warm.sh - `kvshare bench pool --warm` fills every node past its capacity before
# the warm puts (else they would land in fresh pages, as the cold ones do), then fetches what
# the warm puts stored, and prints the cold puts' anchor (one core's first writes). Figures are
# not judged here, only that the run is what it says: every round's figures are there, and the
# headline ones are their medians.
set -u
k=$1
py=/usr/bin/python3
out=$("$k" bench pool --warm --json --nodes 2 --prompts 8 --prefixes 2 --prefix-blocks 8 \
  --suffix-blocks 4 --block-bytes 65536 --depth 2 --rounds 3 2>/tmp/bench_pool_warm.$$)
rc=$?
err=$(cat /tmp/bench_pool_warm.$$); rm -f /tmp/bench_pool_warm.$$
if [ "$rc" -ne 0 ]; then
  echo "FAIL: bench pool --warm exited $rc: $err"; exit 1
fi
"$py" - "$out" <<'PY'
import json, sys
j = json.loads(sys.argv[1])
bad = []
def want(cond, what):
    if not cond:
        bad.append(what)
want(j.get("warm") is True and j.get("put") == "warm", "put/warm name the warm case")
# Every node was sent, and stored, at least its capacity: its arena has cycled.
want(j.get("fill_bytes", 0) >= j["nodes"] * j.get("node_capacity_bytes", 1 << 62),
     "fill_bytes >= nodes * node_capacity_bytes")
# The fetch reads what the warm puts stored (their keys, not the cold ones, now evicted).
want(j.get("hit_rate") == 1, "hit_rate 1")
for f in ("put_gbps", "put_gbps_cold", "fetch_gbps", "ratio_put_fetch", "ratio_put_fetch_cold",
          "first_touch_gbps", "ratio_put_cold_first_touch"):
    want(isinstance(j.get(f), (int, float)) and j[f] > 0, f + " > 0")
# Three rounds, each its own figures; the headline ones are their medians, and every round
# fetched all it asked for (hit_rate counts them all).
want(j.get("rounds") == 3, "rounds 3")
rounds = {f: j.get(f + "_rounds") for f in ("put_gbps", "fetch_gbps", "ratio_put_fetch")}
for f, v in rounds.items():
    want(isinstance(v, list) and len(v) == 3 and all(x > 0 for x in v), f + "_rounds: 3 > 0")
if not bad:
    for f in ("put_gbps", "fetch_gbps"):
        want(abs(j[f] - sorted(rounds[f])[1]) <= 0.002, f + " is the rounds' median")
    for p, q, r in zip(rounds["put_gbps"], rounds["fetch_gbps"], rounds["ratio_put_fetch"]):
        want(abs(r - p / q) <= 0.002 + 0.002 * r, "each round's ratio is its put over its fetch")
    want(abs(j["ratio_put_fetch"] - j["put_gbps"] / j["fetch_gbps"]) <= 0.002 + 0.002 * j["ratio_put_fetch"],
         "ratio_put_fetch = put_gbps / fetch_gbps")
# The anchor's ratio is the cold puts over it, to the JSON's three places.
if j.get("first_touch_gbps", 0) > 0:
    r = j["put_gbps_cold"] / j["first_touch_gbps"]
    want(abs(j.get("ratio_put_cold_first_touch", -1) - r) <= 0.002 + 0.002 * r,
         "ratio_put_cold_first_touch = put_gbps_cold / first_touch_gbps")
if bad:
    print("FAIL:", "; ".join(bad), "in", sys.argv[1])
    sys.exit(1)
print("ok:", sys.argv[1])
PY
