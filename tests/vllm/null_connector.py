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
