# SPDX-License-Identifier: Apache-2.0
"""A mini vLLM engine that drives a KV connector exactly as vLLM v1 does.

Why: vLLM cannot be installed here, and a connector is only as good as the
calls it survives. This engine makes those calls in upstream's order, from
upstream's places, across real process boundaries:

  Scheduler (this process; vllm/v1/core/sched/scheduler.py)
    schedule(): running requests first; then waiting ones: get_computed_blocks
    (local prefix hit) -> connector.get_num_new_matched_tokens -> allocate_slots
    (delay_cache_blocks for async loads) -> connector.update_state_after_alloc
    (with all the request's blocks); async loads park in WAITING_FOR_REMOTE_KVS
    until finished_recving; last, connector.build_connector_meta.
    update_from_output(): invalid blocks per kv_load_failure_policy, tokens,
    finished requests -> _free_request -> connector.request_finished (delayed
    free when it returns True), connector.update_connector_output, finished
    sets applied, events (manager's, then connector.take_events()).
  Executor (vllm/v1/executor/multiproc_executor.py): one spawned process per
    TP rank; SchedulerOutput (with the connector metadata) is pickled to each;
    a KVOutputAggregator (kv_connector/utils.py) merges their outputs.
  Worker (gpu_worker.py, gpu_model_runner.py, kv_connector_model_runner_mixin.py):
    a WORKER-role connector, real torch KV tensors in the backend's layout,
    register_kv_caches, get_handshake_metadata; per step handle_preemptions,
    bind, start_load_kv(forward_context), per layer wait_for_layer_load ->
    attention (write this step's KV, read the request's whole KV) ->
    save_kv_layer, then wait_for_save, get_finished, get_block_ids_with_load_errors,
    stats/events/worker meta, clear. No tokens scheduled: the no-forward path.

The model (toymodel.py) makes every generated token depend on every bit of the
KV the attention reads back from the paged cache.
"""
import ctypes
import hashlib
import itertools
import multiprocessing as mp
import os
import signal
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch

import toymodel
from vllm.config import CacheConfig, KVTransferConfig, ModelConfig, ParallelConfig, VllmConfig
from vllm.distributed import parallel_state
from vllm.distributed.kv_transfer import kv_transfer_state
from vllm.distributed.kv_transfer.kv_connector.factory import KVConnectorFactory
from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorRole
from vllm.forward_context import ForwardContext, get_forward_context, set_forward_context
from vllm.logger import init_logger
from vllm.sampling_params import SamplingParams
from vllm.utils.hashing import get_hash_fn_by_name
from vllm.v1.core import kv_cache_utils
from vllm.v1.core.kv_cache_manager import KVCacheManager
from vllm.v1.core.sched.output import CachedRequestData, NewRequestData, SchedulerOutput
from vllm.v1.kv_cache_interface import (FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec,
                                        KVCacheTensor, MLAAttentionSpec)
from vllm.v1.outputs import KVConnectorOutput, ModelRunnerOutput
from vllm.v1.request import Request, RequestStatus

logger = init_logger(__name__)

LAYOUTS = ("NHD", "HND", "kv_first")   # blocks-first NHD/HND, and the older (2, num_blocks, ...)


@dataclass
class EngineArgs:
    """Everything an engine is built from (JSON-friendly; see engine_server.py)."""
    num_layers: int = 4
    num_kv_heads: int = 4
    head_size: int = 16
    dtype: str = "float16"
    use_mla: bool = False
    block_size: int = 16
    num_blocks: int = 128
    tp: int = 1
    layout: str = "NHD"
    max_num_batched_tokens: int = 256
    enable_prefix_caching: bool = True
    hash_algo: str = "sha256_cbor"
    kv_transfer_config: dict | None = None
    engine_id: str | None = None

    def vllm_config(self) -> VllmConfig:
        ktc = None
        if self.kv_transfer_config is not None:
            ktc = KVTransferConfig(**self.kv_transfer_config)
        return VllmConfig(
            model_config=ModelConfig(dtype=getattr(torch, self.dtype), use_mla=self.use_mla,
                                     num_hidden_layers=self.num_layers,
                                     total_num_kv_heads=self.num_kv_heads,
                                     head_size=self.head_size),
            cache_config=CacheConfig(block_size=self.block_size,
                                     enable_prefix_caching=self.enable_prefix_caching,
                                     prefix_caching_hash_algo=self.hash_algo,
                                     num_gpu_blocks=self.num_blocks),
            parallel_config=ParallelConfig(tensor_parallel_size=self.tp),
            kv_transfer_config=ktc)


def layer_names(n: int) -> list[str]:
    return [f"model.layers.{i}.self_attn.attn" for i in range(n)]


