# SPDX-License-Identifier: Apache-2.0
"""ctypes bindings to libkvshare.so.0: only the calls the connector makes.

The struct layouts mirror libkvshare/include/kvshare.h; every parameter
struct starts with a field_mask, so a field we leave out is never read.
ctypes drops the GIL around each foreign call, so lookups and fetches that
wait on the network run beside the Python threads of the engine.
"""

import ctypes
import os
import threading
from ctypes import (POINTER, Structure, byref, c_char, c_char_p, c_double, c_int, c_size_t,
                    c_uint, c_uint32, c_uint64, c_void_p)

KVS_OK = 0
KVS_INPROGRESS = 1
ERR_INVALID_PARAM = -1
ERR_BUSY = -5
ERR_UNSUPPORTED = -11

SOURCE_LOCAL, SOURCE_PEER, SOURCE_POOL = 1, 2, 4
MEM_HOST, MEM_CUDA = 0, 1
KV_NHD, KV_HND = 0, 1
ORDER_KV_OUTER, ORDER_BLOCK_OUTER = 0, 1
DTYPE = {"float16": 0, "bfloat16": 1, "float32": 2, "float8_e4m3fn": 3, "float8_e5m2": 4,
         "int8": 5, "uint8": 5}

CTX_FIELD_CAPACITY = 1 << 3
CTX_FIELD_LISTEN = 1 << 7
CTX_FIELD_LEASE_TIMEOUT = 1 << 10
CTX_FIELD_ERRBUF = 1 << 13
LOOKUP_FIELD_SOURCES = 1 << 0
LOOKUP_FIELD_PEER = 1 << 1
LOOKUP_FIELD_LEASE_MS = 1 << 2
LOOKUP_FIELD_TIMEOUT_MS = 1 << 3
LOOKUP_FIELD_READERS = 1 << 5
FETCH_FIELD_TIMEOUT_MS = 1 << 0
FETCH_FIELD_FIRST = 1 << 1
PUBLISH_ZERO_COPY = 1
UNPUBLISH_FORCE = 1
KEY_BYTES = 32


class KvsError(RuntimeError):
    """A libkvshare call failed; .status is its kvs_status_t."""

    def __init__(self, call, status, detail=""):
        self.status = status
        text = status_string(status)
        super().__init__(f"{call}: {text}" + (f": {detail}" if detail else ""))


# kvs_layout_t, field for field (kvshare.h; fields after kv_order are read only
# when their KVS_LAYOUT_FIELD_* bit is set in field_mask).
LAYOUT_FIELD_TOTAL_KV_HEADS = 1 << 0
LAYOUT_FIELD_KEY_TOKENS = 1 << 1


class Layout(Structure):
    _fields_ = [("field_mask", c_uint64), ("model_id", c_char_p), ("dtype", c_int),
                ("block_tokens", c_uint32), ("num_layers", c_uint32), ("num_kv_heads", c_uint32),
                ("head_dim", c_uint32), ("tp_rank", c_uint32), ("tp_size", c_uint32),
                ("kv_layout", c_int), ("kv_order", c_int),
                ("total_kv_heads", c_uint32), ("key_tokens", c_uint32)]


def make_layout(args):
    """A Layout from layout_args() (_layout.py): the rank's view, with
    total_kv_heads and key_tokens behind their field_mask bits when given
    (None: the library's defaults, num_kv_heads * tp_size and
    block_tokens)."""
    mask = 0
    total = args.get("total_kv_heads")
    key = args.get("key_tokens")
    if total is not None:
        mask |= LAYOUT_FIELD_TOTAL_KV_HEADS
    if key is not None:
        mask |= LAYOUT_FIELD_KEY_TOKENS
    return Layout(field_mask=mask, model_id=args["model_id"].encode(), dtype=args["dtype"],
                  block_tokens=args["block_tokens"], num_layers=args["num_layers"],
                  num_kv_heads=args["num_kv_heads"], head_dim=args["head_dim"],
                  tp_rank=args["tp_rank"], tp_size=args["tp_size"], kv_layout=args["kv_layout"],
                  kv_order=args["kv_order"], total_kv_heads=total or 0, key_tokens=key or 0)


