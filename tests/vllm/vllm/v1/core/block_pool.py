# SPDX-License-Identifier: Apache-2.0
"""Stand-in for vllm/v1/core/block_pool.py: free list + prefix cache by block hash.

As upstream: block 0 is the null block and never handed out; freed blocks go
to the tail of an LRU free queue and keep their hash (still a prefix hit)
until they are handed out again, which evicts them (BlockRemoved). Single KV
cache group, so the cache key is the hash alone."""
from collections import OrderedDict

from vllm.distributed.kv_events import MEDIUM_GPU, BlockRemoved, BlockStored, KVCacheEvent
from vllm.v1.core.kv_cache_utils import KVCacheBlock, maybe_convert_block_hash


class BlockPool:
    def __init__(self, num_gpu_blocks: int, enable_caching: bool, enable_kv_cache_events=True):
        self.num_gpu_blocks = num_gpu_blocks
        self.enable_caching = enable_caching
        self.blocks = [KVCacheBlock(i) for i in range(num_gpu_blocks)]
        # OrderedDict as the LRU queue: id -> block, oldest first.
        self.free_block_queue: OrderedDict[int, KVCacheBlock] = OrderedDict(
            (b.block_id, b) for b in self.blocks)
        self.cached_block_hash_to_block: dict[bytes, KVCacheBlock] = {}
        self.null_block = self.free_block_queue.pop(0)
        self.null_block.is_null = True
        self.enable_kv_cache_events = enable_kv_cache_events
        self.kv_event_queue: list[KVCacheEvent] = []

    def get_cached_block(self, block_hash: bytes) -> KVCacheBlock | None:
        return self.cached_block_hash_to_block.get(block_hash)

    def cache_full_blocks(self, request, blocks: list[KVCacheBlock], num_cached_blocks: int,
                          num_full_blocks: int, block_size: int) -> None:
        if num_cached_blocks >= num_full_blocks:
            return
        new_full = blocks[num_cached_blocks:num_full_blocks]
        hashes = request.block_hashes[num_cached_blocks:num_full_blocks]
        stored = []
        for blk, h in zip(new_full, hashes):
            if blk.block_hash is not None:
                continue
            blk.block_hash = h
            # A second block with the same content keeps the first as the hit.
            self.cached_block_hash_to_block.setdefault(h, blk)
            stored.append(h)
        if self.enable_kv_cache_events and stored:
            parent = request.block_hashes[num_cached_blocks - 1] if num_cached_blocks else None
            toks = request.all_token_ids[num_cached_blocks * block_size:
                                         num_full_blocks * block_size]
            self.kv_event_queue.append(BlockStored(
                block_hashes=[maybe_convert_block_hash(h) for h in hashes],
                parent_block_hash=None if parent is None else maybe_convert_block_hash(parent),
                token_ids=toks, block_size=block_size, lora_id=None, medium=MEDIUM_GPU,
                lora_name=None, group_idx=0))

    def _maybe_evict_cached_block(self, block: KVCacheBlock) -> None:
        h = block.block_hash
        if h is None:
            return
        if self.cached_block_hash_to_block.get(h) is block:
            del self.cached_block_hash_to_block[h]
            if self.enable_kv_cache_events:
                self.kv_event_queue.append(BlockRemoved(
                    block_hashes=[maybe_convert_block_hash(h)], medium=MEDIUM_GPU, group_idx=0))
        block.reset_hash()

    def uncache(self, block: KVCacheBlock) -> None:
        """Drop a block's hash (its content is known bad), keeping the block."""
        self._maybe_evict_cached_block(block)

    def get_new_blocks(self, num_blocks: int) -> list[KVCacheBlock]:
        if num_blocks > self.get_num_free_blocks():
            raise ValueError(f"Cannot get {num_blocks} free blocks from the pool")
        ret = []
        for _ in range(num_blocks):
            _, blk = self.free_block_queue.popitem(last=False)
            if self.enable_caching:
                self._maybe_evict_cached_block(blk)
            assert blk.ref_cnt == 0
            blk.ref_cnt = 1
            ret.append(blk)
        return ret

    def touch(self, blocks: list[KVCacheBlock]) -> None:
        for blk in blocks:
            if blk.ref_cnt == 0 and not blk.is_null:
                del self.free_block_queue[blk.block_id]
            blk.ref_cnt += 1

    def free_blocks(self, ordered_blocks) -> None:
        for blk in ordered_blocks:
            blk.ref_cnt -= 1
            assert blk.ref_cnt >= 0, f"block {blk.block_id} freed twice"
            if blk.ref_cnt == 0 and not blk.is_null:
                self.free_block_queue[blk.block_id] = blk

    def get_num_free_blocks(self) -> int:
        return len(self.free_block_queue)

    def take_events(self) -> list[KVCacheEvent]:
        ev, self.kv_event_queue = self.kv_event_queue, []
        return ev