def make_kv_cache_config(vc: VllmConfig) -> KVCacheConfig:
    """One full-attention group (what a non-HMA connector sees), one tensor per layer."""
    mc, pc = vc.model_config, vc.parallel_config
    spec_cls = MLAAttentionSpec if mc.use_mla else FullAttentionSpec
    spec = spec_cls(block_size=vc.cache_config.block_size,
                    num_kv_heads=mc.get_num_kv_heads(pc), head_size=mc.get_head_size(),
                    dtype=mc.dtype)
    names = layer_names(mc.get_num_layers(pc))
    nb = vc.cache_config.num_gpu_blocks
    return KVCacheConfig(num_blocks=nb,
                         kv_cache_tensors=[KVCacheTensor(spec.page_size_bytes * nb, [n])
                                           for n in names],
                         kv_cache_groups=[KVCacheGroupSpec(names, spec)])


# ----------------------------------------------------------------------------- worker

@dataclass
class AttentionMetadata:
    """The fields of FlashAttentionMetadata a connector may look at."""
    num_actual_tokens: int
    slot_mapping: torch.Tensor
    query_start_loc: torch.Tensor
    seq_lens: torch.Tensor
    block_table: list


class Attention:
    """Stand-in for vllm's Attention layer: forward_context.no_compile_layers[name]."""
    def __init__(self, name: str, kv_cache: torch.Tensor):
        self.layer_name = name
        self.kv_cache = [kv_cache]   # one per virtual engine


def allocate_kv_cache(spec, num_blocks: int, layout: str, use_mla: bool, seed: int):
    """A layer's cache as the backend allocates it: raw int8 bytes, viewed in the
    physical (stride-order) shape, permuted to the logical get_kv_cache_shape.
    Filled with noise, not zeros: a block that is never loaded holds garbage,
    as reused GPU memory does."""
    raw = torch.empty(spec.page_size_bytes * num_blocks, dtype=torch.int8)
    g = torch.Generator().manual_seed(seed)
    raw.copy_(torch.randint(-128, 128, raw.shape, dtype=torch.int8, generator=g))
    t = raw.view(spec.dtype)
    bs, h, d = spec.block_size, spec.num_kv_heads, spec.head_size
    if use_mla:
        return t.view(num_blocks, bs, d)
    if layout == "NHD":
        return t.view(num_blocks, 2, bs, h, d)
    if layout == "HND":   # stride order (0, 1, 3, 2, 4): heads outside block positions
        return t.view(num_blocks, 2, h, bs, d).permute(0, 1, 3, 2, 4)
    if layout == "kv_first":
        return t.view(2, num_blocks, bs, h, d)
    raise ValueError(f"unknown layout {layout}")


def _kv_index(cache, layout, use_mla, kv, blk, off):
    """Index tuple for logical (block, offset) slots of K (kv=0), V (1) or the MLA latent."""
    if use_mla:
        return (blk, off)
    if layout == "kv_first":
        return (kv, blk, off)
    return (blk, kv, off)


def block_view(cache, layout, use_mla, b: int) -> torch.Tensor:
    """Block b's content in one canonical logical order (for bit-for-bit dumps)."""
    if use_mla:
        return cache[b].contiguous()
    if layout == "kv_first":
        return cache[:, b].contiguous()
    return cache[b].contiguous()