LOG_FN = ctypes.CFUNCTYPE(None, c_void_p, c_int, c_char_p)


class CtxParams(Structure):
    _fields_ = [("field_mask", c_uint64), ("log_fn", LOG_FN), ("log_arg", c_void_p),
                ("log_level", c_int), ("config_file", c_char_p), ("capacity_bytes", c_uint64),
                ("slot_bytes", c_uint64), ("strategy", c_int), ("high_watermark", c_double),
                ("low_watermark", c_double), ("listen", c_char_p), ("progress", c_int),
                ("fetch_timeout_ms", c_uint32), ("lease_timeout_ms", c_uint32),
                ("auth_token_file", c_char_p), ("pool", c_char_p), ("errbuf", c_void_p),
                ("errbuf_len", c_size_t), ("transport", c_char_p), ("pool_node", c_int),
                ("auth", c_char_p)]


class Segment(Structure):
    _fields_ = [("base", c_void_p), ("block_stride", c_size_t), ("block_bytes", c_size_t),
                ("mem_type", c_int)]


class PoolParams(Structure):
    _fields_ = [("field_mask", c_uint64), ("layout", POINTER(Layout)),
                ("segments", POINTER(Segment)), ("num_segments", c_size_t),
                ("num_blocks", c_uint32), ("name", c_char_p)]


class LookupParams(Structure):
    _fields_ = [("field_mask", c_uint64), ("sources", c_uint), ("peer", c_char_p),
                ("lease_ms", c_uint32), ("timeout_ms", c_uint32), ("readers", c_uint32)]


class FetchParams(Structure):
    _fields_ = [("field_mask", c_uint64), ("timeout_ms", c_uint32), ("first", c_size_t)]


Key = c_char * KEY_BYTES

_lib = None
_lib_lock = threading.Lock()


def _candidates():
    """Where libkvshare may be, most explicit first."""
    env = os.environ.get("KVSHARE_LIBRARY")
    if env:
        yield env
        return
    # In an injected pod the shim has loaded libkvshare from /opt/kvshare/lib by the time
    # preload_ctx() returns (kvs_preload_get_ctx loads it), so dlopen of the soname returns
    # that very copy; before that, the fallbacks below find the same file beside the package.
    yield "libkvshare.so.0"
    here = os.path.dirname(os.path.abspath(__file__))
    # <prefix>/lib/kvshare/python/kvshare_vllm (cmake --install) and
    # /opt/kvshare/python/kvshare_vllm (the webhook's copy, lib beside it).
    for up in ("../../..", "../../lib", "../../../lib"):
        yield os.path.normpath(os.path.join(here, up, "libkvshare.so.0"))


def lib():
    """Loads libkvshare once; raises OSError naming every place tried."""
    global _lib
    if _lib is not None:
        return _lib
    with _lib_lock:
        if _lib is not None:
            return _lib
        tried = []
        for path in _candidates():
            try:
                handle = ctypes.CDLL(path)
                break
            except OSError as e:
                tried.append(f"{path} ({e})")
        else:
            raise OSError("kvshare_vllm: cannot load libkvshare.so.0; set KVSHARE_LIBRARY to its "
                          "path. Tried: " + "; ".join(tried))
        try:
            _declare(handle)
        except AttributeError as e:
            raise OSError(f"kvshare_vllm: {path} is not the libkvshare this package needs "
                          f"({e}); install matching versions") from None
        _lib = handle
        return _lib


