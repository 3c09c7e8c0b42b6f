#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""index_events.py - `kvshare index` against fake vLLM pods publishing over real ZMQ.

Fake pods publish as vllm/distributed/kv_events.py does: PUB frames (topic, seq as 8 bytes
big-endian, msgpack EventBatch), and a ROUTER that answers [b"", start_seq] with
(seq, payload) frames then seq = -1. Pod A speaks the positional encoding (with a replay
ROUTER); pods B (model m1) and C (model m2) speak the map encoding (no replay). Block keys
come from vLLM's algorithm re-stated in tests/unit/keys_vs_vllm.py, not from kvshare.

Checks: longest prefix per pod, sorted; a removed middle block; LoRA and cache salt; two
models; a pod publishing to a bound endpoint; a gap filled by replay; an unreplayable gap (degraded, scores zero, fresh after a
restart); a restart (sequence backwards: cleared); a restart whose first batch was lost
(replayed from 0); a degraded pod fresh again after AllBlocksCleared; malformed frames
counted while the index keeps serving; HTTP errors; SIGTERM.

Usage: index_events.py PATH_TO_KVSHARE   (KVS_TEST_SEED=n replays a run)
"""
import json
import os
import random
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import msgpack
import zmq

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "unit"))
from keys_vs_vllm import vllm_keys  # noqa: E402

BLOCK, ALGO, SEED = 4, "xxhash_cbor", "7"
DEADLINE_S = 15
FAILS = []


def check(cond, what):
    print(("ok: " if cond else "FAIL: ") + what, flush=True)
    if not cond:
        FAILS.append(what)


def keys(tokens, lora=None, salt=None):
    """Digests (bytes) of each full block, as vLLM hashes them."""
    return vllm_keys(ALGO, SEED, BLOCK, tokens, salt, lora)


def as_int(digest):
    return int.from_bytes(digest[-8:], "big")


class FakePod:
    """One vLLM publisher process: a PUB socket, optionally a replay ROUTER."""

    def __init__(self, ctx, replay):
        self.pub = ctx.socket(zmq.PUB)
        self.port = self.pub.bind_to_random_port("tcp://127.0.0.1")
        self.buffer = []  # (seq, payload), as vLLM's replay deque
        self.lock = threading.Lock()
        self.router = None
        self.stop = False
        if replay:
            self.router = ctx.socket(zmq.ROUTER)
            self.replay_port = self.router.bind_to_random_port("tcp://127.0.0.1")
            self.thread = threading.Thread(target=self.serve_replay, daemon=True)
            self.thread.start()

    def serve_replay(self):
        while not self.stop:
            if not self.router.poll(50):
                continue
            frames = self.router.recv_multipart()
            if len(frames) != 3:
                continue
            ident, _, start = frames
            start = int.from_bytes(start, "big")
            with self.lock:
                items = [(s, p) for (s, p) in self.buffer if s >= start]
            for s, p in items:
                self.router.send_multipart([ident, b"", s.to_bytes(8, "big"), p])
            self.router.send_multipart([ident, b"", (-1).to_bytes(8, "big", signed=True), b""])

    def publish(self, topic, seq, events, live=True, buffered=True):
        payload = msgpack.packb([time.time(), events, 0], use_bin_type=True)
        if buffered:
            with self.lock:
                self.buffer.append((seq, payload))
        if live:
            self.pub.send_multipart([topic.encode(), seq.to_bytes(8, "big"), payload])

    def restart(self):
        with self.lock:
            self.buffer = []


def stored_positional(digests, lora=None, medium="GPU", short=False):
    ev = ["BlockStored", [as_int(d) for d in digests], None, [], BLOCK, None, medium]
    if not short:  # newer vLLMs add trailing fields; older ones stop at medium
        ev += [lora, [[lora] if lora else None for _ in digests], 0, "full_attention"]
    return ev


def stored_map(digests, lora=None, salt=None, as_bytes=True):
    extra = []
    for i in range(len(digests)):
        e = ([lora] if lora else []) + ([salt] if salt and i == 0 else [])
        extra.append(e or None)
    return {"type": "BlockStored", "block_hashes": [d if as_bytes else as_int(d) for d in digests],
            "parent_block_hash": None, "token_ids": [], "block_size": BLOCK, "lora_id": None,
            "medium": "GPU", "lora_name": lora, "extra_keys": extra, "group_idx": 0,
            "kv_cache_spec_kind": "full_attention", "a_field_from_the_future": {"x": 1}}


class Index:
    def __init__(self, kvshare, sources, extra=(), stderr=None):
        args = [kvshare, "index", "--http", "127.0.0.1:0", "--block-size", str(BLOCK),
                "--hash-algo", ALGO, "--hash-seed", SEED] + list(extra)
        # The suite runs these tests with --shards 1 and 4 (ctest's *_shards4 entries).
        if os.environ.get("KVS_TEST_INDEX_SHARDS") and "--redis" not in args:
            args += ["--shards", os.environ["KVS_TEST_INDEX_SHARDS"]]
        for s in sources:
            args += ["--source", s]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE,
                                     stderr=sys.stderr if stderr is None else stderr)
        line = b""
        end = time.time() + DEADLINE_S
        while not line.endswith(b"\n") and time.time() < end:
            r, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if r:
                c = os.read(self.proc.stdout.fileno(), 1)
                if not c:
                    break
                line += c
        line = line.decode().strip()
        if not line.startswith("ready http://"):
            self.proc.kill()
            raise SystemExit(f"FAIL: kvshare index did not print 'ready http://...': {line!r}")
        self.url = line.split(" ", 1)[1]

    def stop(self):
        """SIGTERM; the exit status, or "timeout"."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=DEADLINE_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return "timeout"

    def request(self, path, body=None):
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        req = urllib.request.Request(self.url + path, data=data, method="POST" if data is not None else "GET")
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def score(self, model, tokens, **kw):
        body = {"model": model, "token_ids": tokens}
        body.update(kw)
        code, text = self.request("/v1/score", body)
        return json.loads(text) if code == 200 else {"code": code, "text": text}

    def metric(self, name):
        _, text = self.request("/metrics")
        for line in text.splitlines():
            if line.startswith(name + " "):
                return int(line.split()[1])
        return None


