# SPDX-License-Identifier: Apache-2.0
"""The test model: deterministic, and sensitive to every bit of the KV cache.

Layer l's K and V at position p, head h, dim d are a hash of (tokens[0..p], l,
h, d, K|V) cast to the model dtype: the same global function on every rank,
so TP ranks holding different heads add up to a TP=1 engine. The next token is
a hash of a weighted integer sum over the *bit patterns* of the KV read back
from the paged cache for every position of the request; ranks return partial
sums that the executor adds (exact integers, so the sum is order-free). A
wrong, stale or half-loaded KV value changes the generated tokens.

reference_generate() computes the same tokens with no paging, no engine and
no connector: the oracle for "D's tokens equal a local recompute"."""
import torch

VOCAB = 32000
_MOD = (1 << 61) - 1


def position_seeds(tokens, start_seed: int = 0, seeds=None) -> list[int]:
    """seeds[p] hashes tokens[0..p] (a prefix hash: position p depends on all before it)."""
    out = list(seeds or [])
    s = out[-1] if out else start_seed
    for t in tokens[len(out):]:
        s = (s * 1000003 + int(t) + 1) % 2147483629
        out.append(s)
    return out


def kv_values(seeds: torch.Tensor, layer: int, kv: int, heads: torch.Tensor, head_size: int,
              dtype) -> torch.Tensor:
    """[P, H, D] values for positions with these seeds (kv: 0 K, 1 V, 2 MLA latent)."""
    dims = torch.arange(head_size, dtype=torch.int64)
    x = (seeds[:, None, None] % 2147483647) * 40503 \
        + (heads[None, :, None] + 1) * 97 + dims[None, None, :] * 131 + layer * 7919 + kv * 104729
    x = x % 2147483647
    x = ((x ^ (x >> 13)) * 48271) % 2147483647
    x = ((x ^ (x >> 11)) * 16807) % 2147483647
    return ((x % 20001 - 10000).to(torch.float32) / 10000.0).to(dtype)


def bits(t: torch.Tensor) -> torch.Tensor:
    """The bit pattern of each element as int64 (2- and 4-byte dtypes)."""
    if t.element_size() == 2:
        return t.contiguous().view(torch.int16).to(torch.int64)
    return t.contiguous().view(torch.int32).to(torch.int64)


def partial_digest(vals: torch.Tensor, positions: torch.Tensor, layer: int, kv: int,
                   heads: torch.Tensor) -> int:
    """Weighted sum of the bits of vals [P, H, D] at these positions and global heads."""
    P, H, D = vals.shape
    dims = torch.arange(D, dtype=torch.int64)
    w = (positions[:, None, None] * 31 + layer * 17 + kv * 13 + heads[None, :, None] * 7
         + dims[None, None, :]) % 251 + 1
    return int((bits(vals) * w).sum()) % _MOD


def token_from_digest(total: int) -> int:
    return ((total % _MOD) * 2654435761 + 12345) % (1 << 32) % VOCAB


def reference_generate(prompt: list[int], max_tokens: int, num_layers: int, num_heads: int,
                       head_size: int, dtype, use_mla: bool = False) -> list[int]:
    """The tokens an engine must generate for this prompt, computed without paging."""
    tokens = list(prompt)
    out = []
    heads = torch.arange(1 if use_mla else num_heads, dtype=torch.int64)
    for _ in range(max_tokens):
        seeds = torch.tensor(position_seeds(tokens), dtype=torch.int64)
        pos = torch.arange(len(tokens), dtype=torch.int64)
        total = 0
        for layer in range(num_layers):
            for kv in ((2,) if use_mla else (0, 1)):
                vals = kv_values(seeds, layer, kv, heads, head_size, dtype)
                total += partial_digest(vals, pos, layer, kv, heads)
        tok = token_from_digest(total)
        out.append(tok)
        tokens.append(tok)
    return out
