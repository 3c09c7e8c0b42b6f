# SPDX-License-Identifier: Apache-2.0
"""A connector that loads and saves nothing: the engine's own baseline.

With it the engine must compute every token itself, so the generated tokens
are the "local recompute" every scenario compares against. It also records
each call in order, which tests/vllm/scenarios.py `selftest` checks against
vLLM's call order."""
import json
import os
from dataclasses import dataclass, field

from vllm.distributed.kv_transfer.kv_connector.v1.base import (KVConnectorBase_V1,
                                                               KVConnectorMetadata)


@dataclass
class NullMetadata(KVConnectorMetadata):
    step: int = 0
    new_req_ids: list = field(default_factory=list)


class NullConnector(KVConnectorBase_V1):
    def __init__(self, vllm_config, role, kv_cache_config):
        super().__init__(vllm_config, role, kv_cache_config)
        self._step = 0
        self._trace = os.environ.get("KVS_NULL_TRACE")   # append calls here, one JSON per line

    def _log(self, *what):
        if self._trace:
            with open(self._trace, "a") as f:
                f.write(json.dumps([self.role.name, os.getpid(), *what]) + "\n")

    # scheduler side
    def get_num_new_matched_tokens(self, request, num_computed_tokens):
        self._log("get_num_new_matched_tokens", request.request_id, num_computed_tokens)
        return 0, False

    def update_state_after_alloc(self, request, blocks, num_external_tokens):
        self._log("update_state_after_alloc", request.request_id, num_external_tokens)

    def build_connector_meta(self, scheduler_output):
        self._step += 1
        self._log("build_connector_meta", self._step)
        return NullMetadata(self._step, [r.req_id for r in scheduler_output.scheduled_new_reqs])

    def request_finished(self, request, block_ids):
        self._log("request_finished", request.request_id, str(request.status))
        return False, None

    # worker side
    def register_kv_caches(self, kv_caches):
        self._log("register_kv_caches", sorted(kv_caches))

    def start_load_kv(self, forward_context, **kwargs):
        self._log("start_load_kv", self._get_connector_metadata().step)

    def wait_for_layer_load(self, layer_name):
        self._log("wait_for_layer_load", layer_name)

    def save_kv_layer(self, layer_name, kv_layer, attn_metadata, **kwargs):
        self._log("save_kv_layer", layer_name)

    def wait_for_save(self):
        self._log("wait_for_save")

    def get_finished(self, finished_req_ids):
        self._log("get_finished", sorted(finished_req_ids))
        return None, None


@dataclass
class ToyMetadata(KVConnectorMetadata):
    """req_id -> (token ids to load, block ids to load into, first position)."""
    reqs_to_recv: dict = field(default_factory=dict)


class ToyAsyncConnector(NullConnector):
    """An async-loading connector that "loads" by computing the right KV itself.

    Why: it exercises the engine's asynchronous paths (WAITING_FOR_REMOTE_KVS,
    finished_recving, the full-hit num_tokens-1 rule, load errors) without any
    transport, so `selftest` can check the harness alone. kv_connector_extra_config
    "mode": "good" (correct KV), "bad" (loads nothing and reports every block as
    failed), "lie" (claims a synchronous load, loads nothing, reports nothing:
    the generated tokens must then differ, proving the check can fail)."""

    def __init__(self, vllm_config, role, kv_cache_config):
        super().__init__(vllm_config, role, kv_cache_config)
        self.mode = self._kv_transfer_config.get_from_extra_config("mode", "good")
        self._pending: dict = {}
        self._done: set = set()
        self._errors: set = set()
        self._caches = None
        self._bs = vllm_config.cache_config.block_size

    def get_num_new_matched_tokens(self, request, num_computed_tokens):
        params = request.kv_transfer_params
        if not params or params.get("toy_done") or num_computed_tokens:
            return 0, False
        full = request.num_prompt_tokens // self._bs * self._bs
        n = full - num_computed_tokens
        if n <= 0:
            return 0, False
        if self.mode == "lie":
            return min(n, request.num_prompt_tokens - 1 - num_computed_tokens), False
        return n, True

    def update_state_after_alloc(self, request, blocks, num_external_tokens):
        if num_external_tokens > 0 and self.mode != "lie":
            ids = blocks.get_unhashed_block_ids()
            start = request.num_prompt_tokens // self._bs * self._bs - num_external_tokens
            self._pending[request.request_id] = (
                list(request.prompt_token_ids[:start + num_external_tokens]), ids, start)
            # One transfer per request, as NIXL's do_remote_prefill=False: a retry after
            # a failed load recomputes instead of loading again.
            request.kv_transfer_params["toy_done"] = True

    def build_connector_meta(self, scheduler_output):
        meta, self._pending = ToyMetadata(self._pending), {}
        return meta

    def register_kv_caches(self, kv_caches):
        self._caches = kv_caches

    def start_load_kv(self, forward_context, **kwargs):
        import engine
        import torch
        import toymodel
        from vllm.distributed.parallel_state import get_tensor_model_parallel_rank
        mc = self._vllm_config.model_config
        pc = self._vllm_config.parallel_config
        h = mc.get_num_kv_heads(pc)
        rank = get_tensor_model_parallel_rank()
        heads = torch.arange(0, 1) if mc.use_mla else torch.arange(rank * h, (rank + 1) * h)
        for rid, (toks, ids, start) in self._get_connector_metadata().reqs_to_recv.items():
            self._done.add(rid)
            if self.mode == "bad":
                self._errors.update(ids)
                continue
            seeds = torch.tensor(toymodel.position_seeds(toks), dtype=torch.int64)
            pos = torch.arange(start, len(toks))
            blk = torch.tensor(ids)[(pos - start) // self._bs]
            for li, (name, cache) in enumerate(self._caches.items()):
                layout = os.environ.get("KVS_TOY_LAYOUT", "NHD")
                for kv in ((2,) if mc.use_mla else (0, 1)):
                    vals = toymodel.kv_values(seeds[pos], li, kv, heads, mc.head_size, cache.dtype)
                    idx = engine._kv_index(cache, layout, mc.use_mla, kv, blk, pos % self._bs)
                    cache[idx] = vals[:, 0] if mc.use_mla else vals

    def get_finished(self, finished_req_ids):
        done, self._done = self._done, set()
        return None, (done or None)

    def get_block_ids_with_load_errors(self):
        e, self._errors = self._errors, set()
        return e
