# SPDX-License-Identifier: Apache-2.0
"""python3 -m kvshare_vllm.bench [--json]: what the connector itself costs vLLM.

  match   get_num_new_matched_tokens() for a prompt of --blocks blocks whose
          chain is held in the local store (a new request each call, so the
          probe is never answered from the connector's short cache): packing
          the keys, the lookup, the lease and its release.
  step    one worker step with nothing to move, in vLLM's order: bind,
          start_load_kv, wait_for_layer_load and save_kv_layer for every
          layer, wait_for_save, get_finished, get_block_ids_with_load_errors,
          clear; plus the scheduler's build_connector_meta for --running
          decoding requests.

Percentiles over --iters calls, in microseconds, printed beside the per-step
budget they eat into (--step-ms, an assumed decode-step time: the bench does
not run a model). Needs vLLM importable (or the stand-in: PYTHONPATH=tests/vllm)
and torch (the KV tensors are CPU tensors)."""

import argparse
import hashlib
import json
import os
import sys
import time
from types import SimpleNamespace as NS


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100.0 * (len(xs) - 1))))]


def summary(xs):
    return {"p50_us": round(pct(xs, 50), 2), "p99_us": round(pct(xs, 99), 2),
            "max_us": round(max(xs), 2), "n": len(xs)}


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python3 -m kvshare_vllm.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="one JSON object on stdout")
    ap.add_argument("--blocks", type=int, default=512, help="prompt length in blocks (512)")
    ap.add_argument("--layers", type=int, default=32, help="model layers (32)")
    ap.add_argument("--running", type=int, default=64, help="decoding requests per step (64)")
    ap.add_argument("--iters", type=int, default=2000, help="calls measured per figure (2000)")
    ap.add_argument("--step-ms", type=float, default=10.0,
                    help="the decode-step time to compare with (assumed, default 10 ms)")
    a = ap.parse_args(argv)
    if a.blocks < 1 or a.layers < 1 or a.iters < 10 or a.running < 0:
        ap.error("--blocks and --layers must be >= 1, --iters >= 10, --running >= 0")
    os.environ.setdefault("PYTHONHASHSEED", "0")
    os.environ.setdefault("KVSHARE_AUTH", "none")
    os.environ.pop("KVSHARE_POOL", None)
    os.environ.pop("KVSHARE_LISTEN", None)
    try:
        import torch
        from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorRole
        from kvshare_vllm.connector import KVShareConnector
    except ImportError as e:
        print(f"kvshare_vllm.bench: {e}; it needs torch and vLLM (or the stand-in: "
              f"PYTHONPATH=tests/vllm:connectors/vllm)", file=sys.stderr)
        return 1

    bs = 16
    nb = a.blocks + 8
    cfg = NS(kv_transfer_config=NS(kv_role="kv_both", kv_connector_extra_config={},
                                   engine_id="bench", kv_load_failure_policy="fail"),
             cache_config=NS(block_size=bs, prefix_caching_hash_algo="sha256_cbor"),
             model_config=NS(model="bench-model"), parallel_config=NS(tensor_parallel_size=1))
    kcc = NS(num_blocks=nb)
    worker = KVShareConnector(cfg, KVConnectorRole.WORKER, kcc)
    # small heads: the bench measures the connector, not memory bandwidth
    caches = {f"model.layers.{i}.self_attn": torch.zeros(nb, 2, bs, 1, 8, dtype=torch.float16)
              for i in range(a.layers)}
    worker.register_kv_caches(caches)
    sched = KVShareConnector(cfg, KVConnectorRole.SCHEDULER, kcc)
    sched.set_xfer_handshake_metadata({0: worker.get_handshake_metadata()})

    hashes = [hashlib.sha256(b"bench%d" % i).digest() for i in range(a.blocks)]
    # the chain is in the local store (copy mode, as a CPU tier would hold it)
    worker._worker.pool.publish(hashes, list(range(a.blocks)), zero_copy=False)

    def request(i):
        return NS(request_id=f"m{i}", num_prompt_tokens=a.blocks * bs + 1, block_hashes=hashes,
                  kv_transfer_params=None, num_computed_tokens=0, status=None)

    match = []
    for i in range(a.iters + 50):
        r = request(i)
        t0 = time.perf_counter()
        n, async_ = sched.get_num_new_matched_tokens(r, 0)
        dt = (time.perf_counter() - t0) * 1e6
        sched._sched._probe.clear()
        if i >= 50:
            match.append(dt)
    if n != a.blocks * bs:
        print(f"kvshare_vllm.bench: matched {n} tokens, expected {a.blocks * bs}",
              file=sys.stderr)
        return 1

    empty = NS(req_ids=[], new_block_ids=[], num_computed_tokens=[], resumed_req_ids=set())
    running = NS(req_ids=[f"run{i}" for i in range(a.running)],
                 new_block_ids=[None] * a.running,
                 num_computed_tokens=[1000 + i for i in range(a.running)],
                 resumed_req_ids=set())
    so = NS(scheduled_new_reqs=[], scheduled_cached_reqs=running or empty,
            num_scheduled_tokens={f"run{i}": 1 for i in range(a.running)},
            finished_req_ids=set())
    names = list(caches)
    step = []
    for i in range(a.iters + 50):
        t0 = time.perf_counter()
        meta = sched.build_connector_meta(so)
        worker.handle_preemptions(meta)
        worker.bind_connector_metadata(meta)
        worker.start_load_kv(None)
        for name in names:
            worker.wait_for_layer_load(name)
            worker.save_kv_layer(name, caches[name], None)
        worker.wait_for_save()
        worker.get_finished(so.finished_req_ids)
        worker.get_block_ids_with_load_errors()
        worker.clear_connector_metadata()
        dt = (time.perf_counter() - t0) * 1e6
        if i >= 50:
            step.append(dt)
    worker.shutdown()

    out = {
        "match": dict(summary(match), blocks=a.blocks, source="local store"),
        "step": dict(summary(step), layers=a.layers, running=a.running),
        "step_budget_ms": a.step_ms,
        "step_budget_note": "assumed decode-step time (not measured here); --step-ms sets it",
        "step_p99_share_of_budget": round(pct(step, 99) / (a.step_ms * 1000.0), 5),
        "goal_p99_us": 100,
    }
    if a.json:
        print(json.dumps(out))
    else:
        m, s = out["match"], out["step"]
        print(f"get_num_new_matched_tokens ({a.blocks} blocks, local store): "
              f"p50 {m['p50_us']} us  p99 {m['p99_us']} us")
        print(f"worker step, nothing to move ({a.layers} layers, {a.running} running): "
              f"p50 {s['p50_us']} us  p99 {s['p99_us']} us = "
              f"{out['step_p99_share_of_budget'] * 100:.3f}% of a {a.step_ms} ms step (assumed)")
        print("goal: p99 <= 100 us for each")
    return 0


if __name__ == "__main__":
    sys.exit(main())