def _declare(h):
    sig = {
        "kvs_status_string": (c_char_p, [c_int]),
        "kvs_version": (c_char_p, []),
        "kvs_ctx_create": (c_int, [POINTER(CtxParams), POINTER(c_void_p)]),
        "kvs_ctx_destroy": (None, [c_void_p]),
        "kvs_ctx_listen_addr": (c_int, [c_void_p, c_char_p, c_size_t]),
        "kvs_layout_id": (c_int, [POINTER(Layout), POINTER(c_uint64)]),
        "kvs_model_id": (c_int, [POINTER(Layout), POINTER(c_uint64)]),
        "kvs_layout_source_ranks": (c_int, [POINTER(Layout), c_uint32, POINTER(c_uint32), c_size_t,
                                            POINTER(c_size_t)]),
        "kvs_pool_create": (c_int, [c_void_p, POINTER(PoolParams), POINTER(c_void_p)]),
        "kvs_pool_destroy": (None, [c_void_p]),
        "kvs_pool_layout_id": (c_uint64, [c_void_p]),
        "kvs_pool_block_bytes": (c_size_t, [c_void_p]),
        "kvs_pool_reads": (c_int, [c_void_p, POINTER(c_uint32), c_size_t, POINTER(c_uint32)]),
        "kvs_pool_readers": (c_int, [c_void_p, POINTER(c_uint32), c_size_t, POINTER(c_uint32),
                                     POINTER(c_uint32)]),
        "kvs_publish": (c_int, [c_void_p, c_void_p, POINTER(c_uint32), c_size_t, c_uint,
                                POINTER(c_size_t)]),
        "kvs_unpublish": (c_int, [c_void_p, POINTER(c_uint32), c_size_t, c_uint]),
        "kvs_lookup": (c_int, [c_void_p, c_uint64, c_void_p, c_size_t, POINTER(LookupParams),
                               POINTER(c_void_p)]),
        "kvs_lease_hits": (c_size_t, [c_void_p]),
        "kvs_lease_source": (c_int, [c_void_p]),
        "kvs_lease_heads": (c_int, [c_void_p, POINTER(c_uint32), POINTER(c_uint32)]),
        "kvs_lease_release": (None, [c_void_p]),
        "kvs_fetch": (c_int, [c_void_p, c_void_p, POINTER(c_uint32), c_size_t,
                              POINTER(FetchParams), POINTER(c_void_p)]),
        # kvs_put_ex's params (kvs_put_params_t) are left NULL: all defaults.
        "kvs_put_ex": (c_int, [c_void_p, c_void_p, POINTER(c_uint32), c_size_t, c_void_p,
                               POINTER(c_void_p)]),
        "kvs_request_test": (c_int, [c_void_p]),
        "kvs_request_wait": (c_int, [c_void_p, c_int]),
        "kvs_request_free": (None, [c_void_p]),
    }
    for name, (res, args) in sig.items():
        fn = getattr(h, name)
        fn.restype = res
        fn.argtypes = args


def status_string(status):
    try:
        return lib().kvs_status_string(status).decode()
    except OSError:
        return f"status {status}"


def version():
    return lib().kvs_version().decode()


def keys_buffer(hashes):
    """Packs block hashes (bytes of 32, or 16 for xxhash_cbor) into an array of
    kvs_key_t: one join and one copy, not a call per key (512 keys: ~10 us)."""
    n = len(hashes)
    if n and all(len(h) == KEY_BYTES for h in hashes):
        raw = b"".join(hashes)
    else:
        for h in hashes:
            if len(h) > KEY_BYTES:
                raise ValueError(f"block hash of {len(h)} bytes; kvshare keys hold at most 32")
        raw = b"".join(h.ljust(KEY_BYTES, b"\0") for h in hashes)
    return (Key * n).from_buffer_copy(raw) if n else (Key * 0)()


def u32_array(values):
    return (c_uint32 * len(values))(*values)


def preload_ctx():
    """The LD_PRELOAD shim's context when the shim runs in this process and
    is tracking; else None. Sharing it reuses the registrations the shim made
    for the engine's KV allocations."""
    try:
        proc = ctypes.CDLL(None)
        get = proc.kvs_preload_get_ctx
        enabled = proc.kvs_preload_enabled
    except (OSError, AttributeError):
        return None
    enabled.restype = c_int
    if not enabled():
        return None
    get.restype = c_int
    get.argtypes = [POINTER(c_void_p)]
    ctx = c_void_p()
    if get(byref(ctx)) != KVS_OK or not ctx.value:
        return None
    return ctx.value