def pods_of(resp):
    return {p["pod"]: p["blocks"] for p in resp.get("pods", [])}


def wait_for(what, fn, pred):
    """Polls fn() until pred(result) holds or the deadline passes; checks and returns it."""
    end = time.time() + DEADLINE_S
    while True:
        res = fn()
        if pred(res) or time.time() > end:
            check(pred(res), f"{what} (got {res})")
            return res
        time.sleep(0.02)


def main():
    kvshare = sys.argv[1]
    seed = int(os.environ.get("KVS_TEST_SEED", random.SystemRandom().randint(0, 2**31)))
    rng = random.Random(seed)
    print(f"index_events: KVS_TEST_SEED={seed}", flush=True)
    ctx = zmq.Context()
    a = FakePod(ctx, replay=True)   # pod-a, model m1, positional
    bc = FakePod(ctx, replay=False)  # pod-b (m1) and pod-c (m2), map
    # A bound endpoint: pod D connects its PUB to the index (a free port, found by the OS).
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        bound_port = probe.getsockname()[1]
    idx = Index(kvshare, [f"tcp://127.0.0.1:{a.port}@replay=tcp://127.0.0.1:{a.replay_port}",
                          f"tcp://127.0.0.1:{bc.port}", f"bind:tcp://127.0.0.1:{bound_port}"])
    d = ctx.socket(zmq.PUB)
    d.connect(f"tcp://127.0.0.1:{bound_port}")
    TA, TB, TC, TD = "kv@pod-a@m1", "kv@pod-b@m1", "kv@pod-c@m2", "kv@pod-d@m2"
    seq = {TA: 0, TB: 0, TC: 0, TD: 0}

    def pub(pod, topic, events, **kw):
        pod.publish(topic, seq[topic], events, **kw)
        seq[topic] += 1

    # Subscriptions connect asynchronously: announce each pod (a harmless clear) until the
    # index has seen it. Pod A's later announcements replay its earlier ones.
    for pod, topic, want in ((a, TA, 1), (bc, TB, 2), (bc, TC, 3)):
        end = time.time() + DEADLINE_S
        while (idx.metric("kvshare_index_pods") or 0) < want and time.time() < end:
            pub(pod, topic, [["AllBlocksCleared"]] if pod is a else [{"type": "AllBlocksCleared"}])
            time.sleep(0.05)
        check((idx.metric("kvshare_index_pods") or 0) >= want, f"index sees {topic}")

    prompt = [rng.randint(0, 150000) for _ in range(10 * BLOCK + 3)]  # 10 blocks + a tail
    k = keys(prompt)
    # Longest prefix per pod, sorted, with tokens; ints (A) and bytes (B) hashes.
    pub(a, TA, [stored_positional(k[:6]), stored_positional(k[6:], short=True)])
    pub(bc, TB, [stored_map(k[:6])])
    r = wait_for("A holds 10 blocks, B 6", lambda: idx.score("m1", prompt),
                 lambda r: pods_of(r) == {"pod-a": 10, "pod-b": 6})
    check(r.get("blocks") == 10 and [p["pod"] for p in r["pods"]] == ["pod-a", "pod-b"],
          "score sorted by blocks, 10 prompt blocks")
    check(all(p["tokens"] == p["blocks"] * BLOCK and p["medium"] == "GPU" for p in r["pods"]),
          "tokens = blocks * block size, medium GPU")
    r = idx.score("m1", prompt, pods=["pod-b", "pod-zzz"])
    check(pods_of(r) == {"pod-b": 6}, f"pods filter keeps only pod-b ({r})")

    # A middle block removed: the prefix stops there.
    pub(a, TA, [["BlockRemoved", [as_int(k[4])], "GPU"]])
    wait_for("A's prefix stops at removed block 4", lambda: pods_of(idx.score("m1", prompt)),
             lambda p: p == {"pod-a": 4, "pod-b": 6})

    # LoRA: only the same adapter matches. Cache salt: only the same salt.
    kl = keys(prompt, lora="ad1")
    pub(a, TA, [stored_positional(kl, lora="ad1")])
    wait_for("LoRA ad1 prompt matches A only", lambda: pods_of(idx.score("m1", prompt, lora_name="ad1")),
             lambda p: p == {"pod-a": 10})
    check(pods_of(idx.score("m1", prompt, lora_name="ad2")) == {}, "LoRA ad2 matches nothing")
    ks = keys(prompt, salt="s1")
    pub(bc, TB, [stored_map(ks, salt="s1", as_bytes=False)])
    wait_for("salted prompt matches B only", lambda: pods_of(idx.score("m1", prompt, cache_salt="s1")),
             lambda p: p == {"pod-b": 10})
    check(pods_of(idx.score("m1", prompt)) == {"pod-a": 4, "pod-b": 6}, "unsalted scores unchanged")

    # Two models: C's blocks never show in m1.
    pub(bc, TC, [stored_map(k)])
    wait_for("m2 sees C", lambda: pods_of(idx.score("m2", prompt)), lambda p: p == {"pod-c": 10})
    check("pod-c" not in pods_of(idx.score("m1", prompt)), "m1 does not see C")

    # Pod D publishes through the index's bound endpoint.
    def pub_d(events):
        d.send_multipart([TD.encode(), seq[TD].to_bytes(8, "big"),
                          msgpack.packb([time.time(), events], use_bin_type=True)])
        seq[TD] += 1
    end = time.time() + DEADLINE_S
    while (idx.metric("kvshare_index_pods") or 0) < 4 and time.time() < end:
        pub_d([{"type": "AllBlocksCleared"}])
        time.sleep(0.05)
    pub_d([stored_map(k[:8])])
    wait_for("m2 sees D through the bound endpoint", lambda: pods_of(idx.score("m2", prompt)),
             lambda p: p == {"pod-c": 10, "pod-d": 8})

    # A gap on A: batch n is lost live but kept in A's replay buffer.
    q = [rng.randint(0, 150000) for _ in range(6 * BLOCK)]
    kq = keys(q)
    pub(a, TA, [stored_positional(kq[:3])], live=False)
    pub(a, TA, [stored_positional(kq[3:])])
    wait_for("gap replayed: A holds all 6 blocks of q", lambda: pods_of(idx.score("m1", q)),
             lambda p: p == {"pod-a": 6})
    check((idx.metric("kvshare_index_gaps_total") or 0) >= 1 and
          (idx.metric("kvshare_index_replays_ok_total") or 0) >= 1, "gap counted, replay ok")

    # An unreplayable gap on B: degraded, scores zero.
    pub(bc, TB, [stored_map(k[6:])], live=False, buffered=False)
    pub(bc, TB, [stored_map(kq)])
    wait_for("degraded B scores zero", lambda: pods_of(idx.score("m1", prompt)),
             lambda p: p == {"pod-a": 4})
    check(idx.metric("kvshare_index_degraded_pods") == 1, "one degraded pod")
    check(pods_of(idx.score("m1", q)) == {"pod-a": 6}, "degraded B absent from q too")

    # Malformed frames: counted, skipped; the index keeps serving.
    before = idx.metric("kvshare_index_malformed_total")
    bc.pub.send_multipart([TB.encode(), seq[TB].to_bytes(8, "big"), b"\xc1 not msgpack"])
    seq[TB] += 1
    bc.pub.send_multipart([TB.encode(), b"\x00\x01"])  # two frames
    bc.pub.send_multipart([b"no-ats-here", (0).to_bytes(8, "big"), b"\x90"])
    bc.pub.send_multipart([TB.encode(), b"\x01", b"\x90"])  # seq not 8 bytes
    wait_for("4 malformed frames counted", lambda: idx.metric("kvshare_index_malformed_total") - before,
             lambda n: n >= 4)
    check(idx.request("/healthz")[0] == 200 and idx.request("/readyz")[0] == 200, "healthz, readyz 200")

    # Restarts: sequences start again at 0. A is cleared; B becomes fresh.
    a.restart()
    seq[TA] = 0
    seq[TB] = 0
    pub(a, TA, [stored_positional(k[:2])])
    pub(bc, TB, [stored_map(k[:3])])
    wait_for("after restarts A holds 2, B 3", lambda: pods_of(idx.score("m1", prompt)),
             lambda p: p == {"pod-b": 3, "pod-a": 2})
    check(pods_of(idx.score("m1", q)) == {}, "A's blocks from before its restart are gone")
    check((idx.metric("kvshare_index_restarts_total") or 0) >= 2, "two restarts counted")
    check(idx.metric("kvshare_index_degraded_pods") == 0, "no degraded pod after B's restart")

    # A restart whose first batch was lost live: A has reached seq 3, the new process's
    # seq 0 is lost, its seq 1 arrives: backwards, so a restart, and [0, 1) is replayed
    # from the new process's buffer.
    for _ in range(3):
        pub(a, TA, [["BlockRemoved", [12345], "GPU"]])
    a.restart()
    seq[TA] = 0
    pub(a, TA, [stored_positional(k[:5])], live=False)
    pub(a, TA, [stored_positional(kq[:1])])
    wait_for("restart with a lost first batch: replayed", lambda: (pods_of(idx.score("m1", prompt)),
                                                                   pods_of(idx.score("m1", q))),
             lambda r: r == ({"pod-b": 3, "pod-a": 5}, {"pod-a": 1}))

    # A degraded pod is fresh again after AllBlocksCleared.
    pub(bc, TC, [stored_map(k[:1])], live=False, buffered=False)
    pub(bc, TC, [stored_map(k)])
    wait_for("degraded C scores zero", lambda: pods_of(idx.score("m2", prompt)),
             lambda p: p == {"pod-d": 8})
    pub(bc, TC, [{"type": "AllBlocksCleared"}, stored_map(k[:7])])
    wait_for("C fresh after AllBlocksCleared", lambda: pods_of(idx.score("m2", prompt)),
             lambda p: p == {"pod-c": 7, "pod-d": 8})

    # Readers in parallel with the writer: every answer is a well-formed 200.
    bad = []

    def reader():
        for _ in range(30):
            r = idx.score("m1", prompt)
            if "pods" not in r:
                bad.append(r)

    threads = [threading.Thread(target=reader) for _ in range(8)]
    for t in threads:
        t.start()
    for i in range(40):
        pub(bc, TC, [stored_map(kq[:1 + i % 6]), {"type": "BlockRemoved", "block_hashes": [kq[5]]}])
    for t in threads:
        t.join()
    check(not bad, f"240 scores alongside 40 batches all answered ({bad[:2]})")

    # HTTP errors: a 4xx with a reason, never a crash.
    for body, code, frag in ((b"{not json", 400, "JSON"),
                             ({"model": "nope", "token_ids": [1]}, 404, "unknown model"),
                             ({"model": "m1", "token_ids": [1, -2]}, 400, "token_ids[1]"),
                             ({"model": "m1", "token_ids": "abc"}, 400, "token_ids"),
                             ({"token_ids": [1]}, 400, "model")):
        c, text = idx.request("/v1/score", body)
        check(c == code and frag in text, f"{body!r} -> {c} {text}")
    check(idx.request("/nowhere")[0] == 404, "unknown path 404")
    check(idx.request("/v1/score")[0] == 405, "GET /v1/score 405")
    check(idx.request("/healthz", b"x")[0] == 405, "POST /healthz 405")
    _, text = idx.request("/metrics")
    check("kvshare_index_scores_total" in text and "kvshare_index_bytes" in text,
          "metrics list scores and bytes")

    idx.proc.send_signal(signal.SIGTERM)
    try:
        rc = idx.proc.wait(timeout=DEADLINE_S)
    except subprocess.TimeoutExpired:
        idx.proc.kill()
        rc = "timeout"
    check(rc == 0, f"SIGTERM stops it cleanly (exit {rc})")
    a.stop = True
    if FAILS:
        print(f"index_events: {len(FAILS)} failure(s); KVS_TEST_SEED={seed}")
        sys.exit(1)
    print("index_events: all checks passed")


if __name__ == "__main__":
    main()
