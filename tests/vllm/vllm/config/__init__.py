# SPDX-License-Identifier: Apache-2.0
"""Stand-in for vllm/config/__init__.py: the config classes a connector imports."""
from vllm.config.cache import CacheConfig
from vllm.config.kv_transfer import KVTransferConfig
from vllm.config.model import ModelConfig
from vllm.config.parallel import ParallelConfig
from vllm.config.vllm import VllmConfig

__all__ = ["CacheConfig", "KVTransferConfig", "ModelConfig", "ParallelConfig", "VllmConfig"]
