# SPDX-License-Identifier: Apache-2.0
"""The scheduler half of the connector (vLLM's EngineCore process).

It decides, per request, what the workers load and save, and answers vLLM's
questions: how many prompt tokens can be loaded (get_num_new_matched_tokens),
and whether a finished request's blocks must outlive it (request_finished).
It never moves KV itself."""

import logging
import os
import time

from . import _lib
from ._meta import Handoff, KVShareMetadata, LoadSpec, SaveSpec

log = logging.getLogger("kvshare_vllm")

# A probe answer is reused this long: vLLM asks again every step while a
# request waits for blocks, and each pool probe is a round trip.
PROBE_TTL_S = 1.0
# The tier in BlockStored events for blocks in the cache pool (vLLM's own are "GPU",
# its offloading connectors' "CPU").
MEDIUM_POOL = "KVSHARE_POOL"
# kv_transfer_params come from the HTTP client: bound what we accept.
MAX_PEERS = 64


def _check_hostport(addr, field):
    if not isinstance(addr, str) or len(addr) > 300:
        raise ValueError(f"{field}: want 'host:port' strings")
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{field}: '{addr[:64]}' is not host:port with a port 1-65535")


class _Req:
    __slots__ = ("request", "block_ids", "saved", "published", "put")

    def __init__(self, request):
        self.request = request
        self.block_ids = []
        self.saved = 0  # leading prompt blocks handed to the workers to save
        self.published = False
        self.put = False