class Worker:
    """One TP rank: its connector, its KV tensors, its share of the heads."""

    def __init__(self, rank: int, args: EngineArgs, vllm_config: VllmConfig,
                 kv_cache_config: KVCacheConfig):
        self.rank, self.args, self.vc = rank, args, vllm_config
        parallel_state._set_tp(rank, args.tp)
        mc, pc = vllm_config.model_config, vllm_config.parallel_config
        self.use_mla = mc.use_mla
        self.block_size = vllm_config.cache_config.block_size
        h = mc.get_num_kv_heads(pc)
        total = mc.get_total_num_kv_heads()
        assert self.use_mla or total % args.tp == 0 or args.tp % total == 0, \
            "the test model needs tp to divide the KV heads, or the KV heads to divide tp"
        # More ranks than KV heads: vLLM replicates, each head on tp/total ranks.
        rep = 1 if self.use_mla else max(1, args.tp // total)
        self.heads = torch.arange(0, 1, dtype=torch.int64) if self.use_mla else \
            torch.arange(rank // rep * h, (rank // rep + 1) * h, dtype=torch.int64)
        # MLA's latent is replicated on every rank: only rank 0 adds it to the logits;
        # a replicated head, only its first rank.
        self.counts = (not self.use_mla or rank == 0) and rank % rep == 0
        # ensure_kv_transfer_initialized: the worker connector exists before the KV caches.
        kv_transfer_state.ensure_kv_transfer_initialized(vllm_config, kv_cache_config)
        self.connector = kv_transfer_state.get_kv_transfer_group() \
            if kv_transfer_state.has_kv_transfer_group() else None
        spec = kv_cache_config.kv_cache_groups[0].kv_cache_spec
        self.names = kv_cache_config.kv_cache_groups[0].layer_names
        self.kv_caches = {n: allocate_kv_cache(spec, kv_cache_config.num_blocks, args.layout,
                                               self.use_mla, seed=1000 * rank + i + 1)
                          for i, n in enumerate(self.names)}
        self.layers = {n: Attention(n, t) for n, t in self.kv_caches.items()}
        if self.connector is not None:
            self.connector.register_kv_caches(self.kv_caches)
        self.reqs: dict[str, dict] = {}
        # Test hook (scenarios.py): this rank's first load waits for a file.
        self._hold = os.environ.get("KVS_TEST_HOLD_FILE") \
            if os.environ.get("KVS_TEST_HOLD_RANK") == str(rank) else None

    def _hold_load(self, meta):
        """Rank KVS_TEST_HOLD_RANK starts its first load (kvshare's metadata
        .loads) only once KVS_TEST_HOLD_FILE exists (at most 60 s), while the
        other ranks load: the test of a producer that must wait for every
        consumer rank reading it, not just the first."""
        if self._hold is None or not getattr(meta, "loads", None):
            return
        path, self._hold = self._hold, None
        deadline = time.monotonic() + 60
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.01)

    def handshake(self):
        return None if self.connector is None else self.connector.get_handshake_metadata()

    def _update_states(self, so: SchedulerOutput):
        for rid in so.finished_req_ids:
            self.reqs.pop(rid, None)
        for nr in so.scheduled_new_reqs:
            self.reqs[nr.req_id] = {"tokens": list(nr.prompt_token_ids),
                                    "blocks": list(nr.block_ids[0]), "seeds": [],
                                    "nc": nr.num_computed_tokens}
        c = so.scheduled_cached_reqs
        for i, rid in enumerate(c.req_ids):
            st = self.reqs[rid]
            if rid in c.resumed_req_ids:
                st["tokens"] = list(c.all_token_ids[rid])
                st["blocks"] = list(c.new_block_ids[i][0])
                st["seeds"] = []
            else:
                st["tokens"].extend(c.new_token_ids[i])
                if c.new_block_ids[i] is not None:
                    st["blocks"].extend(c.new_block_ids[i][0])
            st["nc"] = c.num_computed_tokens[i]

    def _connector_output(self, so, wait_for_save: bool) -> KVConnectorOutput:
        """The tail of kv_connector_model_runner_mixin._get_kv_connector_output."""
        conn = self.connector
        if wait_for_save:
            conn.wait_for_save()
        out = KVConnectorOutput()
        out.finished_sending, out.finished_recving = conn.get_finished(so.finished_req_ids)
        out.invalid_block_ids = set(conn.get_block_ids_with_load_errors())
        out.kv_connector_stats = conn.get_kv_connector_stats()
        out.kv_cache_events = conn.get_kv_connector_kv_cache_events()
        out.kv_connector_worker_meta = conn.build_connector_worker_meta()
        conn.clear_connector_metadata()
        return out

    def execute_model(self, so: SchedulerOutput) -> ModelRunnerOutput:
        self._update_states(so)
        conn = self.connector
        if conn is not None:
            assert so.kv_connector_metadata is not None
            conn.handle_preemptions(so.kv_connector_metadata)
            self._hold_load(so.kv_connector_metadata)
        if so.total_num_scheduled_tokens == 0:
            # kv_connector_no_forward: no forward pass, no wait_for_save.
            out = None
            if conn is not None:
                with set_forward_context(ForwardContext(self.layers, None)):
                    conn.bind_connector_metadata(so.kv_connector_metadata)
                    conn.start_load_kv(get_forward_context())
                    out = self._connector_output(so, wait_for_save=False)
            return ModelRunnerOutput([], {}, out)

        bs = self.block_size
        batch = []
        slots, qsl, seq_lens = [], [0], []
        for rid, n in so.num_scheduled_tokens.items():
            st = self.reqs[rid]
            nc = st["nc"]
            st["seeds"] = toymodel.position_seeds(st["tokens"], seeds=st["seeds"])
            pos = torch.arange(nc, nc + n, dtype=torch.int64)
            blocks = torch.tensor(st["blocks"], dtype=torch.int64)
            assert len(st["blocks"]) * bs >= nc + n, f"{rid}: too few blocks for {nc + n} tokens"
            batch.append((rid, st, pos, blocks, nc + n == len(st["tokens"])))
            slots.append(blocks[pos // bs] * bs + pos % bs)
            qsl.append(qsl[-1] + n)
            seq_lens.append(nc + n)
        meta = AttentionMetadata(int(qsl[-1]), torch.cat(slots), torch.tensor(qsl),
                                 torch.tensor(seq_lens), [b[1]["blocks"] for b in batch])
        attn_metadata = {n: meta for n in self.names}
        partials = {rid: 0 for rid, *_ in batch}
        kvs = (2,) if self.use_mla else (0, 1)
        out = None
        with set_forward_context(ForwardContext(self.layers, attn_metadata)):
            if conn is not None:
                conn.bind_connector_metadata(so.kv_connector_metadata)
                conn.start_load_kv(get_forward_context())
            for li, name in enumerate(self.names):
                # maybe_transfer_kv_layer: only with attn metadata and bound connector metadata
                hooked = conn is not None and conn.has_connector_metadata()
                if hooked:
                    conn.wait_for_layer_load(name)
                cache = self.kv_caches[name]
                for rid, st, pos, blocks, sample in batch:
                    seeds = torch.tensor(st["seeds"], dtype=torch.int64)
                    for kv in kvs:
                        vals = toymodel.kv_values(seeds[pos], li, kv, self.heads,
                                                  self.args.head_size, cache.dtype)
                        idx = _kv_index(cache, self.args.layout, self.use_mla, kv,
                                        blocks[pos // bs], pos % bs)
                        cache[idx] = vals[:, 0] if self.use_mla else vals
                    if sample and self.counts:
                        allpos = torch.arange(0, int(pos[-1]) + 1, dtype=torch.int64)
                        for kv in kvs:
                            idx = _kv_index(cache, self.args.layout, self.use_mla, kv,
                                            blocks[allpos // bs], allpos % bs)
                            got = cache[idx]
                            if self.use_mla:
                                got = got[:, None, :]
                            partials[rid] += toymodel.partial_digest(got, allpos, li, kv,
                                                                     self.heads)
                if hooked:
                    conn.save_kv_layer(name, cache, attn_metadata[name])
            if conn is not None:
                out = self._connector_output(so, wait_for_save=True)
        sampled = {rid: partials[rid] for rid, _, _, _, sample in batch if sample}
        return ModelRunnerOutput([b[0] for b in batch], sampled, out)

    def dump_blocks(self, block_ids: list[int]) -> list[str]:
        """sha256 per block over every layer's logical content (this rank's heads)."""
        out = []
        for b in block_ids:
            h = hashlib.sha256()
            for n in self.names:
                v = block_view(self.kv_caches[n], self.args.layout, self.use_mla, b)
                h.update(toymodel.bits(v).to(torch.int32).numpy().tobytes())
            out.append(h.hexdigest())
        return out

    def dump_head_blocks(self, block_ids: list[int]) -> list[dict]:
        """Per block, {global KV head: sha256 over every layer's K and V of that
        head}: comparable across engines at different TP sizes."""
        out = []
        for b in block_ids:
            per = {}
            for j, g in enumerate(self.heads.tolist()):
                h = hashlib.sha256()
                for n in self.names:
                    v = block_view(self.kv_caches[n], self.args.layout, self.use_mla, b)
                    v = v if self.use_mla else v[:, :, j]
                    h.update(toymodel.bits(v).to(torch.int32).numpy().tobytes())
                per[str(g)] = h.hexdigest()
            out.append(per)
        return out

    def shutdown(self):
        kv_transfer_state.ensure_kv_transfer_shutdown()


def _worker_main(conn, rank, args, vllm_config, kv_cache_config):
    """A worker process: init, then serve (method, args) calls until 'shutdown'."""
    try:   # die with the engine, as a pod's containers do (PR_SET_PDEATHSIG)
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)
    except Exception:
        pass
    try:
        w = Worker(rank, args, vllm_config, kv_cache_config)
        conn.send(("ok", w.handshake()))
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        return
    while True:
        try:
            method, a = conn.recv()
        except EOFError:
            return
        try:
            res = getattr(w, method)(*a)
            conn.send(("ok", res))
        except BaseException:
            conn.send(("error", traceback.format_exc()))
        if method == "shutdown":
            return


class WorkerDied(RuntimeError):
    pass


class KVOutputAggregator:
    """kv_connector/utils.py KVOutputAggregator: an id is finished only once every
    expected worker reported it; invalid block ids are unioned."""

    def __init__(self, expected_finished_count: int):
        self._expected = expected_finished_count
        self._send_remaining: dict[str, int] = {}
        self._recv_remaining: dict[str, int] = {}

    def _update(self, ids, remaining, finished):
        for rid in ids or ():
            left = remaining.get(rid, self._expected) - 1
            if left == 0:
                finished.add(rid)
                remaining.pop(rid, None)
            else:
                remaining[rid] = left

    def aggregate(self, outputs: list[ModelRunnerOutput]) -> ModelRunnerOutput:
        sending, recving, invalid = set(), set(), set()
        events, worker_meta, any_kv = [], None, False
        for o in outputs:
            k = o.kv_connector_output
            if k is None:
                continue
            any_kv = True
            if k.expected_finished_count:
                self._expected = k.expected_finished_count
            self._update(k.finished_sending, self._send_remaining, sending)
            self._update(k.finished_recving, self._recv_remaining, recving)
            invalid |= set(k.invalid_block_ids or ())
            if k.kv_cache_events is not None:
                events.append(k.kv_cache_events)
            if k.kv_connector_worker_meta is not None:
                worker_meta = k.kv_connector_worker_meta if worker_meta is None \
                    else worker_meta.aggregate(k.kv_connector_worker_meta)
        partials: dict[str, int] = {}
        for o in outputs:   # the TP all-reduce before sampling
            for rid, p in o.partials.items():
                partials[rid] = partials.get(rid, 0) + p
        kvo = None
        if any_kv:
            kvo = KVConnectorOutput(finished_sending=sending or None,
                                    finished_recving=recving or None,
                                    invalid_block_ids=invalid,
                                    kv_cache_events=events or None,
                                    kv_connector_worker_meta=worker_meta)
        return ModelRunnerOutput(outputs[0].req_ids, partials, kvo)


class Executor:
    """multiproc_executor: one spawned process per TP rank, pickled calls."""

    def __init__(self, args: EngineArgs, vllm_config: VllmConfig,
                 kv_cache_config: KVCacheConfig):
        ctx = mp.get_context("spawn")
        self.conns, self.procs = [], []
        for rank in range(args.tp):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_worker_main, daemon=True,
                            args=(child, rank, args, vllm_config, kv_cache_config))
            p.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(p)
        self.handshakes = {rank: self._recv(rank) for rank in range(args.tp)}

    def _recv(self, rank):
        try:
            status, res = self.conns[rank].recv()
        except EOFError:
            raise WorkerDied(f"worker {rank} died (exit {self.procs[rank].exitcode})")
        if status != "ok":
            raise WorkerDied(f"worker {rank} failed:\n{res}")
        return res

    def collective_rpc(self, method: str, *a) -> list:
        for c in self.conns:
            c.send((method, a))
        return [self._recv(r) for r in range(len(self.conns))]

    def shutdown(self):
        try:
            self.collective_rpc("shutdown")
        except Exception:
            pass
        for p in self.procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()


# ----------------------------------------------------------------------------- scheduler

@dataclass
class EngineCoreOutput:
    request_id: str
    new_token_ids: list[int]
    finish_reason: str | None = None
    status: str = ""
    kv_transfer_params: dict | None = None
    num_cached_tokens: int = 0           # local prefix hit at first schedule
    num_external_computed_tokens: int = 0
    events: list = field(default_factory=list)


class Scheduler:
    def __init__(self, vllm_config: VllmConfig, kv_cache_config: KVCacheConfig,
                 max_num_batched_tokens: int):
        self.vllm_config = vllm_config
        self.kv_cache_config = kv_cache_config
        self.block_size = vllm_config.cache_config.block_size
        self.max_num_batched_tokens = max_num_batched_tokens
        self.kv_cache_manager = KVCacheManager(
            kv_cache_config.num_blocks, self.block_size, vllm_config.model_config.max_model_len,
            enable_caching=vllm_config.cache_config.enable_prefix_caching)
        self.connector = None
        ktc = vllm_config.kv_transfer_config
        if ktc is not None:
            self.connector = KVConnectorFactory.create_connector(
                vllm_config, KVConnectorRole.SCHEDULER, kv_cache_config)
            self.connector.bind_gpu_block_pool(self.kv_cache_manager.block_pool)
        self.kv_load_failure_policy = ktc.kv_load_failure_policy if ktc else "fail"
        self.requests: dict[str, Request] = {}
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.finished_req_ids: set[str] = set()
        self.finished_recving_kv_req_ids: set[str] = set()
        self.failed_recving_kv_req_ids: set[str] = set()
        self._sent_tokens: dict[str, int] = {}    # tokens the workers already hold
        self.events: list = []
        self.errors: list[str] = []               # invariants the engine saw broken

    def add_request(self, request: Request) -> None:
        self.waiting.append(request)
        self.requests[request.request_id] = request
        if self.connector is not None:
            self.connector.on_new_request(request)

    # -- schedule
    def schedule(self) -> SchedulerOutput:
        budget = self.max_num_batched_tokens
        new_reqs: list[NewRequestData] = []
        cached = CachedRequestData()
        num_sched: dict[str, int] = {}
        scheduled: list[Request] = []
        for req in list(self.running):
            if budget <= 0:
                break
            n = min(req.num_tokens - req.num_computed_tokens, budget)
            if n <= 0:
                continue
            blocks = self.kv_cache_manager.allocate_slots(req, n)
            if blocks is None:
                raise RuntimeError("out of KV blocks: this stand-in does not preempt; "
                                   "give the engine more num_blocks")
            sent = self._sent_tokens[req.request_id]
            cached.req_ids.append(req.request_id)
            cached.new_token_ids.append(req.all_token_ids[sent:])
            self._sent_tokens[req.request_id] = req.num_tokens
            cached.new_block_ids.append(blocks.get_block_ids(allow_none=True))
            cached.num_computed_tokens.append(req.num_computed_tokens)
            cached.num_output_tokens.append(req.num_output_tokens)
            num_sched[req.request_id] = n
            budget -= n
            scheduled.append(req)

        skipped: deque[Request] = deque()
        while self.waiting and budget > 0:
            req = self.waiting.popleft()
            if req.status == RequestStatus.WAITING_FOR_REMOTE_KVS:
                if req.request_id not in self.finished_recving_kv_req_ids:
                    skipped.append(req)
                    continue
                self._update_waiting_for_remote_kv(req)
                req.status = RequestStatus.PREEMPTED if req.num_preemptions \
                    else RequestStatus.WAITING
            num_external, load_async = 0, False
            if req.num_computed_tokens == 0:
                new_computed_blocks, num_local = self.kv_cache_manager.get_computed_blocks(req)
                if self.connector is not None:
                    ext, load_async = self.connector.get_num_new_matched_tokens(req, num_local)
                    if ext is None:
                        skipped.append(req)
                        continue
                    if ext == 0 and load_async:
                        self.errors.append(f"{req.request_id}: get_num_new_matched_tokens "
                                           "returned (0, True)")
                    num_external = ext
                num_computed = num_local + num_external
                req._kvs_local_hit = num_local
            else:
                new_computed_blocks = self.kv_cache_manager.empty_kv_cache_blocks
                num_local = 0
                num_computed = req.num_computed_tokens
            if load_async:
                n = 0
            else:
                n = min(req.num_tokens - num_computed, budget)
                if n <= 0:
                    self.errors.append(f"{req.request_id}: connector left no token to compute "
                                       f"({num_computed} of {req.num_tokens} computed, sync)")
                    raise AssertionError(self.errors[-1])
            blocks = self.kv_cache_manager.allocate_slots(
                req, n, num_new_computed_tokens=num_local,
                new_computed_blocks=new_computed_blocks,
                num_external_computed_tokens=num_external, delay_cache_blocks=load_async)
            if blocks is None:
                skipped.appendleft(req)
                break
            if self.connector is not None:
                self.connector.update_state_after_alloc(
                    req, self.kv_cache_manager.get_blocks(req.request_id), num_external)
            req.num_external_computed_tokens += num_external
            if load_async:
                req.status = RequestStatus.WAITING_FOR_REMOTE_KVS
                req.num_computed_tokens = num_computed
                skipped.append(req)
                continue
            self.running.append(req)
            req.status = RequestStatus.RUNNING
            req.num_computed_tokens = num_computed
            new_reqs.append(NewRequestData.from_request(
                req, self.kv_cache_manager.get_block_ids(req.request_id)))
            self._sent_tokens[req.request_id] = req.num_tokens
            num_sched[req.request_id] = n
            budget -= n
            scheduled.append(req)
        self.waiting.extendleft(reversed(skipped))

        so = SchedulerOutput(scheduled_new_reqs=new_reqs, scheduled_cached_reqs=cached,
                             num_scheduled_tokens=num_sched,
                             total_num_scheduled_tokens=sum(num_sched.values()),
                             finished_req_ids=self.finished_req_ids, preempted_req_ids=set())
        if self.connector is not None:
            so.kv_connector_metadata = self.connector.build_connector_meta(so)
        # _update_after_schedule
        for req in scheduled:
            req.num_computed_tokens += num_sched[req.request_id]
        self.finished_req_ids = set()
        return so

    def _update_waiting_for_remote_kv(self, request: Request) -> None:
        rid = request.request_id
        if rid in self.failed_recving_kv_req_ids:
            if request.num_computed_tokens:
                self.kv_cache_manager.cache_blocks(request, request.num_computed_tokens)
            else:
                self.kv_cache_manager.free(request)
            self.failed_recving_kv_req_ids.remove(rid)
        else:
            self.kv_cache_manager.cache_blocks(request, request.num_computed_tokens)
            if request.num_computed_tokens == request.num_tokens:
                request.num_computed_tokens = request.num_tokens - 1
        self.finished_recving_kv_req_ids.remove(rid)

    # -- update_from_output
    def _handle_invalid_blocks(self, invalid: set[int], scheduled: set[str]) -> set[str]:
        """Requests whose loaded blocks failed: 'fail' finishes them with FINISHED_ERROR,
        'recompute' rewinds num_computed_tokens to the first bad block. Returns the ids
        whose sampled token this step must be dropped."""
        affected: set[str] = set()
        to_fail: list[Request] = []
        bs = self.block_size
        for req in list(self.requests.values()):
            if req.is_finished():
                continue
            is_async = req.status == RequestStatus.WAITING_FOR_REMOTE_KVS
            if not is_async and req.request_id not in scheduled:
                continue
            ids = self.kv_cache_manager.get_block_ids(req.request_id)[0]
            bad = [i for i, b in enumerate(ids) if b in invalid]
            if not bad:
                continue
            affected.add(req.request_id)
            if self.kv_load_failure_policy == "fail":
                to_fail.append(req)
                continue
            req.num_computed_tokens = min(req.num_computed_tokens, bad[0] * bs)
            if is_async:
                self.failed_recving_kv_req_ids.add(req.request_id)
        # Blocks whose content is known bad must not serve later prefix hits.
        for b in invalid:
            self.kv_cache_manager.block_pool.uncache(self.kv_cache_manager.block_pool.blocks[b])
        self._to_fail = to_fail
        return affected

    def update_from_output(self, so: SchedulerOutput, mro: ModelRunnerOutput
                           ) -> list[EngineCoreOutput]:
        outputs: list[EngineCoreOutput] = []
        kvo = mro.kv_connector_output
        affected: set[str] = set()
        self._to_fail = []
        if kvo is not None and kvo.invalid_block_ids:
            affected = self._handle_invalid_blocks(kvo.invalid_block_ids,
                                                   set(so.num_scheduled_tokens))
        for req in self._to_fail:
            outputs.extend(self.finish_requests([req.request_id], RequestStatus.FINISHED_ERROR))
        for rid in so.num_scheduled_tokens:
            req = self.requests.get(rid)
            if req is None or req.is_finished() or rid in affected:
                continue
            if rid in mro.partials:
                req.append_output_token_ids(toymodel.token_from_digest(mro.partials[rid]))
                if req.num_output_tokens >= req.max_tokens:
                    req.status = RequestStatus.FINISHED_LENGTH_CAPPED
                    self.running.remove(req)
                    outputs.append(self._finish(req))
        if kvo is not None:
            self._update_from_kv_xfer_finished(kvo)
        self.events.extend(self.kv_cache_manager.take_events())
        if self.connector is not None:
            self.events.extend(self.connector.take_events() or ())
        return outputs

    def _update_from_kv_xfer_finished(self, kvo: KVConnectorOutput) -> None:
        if self.connector is not None:
            self.connector.update_connector_output(kvo)
        for rid in kvo.finished_recving or ():
            req = self.requests.get(rid)
            if req is None:
                self.errors.append(f"finished_recving for unknown request {rid}")
                continue
            if req.status == RequestStatus.WAITING_FOR_REMOTE_KVS:
                self.finished_recving_kv_req_ids.add(rid)
            else:
                assert RequestStatus.is_finished(req.status)
                self._free_blocks(req)
        for rid in kvo.finished_sending or ():
            req = self.requests.get(rid)
            if req is None:
                self.errors.append(f"finished_sending for unknown request {rid}")
                continue
            if not req.is_finished():
                self.errors.append(f"finished_sending for unfinished request {rid}")
                continue
            self._free_blocks(req)

    def _finish(self, req: Request) -> EngineCoreOutput:
        params = self._free_request(req)
        return EngineCoreOutput(req.request_id, list(req.output_token_ids),
                                req.get_finished_reason(), str(req.status), params,
                                getattr(req, "_kvs_local_hit", 0),
                                req.num_external_computed_tokens)

    def _free_request(self, req: Request) -> dict | None:
        assert req.is_finished()
        delay_free, params = False, None
        if self.connector is not None:
            block_ids = self.kv_cache_manager.get_block_ids(req.request_id)
            assert len(self.kv_cache_config.kv_cache_groups) == 1
            delay_free, params = self.connector.request_finished(req, block_ids[0])
        self.finished_req_ids.add(req.request_id)
        # A request still receiving keeps its blocks until finished_recving (upstream:
        # WAITING_FOR_REMOTE_KVS requests are freed when the load completes).
        if req.request_id in self._recving_at_finish():
            delay_free = True
        if not delay_free:
            self._free_blocks(req)
        return params

    def _recving_at_finish(self) -> set[str]:
        return getattr(self, "_recving_now", set())

    def _free_blocks(self, req: Request) -> None:
        self.kv_cache_manager.free(req)
        self.requests.pop(req.request_id, None)
        self._sent_tokens.pop(req.request_id, None)

    def finish_requests(self, request_ids, status: RequestStatus) -> list[EngineCoreOutput]:
        """Aborts: out of the queues, then _free_request -> connector.request_finished."""
        outs = []
        for rid in request_ids:
            req = self.requests.get(rid)
            if req is None or req.is_finished():
                continue
            was_recving = req.status == RequestStatus.WAITING_FOR_REMOTE_KVS
            if req in self.running:
                self.running.remove(req)
            elif req in self.waiting:
                self.waiting.remove(req)
            req.status = status
            self._recving_now = {rid} if was_recving else set()
            try:
                outs.append(self._finish(req))
            finally:
                self._recving_now = set()
        return outs

    def held_requests(self) -> list[str]:
        """Finished requests whose blocks are still held (delayed free or pending recv)."""
        return [rid for rid, r in self.requests.items() if r.is_finished()]

    def has_unfinished_requests(self) -> bool:
        return bool(self.running or self.waiting)


class Engine:
    """EngineCore: workers, scheduler, handshake, step()."""

    def __init__(self, args: EngineArgs):
        self.args = args
        vc = args.vllm_config()
        if args.engine_id and vc.kv_transfer_config is not None:
            vc.kv_transfer_config.engine_id = args.engine_id
        self.vllm_config = vc
        hash_fn = get_hash_fn_by_name(vc.cache_config.prefix_caching_hash_algo)
        kv_cache_utils.init_none_hash(hash_fn)
        self.block_hasher = kv_cache_utils.get_request_block_hasher(
            vc.cache_config.block_size, hash_fn)
        self.kv_cache_config = make_kv_cache_config(vc)
        self.executor = Executor(args, vc, self.kv_cache_config)
        self.scheduler = Scheduler(vc, self.kv_cache_config, args.max_num_batched_tokens)
        conn = self.scheduler.connector
        world = args.tp
        self.aggregator = KVOutputAggregator(
            (conn.get_finished_count() if conn is not None else None) or world)
        if conn is not None:
            # EngineCore: merge the workers' non-None metadata, then hand it over.
            hs = {r: m for r, m in self.executor.handshakes.items() if m is not None}
            conn.set_xfer_handshake_metadata(hs)
        self._ids = itertools.count()

    def add_request(self, request_id: str, prompt: list[int], max_tokens: int,
                    kv_transfer_params: dict | None = None) -> None:
        extra = {"kv_transfer_params": kv_transfer_params} if kv_transfer_params else None
        req = Request(request_id, prompt, SamplingParams(max_tokens=max_tokens, extra_args=extra),
                      block_hasher=self.block_hasher)
        self.scheduler.add_request(req)

    def abort(self, request_ids: list[str]) -> list[EngineCoreOutput]:
        return self.scheduler.finish_requests(request_ids, RequestStatus.FINISHED_ABORTED)

    def step(self) -> list[EngineCoreOutput]:
        so = self.scheduler.schedule()
        outs = self.executor.collective_rpc("execute_model", so)
        for rank, o in enumerate(outs):   # per-rank reports, for diagnosing a connector
            k = o.kv_connector_output
            if k is not None and (k.finished_sending or k.finished_recving or k.invalid_block_ids):
                logger.info("engine: rank %d: finished_sending=%s finished_recving=%s "
                            "invalid_block_ids=%s", rank, sorted(k.finished_sending or ()),
                            sorted(k.finished_recving or ()), sorted(k.invalid_block_ids))
        mro = self.aggregator.aggregate(outs)
        return self.scheduler.update_from_output(so, mro)

    def has_work(self) -> bool:
        s = self.scheduler
        return s.has_unfinished_requests() or bool(s.finished_req_ids)

    def dump_prompt_blocks(self, prompt: list[int]) -> dict:
        """Per full prompt block: its hash, the cached block id (or None) and each rank's
        digest of that block's KV, for bit-for-bit comparison across engines."""
        probe = Request("dump", prompt, SamplingParams(max_tokens=1),
                        block_hasher=self.block_hasher)
        pool = self.scheduler.kv_cache_manager.block_pool
        ids = []
        for h in probe.block_hashes:
            blk = pool.get_cached_block(h)
            ids.append(None if blk is None else blk.block_id)
        present = [b for b in ids if b is not None]
        per_rank = self.executor.collective_rpc("dump_blocks", present)
        digests = []
        for rank_d in per_rank:
            it = iter(rank_d)
            digests.append([None if b is None else next(it) for b in ids])
        # The same per global KV head, merged over the ranks (TP-independent).
        heads = [{} for _ in ids]
        for rank_d in self.executor.collective_rpc("dump_head_blocks", present):
            it = iter(rank_d)
            for i, b in enumerate(ids):
                if b is not None:
                    for g, dig in next(it).items():
                        # A replicated head: every replica must hold the same KV.
                        heads[i][g] = dig if heads[i].get(g, dig) == dig else "replicas differ"
        return {"hashes": [h.hex() for h in probe.block_hashes], "block_ids": ids,
                "digests": digests, "head_digests": heads}

    def stats(self) -> dict:
        s = self.scheduler
        kvm = s.kv_cache_manager
        return {"free_blocks": kvm.get_num_free_blocks(),
                "usable_blocks": self.kv_cache_config.num_blocks - 1,
                "held": s.held_requests(), "running": len(s.running), "waiting": len(s.waiting),
                "errors": list(s.errors), "events": len(s.events),
                "event_kinds": sorted({f"{type(ev).__name__}:{getattr(ev, 'medium', None)}"
                                       for ev in s.events})}

    def shutdown(self):
        if self.scheduler.connector is not None:
            self.scheduler.connector.shutdown()
        self.executor.shutdown()
