# SPDX-License-Identifier: Apache-2.0
"""Stand-in for vllm/distributed/kv_transfer/kv_transfer_state.py: the worker's connector.

ensure_kv_transfer_initialized creates the WORKER-role connector once per
worker process, only if kv_transfer_config.is_kv_transfer_instance."""
from vllm.distributed.kv_transfer.kv_connector.factory import KVConnectorFactory
from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorRole

_KV_CONNECTOR_AGENT = None


def get_kv_transfer_group():
    assert _KV_CONNECTOR_AGENT is not None, "disaggregated KV cache transfer parallel group is not initialized"
    return _KV_CONNECTOR_AGENT


def has_kv_transfer_group() -> bool:
    return _KV_CONNECTOR_AGENT is not None


def is_v1_kv_transfer_group(connector=None) -> bool:
    return True


def ensure_kv_transfer_initialized(vllm_config, kv_cache_config=None) -> None:
    global _KV_CONNECTOR_AGENT
    ktc = vllm_config.kv_transfer_config
    if ktc is None or _KV_CONNECTOR_AGENT is not None:
        return
    if ktc.is_kv_transfer_instance:
        _KV_CONNECTOR_AGENT = KVConnectorFactory.create_connector(
            config=vllm_config, role=KVConnectorRole.WORKER, kv_cache_config=kv_cache_config)


def ensure_kv_transfer_shutdown() -> None:
    global _KV_CONNECTOR_AGENT
    if _KV_CONNECTOR_AGENT is not None:
        _KV_CONNECTOR_AGENT.shutdown()
        _KV_CONNECTOR_AGENT = None
