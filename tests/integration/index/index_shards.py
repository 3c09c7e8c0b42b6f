#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""index_shards.py - `kvshare index --shards N`: several models ingested concurrently, every
score checked against a reference model computed here.

Eight topics (four pod names, six models; pods p0, p1 and p3 serve two models each, so one pod
name lands in several shards) publish from their own threads at once, over real ZMQ, each
with its own replay ROUTER. Each round, every topic does a few random operations: store a
prefix of one of its model's documents, remove a middle block of what it holds, a gap
(a batch published to the replay buffer only, then the next live: replayed), an unreplayable
gap (degraded: scores zero), a restart (sequence back to 0, replay buffer emptied: cleared)
or AllBlocksCleared (fresh again). Documents are the same tokens in every model, so the
models' keys are equal and only the model keeps them apart. After each round, every
document of every model is scored until the answers equal the reference (pods holding the
first block, their longest prefix, sorted by blocks then name; degraded pods absent), or the
deadline fails the check. /metrics must show the models spread over several shards (when
N > 1) and every shard's queue empty at the end.

ctest runs it with --shards 1, and with --shards 4 --shard-queue 2 so that the receive thread
also waits for full queues.

With --redis (ctest index_redis_shards, --shards 4): a redis-server is started here (a free
port, a temp dir, both gone at the end) and two replicas A and B, both with the --shards
given, subscribe to every topic and share it; each shard's writer writes its pods through its
own Redis connection. Every score of both replicas must equal the reference and come from
Redis (no fallback, no Redis error); each topic's lease is held by A or B; and at the end a
third replica C with no source loads the snapshot into its own shards and scores the same.

With --redis-cluster (ctest index_redis_cluster): the same against a Redis Cluster of three
masters started here (--cluster-enabled, CLUSTER ADDSLOTSRANGE, CLUSTER MEET), the replicas
given one node and --redis-cluster; the models' keys must spread over the three masters.

Usage: index_shards.py PATH_TO_KVSHARE [--shards N [--shard-queue N]] [--redis|--redis-cluster]
       (KVS_TEST_SEED=n)