class SchedulerSide:
    def __init__(self, vllm_config, settings, ctx_factory):
        self.s = settings
        self.bs = settings.block_size
        self.tp_size = int(getattr(vllm_config.parallel_config, "tensor_parallel_size", 1))
        self._ctx_factory = ctx_factory
        self._ctx = None
        self._ctx_failed = False
        self._layout = None  # worker rank 0's layout id (handshake)
        self._peers = {}  # tp_rank -> "host:port"
        self._reqs = {}
        self._probe = {}  # req_id -> (time, num_computed, hits)
        self._loads = []
        self._handoffs = {}
        self._released = set()
        self._delayed = set()
        self._put_reqs = {}  # req_id -> chain hashes of blocks put, for events
        self._events = []
        # The sources cheaper than a named peer, asked first.
        self._near = _lib.SOURCE_LOCAL | (_lib.SOURCE_POOL if settings.pool else 0)

    # -- setup -------------------------------------------------------------
    def set_handshake(self, metadata):
        for rank, m in (metadata or {}).items():
            addr = getattr(m, "addr", None)
            if addr:
                self._peers[int(rank)] = addr
            if int(rank) == 0:
                self._layout = getattr(m, "layout_id", None)

    def _held(self, ctx, hashes, sources):
        """A scheduler-side probe: short lease, at most a second's wait (it
        runs on vLLM's scheduling thread)."""
        return _lib.held(ctx, self._layout, hashes, sources, lease_ms=1000,
                         timeout_ms=min(self.s.fetch_timeout_ms, 1000))

    def _context(self):
        if self._ctx is None and not self._ctx_failed:
            try:
                self._ctx = self._ctx_factory()
            except (OSError, _lib.KvsError) as e:
                self._ctx_failed = True
                log.error("kvshare_vllm: no kvshare context in the scheduler (%s); "
                          "pool and local lookups are off", e)
        return self._ctx

    # -- admission ---------------------------------------------------------
    def _remote(self, request):
        """The producer's ranks ("host:port" per rank) and block count from a
        P/D request's kv_transfer_params, or None. The params come from the
        HTTP client: anything malformed is logged and the request is computed
        here, never an exception inside vLLM's scheduler."""
        params = request.kv_transfer_params
        if not self.s.consumer or not isinstance(params, dict) or \
                not params.get("do_remote_prefill"):
            return None
        try:
            # The producer's TP size: its ranks may split the KV heads
            # otherwise than ours (each of our ranks then reads from several).
            ptp = params.get("tp_size")
            if ptp is not None:
                if isinstance(ptp, bool) or not isinstance(ptp, int) or \
                        not 1 <= ptp <= MAX_PEERS:
                    raise ValueError(f"tp_size={ptp!r}: want 1 .. {MAX_PEERS}")
            peers = params.get("kvshare_peers")
            if peers:
                if not isinstance(peers, list) or len(peers) > MAX_PEERS:
                    raise ValueError("kvshare_peers: want a list of at most "
                                     f"{MAX_PEERS} 'host:port'")
                for p in peers:
                    _check_hostport(p, "kvshare_peers")
                peers = list(peers)
            else:
                host, port = params.get("remote_host"), params.get("remote_port")
                if not host:
                    return None
                if not isinstance(host, str):
                    raise ValueError("remote_host: want a string")
                if isinstance(port, bool) or not isinstance(port, int):
                    port = int(str(port), 10)
                peers = [f"{host}:{port + r}" for r in range(ptp or self.tp_size)]
                for p in peers:
                    _check_hostport(p, "remote_host/remote_port")
            nblocks = params.get("remote_num_blocks")
            if nblocks is not None and (isinstance(nblocks, bool) or not isinstance(nblocks, int)
                                        or nblocks < 0):
                raise ValueError(f"remote_num_blocks={nblocks!r}: want a count of blocks")
            if ptp is not None and len(peers) != ptp:
                # Each producer rank names its own address; fewer (one
                # listener) serve only consumers of the same split.
                if ptp != self.tp_size:
                    raise ValueError(f"tp_size={ptp} but {len(peers)} kvshare_peers: "
                                     "a consumer at another TP size needs every rank's")
                ptp = None
        except (TypeError, ValueError) as e:
            log.warning("kvshare_vllm: %s: kv_transfer_params ignored (%s); computing the "
                        "prompt here", request.request_id, e)
            return None
        return peers, nblocks, ptp or 0

    def _prompt_hashes(self, request):
        n = request.num_prompt_tokens // self.bs
        return list(request.block_hashes[:n])

    def get_num_new_matched_tokens(self, request, num_computed_tokens):
        if not self.s.consumer:
            return 0, False
        hashes = self._prompt_hashes(request)
        if len(hashes) * self.bs <= num_computed_tokens:
            return 0, False
        remote = self._remote(request)
        if remote is not None:
            # P/D: the producer said how many blocks it holds; trust it, as
            # NIXL does, and let the worker's fetch report what was not there.
            nblocks = remote[1]
            hits = len(hashes) if nblocks is None else min(len(hashes), nblocks)
            # update_state_after_alloc needs the local hit: vLLM sets
            # request.num_computed_tokens only after that call.
            self._probe[request.request_id] = (time.monotonic(), num_computed_tokens, hits)
        else:
            hits = self._probe_hits(request.request_id, hashes, num_computed_tokens)
        tokens = hits * self.bs
        if tokens >= request.num_prompt_tokens:
            tokens = request.num_prompt_tokens - 1  # vLLM must compute one token
        n = tokens - num_computed_tokens
        if n <= 0:
            return 0, False
        return n, True

    def _probe_hits(self, req_id, hashes, num_computed):
        now = time.monotonic()
        cached = self._probe.get(req_id)
        if cached and cached[1] == num_computed and now - cached[0] < PROBE_TTL_S:
            return cached[2]
        hits = 0
        ctx = self._context()
        if ctx is not None and self._layout is not None:
            try:
                hits = self._held(ctx, hashes, self._near)
            except _lib.KvsError as e:
                log.warning("kvshare_vllm: lookup for %s: %s; counting a miss", req_id, e)
        self._probe[req_id] = (now, num_computed, hits)
        return hits

    def update_state_after_alloc(self, request, blocks, num_external_tokens):
        st = self._reqs.get(request.request_id)
        if st is None:
            st = self._reqs[request.request_id] = _Req(request)
        st.block_ids = list(blocks.get_block_ids()[0])
        params = request.kv_transfer_params or {}
        probe = self._probe.pop(request.request_id, None)
        local = probe[1] if probe else request.num_computed_tokens
        remote = self._remote(request)
        if num_external_tokens <= 0 and remote is None:
            return
        hashes = self._prompt_hashes(request)
        first = local // self.bs
        count = -(-num_external_tokens // self.bs) if num_external_tokens > 0 else 0
        count = min(count, len(hashes) - first, len(st.block_ids) - first)
        peers, peer_tp = [], 0
        if remote is not None:
            peers, peer_tp = remote[0], remote[2]
            # One transfer per request: a second allocation must not load again.
            params["do_remote_prefill"] = False
        sources = self._near
        if peers:
            sources |= _lib.SOURCE_PEER
        self._loads.append(LoadSpec(request.request_id, hashes[:first + max(count, 0)], first,
                                    st.block_ids[first:first + max(count, 0)], sources, peers,
                                    notify_only=count <= 0, peer_tp=peer_tp))

    # -- per step ----------------------------------------------------------
    def build_connector_meta(self, so):
        meta = KVShareMetadata(loads=self._loads, handoffs=self._handoffs,
                               released=self._released, delayed=self._delayed)
        self._loads, self._handoffs, self._released, self._delayed = [], {}, set(), set()
        nsched = so.num_scheduled_tokens
        for new in so.scheduled_new_reqs:
            st = self._reqs.get(new.req_id)
            if st is None:
                continue
            st.block_ids = list(new.block_ids[0])
            self._plan_save(meta, st, new.num_computed_tokens + nsched.get(new.req_id, 0))
        cached = so.scheduled_cached_reqs
        resumed = set(getattr(cached, "resumed_req_ids", ()) or ())
        # vLLM before resumed_req_ids flagged resumptions per index instead
        for rid, flag in zip(cached.req_ids, getattr(cached, "resumed_from_preemption", ()) or ()):
            if flag:
                resumed.add(rid)
        for i, req_id in enumerate(cached.req_ids):
            st = self._reqs.get(req_id)
            if st is None:
                continue
            nb = cached.new_block_ids[i]
            if nb is not None:
                if req_id in resumed:
                    st.block_ids = list(nb[0])
                else:
                    st.block_ids.extend(nb[0])
            self._plan_save(meta, st, cached.num_computed_tokens[i] + nsched.get(req_id, 0))
        for req_id in getattr(so, "preempted_req_ids", None) or ():
            st = self._reqs.get(req_id)
            if st is not None:
                meta.preempted.add(req_id)
                st.saved, st.published, st.put = 0, False, False
        return meta

    def _plan_save(self, meta, st, done_tokens):
        if not (self.s.producer and (self.s.listen or self.s.offload)):
            return
        req = st.request
        nfull = min(done_tokens, req.num_prompt_tokens) // self.bs
        nfull = min(nfull, len(req.block_hashes), len(st.block_ids))
        if nfull <= st.saved:
            return
        whole = nfull == req.num_prompt_tokens // self.bs
        put = self.s.offload and whole
        hashes = list(req.block_hashes[:nfull])
        meta.saves.append(SaveSpec(req.request_id, hashes, st.block_ids[:nfull],
                                   publish=bool(self.s.listen), put=put, final=whole))
        st.saved = nfull
        st.published = st.published or bool(self.s.listen)
        if put:
            st.put = True
            self._put_reqs[req.request_id] = hashes

    # -- end of a request --------------------------------------------------
    def request_finished(self, request, block_ids, addr_for):
        st = self._reqs.pop(request.request_id, None)
        self._probe.pop(request.request_id, None)
        if st is None:
            return False, None
        params = request.kv_transfer_params or {}
        status = getattr(getattr(request, "status", None), "name", "")
        ok = status in ("FINISHED_STOPPED", "FINISHED_LENGTH_CAPPED")
        mine = st.block_ids[:st.saved]
        if ok and st.published and params.get("do_remote_decode") and mine:
            deadline = time.time() + self.s.lease_ms / 1000.0
            self._handoffs[request.request_id] = Handoff(mine, deadline)
            peers = [self._peers[r] for r in sorted(self._peers)] or ([addr_for(0)]
                                                                       if addr_for(0) else [])
            if not peers:
                log.warning("kvshare_vllm: %s: no listen address to hand KV off from "
                            "(set KVSHARE_LISTEN); the decoder will recompute",
                            request.request_id)
                self._released.add(request.request_id)
                return False, None
            host, _, port = peers[0].rpartition(":")
            return True, dict(
                do_remote_prefill=True, do_remote_decode=False, remote_block_ids=mine,
                remote_engine_id=self.s.engine_id, remote_request_id=request.request_id,
                remote_host=host.strip("[]"), remote_port=int(port), tp_size=self.tp_size,
                remote_num_tokens=request.num_computed_tokens, remote_num_blocks=len(mine),
                kvshare_peers=peers)
        if st.put:
            self._delayed.add(request.request_id)
            return True, None
        self._put_reqs.pop(request.request_id, None)
        if st.published and mine:
            self._released.add(request.request_id)
        return False, None

    def update_connector_output(self, output):
        for req_id in getattr(output, "finished_sending", None) or ():
            hashes = self._put_reqs.pop(req_id, None)
            if hashes:
                self._events.append(hashes)

    def take_events(self):
        """BlockStored events for chains the workers put to the pool. Each
        chain is first looked up on its pool node: the event names only the
        blocks the node holds now (a put that failed, or a node that evicted
        under pressure, reports fewer, so a router is never told a lie)."""
        if not self._events:
            return ()
        chains, self._events = self._events, []
        ctx = self._context()
        if ctx is None or self._layout is None:
            return ()
        from vllm.distributed.kv_events import BlockStored  # only when there is one to send
        as_int = os.environ.get("VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES", "1") != "0"
        out = []
        for hashes in chains:
            try:
                held = self._held(ctx, hashes, _lib.SOURCE_POOL)
            except _lib.KvsError as e:
                log.warning("kvshare_vllm: checking an offload on the pool: %s", e)
                continue
            if held < len(hashes):
                log.warning("kvshare_vllm: the pool holds %d of %d offloaded blocks", held,
                            len(hashes))
            if held:
                ids = [_event_hash(h, as_int) for h in hashes[:held]]
                out.append(BlockStored(block_hashes=ids, parent_block_hash=None, token_ids=[],
                                       block_size=0, lora_id=None, medium=MEDIUM_POOL,
                                       lora_name=None))
        return out


def _event_hash(h, as_int):
    """vLLM's form in KV events: the digest's last 8 bytes as a big-endian int
    (VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=1, its default), else the bytes."""
    return int.from_bytes(h[-8:], "big") if as_int else bytes(h)
