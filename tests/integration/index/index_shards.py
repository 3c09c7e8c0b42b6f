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

Usage: index_shards.py PATH_TO_KVSHARE [--shards N [--shard-queue N]]   (KVS_TEST_SEED=n)
"""
import os
import random
import sys
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


def main():
    kvshare = sys.argv[1]
    extra = sys.argv[2:]
    nshards = int(extra[extra.index("--shards") + 1]) if "--shards" in extra else 1
    seed = int(os.environ.get("KVS_TEST_SEED", random.SystemRandom().randint(0, 2**31)))
    print(f"index_shards: KVS_TEST_SEED={seed} {' '.join(extra)}", flush=True)
    ctx = zmq.Context()
    topics = [Topic(ctx, p, m) for p, m in TOPICS]
    docs = [[(d * 7919 + i * 31) % 50000 for i in range(DOC_BLOCKS * BLOCK)] for d in range(DOCS)]
    docs[1][:3 * BLOCK] = docs[0][:3 * BLOCK]  # a shared prefix, then a branch
    doc_keys = [keys(toks) for toks in docs]  # the same in every model: models keep them apart
    idx = Index(kvshare, [f"tcp://127.0.0.1:{t.fake.port}@replay=tcp://127.0.0.1:{t.fake.replay_port}"
                          for t in topics], extra)
    try:
        # Subscriptions connect asynchronously: each topic's first batch is re-sent (as the
        # next sequence number; the index replays what it missed) until every pod is known.
        end = time.time() + DEADLINE_S
        while time.time() < end:
            for t in topics:
                t.pub([["AllBlocksCleared"]])
            time.sleep(0.1)
            if metrics(idx).get("kvshare_index_pods") == len(topics):
                break
        check(metrics(idx).get("kvshare_index_pods") == len(topics), "every topic known")
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
                        r = idx.score(m, docs[d])
                        got = [(p["pod"], p["blocks"]) for p in r.get("pods", [])] \
                            if "pods" in r else r
                        if got != want:
                            bad.append(f"{m} doc {d}: got {got}, want {want}")
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
        check(idx.stop() == 0, "SIGTERM: clean exit")
    finally:
        if idx.proc.poll() is None:
            idx.proc.kill()
        for t in topics:
            t.fake.stop = True
    if FAILS:
        print(f"FAILED ({len(FAILS)}); replay with KVS_TEST_SEED={seed}", flush=True)
        return 1
    print("PASS", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
