#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""serve_events.py - `kvshare serve --events` seen by `kvshare index` as a tier.

A pool node publishes its stores and evictions as vLLM KV events; an index subscribed to it
(and to a fake vLLM pod holding part of the same prompt) scores the pool pod with medium
KVSHARE_POOL; blocks put with kvs_peer (keys = vLLM sha256_cbor over known tokens) score in
full; eviction (capacity exceeded) produces BlockRemoved and the evicted prefix stops
scoring; SIGTERM on the node publishes AllBlocksCleared.

Usage: serve_events.py PATH_TO_KVSHARE PATH_TO_KVS_PEER
"""
import os
import re
import select
import subprocess
import sys
import tempfile
import time

import zmq

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import index_events as ie  # noqa: E402
from index_events import FakePod, check, pods_of, wait_for  # noqa: E402
from keys_vs_vllm import vllm_keys  # noqa: E402

BS, BLOCK_BYTES = 16, 32768


def prompt(seed, nblocks):
    """The tokens kvs_peer --token-keys hashes for --seed seed."""
    return [(seed * 1000003 + j) % 100000 for j in range(nblocks * BS)]


def main():
    kvshare, peer = sys.argv[1], sys.argv[2]
    tmp = tempfile.mkdtemp(prefix="kvs-serve-events-")
    env = dict(os.environ, KVSHARE_AUTH="none", KVSHARE_AUTH_TOKEN_FILE="", KVSHARE_LOG="warn")
    procs = []
    try:
        ctx = zmq.Context()
        # 4 MiB of 32 KiB blocks: 128 slots, evicting from 90 % down to 80 %.
        node = subprocess.Popen([kvshare, "serve", "--listen", "127.0.0.1:0", "--capacity", "4MiB",
                                 "--events", "tcp://127.0.0.1:*", "--events-pod", "pool-0",
                                 "--events-model", "m1"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=open(os.path.join(tmp, "node.err"), "w"), env=env)
        procs.append(node)
        line, end = b"", time.time() + ie.DEADLINE_S
        while not line.endswith(b"\n") and time.time() < end:
            if select.select([node.stdout], [], [], 0.2)[0]:
                c = os.read(node.stdout.fileno(), 1)
                if not c:
                    break
                line += c
        if not line.startswith(b"ready "):
            raise SystemExit(f"FAIL: kvshare serve not ready: {line!r} "
                             f"{open(os.path.join(tmp, 'node.err')).read()}")
        addr = line.split()[1].decode()
        ep = None
        while ep is None and time.time() < end:
            m = re.search(r"publishing block events on ([^\s,]+)", open(os.path.join(tmp, "node.err")).read())
            ep = m.group(1) if m else time.sleep(0.05)
        check(ep is not None, f"the node says where it publishes ({ep})")

        gpu = FakePod(ctx, replay=False)
        idx = ie.Index(kvshare, [ep, f"tcp://127.0.0.1:{gpu.port}"],
                       extra=["--block-size", str(BS), "--hash-algo", "sha256_cbor", "--hash-seed", "0"])
        procs.append(idx.proc)

        def put(seed, nblocks):
            r = subprocess.run([peer, "put", "--token-keys", "--blocks", str(nblocks), "--segments", "2",
                                "--block-bytes", str(BLOCK_BYTES), "--seed", str(seed)],
                               env=dict(env, KVSHARE_POOL=addr), capture_output=True, text=True,
                               timeout=60)
            check(r.returncode == 0, f"kvs_peer put seed {seed}: {r.stdout.strip()}"
                  + ("" if r.returncode == 0 else f" {r.stderr[-500:]}"))

        # The SUB connects asynchronously: small puts until the index has heard of the node.
        seed = 1000
        while (idx.metric("kvshare_index_pods") or 0) < 1 and time.time() < end:
            put(seed, 1)
            seed += 1
        check((idx.metric("kvshare_index_pods") or 0) >= 1, "the index sees the pool node")

        p1 = prompt(1, 40)
        put(1, 40)
        r = wait_for("the pool pod holds all 40 blocks of prompt 1", lambda: idx.score("m1", p1),
                     lambda r: pods_of(r) == {"pool-0": 40})
        check([p["medium"] for p in r.get("pods", [])] == ["KVSHARE_POOL"], f"medium KVSHARE_POOL ({r})")
        # A vLLM pod holding 10 blocks of the same prompt: both tiers in one score.
        ks = vllm_keys("sha256_cbor", "0", BS, p1, None, None)
        end = time.time() + ie.DEADLINE_S
        while (idx.metric("kvshare_index_pods") or 0) < 2 and time.time() < end:
            gpu.publish("kv@pod-g@m1", 0, [{"type": "AllBlocksCleared"}])
            time.sleep(0.05)
        gpu.publish("kv@pod-g@m1", 1, [{"type": "BlockStored",
                                        "block_hashes": [int.from_bytes(k[-8:], "big") for k in ks[:10]],
                                        "parent_block_hash": None, "token_ids": [], "block_size": BS,
                                        "lora_id": None, "medium": "GPU"}])
        r = wait_for("GPU pod and pool node side by side", lambda: idx.score("m1", p1),
                     lambda r: pods_of(r) == {"pool-0": 40, "pod-g": 10})
        check([(p["pod"], p["medium"]) for p in r["pods"]] == [("pool-0", "KVSHARE_POOL"), ("pod-g", "GPU")],
              "sorted by blocks, each with its tier")

        # Beyond capacity: the node evicts prompt 1's (oldest) blocks and says so.
        p2 = prompt(2, 90)
        put(2, 90)
        wait_for("BlockRemoved events applied", lambda: idx.metric("kvshare_index_events_removed_total"),
                 lambda n: (n or 0) >= 1)
        wait_for("the evicted prefix of prompt 1 no longer scores on the pool",
                 lambda: pods_of(idx.score("m1", p1)).get("pool-0", 0), lambda n: n < 40)
        wait_for("prompt 2 scores in full", lambda: pods_of(idx.score("m1", p2)),
                 lambda p: p == {"pool-0": 90})
        check(idx.metric("kvshare_index_degraded_pods") == 0, "no gap: the node dropped nothing")

        # A queue of one event: a put of many blocks overflows it while the publisher sleeps
        # between drains. Whatever was dropped, the index must not trust the node: dropped
        # events show as a gap (degraded, zero); none dropped, every block scores.
        node2 = subprocess.Popen([kvshare, "serve", "--listen", "127.0.0.1:0", "--capacity", "64MiB",
                                  "--events", "tcp://127.0.0.1:*", "--events-pod", "pool-1",
                                  "--events-model", "m2", "--events-queue", "1",
                                  "--metrics", "127.0.0.1:0"],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=open(os.path.join(tmp, "node2.err"), "w"), env=env)
        procs.append(node2)
        line2 = node2.stdout.readline().decode()
        addr2 = line2.split()[1] if line2.startswith("ready ") else None
        end = time.time() + ie.DEADLINE_S
        while True:  # the node logs both lines just after 'ready'
            err2 = open(os.path.join(tmp, "node2.err")).read()
            m_ep = re.search(r"publishing block events on ([^\s,]+)", err2)
            m_met = re.search(r"metrics on (\S+)", err2)
            if (m_ep and m_met) or time.time() > end:
                break
            time.sleep(0.05)
        check(addr2 and m_ep and m_met, f"node 2 ready ({line2!r} {err2[-300:]})")
        idx2 = ie.Index(kvshare, [m_ep.group(1)],
                        extra=["--block-size", str(BS), "--hash-algo", "sha256_cbor", "--hash-seed", "0"])
        procs.append(idx2.proc)
        seed, end = 2000, time.time() + ie.DEADLINE_S
        while (idx2.metric("kvshare_index_pods") or 0) < 1 and time.time() < end:
            subprocess.run([peer, "put", "--token-keys", "--blocks", "1", "--segments", "2",
                            "--block-bytes", str(BLOCK_BYTES), "--seed", str(seed)],
                           env=dict(env, KVSHARE_POOL=addr2), capture_output=True, timeout=60)
            seed += 1
        r = subprocess.run([peer, "put", "--token-keys", "--blocks", "400", "--segments", "2",
                            "--block-bytes", str(BLOCK_BYTES), "--seed", "3"],
                           env=dict(env, KVSHARE_POOL=addr2), capture_output=True, text=True, timeout=60)
        check(r.returncode == 0, f"put 400 blocks into node 2: {r.stdout.strip()}")

        def node2_metric(name):
            import urllib.request
            with urllib.request.urlopen(f"http://{m_met.group(1)}/metrics", timeout=5) as f:
                for ln in f.read().decode().splitlines():
                    if ln.startswith(name + " "):
                        return int(ln.split()[1])
        p3 = prompt(3, 400)
        warm = seed - 2000  # one block each
        wait_for("node 2 published or dropped every event",
                 lambda: (node2_metric("kvshare_pool_events_published_total") or 0)
                 + (node2_metric("kvshare_pool_events_dropped_total") or 0),
                 lambda n: n >= 400 + warm)
        dropped = node2_metric("kvshare_pool_events_dropped_total")
        if dropped:
            wait_for(f"{dropped} dropped events: the index degrades node 2 (scores zero)",
                     lambda: (idx2.metric("kvshare_index_degraded_pods"), pods_of(idx2.score("m2", p3))),
                     lambda v: v == (1, {}))
        else:
            wait_for("nothing dropped: node 2 scores all 400 blocks", lambda: pods_of(idx2.score("m2", p3)),
                     lambda p: p == {"pool-1": 400})
        node2.stdin.close()
        check(node2.wait(timeout=ie.DEADLINE_S) == 0, "node 2 stops cleanly")
        check(idx2.stop() == 0, "index 2 stops cleanly")

        # Replay: node 3 keeps its batches; an index that starts after the blocks were put
        # replays them from 0 when it first hears the node, and is warm.
        node3 = subprocess.Popen([kvshare, "serve", "--listen", "127.0.0.1:0", "--capacity", "64MiB",
                                  "--events", "tcp://127.0.0.1:*", "--events-pod", "pool-2",
                                  "--events-model", "m3", "--events-replay", "tcp://127.0.0.1:*"],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=open(os.path.join(tmp, "node3.err"), "w"), env=env)
        procs.append(node3)
        line3 = node3.stdout.readline().decode()
        addr3 = line3.split()[1] if line3.startswith("ready ") else None
        end = time.time() + ie.DEADLINE_S
        while True:
            m3 = re.search(r"publishing block events on ([^\s,]+), replay on (\S+)",
                           open(os.path.join(tmp, "node3.err")).read())
            if m3 or time.time() > end:
                break
            time.sleep(0.05)
        check(addr3 and m3, "node 3 publishes with a replay endpoint")
        r = subprocess.run([peer, "put", "--token-keys", "--blocks", "30", "--segments", "2",
                            "--block-bytes", str(BLOCK_BYTES), "--seed", "4"],
                           env=dict(env, KVSHARE_POOL=addr3), capture_output=True, text=True, timeout=60)
        check(r.returncode == 0, f"put 30 blocks into node 3 before any index: {r.stdout.strip()}")
        idx3 = ie.Index(kvshare, [f"{m3.group(1)}@replay={m3.group(2)}"],
                        extra=["--block-size", str(BS), "--hash-algo", "sha256_cbor", "--hash-seed", "0"])
        procs.append(idx3.proc)
        seed, p4 = 3000, prompt(4, 30)
        end = time.time() + ie.DEADLINE_S
        while pods_of(idx3.score("m3", p4)) != {"pool-2": 30} and time.time() < end:
            subprocess.run([peer, "put", "--token-keys", "--blocks", "1", "--segments", "2",
                            "--block-bytes", str(BLOCK_BYTES), "--seed", str(seed)],
                           env=dict(env, KVSHARE_POOL=addr3), capture_output=True, timeout=60)
            seed += 1
        check(pods_of(idx3.score("m3", p4)) == {"pool-2": 30}, "a late index is warm from the replay")
        check((idx3.metric("kvshare_index_replayed_batches_total") or 0) >= 1, "batches replayed")
        node3.stdin.close()
        check(node3.wait(timeout=ie.DEADLINE_S) == 0, "node 3 stops cleanly")
        check(idx3.stop() == 0, "index 3 stops cleanly")

        # The node stops: AllBlocksCleared empties its part of the index.
        node.stdin.close()
        rc = node.wait(timeout=ie.DEADLINE_S)
        check(rc == 0, f"the node stops cleanly (exit {rc})")
        wait_for("the stopped node's blocks are cleared", lambda: pods_of(idx.score("m1", p2)),
                 lambda p: p == {})
        check(pods_of(idx.score("m1", p1)) == {"pod-g": 10}, "the GPU pod keeps its blocks")
        check(idx.stop() == 0, "the index stops cleanly")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for f in os.listdir(tmp):
            os.unlink(os.path.join(tmp, f))
        os.rmdir(tmp)
    if ie.FAILS:
        print(f"serve_events: {len(ie.FAILS)} failure(s)")
        sys.exit(1)
    print("serve_events: all checks passed")


if __name__ == "__main__":
    main()
