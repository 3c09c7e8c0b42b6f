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
is read from the strides. It is part of the layout id, but not of the model
id: peers of one model whose views differ (NHD vs HND, TP split, block size)
still exchange KV, the reader planning the copies (kvs_layout_t in
kvshare.h). So the view is described in full: num_kv_heads is this rank's
(the tensor's head dimension), total_kv_heads the model's
(ModelConfig.get_total_num_kv_heads(); 1 for MLA, whose latent every rank
holds whole), tp_rank/tp_size the split."""

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
                    dtype=str(t.dtype).replace("torch.", ""), mla=t.dim() == 3)
        if info is None:
            info = this
        elif info != this:
            raise ValueError(f"kvshare_vllm: layer {name} differs from the first layer "
                             f"({this} vs {info}); one pool needs one geometry")
    if info is None:
        raise ValueError("kvshare_vllm: register_kv_caches got no KV tensors")
    info["num_layers"] = len(seen)
    return segments, info


def layout_args(model_id, info, block_size, tp_rank, tp_size, total_kv_heads=None,
                key_tokens=None):
    """The kvs_layout_t fields of this rank's view (_lib.make_layout()).
    @total_kv_heads: the model's KV heads (None: the library's default,
    num_kv_heads * tp_size, wrong only when heads are replicated over more
    ranks than there are heads). @key_tokens: tokens per block key, vLLM's
    hash block size (None: block_size; the connector keys one hash per KV
    block, so that is what it passes)."""
    dtype = _lib.DTYPE.get(info["dtype"])
    if dtype is None:
        raise ValueError(f"kvshare_vllm: KV dtype {info['dtype']} has no kvs_dtype_t")
    heads = info["heads"]
    if info.get("mla"):
        total_kv_heads = 1  # one latent "head", replicated on every rank
    if total_kv_heads is not None:
        total_kv_heads = int(total_kv_heads)
        if total_kv_heads > 0 and tp_size <= total_kv_heads:
            ok, want = total_kv_heads % tp_size == 0, total_kv_heads // tp_size
        else:  # more ranks than heads: vLLM replicates, one head per rank
            ok, want = total_kv_heads > 0 and tp_size % total_kv_heads == 0, 1
        if not ok or heads != want:
            raise ValueError(f"kvshare_vllm: the model has {total_kv_heads} KV heads over "
                             f"TP size {tp_size}, but rank {tp_rank}'s KV tensors hold {heads} "
                             f"(expected {want if ok else 'a split that divides evenly'})")
    if key_tokens is not None and (key_tokens <= 0 or block_size % key_tokens != 0):
        raise ValueError(f"kvshare_vllm: hash block size {key_tokens} does not divide the KV "
                         f"block size {block_size}")
    if info.get("mla"):
        # Every rank holds the whole latent, the same bytes at any TP size:
        # described as the whole model's view (rank 0 of 1), so that ranks of
        # engines at different TP sizes share one layout and read each other's
        # blocks as they are (no per-head plan exists for a latent).
        tp_rank, tp_size = 0, 1
    return dict(model_id=model_id, dtype=dtype, block_tokens=block_size,
                num_layers=info["num_layers"], num_kv_heads=heads,
                head_dim=info["head_dim"], tp_rank=tp_rank, tp_size=tp_size,
                kv_layout=info["kv_layout"], kv_order=info["kv_order"],
                total_kv_heads=total_kv_heads,
                key_tokens=None if key_tokens == block_size else key_tokens)