"""
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

import zmq

from index_events import BLOCK, FAILS, FakePod, Index, as_int, check, keys

TOPICS = [("p0", "m0"), ("p0", "m3"), ("p1", "m1"), ("p1", "m4"), ("p2", "m2"), ("p2", "m5"),
          ("p3", "m0"), ("p3", "m1")]
MODELS = sorted({m for _, m in TOPICS})
DOCS, DOC_BLOCKS, ROUNDS, OPS = 4, 8, 6, 5
DEADLINE_S = 20


class Topic:
    """One publisher (a vLLM engine serving one model on one pod) and what it holds."""

    def __init__(self, ctx, pod, model):
        self.pod, self.model = pod, model
        self.topic = f"kv@{pod}@{model}"
        self.fake = FakePod(ctx, replay=True)
        self.seq = 0
        self.held = set()  # the reference: block hashes (ints) this pod holds for its model
        self.degraded = False

    def pub(self, events, live=True, buffered=True):
        self.fake.publish(self.topic, self.seq, events, live=live, buffered=buffered)
        self.seq += 1

    def op(self, rng, doc_keys):
        """One random operation, applied to the reference as the index must apply it."""
        r = rng.random()
        if r < 0.45 or not self.held:  # store a prefix of a document
            d = rng.randrange(DOCS)
            n = rng.randint(1, DOC_BLOCKS)
            ks = [as_int(k) for k in doc_keys[d][:n]]
            self.pub([["BlockStored", ks, None, [], BLOCK, None, "GPU"]])
            self.held.update(ks)
        elif r < 0.60:  # remove a middle block of a held chain
            d = rng.randrange(DOCS)
            mid = as_int(doc_keys[d][rng.randint(1, DOC_BLOCKS - 2)])
            self.pub([{"type": "BlockRemoved", "block_hashes": [mid], "medium": "GPU"}])
            self.held.discard(mid)
        elif r < 0.75:  # a gap filled by replay: the index must ask the ROUTER for it
            d = rng.randrange(DOCS)
            ks = [as_int(k) for k in doc_keys[d][:rng.randint(1, DOC_BLOCKS)]]
            self.pub([["BlockStored", ks, None, [], BLOCK, None, "GPU"]], live=False)
            self.held.update(ks)
            victim = rng.choice(sorted(self.held))
            self.pub([["BlockRemoved", [victim], "GPU"]])
            self.held.discard(victim)
        elif r < 0.83:  # an unreplayable gap: degraded until a clear or a restart
            self.pub([["BlockStored", [12345], None, [], BLOCK, None, "GPU"]], live=False,
                     buffered=False)
            self.pub([["BlockStored", [23456], None, [], BLOCK, None, "GPU"]])
            self.held.update([12345, 23456])  # held, but the pod scores zero anyway
            self.degraded = True
        elif r < 0.92:  # a restart: a new process, sequence from 0, empty replay buffer
            self.fake.restart()
            self.seq = 0
            self.held = set()
            self.degraded = False
            d = rng.randrange(DOCS)
            ks = [as_int(k) for k in doc_keys[d][:rng.randint(1, DOC_BLOCKS)]]
            self.pub([["BlockStored", ks, None, [], BLOCK, None, "GPU"]])
            self.held.update(ks)
        else:  # AllBlocksCleared: empty and fresh
            self.pub([["AllBlocksCleared"]])
            self.held = set()
            self.degraded = False


def expected(topics, model, ks):
    """The reference score of keys ks for model: [(pod, blocks)], as the index sorts them."""
    out = []
    for t in topics:
        if t.model != model or t.degraded:
            continue
        n = 0
        while n < len(ks) and ks[n] in t.held:
            n += 1
        if n:
            out.append((t.pod, n))
    return sorted(out, key=lambda pb: (-pb[1], pb[0]))


def metrics(idx):
    _, text = idx.request("/metrics")
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = int(value)
    return out


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_cluster(tmp):
    """Three cluster-enabled redis-servers in tmp, every slot assigned, joined and agreed:
    ([processes], [ports]); SKIP (77) without redis-server."""
    server = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not os.path.exists(server):
        print("SKIP: redis-server not installed (scripts/packages.d/index.txt)")
        sys.exit(77)
    from index_redis import resp
    procs, ports, buses = [], [], []
    for i in range(3):
        port, bus = free_port(), free_port()
        procs.append(subprocess.Popen(
            [server, "--port", str(port), "--bind", "127.0.0.1", "--dir", tmp, "--save", "",
             "--appendonly", "no", "--cluster-enabled", "yes", "--cluster-port", str(bus),
             "--cluster-config-file", os.path.join(tmp, f"nodes-{i}.conf")],
            stdout=open(os.path.join(tmp, f"redis-{i}.log"), "w"), stderr=subprocess.STDOUT))
        ports.append(port)
        buses.append(bus)
    end = time.time() + DEADLINE_S
    while any(resp(p, "PING") != "PONG" for p in ports) and time.time() < end:
        time.sleep(0.02)
    ranges = [(0, 5460), (5461, 10922), (10923, 16383)]
    for p, (lo, hi) in zip(ports, ranges):
        check(resp(p, "CLUSTER", "ADDSLOTSRANGE", lo, hi) == "OK", f"node {p} takes {lo}-{hi}")
    for p, b in zip(ports[1:], buses[1:]):
        resp(ports[0], "CLUSTER", "MEET", "127.0.0.1", p, b)

    def agreed():
        return all("cluster_state:ok" in (resp(p, "CLUSTER", "INFO") or "") and
                   len(resp(p, "CLUSTER", "SLOTS") or []) == 3 for p in ports)
    while not agreed() and time.time() < end:
        time.sleep(0.05)
    check(agreed(), "the cluster formed")
    return procs, ports


def start_redis(tmp):
    """A redis-server on a free port in tmp: (process, port); SKIP (77) without one."""
    server = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not os.path.exists(server):
        print("SKIP: redis-server not installed (scripts/packages.d/index.txt)")
        sys.exit(77)
    from index_redis import resp
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    rs = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--dir", tmp,
                           "--save", "", "--appendonly", "no"],
                          stdout=open(os.path.join(tmp, "redis.log"), "w"), stderr=subprocess.STDOUT)
    end = time.time() + DEADLINE_S
    while resp(port, "PING") != "PONG" and time.time() < end and rs.poll() is None:
        time.sleep(0.02)
    check(resp(port, "PING") == "PONG", "redis-server answers PING")
    return rs, port


def redis_checks(kvshare, extra, ports, url, idxs, topics, docs, doc_keys, others):
    """--redis: the scores above came from Redis; one lease per topic; a replica warmed from the
    snapshot scores the same."""
    from index_redis import resp
    for name, ix in zip("AB", idxs):
        m = metrics(ix)
        check(m.get("kvshare_index_redis_scores_total", 0) > 0 and
              m.get("kvshare_index_redis_fallbacks_total", -1) == 0 and
              m.get("kvshare_index_redis_errors_total", -1) == 0,
              f"replica {name} scored from Redis, without fallback or error "
              f"(scores {m.get('kvshare_index_redis_scores_total')}, fallbacks "
              f"{m.get('kvshare_index_redis_fallbacks_total')}, errors "
              f"{m.get('kvshare_index_redis_errors_total')})")
    # On a cluster, each key lives on one master; the others answer MOVED (an error).
    def get(key):
        vals = [resp(p, "GET", key) for p in ports]
        return next((v for v in vals if isinstance(v, str)), None)
    holders = {t.topic: get(lease_key(t.model, t.pod)) for t in topics}
    check(all(h in ("A", "B") for h in holders.values()), f"each topic's lease is A's or B's ({holders})")
    if len(ports) > 1:
        sizes = [resp(p, "DBSIZE") for p in ports]
        check(all(n > 0 for n in sizes), f"every master holds keys ({sizes})")
        m = metrics(idxs[0])
        check("kvshare_index_redis_redirects_total" in m, "the redirects counter is exported")
    c = Index(kvshare, [], extra + ["--redis", url, "--redis-id", "C"])
    others.append(c)
    bad = []
    for m in MODELS:
        for d in range(DOCS):
            want = expected(topics, m, [as_int(k) for k in doc_keys[d]])
            r = c.score(m, docs[d])
            got = [(p["pod"], p["blocks"]) for p in r.get("pods", [])] if "pods" in r else r
            if got != want:
                bad.append(f"{m} doc {d}: got {got}, want {want}")
    check(not bad, "replica C (no source) scores as the reference" + (f" ({bad[0]})" if bad else ""))
    mc = metrics(c)
    check(mc.get("kvshare_index_redis_snapshot_copies_total", 0) > 0 and
          mc.get("kvshare_index_pairs", 0) == mc.get("kvshare_index_redis_snapshot_copies_total"),
          f"C's shards were warmed by the snapshot ({mc.get('kvshare_index_pairs')} pairs)")


def lease_key(model, pod):
    return f"kvs:l:{{{model}}}@{pod}"


def main():
    kvshare = sys.argv[1]
    extra = sys.argv[2:]
    use_cluster = "--redis-cluster" in extra
    use_redis = "--redis" in extra or use_cluster
    if use_redis:
        extra.remove("--redis-cluster" if use_cluster else "--redis")
    nshards = int(extra[extra.index("--shards") + 1]) if "--shards" in extra else 1
    seed = int(os.environ.get("KVS_TEST_SEED", random.SystemRandom().randint(0, 2**31)))
    print(f"index_shards: KVS_TEST_SEED={seed} {' '.join(extra)}"
          f"{' --redis-cluster' if use_cluster else ' --redis' if use_redis else ''}",
          flush=True)
    ctx = zmq.Context()
    topics = [Topic(ctx, p, m) for p, m in TOPICS]
    docs = [[(d * 7919 + i * 31) % 50000 for i in range(DOC_BLOCKS * BLOCK)] for d in range(DOCS)]
    docs[1][:3 * BLOCK] = docs[0][:3 * BLOCK]  # a shared prefix, then a branch
    doc_keys = [keys(toks) for toks in docs]  # the same in every model: models keep them apart
    srcs = [f"tcp://127.0.0.1:{t.fake.port}@replay=tcp://127.0.0.1:{t.fake.replay_port}"
            for t in topics]
    tmp = tempfile.mkdtemp(prefix="kvs-index-shards-") if use_redis else None
    rss, ports, idxs, others = [], [], [], []
    if use_redis:
        if use_cluster:
            rss, ports = start_cluster(tmp)
            extra = extra + ["--redis-cluster"]
        else:
            rs, port = start_redis(tmp)
            rss, ports = [rs], [port]
        url = f"redis://127.0.0.1:{ports[-1]}"
        extra_r = lambda rid: extra + ["--redis", url, "--redis-id", rid, "--redis-lease-ms", "3000"]
        idxs = [Index(kvshare, srcs, extra_r("A")), Index(kvshare, srcs, extra_r("B"))]
    else:
        idxs = [Index(kvshare, srcs, extra)]
    idx = idxs[0]
    try:
        # Subscriptions connect asynchronously: each topic's first batch is re-sent (as the
        # next sequence number; the index replays what it missed) until every pod is known.
        end = time.time() + DEADLINE_S
        while time.time() < end:
            for t in topics:
                t.pub([["AllBlocksCleared"]])
            time.sleep(0.1)
            if all(metrics(ix).get("kvshare_index_pods") == len(topics) for ix in idxs):
                break
        check(all(metrics(ix).get("kvshare_index_pods") == len(topics) for ix in idxs),
              "every topic known")
        for rnd in range(ROUNDS):
            def run(t, s):
                rng = random.Random(s)
                for _ in range(OPS):
                    t.op(rng, doc_keys)
                    time.sleep(rng.random() * 0.002)
            threads = [threading.Thread(target=run, args=(t, seed * 1000 + rnd * 16 + i))
                       for i, t in enumerate(topics)]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            # Every score of every model equals the reference once the index caught up.
            end = time.time() + DEADLINE_S
            while True:
                bad, listed = [], 0
                for m in MODELS:
                    for d in range(DOCS):
                        want = expected(topics, m, [as_int(k) for k in doc_keys[d]])
                        listed += len(want)
                        for name, ix in zip("AB", idxs):
                            r = ix.score(m, docs[d])
                            got = [(p["pod"], p["blocks"]) for p in r.get("pods", [])] \
                                if "pods" in r else r
                            if got != want:
                                bad.append(f"replica {name}: {m} doc {d}: got {got}, want {want}")
                if not bad or time.time() > end:
                    break
                time.sleep(0.05)
            check(not bad, f"round {rnd}: {len(MODELS) * DOCS} scores ({listed} pods listed) equal "
                  "the reference"
                  + (f" (first of {len(bad)}: {bad[0]})" if bad else ""))
        m = metrics(idx)
        per_shard = [m.get(f'kvshare_index_shard_models{{shard="{i}"}}', -1)
                     for i in range(nshards)]
        check(sum(per_shard) == len(MODELS),
              f"the shards hold every model once (per shard: {per_shard})")
        if nshards > 1:
            check(sum(1 for n in per_shard if n > 0) > 1,
                  f"the models spread over several shards ({per_shard})")
        depth = [m.get(f'kvshare_index_shard_queue_depth{{shard="{i}"}}', -1)
                 for i in range(nshards)]
        check(all(x == 0 for x in depth), f"every shard's queue drained ({depth})")
        hw = [m.get(f'kvshare_index_shard_queue_high_water{{shard="{i}"}}', -1) for i in range(nshards)]
        waits = [m.get(f'kvshare_index_shard_queue_full_waits_total{{shard="{i}"}}', -1)
                 for i in range(nshards)]
        print(f"queues: high water {hw}, full waits {waits} (a small --shard-queue makes the "
              "receive thread wait; the scores above held anyway)", flush=True)
        exercised = {k: m.get(f"kvshare_index_{k}_total", 0)
                     for k in ("gaps", "replays_ok", "replays_failed", "restarts", "events_removed",
                               "events_cleared")}
        check(all(exercised.values()), f"every kind of change was exercised ({exercised})")
        if use_redis:
            redis_checks(kvshare, extra, ports, url, idxs, topics, docs, doc_keys, others)
        for name, ix in zip("ABC", idxs + others):
            check(ix.stop() == 0, f"replica {name}: SIGTERM: clean exit")
    finally:
        for ix in idxs + others:
            if ix.proc.poll() is None:
                ix.proc.kill()
                ix.proc.wait()
        for t in topics:
            t.fake.stop = True
        for rs in rss:
            rs.kill()
            rs.wait()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    if FAILS:
        print(f"FAILED ({len(FAILS)}); replay with KVS_TEST_SEED={seed}", flush=True)
        return 1
    print("PASS", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
