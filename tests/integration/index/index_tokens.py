#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""index_tokens.py - `kvshare index --keys tokens` against a fake pod whose block hashes are
random (not reproducible, as vLLM's default `sha256` with an unset PYTHONHASHSEED) but whose
token_ids are real.

Checks: a prompt stored over two events chained by the parent's engine hash scores in full;
the map encoding and the positional one; LoRA and cache salt; a removal by engine hash stops
the prefix; a tokenless BlockStored (the CPU copy) resolves through the map; an orphan (its
parent never seen) is counted and skipped; multimodal extra keys are counted and skipped;
a restart clears the pod's map.

Usage: index_tokens.py PATH_TO_KVSHARE   (KVS_TEST_SEED=n replays a run)
"""
import os
import random
import sys
import time

import zmq

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import index_events as ie  # noqa: E402
from index_events import BLOCK, FakePod, check, pods_of, wait_for  # noqa: E402


def main():
    kvshare = sys.argv[1]
    seed = int(os.environ.get("KVS_TEST_SEED", random.SystemRandom().randint(0, 2**31)))
    rng = random.Random(seed)
    print(f"index_tokens: KVS_TEST_SEED={seed}", flush=True)
    ctx = zmq.Context()
    pod = FakePod(ctx, replay=False)
    # sha256_cbor with a seed no engine uses: token mode needs no agreement with the engine.
    idx = ie.Index(kvshare, [f"tcp://127.0.0.1:{pod.port}"],
                   extra=["--keys", "tokens", "--hash-algo", "sha256_cbor", "--hash-seed", "12345"])
    T = "kv@pod-t@m1"
    seq = [0]

    def pub(events):
        pod.publish(T, seq[0], events)
        seq[0] += 1

    end = time.time() + ie.DEADLINE_S
    while (idx.metric("kvshare_index_pods") or 0) < 1 and time.time() < end:
        pub([{"type": "AllBlocksCleared"}])
        time.sleep(0.05)
    check((idx.metric("kvshare_index_pods") or 0) >= 1, "index sees the pod")

    def rand_hashes(n):
        return [rng.getrandbits(64) for _ in range(n)]

    def stored(hashes, tokens, parent=None, lora=None, salt=None, positional=False, medium="GPU"):
        extra = []
        for i in range(len(hashes)):
            e = ([lora] if lora else []) + ([salt] if salt and i == 0 else [])
            extra.append(e or None)
        if positional:
            return ["BlockStored", hashes, parent, tokens, BLOCK, None, medium, lora, extra, 0,
                    "full_attention"]
        return {"type": "BlockStored", "block_hashes": hashes, "parent_block_hash": parent,
                "token_ids": tokens, "block_size": BLOCK, "lora_id": None, "medium": medium,
                "lora_name": lora, "extra_keys": extra, "group_idx": 0,
                "kv_cache_spec_kind": "full_attention"}

    prompt = [rng.randint(0, 150000) for _ in range(10 * BLOCK + 2)]
    h = rand_hashes(10)
    # Two events chained by the engine's hash of block 5; ints, then bytes hashes.
    pub([stored(h[:6], prompt[:6 * BLOCK], positional=True)])
    pub([stored([x.to_bytes(32, "big") for x in h[6:]], prompt[6 * BLOCK:10 * BLOCK],
                parent=h[5].to_bytes(32, "big"))])
    wait_for("chained events: the pod holds all 10 blocks", lambda: pods_of(idx.score("m1", prompt)),
             lambda p: p == {"pod-t": 10})

    # LoRA and salt: only the same LoRA and salt match.
    hl = rand_hashes(4)
    pub([stored(hl, prompt[:4 * BLOCK], lora="ad1", salt="s1")])
    wait_for("LoRA + salt prompt matches", lambda: pods_of(idx.score("m1", prompt, lora_name="ad1",
                                                                      cache_salt="s1")),
             lambda p: p == {"pod-t": 4})
    check(pods_of(idx.score("m1", prompt, lora_name="ad1")) == {}, "same LoRA, no salt: no match")
    check(pods_of(idx.score("m1", prompt, lora_name="ad2", cache_salt="s1")) == {},
          "other LoRA: no match")

    # A middle block removed by its engine hash: the prefix stops there.
    pub([{"type": "BlockRemoved", "block_hashes": [h[4]], "medium": "GPU"}])
    wait_for("removal by engine hash stops the prefix at 4", lambda: pods_of(idx.score("m1", prompt)),
             lambda p: p == {"pod-t": 4})
    # The CPU copy of blocks 0..6, tokenless: resolved through the map (block 4's GPU entry
    # is gone, so its CPU copy cannot be keyed and the CPU run stops there too).
    pub([{"type": "BlockStored", "block_hashes": h[:7], "parent_block_hash": None,
          "token_ids": [], "block_size": BLOCK, "medium": "CPU"}])
    # Pairs: 9 GPU blocks of the prompt + 4 LoRA blocks + 6 CPU copies (not block 4's).
    wait_for("tokenless CPU copies resolve through the map",
             lambda: idx.metric("kvshare_index_pairs"), lambda n: n == 9 + 4 + 6)
    check(pods_of(idx.score("m1", prompt)) == {"pod-t": 4}, "the prefix still stops at 4")

    # An orphan (parent never seen) and a multimodal event: counted, skipped.
    q = [rng.randint(0, 150000) for _ in range(3 * BLOCK)]
    pub([stored(rand_hashes(3), q, parent=rng.getrandbits(64))])
    mm = stored(rand_hashes(3), q)
    mm["extra_keys"] = [["img-hash-1"], None, ["img-hash-2"]]
    pub([mm])
    wait_for("orphan counted", lambda: idx.metric("kvshare_index_token_orphans_total"),
             lambda n: n == 1)
    wait_for("multimodal counted", lambda: idx.metric("kvshare_index_token_unkeyable_total"),
             lambda n: n == 1)
    check(pods_of(idx.score("m1", q)) == {}, "neither was indexed")
    check(idx.metric("kvshare_index_token_map_entries") == 9 + 4, "map entries exported")

    # A restart: the pod's blocks and map are gone; its parents no longer resolve.
    seq[0] = 0
    pub([stored(rand_hashes(2), q[:2 * BLOCK])])
    wait_for("after the restart only the new blocks", lambda: (pods_of(idx.score("m1", prompt)),
                                                               pods_of(idx.score("m1", q))),
             lambda r: r == ({}, {"pod-t": 2}))
    pub([stored(rand_hashes(1), prompt[6 * BLOCK:7 * BLOCK], parent=h[5])])
    wait_for("a parent from before the restart is an orphan",
             lambda: idx.metric("kvshare_index_token_orphans_total"), lambda n: n == 2)

    rc = idx.stop()
    check(rc == 0, f"SIGTERM stops it cleanly (exit {rc})")
    if ie.FAILS:
        print(f"index_tokens: {len(ie.FAILS)} failure(s); KVS_TEST_SEED={seed}")
        sys.exit(1)
    print("index_tokens: all checks passed")


if __name__ == "__main__":
    main()
