# SPDX-License-Identifier: Apache-2.0
"""Stand-in for vllm/distributed/kv_events.py (efc347f1b2e6).

Upstream these are msgspec Structs (array_like, tagged by class name); msgspec
is not installed here, so they are dataclasses with the same field names and
order. Only the scheduler-side event types a connector returns from
take_events() are given; the ZMQ publisher is not."""
from dataclasses import dataclass
from typing import Any

ExternalBlockHash = bytes | int
MEDIUM_GPU = "GPU"


@dataclass
class EventBatch:
    ts: float
    events: list[Any]
    data_parallel_rank: int | None = None


@dataclass
class KVCacheEvent:
    """Base class for all KV cache-related events."""


@dataclass
class BlockStored(KVCacheEvent):
    block_hashes: list[ExternalBlockHash]
    parent_block_hash: ExternalBlockHash | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None
    medium: str | None
    lora_name: str | None
    extra_keys: list[tuple[Any, ...] | None] | None = None
    group_idx: int | None = None
    kv_cache_spec_kind: str | None = None
    kv_cache_spec_sliding_window: int | None = None


@dataclass
class BlockRemoved(KVCacheEvent):
    block_hashes: list[ExternalBlockHash]
    medium: str | None
    group_idx: int | None = None


@dataclass
class AllBlocksCleared(KVCacheEvent):
    pass


@dataclass
class KVEventBatch(EventBatch):
    pass
