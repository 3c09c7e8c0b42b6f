# SPDX-License-Identifier: Apache-2.0
"""From vLLM's per-layer KV tensors to a kvs pool: segments, layout fields.

vLLM hands register_kv_caches() the logical shape of each backend, possibly a
permuted view of the physical buffer:
  blocks-first (num_blocks, 2, block_size, heads, head_size)  FlashAttention, FlashInfer, ...
  K/V-outer    (2, num_blocks, block_size, heads, head_size)  older FlashAttention, ROCm
  MLA          (num_blocks, block_size, head_size)
A kvs segment is memory where block b lives at base + b * stride, densely.
So each layer gives one segment when K and V of a block sit together, or two
(K and V) when they do not. The token/head order within a block (NHD vs HND)
is read from the strides; it is part of the layout id, so peers with a
different physical order never exchange blocks (issue 13 is about relaxing
that)."""

from . import _lib


def _dense(shape, strides):
    """True when a tensor with these sizes/strides (in elements) covers one
    dense range: sorted by stride, each stride equals the span before it."""
    span = 1
    for size, stride in sorted(zip(shape, strides), key=lambda t: t[1]):
        if size == 1:
            continue
        if stride != span:
            return False
        span *= size
    return True


def _find_block_dim(t, num_blocks):
    if t.dim() == 5 and t.shape[0] == 2 and t.shape[1] == num_blocks:
        return 1  # (2, num_blocks, ...)
    if t.shape[0] == num_blocks:
        return 0
    raise ValueError(f"kvshare_vllm: KV tensor of shape {tuple(t.shape)} has no dimension of "
                     f"num_blocks={num_blocks} where vLLM puts it")


def describe(kv_caches, num_blocks):
    """Returns (segments, info): segments as (base, stride, bytes, mem_type)
    in layer order (layers sharing memory counted once), info the layout
    fields the tensors decide."""
    segments = []
    seen = set()
    info = None
    for name, t in kv_caches.items():
        if t.data_ptr() in seen:
            continue  # vLLM may alias one tensor under several layer names
        seen.add(t.data_ptr())
        el = t.element_size()
        mem = _lib.MEM_CUDA if t.is_cuda else _lib.MEM_HOST
        bdim = _find_block_dim(t, num_blocks)
        if t.dim() == 3:  # MLA: (num_blocks, block_size, head_size)
            parts, order, heads, hsz, kv_layout = [t], _lib.ORDER_BLOCK_OUTER, 1, t.shape[2], 0
        elif t.dim() == 5:
            kvdim = 0 if bdim == 1 else 1
            parts = [t.select(kvdim, 0), t.select(kvdim, 1)]  # (num_blocks, bs, H, D) views
            heads, hsz = t.shape[3], t.shape[4]
            s = parts[0].stride()
            kv_layout = _lib.KV_HND if s[2] > s[1] else _lib.KV_NHD
            order = _lib.ORDER_KV_OUTER if bdim == 1 else _lib.ORDER_BLOCK_OUTER
        else:
            raise ValueError(f"kvshare_vllm: layer {name}: KV tensor of {t.dim()} dimensions "
                             f"{tuple(t.shape)}; expected vLLM's 5 (or 3 for MLA)")
        layer = []
        for p in parts:
            blk = p[0]
            if not _dense(tuple(blk.shape), blk.stride()):
                raise ValueError(f"kvshare_vllm: layer {name}: a block is not dense in memory "
                                 f"(shape {tuple(t.shape)}, strides {t.stride()})")
            nbytes = blk.numel() * el
            base = min(blk.data_ptr(), p.data_ptr())
            layer.append([base, p.stride(0) * el, nbytes, mem])
        # blocks-first with K right before V: one segment of K+V per block
        if (len(layer) == 2 and order == _lib.ORDER_BLOCK_OUTER
                and layer[1][0] == layer[0][0] + layer[0][2] and layer[0][1] == layer[1][1]):
            layer = [[layer[0][0], layer[0][1], layer[0][2] * 2, mem]]
        segments.extend(tuple(s) for s in layer)
        this = dict(heads=int(heads), head_dim=int(hsz), kv_layout=kv_layout, kv_order=order,
                    dtype=str(t.dtype).replace("torch.", ""))
        if info is None:
            info = this
        elif info != this:
            raise ValueError(f"kvshare_vllm: layer {name} differs from the first layer "
                             f"({this} vs {info}); one pool needs one geometry")
    if info is None:
        raise ValueError("kvshare_vllm: register_kv_caches got no KV tensors")
    info["num_layers"] = len(seen)
    return segments, info


def layout_args(model_id, info, block_size, tp_rank, tp_size):
    dtype = _lib.DTYPE.get(info["dtype"])
    if dtype is None:
        raise ValueError(f"kvshare_vllm: KV dtype {info['dtype']} has no kvs_dtype_t")
    return dict(model_id=model_id, dtype=dtype, block_tokens=block_size,
                num_layers=info["num_layers"], num_kv_heads=info["heads"],
                head_dim=info["head_dim"], tp_rank=tp_rank, tp_size=tp_size,
                kv_layout=info["kv_layout"], kv_order=info["kv_order"])
