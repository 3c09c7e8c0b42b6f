#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""scenarios.py - a KV connector driven by the mini vLLM engine, checked on results.

Why: a connector is correct when vLLM, calling it as vLLM does, generates the
tokens a local recompute generates, with the KV it moved bit-for-bit equal to
the KV its producer computed. Every scenario checks exactly that (and frees,
statuses and deadlines), never just "no crash".

  selftest   the harness alone (no kvshare): every KV layout, TP 1 and 2, MLA,
             chunked prefill, local prefix hits, vLLM's call order; a toy async
             connector's good load, its failed load under both
             kv_load_failure_policy values, and a lying connector whose wrong
             KV must be caught (the check can fail).
  pd         P/D over two processes, proxy as vLLM's toy proxy
  tp2        the same with two TP ranks on each side, P prefilling in chunks
  tp2to1     P at TP 2, D at TP 1: each D block is fetched from both P ranks
             (half the KV heads each), checked per KV head
  tp1to2     P at TP 1, D at TP 2: both D ranks read P's one rank, D's rank 1
             only after P had its chance to free: P must wait for both
  tp1to2rep  the same with one KV head, which both D ranks replicate
  partial    D already holds the prompt's head: only the tail is fetched (HND)
  pool       prefix reuse across two replicas through a `kvshare serve` pool
             (the older (2, num_blocks, ...) KV shape, bf16)
  killed     P killed before D fetches: D fails or recomputes per policy, no hang
  abort      the request never reaches D: P frees its blocks at lease expiry;
             D aborts before its transfer (MLA, fp32)

