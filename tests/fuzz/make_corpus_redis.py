#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""make_corpus_redis.py - writes the seed corpus of fuzz_redis: Redis Cluster replies (RESP2).

Run from the repository root: /usr/bin/python3 tests/fuzz/make_corpus_redis.py
CLUSTER SLOTS answers as Redis 3 to 7 write them (with node ids, with the hostname map of
7.0), MOVED/ASK errors, and malformed ones."""
import os

OUT = "tests/fuzz/corpus-fuzz_redis"


def resp(v):
    if isinstance(v, int):
        return b":%d\r\n" % v
    if isinstance(v, bytes):
        return b"$%d\r\n%s\r\n" % (len(v), v)
    if isinstance(v, str):
        return resp(v.encode())
    if v is None:
        return b"$-1\r\n"
    if isinstance(v, dict):  # RESP2 has no map: Redis 7 sends the hostname map as a flat array
        return resp([x for kv in v.items() for x in kv])
    return b"*%d\r\n" % len(v) + b"".join(resp(x) for x in v)


def err(s):
    return b"-%s\r\n" % s.encode()


def node(host, port, nid=None, extra=None):
    n = [host, port]
    if nid is not None:
        n.append(nid)
    if extra is not None:
        n.append(extra)
    return n


ID = ["%040x" % (0x1234567 * (i + 1)) for i in range(6)]
three = [[0, 5460, node("10.0.0.1", 7000)], [5461, 10922, node("10.0.0.2", 7001)],
         [10923, 16383, node("10.0.0.3", 7002)]]
replicas = [[0, 5460, node("10.0.0.1", 7000, ID[0]), node("10.0.0.4", 7003, ID[3])],
            [5461, 10922, node("10.0.0.2", 7001, ID[1]), node("10.0.0.5", 7004, ID[4])],
            [10923, 16383, node("10.0.0.3", 7002, ID[2]), node("10.0.0.6", 7005, ID[5])]]
hostnames = [[0, 8191, node("10.0.0.1", 6379, ID[0], {"hostname": "redis-0.example"}),
              node("?", 6380, ID[3], {})],
             [8192, 16383, node("", 6379, ID[1], {"hostname": "redis-1.example"})]]
split = [[0, 99, node("::1", 7000)], [100, 100, node("redis-a", 7001)],
         [101, 16383, node("redis-b", 65535)], [50, 60, node("redis-b", 65535)]]
seeds = {
    "slots_three": resp(three),
    "slots_replicas": resp(replicas),
    "slots_hostnames": resp(hostnames),
    "slots_split_ipv6": resp(split),
    "moved": err("MOVED 3999 127.0.0.1:6381"),
    "ask": err("ASK 3999 10.0.0.2:7001"),
    "moved_ipv6": err("MOVED 0 ::1:7002"),
    "moved_empty_host": err("MOVED 16383 :7000"),
    "pipeline": resp(three) + err("MOVED 12182 10.0.0.3:7002") + b"+OK\r\n",
    # malformed
    "bad_empty": resp([]),
    "bad_range": resp([[16000, 16384, node("h", 1)]]),
    "bad_port": resp([[0, 1, node("h", 0)]]),
    "bad_host_space": resp([[0, 1, node("a b", 7000)]]),
    "bad_host_long": resp([[0, 1, node("h" * 300, 7000)]]),
    "bad_shape": resp([[0, 1, ["h"]], [0, 1]]),
    "bad_types": resp([["0", 1, node("h", 7000)]]),
    "bad_nil": resp([[0, 1, [None, 7000]]]),
    "bad_moved_slot": err("MOVED x 10.0.0.1:7000"),
    "bad_moved_port": err("MOVED 1 10.0.0.1:70000"),
    "bad_moved_noaddr": err("ASK 1 "),
    "bad_error": err("CLUSTERDOWN The cluster is down"),
    "bad_status": b"+MOVED 1 h:1\r\n",
}
os.makedirs(OUT, exist_ok=True)
for name, data in seeds.items():
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)
print("%d seeds in %s" % (len(seeds), OUT))
