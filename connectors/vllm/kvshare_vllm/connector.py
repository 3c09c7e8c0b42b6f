# SPDX-License-Identifier: Apache-2.0
"""KVShareConnector: vLLM's v1 KV connector over libkvshare.

Load it with
  --kv-transfer-config '{"kv_connector":"KVShareConnector",
                         "kv_connector_module_path":"kvshare_vllm.connector",
                         "kv_role":"kv_producer"}'     (or kv_consumer, kv_both)
or let the kvshare webhook inject it (the plugin in kvshare_vllm.plugin).

vLLM builds one instance in the scheduler (EngineCore) and one per worker
rank; each half lives in its own module (_scheduler, _worker). Only vLLM's
documented connector surface is used: from vllm this imports the connector
base module, and, where present, vllm.logger and vllm.distributed.parallel_state.
Importing this module does no CUDA and no libkvshare work.
"""

import logging
import threading

from vllm.distributed.kv_transfer.kv_connector.v1.base import (KVConnectorBase_V1,
                                                                KVConnectorMetadata,
                                                                KVConnectorRole)

from . import _config
from ._config import Settings

try:
    from vllm.logger import init_logger
    logger = init_logger(__name__)
except ImportError:  # a vLLM without it: plain logging
    logger = logging.getLogger(__name__)

__all__ = ["KVShareConnector"]


class _Contexts:
    """One libkvshare context per process. A worker's context serves its
    blocks (KVSHARE_LISTEN, port + TP rank); the scheduler reuses it when it
    shares the process (vLLM's uniprocess executor), so local lookups see
    what the worker published, and otherwise opens a client-only one."""

    def __init__(self):
        self._lock = threading.Lock()
        self._ctx = None

    def worker_context(self, settings, tp_rank):
        from . import _lib
        with self._lock:
            if self._ctx is not None:
                return self._ctx
            shim = _lib.preload_ctx()
            if shim is not None:
                ctx = _lib.Context(handle=shim)
                if ctx.listen_addr() is not None or not settings.listen:
                    logger.info("kvshare_vllm: using the LD_PRELOAD shim's kvshare context")
                    self._ctx = ctx
                    return ctx
            self._ctx = _lib.Context(listen=settings.listen_for_rank(tp_rank))
            return self._ctx

    def scheduler_context(self):
        from . import _lib
        with self._lock:
            if self._ctx is None:
                self._ctx = _lib.Context(listen="")
            return self._ctx


_CONTEXTS = _Contexts()


def _tp_rank_and_size(vllm_config):
    size = int(getattr(vllm_config.parallel_config, "tensor_parallel_size", 1))
    try:
        from vllm.distributed.parallel_state import (get_tensor_model_parallel_rank,
                                                     get_tensor_model_parallel_world_size)
        return int(get_tensor_model_parallel_rank()), int(get_tensor_model_parallel_world_size())
    except Exception:  # not initialised (single process): rank 0 of the configured size
        return 0, size


class KVShareConnector(KVConnectorBase_V1):
    """vLLM v1 connector: P/D handoff, cache-pool reuse and offload."""

    def __init__(self, vllm_config, role, kv_cache_config=None):
        super().__init__(vllm_config=vllm_config, role=role, kv_cache_config=kv_cache_config)
        self._settings = Settings(vllm_config)
        self._sched = None
        self._worker = None
        if role == KVConnectorRole.SCHEDULER:
            from ._scheduler import SchedulerSide
            self._sched = SchedulerSide(vllm_config, self._settings, _CONTEXTS.scheduler_context)
        else:
            from ._worker import WorkerSide
            rank, size = _tp_rank_and_size(vllm_config)
            self._worker = WorkerSide(vllm_config, kv_cache_config, self._settings, rank, size,
                                      _CONTEXTS)

    # ---------------------------------------------------------------- scheduler
    def get_num_new_matched_tokens(self, request, num_computed_tokens):
        return self._sched.get_num_new_matched_tokens(request, num_computed_tokens)

    def update_state_after_alloc(self, request, blocks, num_external_tokens):
        self._sched.update_state_after_alloc(request, blocks, num_external_tokens)

    def build_connector_meta(self, scheduler_output) -> KVConnectorMetadata:
        return self._sched.build_connector_meta(scheduler_output)

    def request_finished(self, request, block_ids):
        return self._sched.request_finished(request, block_ids, self._own_addr)

    def update_connector_output(self, connector_output):
        self._sched.update_connector_output(connector_output)

    def take_events(self):
        return self._sched.take_events()

    def set_xfer_handshake_metadata(self, metadata):
        self._sched.set_handshake(metadata)

    def get_finished_count(self):
        return None  # every TP rank reports every id

    def _own_addr(self, tp_rank):
        adv = _config.advertised(self._settings.listen_for_rank(tp_rank))
        return f"{adv[0]}:{adv[1]}" if adv and adv[1] else None

    @classmethod
    def get_required_kvcache_layout(cls, vllm_config):
        return None  # NHD and HND both work; peers must agree (it is in the layout id)

    # ---------------------------------------------------------------- worker
    def register_kv_caches(self, kv_caches):
        self._worker.register(kv_caches)

    def get_handshake_metadata(self):
        return self._worker.handshake()

    def handle_preemptions(self, kv_connector_metadata):
        self._worker.preemptions(kv_connector_metadata)

    def start_load_kv(self, forward_context, **kwargs):
        self._worker.start_load(self._get_connector_metadata())

    def wait_for_layer_load(self, layer_name):
        # Loads are asynchronous (get_num_new_matched_tokens answers load_async=True):
        # vLLM schedules a loading request only after get_finished reported it.
        return None

    def save_kv_layer(self, layer_name, kv_layer, attn_metadata, **kwargs):
        # Blocks are published whole, after the last layer wrote them (wait_for_save).
        return None

    def wait_for_save(self):
        self._worker.save(self._get_connector_metadata())

    def get_finished(self, finished_req_ids):
        return self._worker.finished(finished_req_ids)

    def get_block_ids_with_load_errors(self):
        return self._worker.load_errors()

    def shutdown(self):
        if self._worker is not None:
            self._worker.shutdown()
