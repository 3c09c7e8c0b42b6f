# SPDX-License-Identifier: Apache-2.0
"""Stand-in for vllm/v1/kv_cache_interface.py: the KV cache config given to connectors."""
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class AttentionSpec:
    block_size: int
    num_kv_heads: int
    head_size: int
    dtype: Any

    @property
    def dtype_size(self) -> int:
        import torch
        return torch.tensor([], dtype=self.dtype).element_size()   # torch 1.13: no dtype.itemsize

    @property
    def page_size_bytes(self) -> int:
        return 2 * self.block_size * self.num_kv_heads * self.head_size * self.dtype_size


@dataclass(frozen=True)
class FullAttentionSpec(AttentionSpec):
    sliding_window: int | None = None


@dataclass(frozen=True)
class MLAAttentionSpec(FullAttentionSpec):
    @property
    def page_size_bytes(self) -> int:
        return self.block_size * self.num_kv_heads * self.head_size * self.dtype_size


@dataclass
class KVCacheTensor:
    size: int               # bytes
    shared_by: list[str]    # layer names


@dataclass
class KVCacheGroupSpec:
    layer_names: list[str]
    kv_cache_spec: AttentionSpec


@dataclass
class KVCacheConfig:
    num_blocks: int
    kv_cache_tensors: list[KVCacheTensor] = field(default_factory=list)
    kv_cache_groups: list[KVCacheGroupSpec] = field(default_factory=list)