class Context:
    """A kvs_ctx_h. @listen: None keeps KVSHARE_LISTEN, "" turns it off, else
    "host:port". Everything else comes from the KVSHARE_* environment."""

    def __init__(self, listen=None, handle=None, capacity=None):
        self.owned = handle is None
        if handle is not None:
            self.h = handle
            return
        p = CtxParams()
        err = ctypes.create_string_buffer(512)
        p.field_mask = CTX_FIELD_ERRBUF
        p.errbuf = ctypes.cast(err, c_void_p)
        p.errbuf_len = len(err)
        if listen is not None:
            p.field_mask |= CTX_FIELD_LISTEN
            p.listen = listen.encode()
        if capacity is not None:
            p.field_mask |= CTX_FIELD_CAPACITY
            p.capacity_bytes = capacity
        h = c_void_p()
        st = lib().kvs_ctx_create(byref(p), byref(h))
        if st != KVS_OK:
            raise KvsError("kvs_ctx_create", st, err.value.decode(errors="replace"))
        self.h = h.value

    def listen_addr(self):
        buf = ctypes.create_string_buffer(320)
        if lib().kvs_ctx_listen_addr(self.h, buf, len(buf)) != KVS_OK:
            return None
        return buf.value.decode()

    def close(self):
        if self.owned and self.h:
            lib().kvs_ctx_destroy(self.h)
        self.h = None


def layout_id(model_id, dtype, block_tokens, num_layers, num_kv_heads, head_dim, tp_rank, tp_size,
              kv_layout, kv_order, total_kv_heads=None, key_tokens=None):
    lay = make_layout(dict(model_id=model_id, dtype=dtype, block_tokens=block_tokens,
                           num_layers=num_layers, num_kv_heads=num_kv_heads, head_dim=head_dim,
                           tp_rank=tp_rank, tp_size=tp_size, kv_layout=kv_layout,
                           kv_order=kv_order, total_kv_heads=total_kv_heads,
                           key_tokens=key_tokens))
    out = c_uint64()
    st = lib().kvs_layout_id(byref(lay), byref(out))
    if st != KVS_OK:
        raise KvsError("kvs_layout_id", st)
    return out.value


def model_id(args):
    """kvs_model_id() of layout_args(): equal for every view of one model
    (any TP split, NHD/HND, block size), so peers of one model exchange KV."""
    out = c_uint64()
    st = lib().kvs_model_id(byref(make_layout(args)), byref(out))
    if st != KVS_OK:
        raise KvsError("kvs_model_id", st)
    return out.value


def layout_source_ranks(args, holder_tp_size):
    """The holder TP ranks a reader of layout_args() fetches from when the
    holders run at TP size @holder_tp_size (kvs_layout_source_ranks())."""
    ranks = (c_uint32 * max(1, holder_tp_size))()
    n = c_size_t()
    st = lib().kvs_layout_source_ranks(byref(make_layout(args)), holder_tp_size, ranks,
                                       len(ranks), byref(n))
    if st != KVS_OK:
        raise KvsError("kvs_layout_source_ranks", st)
    return list(ranks[:n.value])


class Pool:
    """A kvs_pool_h over the engine's KV tensors (the memory stays theirs)."""

    def __init__(self, ctx, layout_args, segments, num_blocks, name):
        lay = make_layout(layout_args)
        segs = (Segment * len(segments))(*[Segment(*s) for s in segments])
        pp = PoolParams(1, ctypes.pointer(lay), segs, len(segments), num_blocks, name.encode())
        h = c_void_p()
        st = lib().kvs_pool_create(ctx.h, byref(pp), byref(h))
        if st != KVS_OK:
            raise KvsError("kvs_pool_create", st)
        self.h = h.value
        self.ctx = ctx
        self.layout_id = lib().kvs_pool_layout_id(self.h)
        self.block_bytes = lib().kvs_pool_block_bytes(self.h)

    def publish(self, hashes, block_ids, zero_copy):
        n = c_size_t()
        st = lib().kvs_publish(self.h, keys_buffer(hashes), u32_array(block_ids), len(block_ids),
                               PUBLISH_ZERO_COPY if zero_copy else 0, byref(n))
        if st != KVS_OK:
            raise KvsError("kvs_publish", st)
        return n.value

    def unpublish(self, block_ids, force=False):
        return lib().kvs_unpublish(self.h, u32_array(block_ids), len(block_ids),
                                   UNPUBLISH_FORCE if force else 0)

    def reads(self, block_ids):
        out = (c_uint32 * len(block_ids))()
        st = lib().kvs_pool_reads(self.h, u32_array(block_ids), len(block_ids), out)
        if st != KVS_OK:
            raise KvsError("kvs_pool_reads", st)
        return list(out)

    def readers(self, block_ids):
        """(reads, expected) per block: the RELEASEs counted, and the most
        readers any of them announced (0: none did) (kvs_pool_readers())."""
        reads = (c_uint32 * len(block_ids))()
        expected = (c_uint32 * len(block_ids))()
        st = lib().kvs_pool_readers(self.h, u32_array(block_ids), len(block_ids), reads, expected)
        if st != KVS_OK:
            raise KvsError("kvs_pool_readers", st)
        return list(reads), list(expected)

    def put(self, hashes, block_ids):
        req = c_void_p()
        st = lib().kvs_put_ex(self.h, keys_buffer(hashes), u32_array(block_ids), len(block_ids),
                              None, byref(req))
        if st != KVS_OK:
            raise KvsError("kvs_put_ex", st)
        return Request(req.value)

    def close(self):
        if self.h:
            lib().kvs_pool_destroy(self.h)
        self.h = None


