# SPDX-License-Identifier: Apache-2.0
"""Stand-in for vllm/v1/core/kv_cache_manager.py: KVCacheBlocks and the manager.

One KV cache group (full attention), as a non-HMA connector sees it. The
manager's calls and the order the scheduler makes them (get_computed_blocks,
allocate_slots with delay_cache_blocks, cache_blocks after an async load,
free in reverse order) follow upstream."""
from collections.abc import Sequence
from dataclasses import dataclass

from vllm.v1.core.block_pool import BlockPool
from vllm.v1.core.kv_cache_utils import KVCacheBlock


@dataclass
class KVCacheBlocks:
    """The blocks of one request, one sequence per KV cache group."""
    blocks: tuple[Sequence[KVCacheBlock], ...]

    def __add__(self, other: "KVCacheBlocks") -> "KVCacheBlocks":
        return KVCacheBlocks(tuple(list(a) + list(b) for a, b in zip(self.blocks, other.blocks)))

    def get_block_ids(self, allow_none: bool = False) -> tuple[list[int], ...] | None:
        if allow_none and all(len(g) == 0 for g in self.blocks):
            return None
        return tuple([b.block_id for b in g] for g in self.blocks)

    def get_unhashed_block_ids(self) -> list[int]:
        assert len(self.blocks) == 1, "Only one group is supported"
        return [b.block_id for b in self.blocks[0] if b.block_hash is None]

    def get_unhashed_block_ids_all_groups(self) -> list[list[int]]:
        return [[b.block_id for b in g if b.block_hash is None and not b.is_null]
                for g in self.blocks]

    def new_empty(self) -> "KVCacheBlocks":
        return KVCacheBlocks(tuple([] for _ in self.blocks))


class KVCacheManager:
    def __init__(self, num_blocks: int, block_size: int, max_model_len: int,
                 enable_caching: bool = True, log_stats: bool = False):
        self.block_size = block_size
        self.max_model_len = max_model_len
        self.enable_caching = enable_caching
        self.block_pool = BlockPool(num_blocks, enable_caching)
        self.req_to_blocks: dict[str, list[KVCacheBlock]] = {}
        self.num_cached_block: dict[str, int] = {}
        self.empty_kv_cache_blocks = KVCacheBlocks(([],))

    def get_computed_blocks(self, request) -> tuple[KVCacheBlocks, int]:
        """Longest cached prefix; at least one token is always left to compute."""
        if not self.enable_caching:
            return self.empty_kv_cache_blocks, 0
        max_cache_hit_length = request.num_tokens - 1
        hit: list[KVCacheBlock] = []
        for h in request.block_hashes[:max_cache_hit_length // self.block_size]:
            blk = self.block_pool.get_cached_block(h)
            if blk is None:
                break
            hit.append(blk)
        return KVCacheBlocks((hit,)), len(hit) * self.block_size

    def allocate_slots(self, request, num_new_tokens: int, num_new_computed_tokens: int = 0,
                       new_computed_blocks: KVCacheBlocks | None = None,
                       num_lookahead_tokens: int = 0, num_external_computed_tokens: int = 0,
                       delay_cache_blocks: bool = False) -> KVCacheBlocks | None:
        new_computed = list(new_computed_blocks.blocks[0]) if new_computed_blocks else []
        num_local_computed = request.num_computed_tokens + num_new_computed_tokens
        total_computed = num_local_computed + num_external_computed_tokens
        num_tokens_need_slot = min(total_computed + num_new_tokens + num_lookahead_tokens,
                                   self.max_model_len)
        req_blocks = self.req_to_blocks.setdefault(request.request_id, [])
        need = -(-num_tokens_need_slot // self.block_size) - len(req_blocks) - len(new_computed)
        need = max(need, 0)
        # Touched cached blocks that sit in the free queue are not free any more.
        evictable_hits = sum(1 for b in new_computed if b.ref_cnt == 0)
        if need > self.block_pool.get_num_free_blocks() - evictable_hits:
            return None
        if self.enable_caching:
            self.block_pool.touch(new_computed)
        req_blocks.extend(new_computed)
        self.num_cached_block.setdefault(request.request_id, 0)
        if new_computed:
            self.num_cached_block[request.request_id] = len(req_blocks)
        new_blocks = self.block_pool.get_new_blocks(need)
        req_blocks.extend(new_blocks)
        if self.enable_caching and not delay_cache_blocks:
            self.cache_blocks(request, min(total_computed + num_new_tokens, request.num_tokens))
        return KVCacheBlocks((new_blocks,))

    def cache_blocks(self, request, num_computed_tokens: int) -> None:
        if not self.enable_caching:
            return
        blocks = self.req_to_blocks[request.request_id]
        num_cached = self.num_cached_block.get(request.request_id, 0)
        num_full = min(num_computed_tokens // self.block_size, len(request.block_hashes))
        self.block_pool.cache_full_blocks(request, blocks, num_cached, num_full, self.block_size)
        self.num_cached_block[request.request_id] = max(num_cached, num_full)

    def free(self, request) -> None:
        blocks = self.req_to_blocks.pop(request.request_id, [])
        self.num_cached_block.pop(request.request_id, None)
        # Tail blocks first, so they are evicted before the shared prefix.
        self.block_pool.free_blocks(reversed(blocks))

    def get_blocks(self, request_id: str) -> KVCacheBlocks:
        return KVCacheBlocks((list(self.req_to_blocks.get(request_id, [])),))

    def get_block_ids(self, request_id: str) -> tuple[list[int], ...]:
        return self.get_blocks(request_id).get_block_ids()

    def take_events(self):
        return self.block_pool.take_events()

    def get_num_free_blocks(self) -> int:
        return self.block_pool.get_num_free_blocks()
