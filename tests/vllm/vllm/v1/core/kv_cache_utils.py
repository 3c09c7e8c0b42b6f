# SPDX-License-Identifier: Apache-2.0
"""Stand-in for vllm/v1/core/kv_cache_utils.py: block hashing and KVCacheBlock.

NONE_HASH is hash_fn(PYTHONHASHSEED string) (os.urandom(32) when unset), set by
init_none_hash as EngineCore does; block i's hash chains block i-1's. Extra
keys: LoRA name on every block, cache_salt on the first (no multimodal or
prompt embeddings here)."""
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

BlockHash = bytes
NONE_HASH: BlockHash | None = None


def init_none_hash(hash_fn: Callable[[Any], bytes]) -> None:
    global NONE_HASH
    seed = os.getenv("PYTHONHASHSEED")
    NONE_HASH = os.urandom(32) if seed is None else hash_fn(seed)


def hash_block_tokens(hash_function: Callable[[Any], bytes], parent_block_hash: BlockHash | None,
                      curr_block_token_ids: Sequence[int],
                      extra_keys: tuple[Any, ...] | None = None) -> BlockHash:
    if not parent_block_hash:
        parent_block_hash = NONE_HASH
    return BlockHash(hash_function((parent_block_hash, tuple(curr_block_token_ids), extra_keys)))


def generate_block_hash_extra_keys(request, start_token_idx: int, end_token_idx: int,
                                   start_mm_idx: int = 0) -> tuple[tuple[Any, ...] | None, int]:
    keys: list[Any] = []
    if request.lora_request is not None:
        keys.append(request.lora_request.lora_name)
    if start_token_idx == 0 and request.cache_salt:
        keys.append(request.cache_salt)
    return (tuple(keys) if keys else None), start_mm_idx


def get_request_block_hasher(block_size: int, caching_hash_fn: Callable[[Any], bytes]
                             ) -> Callable[[Any], list[BlockHash]]:
    """Returns hashes of the request's new full blocks (those not hashed yet)."""
    def request_block_hasher(request) -> list[BlockHash]:
        start = len(request.block_hashes) * block_size
        if start + block_size > request.num_tokens:
            return []
        prev = request.block_hashes[-1] if request.block_hashes else None
        new: list[BlockHash] = []
        while start + block_size <= request.num_tokens:
            end = start + block_size
            extra, _ = generate_block_hash_extra_keys(request, start, end)
            prev = hash_block_tokens(caching_hash_fn, prev,
                                     request.all_token_ids[start:end], extra)
            new.append(prev)
            start = end
        return new
    return request_block_hasher


@dataclass(eq=False)
class KVCacheBlock:
    block_id: int
    ref_cnt: int = 0
    _block_hash: bytes | None = None
    is_null: bool = False

    @property
    def block_hash(self) -> bytes | None:
        return self._block_hash

    @block_hash.setter
    def block_hash(self, h: bytes) -> None:
        assert self._block_hash is None, "the block already has a hash"
        self._block_hash = h

    def reset_hash(self) -> None:
        self._block_hash = None


def maybe_convert_block_hash(h: bytes) -> int:
    """Events carry the digest's last 8 bytes as an int (VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=1)."""
    return int.from_bytes(h, "big") & ((1 << 64) - 1)
