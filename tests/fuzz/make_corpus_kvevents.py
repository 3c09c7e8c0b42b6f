#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""make_corpus_kvevents.py - writes the seed corpus of fuzz_kvevents: vLLM KV event batches.

Run from the repository root with Debian's python3 (python3-msgpack):
    /usr/bin/python3 tests/fuzz/make_corpus_kvevents.py
Layouts follow vllm/distributed/kv_events.py (see util/kvevents_int.h)."""
import os

import msgpack

OUT = "tests/fuzz/corpus-fuzz_kvevents"
H = [0x1111111111111111, 0xfedcba9876543210, 3]
stored_pos = ["BlockStored", H, None, list(range(48)), 16, None, "GPU", None, [None] * 3,
              0, "full_attention", None]
stored_old = ["BlockStored", H, None, list(range(48)), 16, None, "CPU"]
removed_pos = ["BlockRemoved", H[1:], "GPU", 0]
stored_map = {"type": "BlockStored", "block_hashes": H, "parent_block_hash": None,
              "token_ids": list(range(48)), "block_size": 16, "lora_id": None, "medium": "GPU",
              "lora_name": "lora-a", "extra_keys": [["lora-a"]] * 3, "group_idx": 0,
              "kv_cache_spec_kind": "full_attention"}
removed_map = {"type": "BlockRemoved", "block_hashes": [H[2]], "medium": None}
bytes_hashes = {"type": "BlockStored", "block_hashes": [bytes(range(32)), b"\x01" * 16],
                "parent_block_hash": bytes(32), "token_ids": [], "block_size": 16}
# Token mode (--keys tokens): a prompt's blocks over two events chained by the parent's
# engine hash, with LoRA and salt in extra_keys; then a tokenless copy and a removal.
chain_a = {"type": "BlockStored", "block_hashes": [101, 102], "parent_block_hash": None,
           "token_ids": list(range(32)), "block_size": 16, "lora_name": "ad",
           "extra_keys": [["ad", "salt"], ["ad"]], "medium": "GPU"}
chain_b = {"type": "BlockStored", "block_hashes": [103], "parent_block_hash": 102,
           "token_ids": list(range(32, 48)), "block_size": 16, "lora_name": "ad",
           "extra_keys": [["ad"]], "medium": "GPU"}
copy_cpu = {"type": "BlockStored", "block_hashes": [101, 103, 999], "token_ids": [],
            "block_size": 16, "medium": "CPU"}
# kvshare serve --events: what kvs__ev_encode writes (no tokens, block_size 0).
pool = {"type": "BlockStored", "block_hashes": H, "parent_block_hash": None, "token_ids": [],
        "block_size": 0, "lora_id": None, "medium": "KVSHARE_POOL", "lora_name": None}
seeds = {
    "token_chain": [5.0, [chain_a, chain_b, copy_cpu,
                          {"type": "BlockRemoved", "block_hashes": [102], "medium": "GPU"}], 0],
    "pool_events": [6.0, [pool, {"type": "BlockRemoved", "block_hashes": [H[0]],
                                 "medium": "KVSHARE_POOL"}], None],
    "positional": [1.0, [stored_pos, removed_pos], 0],
    "positional_old": [1.0, [stored_old, ["AllBlocksCleared"]]],
    "map": [2.0, [stored_map, removed_map, {"type": "AllBlocksCleared"}], 0],
    "bytes_hashes": [3.0, [bytes_hashes], None],
    "unknown_type": [4.0, [{"type": "BlockPromoted", "x": 1}, stored_map]],
}
os.makedirs(OUT, exist_ok=True)
for name, batch in seeds.items():
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(msgpack.packb(batch, use_bin_type=True))
