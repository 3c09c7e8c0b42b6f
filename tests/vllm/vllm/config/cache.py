# SPDX-License-Identifier: Apache-2.0
"""Stand-in for vllm/config/cache.py: the fields a connector reads."""
from dataclasses import dataclass
from typing import Literal

PrefixCachingHashAlgo = Literal["sha256", "sha256_cbor", "xxhash", "xxhash_cbor"]


@dataclass
class CacheConfig:
    block_size: int = 16
    gpu_memory_utilization: float = 0.9
    cache_dtype: str = "auto"
    enable_prefix_caching: bool = True
    prefix_caching_hash_algo: PrefixCachingHashAlgo = "sha256"
    num_gpu_blocks: int | None = None

    def __post_init__(self) -> None:
        if self.prefix_caching_hash_algo not in ("sha256", "sha256_cbor", "xxhash",
                                                 "xxhash_cbor"):
            raise ValueError(f"bad prefix_caching_hash_algo {self.prefix_caching_hash_algo!r}")