Usage: scenarios.py NAME [--build DIR | --library SO --kvshare BIN] [--asan-preload SO]
  --build DIR: a build tree (DIR/libkvshare/libkvshare.so.0, DIR/libkvshare/cli/kvshare).
  --asan-preload SO: the library is ASan-built; engines (python) get LD_PRELOAD=SO and
  ASAN_OPTIONS=detect_leaks=0 (python's own allocations are not ours to leak-check).
  KVSHARE_* tunables are set here per scenario.
Exit 0 pass, 1 fail, 77 skip (no torch, or no connector on this branch).
"""
import argparse
import json
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SERVER = HERE / "engine_server.py"
KVSHARE_CONNECTOR = {"kv_connector": "KVShareConnector",
                     "kv_connector_module_path": "kvshare_vllm.connector"}
NULL_CONNECTOR = {"kv_connector": "NullConnector", "kv_connector_module_path": "null_connector",
                  "kv_role": "kv_both"}
SKIP = 77
T_REQ = 60        # seconds a request may take before we call it a hang


class Fail(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Fail(what)
    print(f"ok: {what}", flush=True)


def prompt_of(rng, n):
    return [rng.randrange(1, 32000) for _ in range(n)]


# ----------------------------------------------------------------------------- engine processes

class EngineProc:
    """One engine_server.py process (its own session: kill() takes its workers too)."""

    def __init__(self, name, args, env, work):
        self.name = name
        self.args = args
        self.errpath = Path(work) / f"{name}.err"
        self.p = subprocess.Popen([sys.executable, str(SERVER), json.dumps(args)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=open(self.errpath, "w"), env=env,
                                  start_new_session=True)
        self.buf = b""
        self.events = []
        self.ready = None

    def wait_ready(self, timeout=90):
        ev = self._wait(lambda e: e["event"] in ("ready", "init_failed"), timeout)
        if ev["event"] != "ready":
            raise Fail(f"{self.name}: engine init failed:\n{ev.get('error')}")
        self.ready = ev
        return self

    def _read(self, deadline):
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            r, _, _ = select.select([self.p.stdout], [], [], left)
            if r:
                chunk = os.read(self.p.stdout.fileno(), 65536)
                if not chunk:
                    raise Fail(f"{self.name}: engine exited (rc {self.p.wait()}); "
                               f"stderr tail:\n{self.tail()}")
                self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def _wait(self, pred, timeout):
        for i, e in enumerate(self.events):
            if pred(e):
                return self.events.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            e = self._read(deadline)
            if e is None:
                raise Fail(f"{self.name}: no answer in {timeout} s (a hang); stderr tail:\n"
                           f"{self.tail()}")
            if e["event"] in ("engine_dead", "error"):
                raise Fail(f"{self.name}: {e['event']}:\n{e.get('error')}")
            if pred(e):
                return e
            self.events.append(e)

    def send(self, obj):
        self.p.stdin.write((json.dumps(obj) + "\n").encode())
        self.p.stdin.flush()

    def submit(self, rid, prompt, max_tokens, kv_transfer_params=None):
        self.send({"op": "submit", "id": rid, "prompt": prompt, "max_tokens": max_tokens,
                   "kv_transfer_params": kv_transfer_params})

    def result(self, rid, timeout=T_REQ):
        return self._wait(lambda e: e["event"] == "finished" and e["id"] == rid, timeout)

    def generate(self, rid, prompt, max_tokens, kv_transfer_params=None, timeout=T_REQ):
        self.submit(rid, prompt, max_tokens, kv_transfer_params)
        return self.result(rid, timeout)

    def abort(self, rid):
        self.send({"op": "abort", "id": rid})

    def dump(self, prompt):
        self.send({"op": "dump", "prompt": prompt})
        return self._wait(lambda e: e["event"] == "dump", 30)

    def stats(self):
        self.send({"op": "stats"})
        return self._wait(lambda e: e["event"] == "stats", 30)

    def tail(self, n=30):
        try:
            return "".join(self.errpath.read_text().splitlines(True)[-n:])
        except OSError:
            return ""

    def kill(self):
        try:
            os.killpg(self.p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.p.wait()

    def close(self):
        if self.p.poll() is None:
            try:
                self.send({"op": "quit"})
                self.p.wait(timeout=15)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self.kill()


class Env:
    """A scratch dir (TMPDIR for every child too), the processes, and their cleanup."""

    def __init__(self, library, kvshare, asan_preload=None):
        self.library, self.kvshare, self.asan_preload = library, kvshare, asan_preload
        self.work = tempfile.mkdtemp(prefix="kvs-vllm-")
        self.procs = []
        self.token = Path(self.work) / "run.token"
        self.token.write_bytes(os.urandom(24).hex().encode())
        self.token.chmod(0o600)

    def env(self, **kv):
        e = dict(os.environ)
        for k in [k for k in e if k.startswith("KVSHARE_")]:
            del e[k]
        e.update({
            "PYTHONPATH": os.pathsep.join([str(HERE), str(REPO / "connectors" / "vllm")]),
            "PYTHONHASHSEED": "0", "TMPDIR": self.work, "PYTHONDONTWRITEBYTECODE": "1",
            "KVSHARE_AUTH_TOKEN_FILE": str(self.token),
            # The library logs nothing by default; a failed run's stderr tail
            # should say which connection or request went wrong.
            "KVSHARE_LOG": "info",
            # A test checks what moved, not how fast: on a 2-core CI host
            # running two of these at once (a dozen processes importing
            # torch) one lookup once took over the connector's 5 s default
            # and failed the load. Dead-peer scenarios fail fast (refused
            # connections, closed sockets), not on this deadline.
            "KVSHARE_FETCH_TIMEOUT_MS": "20000",
        })
        if self.library:
            e["KVSHARE_LIBRARY"] = str(self.library)
        e.update({k: str(v) for k, v in kv.items() if v is not None})
        return e

    def engine(self, name, args, **envkv):
        env = self.env(**envkv)
        if self.asan_preload:
            env["LD_PRELOAD"] = self.asan_preload
            env["ASAN_OPTIONS"] = "detect_leaks=0:" + env.get("ASAN_OPTIONS", "")
        p = EngineProc(name, args, env, self.work)
        self.procs.append(p)
        return p

    def pool_node(self):
        kvshare = self.kvshare
        err = open(Path(self.work) / "pool.err", "w")
        p = subprocess.Popen([str(kvshare), "serve", "--listen", "127.0.0.1:0",
                              "--capacity", "64MiB"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=err, env=self.env(),
                             start_new_session=True)
        self.procs.append(p)
        deadline = time.monotonic() + 30
        line = b""
        while time.monotonic() < deadline:
            r, _, _ = select.select([p.stdout], [], [], 1)
            if r:
                line = p.stdout.readline()
                if line.startswith(b"ready "):
                    return line.split()[1].decode()
                if not line:
                    break
        raise Fail(f"kvshare serve not ready: {(Path(self.work) / 'pool.err').read_text()}")

    def close(self, failed=False):
        for p in self.procs:
            if failed and isinstance(p, EngineProc):
                print(f"--- {p.name} stderr tail\n{p.tail(40)}")
            try:
                p.close() if isinstance(p, EngineProc) else (os.killpg(p.pid, signal.SIGKILL),
                                                             p.wait())
            except Exception:
                pass
        shutil.rmtree(self.work, ignore_errors=True)


# ----------------------------------------------------------------------------- shared checks

MODEL = dict(num_layers=4, num_kv_heads=4, head_size=16, dtype="float16", block_size=16,
             num_blocks=128)


def reference(prompt, max_tokens, args):
    import torch
    import toymodel
    return toymodel.reference_generate(prompt, max_tokens, args["num_layers"],
                                       args["num_kv_heads"], args["head_size"],
                                       getattr(torch, args["dtype"]), args.get("use_mla", False))


def same_blocks(a, b, prompt, what, per_head=False):
    """The prompt's full blocks hold bit-identical KV on both engines, on every rank
    (@per_head: per global KV head, for engines at different TP sizes)."""
    da, db = a.dump(prompt), b.dump(prompt)
    n = len(prompt) // MODEL["block_size"]
    check(len(da["hashes"]) == n and da["hashes"] == db["hashes"],
          f"{what}: both engines hash the prompt's {n} full blocks alike")
    check(all(x is not None for x in da["block_ids"]) and all(x is not None for x in db["block_ids"]),
          f"{what}: both engines hold all {n} full prompt blocks in their prefix cache")
    if per_head:
        for i, (ha, hb) in enumerate(zip(da["head_digests"], db["head_digests"])):
            check(sorted(ha) == sorted(hb) and len(ha) > 0,
                  f"{what}: block {i}: both engines hold KV heads {sorted(ha)}")
            bad = [h for h in sorted(ha) if ha[h] != hb[h]]
            check(not bad, f"{what}: block {i}: every KV head bit-for-bit equal"
                  if not bad else f"{what}: block {i}: KV heads {bad} differ")
        return
    for rank, (ra, rb) in enumerate(zip(da["digests"], db["digests"])):
        bad = [i for i, (x, y) in enumerate(zip(ra, rb)) if x != y]
        check(not bad, f"{what}: rank {rank}: KV of blocks {bad or 'all'} bit-for-bit equal"
              if not bad else f"{what}: rank {rank}: KV differs in blocks {bad}")


def proxy_prefill_params():
    """What vLLM's toy proxy sends P (tests/v1/kv_connector/nixl_integration/toy_proxy_server.py)."""
    return {"do_remote_decode": True, "do_remote_prefill": False, "remote_engine_id": None,
            "remote_block_ids": None, "remote_host": None, "remote_port": None}


def need_connector():
    if not (REPO / "connectors" / "vllm" / "kvshare_vllm" / "connector.py").exists():
        print("SKIP: connectors/vllm/kvshare_vllm/connector.py is not on this branch")
        sys.exit(SKIP)


def eng_args(role, tp=1, policy="fail", layout="NHD", **extra):
    kt = dict(KVSHARE_CONNECTOR, kv_role=role, kv_load_failure_policy=policy)
    return dict(MODEL, tp=tp, layout=layout, kv_transfer_config=kt, **extra)


def all_free(e, what, timeout=20):
    deadline = time.monotonic() + timeout
    while True:
        s = e.stats()
        if s["free_blocks"] == s["usable_blocks"] and not s["held"]:
            check(not s["errors"], f"{what}: no engine invariant broken {s['errors']}")
            return s
        if time.monotonic() > deadline:
            raise Fail(f"{what}: blocks still held after {timeout} s: {s}")
        time.sleep(0.05)


def is_free(e):
    s = e.stats()
    return s["free_blocks"] == s["usable_blocks"] and not s["held"]


def run_pd(env, rng, tp=1, partial=False, plen=77, max_tokens=6, p_budget=256, d_tp=None,
           hold_rank=None, p_env=None, **model):
    """@hold_rank: that D rank starts its load only once P has freed the
    request's blocks or had 3 s to (engine.py's KVS_TEST_HOLD_*)."""
    d_tp = tp if d_tp is None else d_tp
    args_p = eng_args("kv_producer", tp, max_num_batched_tokens=p_budget, **model)
    args_d = eng_args("kv_consumer", d_tp, **model)
    print(f"info: P/D with tp={tp}" + (f", D tp={d_tp}" if d_tp != tp else "") +
          f" {model or ''}", flush=True)
    p = env.engine("prefill", args_p, KVSHARE_LISTEN="127.0.0.1:0", **(p_env or {}))
    gate = Path(env.work) / "d-hold"
    d = env.engine("decode", args_d, **(dict(KVS_TEST_HOLD_RANK=hold_rank, KVS_TEST_HOLD_FILE=gate)
                                        if hold_rank is not None else {}))
    p.wait_ready(), d.wait_ready()
    prompt = prompt_of(rng, plen)
    ref = reference(prompt, max_tokens, args_d)
    bs = MODEL["block_size"]
    local = 0
    if partial:
        # D computes the first two blocks itself, for another request.
        head = prompt[:2 * bs] + prompt_of(rng, 5)
        r = d.generate("d-head", head, 2)
        check(r["token_ids"] == reference(head, 2, args_d), "partial: D's local head request")
        local = 2 * bs
    rp = p.generate("req-1", prompt, 1, proxy_prefill_params())
    check(rp["status"] == "FINISHED_LENGTH_CAPPED", f"P finished the prefill ({rp['status']})")
    check(rp["token_ids"] == ref[:1], "P's one token equals a local recompute")
    params = rp["kv_transfer_params"]
    check(isinstance(params, dict) and params, f"P returned kv_transfer_params {params}")
    if hold_rank is None:
        rd = d.generate("req-1", prompt, max_tokens, params)
    else:
        d.submit("req-1", prompt, max_tokens, params)
        # D's other ranks read now, the held one waits. A producer that frees
        # after its first reader frees within a step or two: give it 3 s (the
        # lease is 30), then let the held rank read what P still holds.
        deadline = time.monotonic() + 3
        while not is_free(p) and time.monotonic() < deadline:
            time.sleep(0.05)
        early = is_free(p)
        gate.touch()
        rd = d.result("req-1")
        check(not early, f"P still holds the request's blocks while D rank {hold_rank} has not "
              "read them")
    check(rd["status"] == "FINISHED_LENGTH_CAPPED", f"D finished ({rd['status']})")
    check(rd["num_cached_tokens"] == local, f"D's local prefix hit is {local} tokens "
          f"({rd['num_cached_tokens']})")
    ext = rd["num_external_computed_tokens"]
    full = len(prompt) // bs * bs
    check(ext > 0, f"D loaded {ext} tokens through the connector")
    check(local + ext <= len(prompt), "D loaded no more than the prompt")
    if partial:
        check(local + ext in (full, len(prompt), len(prompt) - 1),
              f"D fetched only the tail: {ext} tokens after its {local} local ones")
    if d_tp != tp:
        check(params.get("tp_size") == tp and len(params.get("kvshare_peers") or ()) == tp,
              f"P's kv_transfer_params name its TP size {tp} and one address per rank")
    same_blocks(p, d, prompt, "P vs D", per_head=d_tp != tp)
    check(rd["token_ids"] == ref, f"D's {max_tokens} tokens equal a local recompute")
    all_free(d, "D")
    return p, d, prompt


# ----------------------------------------------------------------------------- scenarios

def sc_pd(env, rng):
    need_connector()
    p, _, _ = run_pd(env, rng)
    all_free(p, "P frees its blocks once D has them")


def sc_tp2(env, rng):
    need_connector()
    # P prefills in chunks of 32 tokens: its blocks are saved over three steps.
    p, _, _ = run_pd(env, rng, tp=2, plen=70, p_budget=32)
    all_free(p, "P (TP=2) frees its blocks once D has them")


def sc_tp2to1(env, rng):
    need_connector()
    # Heterogeneous TP: D's one rank holds all 4 KV heads, P's two ranks 2 each;
    # D fetches every block from both P ranks (half the heads from each).
    p, _, _ = run_pd(env, rng, tp=2, d_tp=1, plen=70, p_budget=32)
    all_free(p, "P (TP=2) frees its blocks once D (TP=1) has them from both ranks")


def _unread_rank_told(env, rng, what, **model):
    """P at TP 2, D at TP 1, where D reads P rank 0 only: P rank 1, which no D
    rank reads, must be told D is done. P's lease is 60 s: a rank left waiting
    for it would hold the request past all_free's 20 s, and would log that it
    freed at the lease's end."""
    p, _, _ = run_pd(env, rng, tp=2, d_tp=1, plen=70, p_budget=32,
                     p_env=dict(KVSHARE_LEASE_TIMEOUT_MS=60000), **model)
    all_free(p, f"P (TP=2, {what}) frees its blocks once D (TP=1) has read rank 0's copy")
    check("before the lease ended" not in p.tail(1000),
          "no P rank waited for its lease to end (rank 1 was told)")


def sc_tp2to1rep(env, rng):
    need_connector()
    # One KV head over P's two ranks: vLLM replicates it, D reads the lowest rank.
    _unread_rank_told(env, rng, "one KV head replicated", num_kv_heads=1)


def sc_mla_tp2to1(env, rng):
    need_connector()
    # MLA at different TP sizes: every rank holds the whole latent, so D reads
    # P rank 0 as it is (one layout for every rank).
    _unread_rank_told(env, rng, "MLA", use_mla=True, dtype="float32")


def sc_tp1to2(env, rng):
    need_connector()
    # Decode TP > prefill TP: both D ranks (2 KV heads each) read P's one rank
    # (4 heads). D rank 1 reads only after P had its chance to free: P must
    # count both reads (each D rank announces 2 readers), then free.
    p, _, _ = run_pd(env, rng, tp=1, d_tp=2, plen=70, hold_rank=1)
    all_free(p, "P (TP=1) frees its blocks once both D ranks (TP=2) have read them")


def sc_tp1to2rep(env, rng):
    need_connector()
    # One KV head over two D ranks: vLLM replicates it, so both D ranks read
    # the same bytes of P's one rank (D TP > KV heads); each replica checked.
    p, _, _ = run_pd(env, rng, tp=1, d_tp=2, plen=40, hold_rank=1, num_kv_heads=1)
    all_free(p, "P frees its blocks once both D ranks (replicas) have read them")


def sc_partial(env, rng):
    need_connector()
    p, _, _ = run_pd(env, rng, partial=True, plen=90, layout="HND")
    all_free(p, "P frees its blocks")


def sc_pool(env, rng):
    need_connector()
    addr = env.pool_node()
    args = eng_args("kv_both", layout="kv_first", dtype="bfloat16")
    a = env.engine("replica-a", args, KVSHARE_POOL=addr, KVSHARE_LISTEN="127.0.0.1:0")
    b = env.engine("replica-b", args, KVSHARE_POOL=addr, KVSHARE_LISTEN="127.0.0.1:0")
    a.wait_ready(), b.wait_ready()
    prompt = prompt_of(rng, 83)
    ref = reference(prompt, 4, args)
    ra = a.generate("a-1", prompt, 4)
    check(ra["token_ids"] == ref, "replica A computes the prompt (tokens = local recompute)")
    all_free(a, "A has finished saving")
    rb = b.generate("b-1", prompt, 4)
    check(rb["num_external_computed_tokens"] > 0,
          f"replica B loaded {rb['num_external_computed_tokens']} tokens from the pool")
    check(rb["token_ids"] == ref, "replica B's tokens equal a local recompute")
    same_blocks(a, b, prompt, "A vs B")
    all_free(b, "B")
    kinds = a.stats()["event_kinds"]
    check("BlockStored:KVSHARE_POOL" in kinds,
          f"A's take_events reported the pool copy (BlockStored, medium KVSHARE_POOL): {kinds}")


def sc_killed(env, rng):
    need_connector()
    plen = 77
    args_p = eng_args("kv_producer")
    p = env.engine("prefill", args_p, KVSHARE_LISTEN="127.0.0.1:0")
    ds = {pol: env.engine(f"decode-{pol}", eng_args("kv_consumer", policy=pol))
          for pol in ("fail", "recompute")}
    p.wait_ready()
    for d in ds.values():
        d.wait_ready()
    work = {}
    for policy in ds:
        prompt = prompt_of(rng, plen)
        rp = p.generate(f"req-{policy}", prompt, 1, proxy_prefill_params())
        check(bool(rp["kv_transfer_params"]), f"[{policy}] P returned kv_transfer_params")
        work[policy] = (prompt, rp["kv_transfer_params"])
    p.kill()   # the prefill pod dies before either decoder fetches
    for policy, d in ds.items():
        prompt, params = work[policy]
        ref = reference(prompt, 4, args_p)
        t0 = time.monotonic()
        rd = d.generate(f"req-{policy}", prompt, 4, params, timeout=T_REQ)
        took = time.monotonic() - t0
        check(took < T_REQ, f"[{policy}] D answered in {took:.2f} s (no hang)")
        if rd["status"] == "FINISHED_ERROR":
            check(policy == "fail", f"[{policy}] D failed the request (FINISHED_ERROR)")
        else:
            check(rd["status"] == "FINISHED_LENGTH_CAPPED", f"[{policy}] D status {rd['status']}")
            check(rd["token_ids"] == ref,
                  f"[{policy}] D recomputed: tokens equal a local recompute "
                  f"(external {rd['num_external_computed_tokens']})")
        if policy == "recompute":
            check(rd["status"] != "FINISHED_ERROR", "[recompute] D did not fail the request")
        all_free(d, f"[{policy}] D freed every block")
        q = prompt_of(rng, 40)
        r2 = d.generate("after", q, 2)
        check(r2["token_ids"] == reference(q, 2, args_p), f"[{policy}] D still serves")


def sc_abort(env, rng):
    need_connector()
    lease_ms = 1500
    mla = dict(use_mla=True, dtype="float32")
    args_p = eng_args("kv_producer", **mla)
    p = env.engine("prefill", args_p, KVSHARE_LISTEN="127.0.0.1:0",
                   KVSHARE_LEASE_TIMEOUT_MS=lease_ms)
    d = env.engine("decode", eng_args("kv_consumer", **mla))
    p.wait_ready(), d.wait_ready()
    # 1. The client goes away after the prefill: D never hears of the request.
    prompt = prompt_of(rng, 64)
    t0 = time.monotonic()
    rp = p.generate("gone", prompt, 1, proxy_prefill_params())
    check(bool(rp["kv_transfer_params"]), "P returned kv_transfer_params")
    s = p.stats()
    held = "gone" in s["held"]
    print(f"info: right after the prefill P holds the request's blocks: {held} "
          f"({s['usable_blocks'] - s['free_blocks']} blocks in use)")
    s = all_free(p, "P frees the unclaimed blocks at lease expiry", timeout=lease_ms / 1000 + 20)
    took = time.monotonic() - t0
    check(not held or took >= lease_ms / 1000 * 0.9,
          f"P kept them until the lease ran out ({took:.1f} s >= {lease_ms / 1000} s)")
    # 2. D gets the request and it is aborted before its transfer ran.
    prompt2 = prompt_of(rng, 64)
    rp = p.generate("abort-d", prompt2, 1, proxy_prefill_params())
    d.submit("abort-d", prompt2, 4, rp["kv_transfer_params"])
    d.abort("abort-d")
    rd = d.result("abort-d")
    check(rd["status"] in ("FINISHED_ABORTED", "FINISHED_LENGTH_CAPPED"),
          f"D's aborted request finished ({rd['status']})")
    all_free(d, "D frees the aborted request's blocks", timeout=lease_ms / 1000 + 20)
    all_free(p, "P frees after D's abort (notice or lease)", timeout=lease_ms / 1000 + 20)
    # 3. P still serves P/D afterwards.
    prompt3 = prompt_of(rng, 50)
    rp = p.generate("after", prompt3, 1, proxy_prefill_params())
    rd = d.generate("after", prompt3, 3, rp["kv_transfer_params"])
    same_blocks(p, d, prompt3, "P vs D after the aborts (MLA)")
    check(rd["token_ids"] == reference(prompt3, 3, args_p), "P/D works after the aborts")


def _inproc(args):
    import engine
    return engine.Engine(engine.EngineArgs(**args))


def _run_all(e, limit=2000):
    outs = []
    for _ in range(limit):
        if not e.has_work():
            return outs
        outs += e.step()
    raise Fail("engine did not finish in 2000 steps")


def sc_selftest(env, rng):
    """The harness checked with no kvshare at all (in-process engines)."""
    os.environ["PYTHONHASHSEED"] = "0"
    os.environ["TMPDIR"] = tempfile.tempdir = env.work   # the spawned workers' scratch too
    # Request.block_hashes are vLLM's: the same as tests/unit/keys_vs_vllm.py's restatement.
    sys.path.insert(0, str(HERE.parent / "unit"))
    from keys_vs_vllm import vllm_keys
    from vllm.sampling_params import SamplingParams
    from vllm.utils.hashing import sha256_cbor
    from vllm.v1.core import kv_cache_utils
    from vllm.v1.request import Request
    kv_cache_utils.init_none_hash(sha256_cbor)
    toks = prompt_of(rng, 70)
    req = Request("h", toks, SamplingParams(max_tokens=1), cache_salt="salt",
                  block_hasher=kv_cache_utils.get_request_block_hasher(16, sha256_cbor))
    req.append_output_token_ids(prompt_of(rng, 10))    # decode tokens complete block 4
    check(req.block_hashes == vllm_keys("sha256_cbor", "0", 16, req.all_token_ids, "salt", None)
          and len(req.block_hashes) == 5,
          "Request.block_hashes (prompt + decode tokens, cache_salt) equal keys_vs_vllm's")
    trace = Path(env.work) / "trace.jsonl"
    os.environ["KVS_NULL_TRACE"] = str(trace)
    cases = [dict(layout="NHD", tp=1), dict(layout="HND", tp=2),
             dict(layout="kv_first", tp=1, dtype="bfloat16"),
             dict(layout="NHD", tp=1, use_mla=True, dtype="float32")]
    for c in cases:
        args = dict(MODEL, **{k: v for k, v in c.items()})
        args.update(kv_transfer_config=NULL_CONNECTOR, max_num_batched_tokens=40)
        trace.write_text("")
        e = _inproc(args)
        try:
            pa = prompt_of(rng, 70)
            pb = pa[:48] + prompt_of(rng, 9)
            e.add_request("a", pa, 4)
            e.add_request("b", pb, 3)      # same first 3 blocks; scheduled together, no hit yet
            outs = {o.request_id: o for o in _run_all(e)}
            check(outs["a"].new_token_ids == reference(pa, 4, args)
                  and outs["b"].new_token_ids == reference(pb, 3, args),
                  f"{c}: tokens equal the unpaged reference (chunked prefill, budget 40)")
            e.add_request("c", pb, 3)
            o = _run_all(e)[0]
            check(o.num_cached_tokens == 48 and o.new_token_ids == reference(pb, 3, args),
                  f"{c}: a later request hits 48 cached tokens and still generates right")
            st = e.stats()
            check(st["free_blocks"] == st["usable_blocks"] and not st["errors"],
                  f"{c}: every block is free again")
        finally:
            e.shutdown()
        _check_call_order(trace, args["num_layers"], c["tp"])
    os.environ.pop("KVS_NULL_TRACE")

    # The async paths, with a connector that computes the "loaded" KV itself.
    toy = {"kv_connector": "ToyAsyncConnector", "kv_connector_module_path": "null_connector",
           "kv_role": "kv_consumer"}
    for mode, policy in (("good", "fail"), ("bad", "fail"), ("bad", "recompute"),
                         ("lie", "fail")):
        args = dict(MODEL, tp=1, layout="NHD",
                    kv_transfer_config=dict(toy, kv_load_failure_policy=policy,
                                            kv_connector_extra_config={"mode": mode}))
        e = _inproc(args)
        try:
            pa = prompt_of(rng, 64)                       # a full-block prompt: full hit
            e.add_request("x", pa, 3, {"remote": True})
            o = _run_all(e)[0]
            ref = reference(pa, 3, args)
            tag = f"toy {mode}/{policy}"
            if mode == "good":
                check(o.num_external_computed_tokens == 64 and o.new_token_ids == ref,
                      f"{tag}: async full hit (num_tokens-1 rule), tokens right")
            elif mode == "bad" and policy == "fail":
                check(o.status == "FINISHED_ERROR", f"{tag}: failed load -> FINISHED_ERROR")
            elif mode == "bad":
                check(o.status == "FINISHED_LENGTH_CAPPED" and o.new_token_ids == ref,
                      f"{tag}: failed load -> recomputed, tokens right")
            else:
                check(o.new_token_ids != ref,
                      f"{tag}: KV claimed but never loaded -> tokens differ (caught)")
            st = e.stats()
            check(st["free_blocks"] == st["usable_blocks"] and not st["errors"],
                  f"{tag}: every block is free again")
        finally:
            e.shutdown()


def _check_call_order(trace, num_layers, tp):
    """Each worker step: start_load_kv, (wait_for_layer_load, save_kv_layer) per layer,
    wait_for_save, get_finished -- or start_load_kv, get_finished with no forward."""
    rows = [json.loads(line) for line in trace.read_text().splitlines()]
    workers = {}
    for role, pid, call, *_ in rows:
        if role == "WORKER":
            workers.setdefault(pid, []).append(call)
    check(len(workers) == tp, f"{tp} worker connectors made calls")
    layer = ["wait_for_layer_load", "save_kv_layer"] * num_layers
    for pid, calls in workers.items():
        assert calls[0] == "register_kv_caches"
        i, steps = 1, 0
        while i < len(calls):
            if calls[i:i + 2] == ["start_load_kv", "get_finished"]:
                i += 2
            else:
                want = ["start_load_kv"] + layer + ["wait_for_save", "get_finished"]
                got = calls[i:i + len(want)]
                if got != want:
                    raise Fail(f"worker {pid} step {steps}: calls {got}, vLLM makes {want}")
                i += len(want)
            steps += 1
    sched = [r[2] for r in rows if r[0] == "SCHEDULER"]
    check(sched.count("request_finished") == 3,
          f"call order: {steps} steps per worker as vLLM's; request_finished once per request")


SCENARIOS = {"selftest": sc_selftest, "pd": sc_pd, "tp2": sc_tp2, "tp2to1": sc_tp2to1,
             "tp2to1rep": sc_tp2to1rep, "mla_tp2to1": sc_mla_tp2to1, "tp1to2": sc_tp1to2, "tp1to2rep": sc_tp1to2rep,
             "partial": sc_partial,
             "pool": sc_pool, "killed": sc_killed, "abort": sc_abort}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("name", choices=sorted(SCENARIOS))
    ap.add_argument("--build", default=os.environ.get("KVS_BUILD_DIR"))
    ap.add_argument("--library")
    ap.add_argument("--kvshare")
    ap.add_argument("--asan-preload")
    a = ap.parse_args()
    if a.build:
        a.library = a.library or str(Path(a.build) / "libkvshare" / "libkvshare.so.0")
        a.kvshare = a.kvshare or str(Path(a.build) / "libkvshare" / "cli" / "kvshare")
    try:
        import torch  # noqa: F401
    except ImportError:
        print("SKIP: torch is not importable by this python (apt-get install python3-torch)")
        return SKIP
    sys.path.insert(0, str(HERE))
    seed = int(os.environ.get("KVS_TEST_SEED", random.SystemRandom().randint(0, 2**31)))
    print(f"scenario {a.name}, KVS_TEST_SEED={seed}", flush=True)
    if a.name != "selftest" and not (a.library and a.kvshare):
        print("FAIL: give --build DIR or --library and --kvshare")
        return 1
    env = Env(a.library, a.kvshare, a.asan_preload)
    failed = True
    try:
        SCENARIOS[a.name](env, random.Random(seed))
        failed = False
    except Fail as f:
        print(f"FAIL: {f} (KVS_TEST_SEED={seed})")
    finally:
        env.close(failed)
    if not failed:
        print(f"PASS: {a.name}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