class Lease:
    def __init__(self, h):
        self.h = h
        self.hits = lib().kvs_lease_hits(h)
        self.source = lib().kvs_lease_source(h)

    def fetch(self, pool, dst_ids, first, timeout_ms=0):
        fp = FetchParams(FETCH_FIELD_FIRST, 0, first)
        if timeout_ms:
            fp.field_mask |= FETCH_FIELD_TIMEOUT_MS
            fp.timeout_ms = timeout_ms
        req = c_void_p()
        st = lib().kvs_fetch(self.h, pool.h, u32_array(dst_ids), len(dst_ids), byref(fp),
                             byref(req))
        if st != KVS_OK:
            raise KvsError("kvs_fetch", st)
        return Request(req.value)

    def heads(self):
        """(first, count): the reader's own KV heads a fetch from this lease
        fills (kvs_lease_heads()); count 0 for no hits."""
        first, count = c_uint32(), c_uint32()
        st = lib().kvs_lease_heads(self.h, byref(first), byref(count))
        if st != KVS_OK:
            raise KvsError("kvs_lease_heads", st)
        return first.value, count.value

    def release(self):
        if self.h:
            lib().kvs_lease_release(self.h)
        self.h = None


def lookup(ctx, layout, hashes, sources, peer=None, lease_ms=0, timeout_ms=0, readers=0):
    """Leases the longest cached prefix of @hashes; returns a Lease.
    @readers: how many readers (this one included) read these blocks from
    @peer before it may free them (sent with the RELEASE; 0: not said)."""
    lp = LookupParams(LOOKUP_FIELD_SOURCES, sources, None, 0, 0, 0)
    if peer:
        lp.field_mask |= LOOKUP_FIELD_PEER
        lp.peer = peer.encode()
    if lease_ms:
        lp.field_mask |= LOOKUP_FIELD_LEASE_MS
        lp.lease_ms = lease_ms
    if timeout_ms:
        lp.field_mask |= LOOKUP_FIELD_TIMEOUT_MS
        lp.timeout_ms = timeout_ms
    if readers:
        lp.field_mask |= LOOKUP_FIELD_READERS
        lp.readers = readers
    out = c_void_p()
    st = lib().kvs_lookup(ctx.h, layout, keys_buffer(hashes), len(hashes), byref(lp), byref(out))
    if st != KVS_OK:
        raise KvsError("kvs_lookup", st)
    return Lease(out.value)


def held(ctx, layout, hashes, sources, peer=None, lease_ms=0, timeout_ms=0, readers=0):
    """How many leading blocks of @hashes @sources hold now: a lookup whose
    lease is released at once (to a producer, that release is the consumer's
    "done"; @readers as for lookup())."""
    lease = lookup(ctx, layout, hashes, sources, peer=peer, lease_ms=lease_ms,
                   timeout_ms=timeout_ms, readers=readers)
    hits = lease.hits
    lease.release()
    return hits


class Request:
    def __init__(self, h):
        self.h = h

    def test(self):
        return lib().kvs_request_test(self.h)

    def wait(self, timeout_ms=-1):
        return lib().kvs_request_wait(self.h, timeout_ms)

    def free(self):
        if self.h:
            lib().kvs_request_free(self.h)
        self.h = None
