#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""keys_vs_vllm.py - `kvshare keys` must equal vLLM's block hashes on random input.

vLLM's algorithm (vllm/v1/core/kv_cache_utils.py + vllm/utils/hashing.py),
re-stated here with the same libraries it uses (cbor2, hashlib, xxhash):
    NONE_HASH = H(seed)
    block_i   = H((block_{i-1} or NONE_HASH, tuple(tokens_i), extra_i))
    extra_i   = tuple([lora_name] + ([cache_salt] if i == 0 else [])) or None
    H         = sha256(cbor2.dumps(x, canonical=True))   (sha256_cbor)
              | xxh3_128_digest(cbor2.dumps(...))         (xxhash_cbor)
The events' int view is the digest's last 8 bytes, big-endian.

Usage: keys_vs_vllm.py PATH_TO_KVSHARE [CASES]   (KVS_TEST_SEED=n to replay)
"""
import hashlib
import os
import random
import subprocess
import sys

import cbor2
import xxhash


def sha256_cbor(x):
    return hashlib.sha256(cbor2.dumps(x, canonical=True)).digest()


def xxhash_cbor(x):
    return xxhash.xxh3_128_digest(cbor2.dumps(x, canonical=True))


ALGOS = {"sha256_cbor": sha256_cbor, "xxhash_cbor": xxhash_cbor}


def vllm_keys(algo, seed, block_size, tokens, cache_salt, lora_name):
    h = ALGOS[algo]
    none_hash = h(seed)
    parent = None
    out = []
    for start in range(0, len(tokens) - block_size + 1, block_size):
        extra = []
        if lora_name:
            extra.append(lora_name)
        if start == 0 and cache_salt:
            extra.append(cache_salt)
        extra = tuple(extra) if extra else None
        parent = h((parent or none_hash, tuple(tokens[start:start + block_size]), extra))
        out.append(parent)
    return out


def rand_text(rng, max_len):
    alphabet = "abcXYZ019 -_/:.é日本ßΩ"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, max_len)))


def rand_token(rng):
    r = rng.random()
    if r < 0.3:
        return rng.randint(0, 30)          # inline CBOR heads
    if r < 0.6:
        return rng.randint(0, 70000)       # 1-, 2-, 4-byte heads
    if r < 0.9:
        return rng.randint(0, 200000)      # real vocabularies
    return rng.choice([2**32 - 1, 2**31, 65535, 65536, 255, 256, 23, 24, rng.randint(0, 2**32 - 1)])


def main():
    kvshare = sys.argv[1]
    cases = int(sys.argv[2]) if len(sys.argv) > 2 else 300
    seed = int(os.environ.get("KVS_TEST_SEED", random.SystemRandom().randint(0, 2**31)))
    rng = random.Random(seed)
    print(f"keys_vs_vllm: {cases} random cases, KVS_TEST_SEED={seed}")
    checked_blocks = 0
    for case in range(cases):
        algo = rng.choice(list(ALGOS))
        hseed = rng.choice(["0", "42", str(rng.randint(0, 2**32 - 1)), rand_text(rng, 12), ""])
        block_size = rng.choice([1, 2, 3, 16, 16, 16, 32, 64, rng.randint(1, 300)])
        n = rng.randint(0, block_size * rng.randint(0, 12) + block_size - 1)
        tokens = [rand_token(rng) for _ in range(n)]
        salt = rng.choice([None, None, "", rand_text(rng, 20)])
        lora = rng.choice([None, None, "", rand_text(rng, 20)])
        want = vllm_keys(algo, hseed, block_size, tokens, salt, lora)

        cmd = [kvshare, "keys", "--algo", algo, "--seed", hseed, "--block-tokens", str(block_size)]
        if salt is not None:
            cmd += ["--cache-salt", salt]
        if lora is not None:
            cmd += ["--lora-name", lora]
        cmd.append("-")
        p = subprocess.run(cmd, input=" ".join(map(str, tokens)), capture_output=True, text=True,
                           timeout=60)
        ctx = f"case {case} (KVS_TEST_SEED={seed}): {' '.join(cmd[:-1])} <{n} tokens>"
        if p.returncode != 0:
            sys.exit(f"FAIL {ctx}: exit {p.returncode}: {p.stderr.strip()}")
        lines = p.stdout.splitlines()
        if len(lines) != len(want):
            sys.exit(f"FAIL {ctx}: {len(lines)} keys, vLLM has {len(want)}")
        for i, (line, digest) in enumerate(zip(lines, want)):
            fields = line.split()
            if fields[-1] != digest.hex():
                sys.exit(f"FAIL {ctx}: block {i}: kvshare {fields[-1]}, vLLM {digest.hex()}")
            if int(fields[-2]) != int.from_bytes(digest[-8:], "big"):
                sys.exit(f"FAIL {ctx}: block {i}: int view {fields[-2]}")
            checked_blocks += 1
    print(f"keys_vs_vllm: {cases} cases, {checked_blocks} blocks identical to vLLM")


if __name__ == "__main__":
    main()
