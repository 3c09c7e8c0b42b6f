# SPDX-License-Identifier: Apache-2.0
"""Stand-in for vllm/distributed/kv_transfer/kv_connector/factory.py.

Only the external-module path is given (no built-in registry): with
kv_connector_module_path set, upstream imports it and takes the attribute
named kv_connector, and rejects classes with the old 2-argument constructor."""
import importlib
import inspect

from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorBase_V1


class KVConnectorFactory:
    @classmethod
    def get_connector_class(cls, kv_transfer_config) -> type[KVConnectorBase_V1]:
        path = kv_transfer_config.kv_connector_module_path
        if not path:
            raise ValueError(f"Unsupported connector type: {kv_transfer_config.kv_connector}")
        return getattr(importlib.import_module(path), kv_transfer_config.kv_connector)

    @classmethod
    def create_connector(cls, config, role, kv_cache_config) -> KVConnectorBase_V1:
        kv_transfer_config = config.kv_transfer_config
        if kv_transfer_config is None:
            raise ValueError("kv_transfer_config must be set to create a connector")
        connector_cls = cls.get_connector_class(kv_transfer_config)
        if "kv_cache_config" not in inspect.signature(connector_cls.__init__).parameters:
            raise TypeError(f"{connector_cls.__name__} uses deprecated 2-argument "
                            "constructor signature")
        return connector_cls(config, role, kv_cache_config)
