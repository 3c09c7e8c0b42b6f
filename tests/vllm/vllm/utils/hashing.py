# SPDX-License-Identifier: Apache-2.0
"""Stand-in for vllm/utils/hashing.py: the prefix-caching hash functions.

The CBOR variants come from tests/unit/keys_vs_vllm.py (the repo's own
restatement of vLLM's hashing, checked against `kvshare keys`), so the two
cannot drift apart. xxhash is optional, as upstream (python3-xxhash)."""
import hashlib
import pickle
import sys
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "unit"))
try:
    from keys_vs_vllm import sha256_cbor, xxhash_cbor  # noqa: E402
except ImportError:  # keys_vs_vllm imports xxhash at top level
    sha256_cbor = xxhash_cbor = None
finally:
    sys.path.pop(0)

if sha256_cbor is None:
    import cbor2

    def sha256_cbor(input: Any) -> bytes:  # noqa: A002 - upstream's name
        return hashlib.sha256(cbor2.dumps(input, canonical=True)).digest()


def sha256(input: Any) -> bytes:  # noqa: A002
    """Upstream's default: pickle (highest protocol) + SHA-256."""
    return hashlib.sha256(pickle.dumps(input, protocol=pickle.HIGHEST_PROTOCOL)).digest()


def get_hash_fn_by_name(hash_fn_name: str) -> Callable[[Any], bytes]:
    if hash_fn_name == "sha256":
        return sha256
    if hash_fn_name == "sha256_cbor":
        return sha256_cbor
    if hash_fn_name in ("xxhash", "xxhash_cbor"):
        if xxhash_cbor is None:
            raise ValueError("xxhash is not installed")
        if hash_fn_name == "xxhash_cbor":
            return xxhash_cbor
        import xxhash
        return lambda x: xxhash.xxh3_128_digest(pickle.dumps(x, protocol=pickle.HIGHEST_PROTOCOL))
    raise ValueError(f"Unsupported hash function: {hash_fn_name}")
