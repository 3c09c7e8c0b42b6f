# SPDX-License-Identifier: Apache-2.0
"""Stand-in for vllm/forward_context.py: what start_load_kv(forward_context) gets.

no_compile_layers maps layer name -> attention layer; each layer's kv_cache is
a list indexed by virtual_engine (always 0 here), as upstream's Attention."""
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ForwardContext:
    no_compile_layers: dict[str, Any] = field(default_factory=dict)
    attn_metadata: Any = None       # dict layer_name -> metadata, or None
    virtual_engine: int = 0


_forward_context: ForwardContext | None = None


def get_forward_context() -> ForwardContext:
    assert _forward_context is not None, "forward context is not set"
    return _forward_context


@contextmanager
def set_forward_context(ctx: ForwardContext):
    global _forward_context
    prev, _forward_context = _forward_context, ctx
    try:
        yield
    finally:
        _forward_context = prev
