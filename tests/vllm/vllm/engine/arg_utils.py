# SPDX-License-Identifier: Apache-2.0
"""Stand-in for vllm/engine/arg_utils.py: the EngineArgs fields kvshare's plugin reads and
writes, with upstream's names, defaults and call order. As upstream, __post_init__ loads the
general plugins (once per process), and create_engine_config() turns the args into the
engine's config; `vllm serve` calls it once, in the API-server process."""
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Optional

import vllm.config as _config
from vllm.config import KVTransferConfig


@dataclass
class EngineArgs:
    """Arguments for vLLM engine (the subset kvshare needs)."""

    model: str = "facebook/opt-125m"
    block_size: Optional[int] = None
    # Upstream: None, then the model decides (on for most generative models).
    enable_prefix_caching: Optional[bool] = None
    # Upstream: CacheConfig.prefix_caching_hash_algo, "sha256" (pickle + SHA-256).
    prefix_caching_hash_algo: str = "sha256"
    kv_transfer_config: Optional[KVTransferConfig] = None
    # Upstream: CacheConfig.kv_offloading_size / kv_offloading_backend. When the size is set,
    # VllmConfig._post_init_kv_transfer_config fills kv_transfer_config itself.
    kv_offloading_size: Optional[float] = None
    kv_offloading_backend: str = "native"

    def __post_init__(self):
        # Setup plugins
        from vllm.plugins import load_general_plugins

        load_general_plugins()

    def create_engine_config(self, usage_context: Any = None, headless: bool = False):
        """The engine's config from these args. Uses the stand-in's VllmConfig and
        CacheConfig when vllm.config has them, else a namespace with the same attributes."""
        cache = dict(
            block_size=self.block_size if self.block_size is not None else 16,
            enable_prefix_caching=(
                True if self.enable_prefix_caching is None else self.enable_prefix_caching
            ),
            prefix_caching_hash_algo=self.prefix_caching_hash_algo,
        )
        cache_cls = getattr(_config, "CacheConfig", None)
        vllm_cls = getattr(_config, "VllmConfig", None)
        if cache_cls is not None and vllm_cls is not None:
            try:
                return vllm_cls(
                    cache_config=cache_cls(**cache), kv_transfer_config=self.kv_transfer_config
                )
            except TypeError:
                pass  # a VllmConfig that wants more than these two: use the namespace
        return SimpleNamespace(
            model=self.model,
            cache_config=SimpleNamespace(**cache),
            kv_transfer_config=self.kv_transfer_config,
        )
