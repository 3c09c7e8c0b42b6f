# SPDX-License-Identifier: Apache-2.0
"""The worker half of the connector (one per TP rank, beside the model).

Loads and saves run on background threads: ctypes releases the GIL inside
libkvshare, so a lookup waiting on the network or a put streaming to the
pool never stalls the forward pass. What must happen before the forward pass
(withdrawing blocks vLLM is about to reuse) happens synchronously in
start_load_kv()."""

import collections
import logging
import queue
import threading
import time

from . import _config, _layout, _lib
from ._meta import KVShareHandshake

log = logging.getLogger("kvshare_vllm")


class _Send:
    """What a finished request still waits for before vLLM may free it."""
    __slots__ = ("handoff", "last", "baseline", "puts", "finished")

    def __init__(self):
        self.handoff = None
        self.last = None
        self.baseline = 0
        self.puts = []
        self.finished = False


class WorkerSide:
    def __init__(self, vllm_config, kv_cache_config, settings, tp_rank, tp_size, ctx_registry):
        self.s = settings
        self.cfg = vllm_config
        self.kv_cache_config = kv_cache_config
        self.tp_rank, self.tp_size = tp_rank, tp_size
        self._registry = ctx_registry
        self.ctx = None
        self.pool = None
        self.addr = None
        self._refs = collections.Counter()  # block id -> requests holding it published
        self._published = {}  # req_id -> block ids this rank published
        self._sends = {}  # req_id -> _Send
        self._puts_unsupported = 0  # offloads the library refused as UNSUPPORTED
        self._done_recv = queue.Queue()
        self._invalid = set()
        self._saves = queue.Queue()
        self._save_idle = threading.Event()
        self._save_idle.set()
        self._pending_saves = 0
        self._lock = threading.Lock()
        self._loaders = None
        self._is_cuda = False
        self._must_drain = False
        self._last = {}  # req_id -> (last published block, its reads right after publishing)
        self._mla = False  # register(): every rank holds the whole latent
        self._threads = []

    # -- registration -------------------------------------------------------
    def register(self, kv_caches):
        num_blocks = int(self.kv_cache_config.num_blocks)
        segments, info = _layout.describe(kv_caches, num_blocks)
        model = self.cfg.model_config.model
        # The model's KV heads, so peers at another TP size can plan slices
        # (vLLM's ModelConfig; absent from a bare config: the default).
        total = getattr(self.cfg.model_config, "get_total_num_kv_heads", None)
        args = _layout.layout_args(model, info, self.s.block_size, self.tp_rank, self.tp_size,
                                   total_kv_heads=total() if callable(total) else None)
        self._layout_args = args
        self._mla = bool(info.get("mla"))
        self._sources = {}  # producer TP size -> its ranks holding our heads
        self._readers = {}  # producer TP size -> Counter: producer rank -> our ranks reading it
        self.ctx = self._registry.worker_context(self.s, self.tp_rank)
        self.pool = _lib.Pool(self.ctx, args, segments, num_blocks,
                              f"vllm-tp{self.tp_rank}")
        self._is_cuda = any(sg[3] == _lib.MEM_CUDA for sg in segments)
        self.addr = None
        if self.s.producer:
            adv = _config.advertised(self.ctx.listen_addr())
            if adv:
                host, port = adv
                self.addr = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            elif self.s.listen:
                log.warning("kvshare_vllm: rank %d: KVSHARE_LISTEN is set but this context "
                            "has no listener; no P/D handoff from this rank", self.tp_rank)
        self._threads = [threading.Thread(target=self._save_loop, name="kvshare-save",
                                          daemon=True)]
        for i in range(2):  # two lookups in flight: one slow peer does not block all
            self._threads.append(threading.Thread(target=self._load_loop, name=f"kvshare-load{i}",
                                                  daemon=True))
        self._loaders = queue.Queue()
        for t in self._threads:
            t.start()
        log.info("kvshare_vllm: rank %d/%d: %d KV segments of %d blocks (%d B per block, "
                 "layout %016x)%s", self.tp_rank, self.tp_size, len(segments), num_blocks,
                 self.pool.block_bytes, self.pool.layout_id,
                 f", serving at {self.addr}" if self.addr else "")

    def handshake(self):
        if self.pool is None:
            return None
        return KVShareHandshake(self.tp_rank, self.addr or "", self.pool.layout_id)

    # -- before the forward pass -------------------------------------------
    def preemptions(self, meta):
        for req_id in getattr(meta, "preempted", ()) or ():
            # vLLM frees a preempted request's blocks without request_finished:
            # stop reading them into the pool and withdraw them first.
            self._drain_saves()
            snd = self._sends.pop(req_id, None)
            for r in (snd.puts if snd else ()):
                r.free()
            self._release(req_id)

    def start_load(self, meta):
        if self.pool is None:
            return
        if meta.released or meta.handoffs or meta.delayed:
            self._drain_saves()
        for req_id in meta.released:
            self._release(req_id)
        for req_id, h in meta.handoffs.items():
            snd = self._sends.setdefault(req_id, _Send())
            snd.handoff = h
            last = self._last.get(req_id)
            if last is not None:
                snd.last, snd.baseline = last
        for req_id in meta.delayed:
            self._sends.setdefault(req_id, _Send())
        for spec in meta.loads:
            self._loaders.put(spec)

    def _release(self, req_id):
        """Withdraws what @req_id published (blocks other live requests still
        hold published stay). Callers drain pending saves first."""
        with self._lock:
            self._last.pop(req_id, None)
            mine = self._published.pop(req_id, None)
            drop = []
            for b in mine or ():
                self._refs[b] -= 1
                if self._refs[b] <= 0:
                    del self._refs[b]
                    drop.append(b)
        if drop:
            st = self.pool.unpublish(drop)
            if st == _lib.ERR_BUSY:
                # A reader still holds a lease; vLLM reuses these blocks next, so
                # bump their generation: the reader gets STALE, never wrong KV.
                st = self.pool.unpublish(drop, force=True)
            if st != _lib.KVS_OK:
                log.error("kvshare_vllm: unpublish of %d blocks: %s", len(drop),
                          _lib.status_string(st))

    # -- after the forward pass ---------------------------------------------
    def save(self, meta):
        if self.pool is None or not meta.saves:
            return
        event = None
        if self._is_cuda:
            import torch
            # Kernels run ahead of the CPU: publish only once they wrote the blocks.
            event = torch.cuda.Event()
            event.record()
        with self._lock:
            self._pending_saves += 1
            self._save_idle.clear()
        self._saves.put((meta.saves, event))
        # A prompt finished here may be handed off as soon as this step's output
        # reaches the scheduler: its blocks must be published before that
        # (finished() waits, at the end of the step).
        self._must_drain = self._must_drain or any(sp.final and sp.publish for sp in meta.saves)

    def _drain_saves(self):
        self._save_idle.wait()

    def _save_loop(self):
        while True:
            item = self._saves.get()
            if item is None:
                return
            specs, event = item
            try:
                if event is not None:
                    event.synchronize()  # the kernels that wrote these blocks are done
                for sp in specs:
                    self._save_one(sp)
            except Exception as e:  # a save is best effort: never take the engine down
                log.error("kvshare_vllm: save failed: %s", e)
            finally:
                with self._lock:
                    self._pending_saves -= 1
                    if self._pending_saves == 0:
                        self._save_idle.set()

    def _save_one(self, sp):
        if sp.publish:
            with self._lock:
                mine = self._published.setdefault(sp.req_id, [])
                done = len(mine)
            new = list(sp.block_ids[done:])
            if new:
                self.pool.publish(sp.hashes[done:done + len(new)], new, zero_copy=True)
                # Reads already on the block belong to other requests sharing it;
                # no consumer of this one can have read it before now.
                base = self.pool.reads([new[-1]])[0]
                with self._lock:
                    for b in new:
                        self._refs[b] += 1
                    mine.extend(new)
                    self._last[sp.req_id] = (new[-1], base)
        if sp.put and (not self._mla or self.tp_rank == 0):
            # (MLA: every rank holds the same latent under one layout; rank 0
            # offloads it for all.)
            try:
                req = self.pool.put(sp.hashes, sp.block_ids)
            except _lib.KvsError as e:
                # UNSUPPORTED repeats for every request (KV on the GPU and a
                # pool node on another host: the transport takes no CUDA
                # memory): said once, then counted, not once per request.
                if e.status == _lib.ERR_UNSUPPORTED:
                    self._puts_unsupported += 1
                    n = self._puts_unsupported
                    if n & (n - 1) == 0:
                        log.warning("kvshare_vllm: offload of %s to the pool: %s "
                                    "(%d offloads refused so far)", sp.req_id, e, n)
                else:
                    log.warning("kvshare_vllm: offload of %s to the pool: %s", sp.req_id, e)
                return
            with self._lock:
                self._sends.setdefault(sp.req_id, _Send()).puts.append(req)

    # -- loads ---------------------------------------------------------------
    def _load_loop(self):
        while True:
            spec = self._loaders.get()
            if spec is None:
                return
            bad = []
            try:
                bad = self._load_one(spec)
            except Exception as e:  # report, never raise into vLLM's thread
                log.error("kvshare_vllm: load of %s failed: %s", spec.req_id, e)
                bad = list(spec.block_ids)
            if not spec.notify_only:
                self._done_recv.put((spec.req_id, bad))

    def _peer_for_rank(self, spec):
        if not spec.peers:
            return None
        if len(spec.peers) == self.tp_size:
            return spec.peers[self.tp_rank]
        return spec.peers[self.tp_rank % len(spec.peers)]

    def _producer_tp(self, spec):
        return spec.peer_tp or len(spec.peers)

    def _source_peers(self, spec):
        """(address, readers) of the producer ranks holding this rank's heads,
        when the producer runs at another TP size (kvs_layout_source_ranks()):
        readers is how many of our ranks read that producer rank."""
        ptp = self._producer_tp(spec)
        if self._mla:
            # Every producer rank holds the whole latent: read one, spread.
            r = self.tp_rank % ptp
            return [(spec.peers[r], self._readers_of(ptp, r))]
        ranks = self._sources.get(ptp)
        if ranks is None:
            ranks = self._sources[ptp] = _lib.layout_source_ranks(self._layout_args, ptp)
        if any(r >= len(spec.peers) for r in ranks):
            raise _lib.KvsError("kvshare_peers", _lib.ERR_INVALID_PARAM)
        return [(spec.peers[r], self._readers_of(ptp, r)) for r in ranks]

    def _reader_counts(self, ptp):
        """Per producer rank of a producer at TP size @ptp, how many of this
        engine's TP ranks read it: the inverse of kvs_layout_source_ranks(),
        the same on every rank (it depends only on the two TP sizes and the
        heads). Each reader announces it with its RELEASE, so the producer
        frees after the last of them (decode TP > prefill TP), as vLLM's
        NIXL connector counts tp_ratio notifications."""
        counts = self._readers.get(ptp)
        if counts is None and self._mla:
            counts = self._readers[ptp] = collections.Counter(q % ptp for q in range(self.tp_size))
        if counts is None:
            counts = collections.Counter()
            for r in range(self.tp_size):
                counts.update(_lib.layout_source_ranks(dict(self._layout_args, tp_rank=r), ptp))
            self._readers[ptp] = counts
        return counts

    def _readers_of(self, ptp, prank):
        return self._reader_counts(ptp)[prank]

    def _unread_mine(self, ptp):
        """Producer ranks (of a producer at TP size @ptp) that none of our
        ranks reads, the ones this rank tells it is done: where the producer
        runs more ranks than it has KV heads, the replicas of a head read
        from a lower rank. Without a word they would hold the request's
        blocks until their lease ends, and vLLM frees a request only once
        every rank has reported it. Spread over our ranks: the i-th unread
        rank is told by our rank i % tp_size."""
        counts = self._reader_counts(ptp)
        unread = [r for r in range(ptp) if counts[r] == 0]
        return [r for i, r in enumerate(unread) if i % self.tp_size == self.tp_rank]

    def _notify_unread(self, spec):
        for r in self._unread_mine(self._producer_tp(spec)):
            self._tell_done(spec, spec.peers[r], 1)

    def _tell_done(self, spec, peer, readers):
        """Tells producer @peer this rank is done with the request's blocks
        without reading them (a lookup and its release: one counted read)."""
        try:
            _lib.held(self.ctx, self.pool.layout_id, spec.hashes, _lib.SOURCE_PEER,
                      peer=peer, timeout_ms=self.s.fetch_timeout_ms, readers=readers)
        except _lib.KvsError as e:
            log.info("kvshare_vllm: %s: notifying %s: %s", spec.req_id, peer, e)

    def _notify_needed(self, spec, lease):
        """True when the lookup never asked the producer (cheaper sources held
        the whole chain): tell it we are done. When it was asked, the library
        already released its lease (a counted read): a second notification
        would count this rank twice and free the blocks before another rank
        read them."""
        return lease.source != _lib.SOURCE_PEER and lease.hits >= len(spec.hashes)

    def _load_one(self, spec):
        """Returns the destination block ids that did not load."""
        if spec.peers and self._producer_tp(spec) != self.tp_size:
            return self._load_split(spec)
        peer = self._peer_for_rank(spec)
        # Our ranks reading this producer rank: 1 at equal TP sizes.
        n = len(spec.peers)
        readers = sum(1 for r in range(self.tp_size) if r % n == self.tp_rank % n) if n else 0
        t0 = time.monotonic()
        lease = _lib.lookup(self.ctx, self.pool.layout_id, spec.hashes, spec.sources, peer=peer,
                            timeout_ms=self.s.fetch_timeout_ms, readers=readers)
        try:
            if spec.notify_only:
                return []
            have = max(0, min(lease.hits - spec.first, len(spec.block_ids)))
            bad = list(spec.block_ids[have:])
            if have:
                req = lease.fetch(self.pool, spec.block_ids[:have], spec.first,
                                  timeout_ms=self.s.fetch_timeout_ms)
                st = req.wait(-1)
                req.free()
                if st != _lib.KVS_OK:
                    log.warning("kvshare_vllm: fetch of %s (%d blocks from %s): %s",
                                spec.req_id, have, peer or "pool/local", _lib.status_string(st))
                    return list(spec.block_ids)
            if bad:
                log.warning("kvshare_vllm: %s: %d of %d blocks not found (%s)", spec.req_id,
                            len(bad), len(spec.block_ids), peer or "pool/local")
            log.debug("kvshare_vllm: %s: %d blocks in %.1f ms", spec.req_id, have,
                      (time.monotonic() - t0) * 1e3)
            return bad
        finally:
            notify = self._notify_needed(spec, lease)
            lease.release()
            if peer and notify:
                # Loaded from elsewhere: still tell the producer we are done,
                # so it frees now rather than at expiry.
                self._tell_done(spec, peer, readers)

    def _load_split(self, spec):
        """_load_one from a producer at another TP size: one lease per producer
        rank holding some of this rank's heads, all fetched into the same
        blocks (disjoint bytes). Blocks not covered in every head are failed
        (vLLM recomputes or fails them per kv_load_failure_policy)."""
        peers = self._source_peers(spec)
        t0 = time.monotonic()
        leases = []  # (peer, lease)
        readers = dict(peers)
        peers = [peer for peer, _ in peers]
        try:
            for peer in peers:
                leases.append((peer, _lib.lookup(self.ctx, self.pool.layout_id, spec.hashes,
                                                 spec.sources, peer=peer,
                                                 timeout_ms=self.s.fetch_timeout_ms,
                                                 readers=readers[peer])))
            if spec.notify_only:
                return []
            # Which leases to fetch from: each must add heads not yet covered
            # (a local or pool lease already holds them all).
            heads = self._layout_args["num_kv_heads"]
            covered, use = set(), []
            for peer, lease in leases:
                first, count = lease.heads() if lease.hits > spec.first else (0, 0)
                new = set(range(first, first + count)) - covered
                if new:
                    covered |= new
                    use.append((peer, lease))
            n = len(spec.block_ids)
            if covered != set(range(heads)):
                log.warning("kvshare_vllm: %s: producer ranks %s (TP %d) cover %d of this "
                            "rank's %d KV heads: a failed load", spec.req_id, peers,
                            self._producer_tp(spec), len(covered), heads)
                return list(spec.block_ids)
            have = max(0, min(min(l.hits for _, l in use) - spec.first, n))
            bad = list(spec.block_ids[have:])
            if have:
                reqs = []
                st = _lib.KVS_OK
                try:
                    for peer, lease in use:
                        reqs.append((peer, lease.fetch(self.pool, spec.block_ids[:have],
                                                       spec.first,
                                                       timeout_ms=self.s.fetch_timeout_ms)))
                finally:
                    for peer, req in reqs:
                        rst = req.wait(-1)
                        req.free()
                        if rst != _lib.KVS_OK:
                            log.warning("kvshare_vllm: fetch of %s (%d blocks from %s): %s",
                                        spec.req_id, have, peer, _lib.status_string(rst))
                            st = rst
                if st != _lib.KVS_OK:
                    return list(spec.block_ids)
            if bad:
                log.warning("kvshare_vllm: %s: %d of %d blocks not found (%s)", spec.req_id,
                            len(bad), n, ",".join(peers))
            log.debug("kvshare_vllm: %s: %d blocks from %d producer ranks in %.1f ms",
                      spec.req_id, have, len(use), (time.monotonic() - t0) * 1e3)
            return bad
        finally:
            for peer, lease in leases:
                notify = self._notify_needed(spec, lease)
                lease.release()
                if notify:
                    self._tell_done(spec, peer, readers[peer])
            self._notify_unread(spec)

    # -- reporting -----------------------------------------------------------
    def finished(self, finished_req_ids):
        if self._must_drain:
            self._must_drain = False
            self._drain_saves()
        recving = set()
        while True:
            try:
                req_id, bad = self._done_recv.get_nowait()
            except queue.Empty:
                break
            recving.add(req_id)
            self._invalid.update(bad)
        for req_id in finished_req_ids or ():
            snd = self._sends.get(req_id)
            if snd is not None:
                snd.finished = True
        sending = set()
        now = time.time()
        with self._lock:
            items = list(self._sends.items())
        for req_id, snd in items:
            if not snd.finished:
                continue
            if any(r.test() == _lib.KVS_INPROGRESS for r in snd.puts):
                continue
            if snd.handoff is not None and now < snd.handoff.deadline:
                # Every consumer rank reading this rank must have read: each
                # announces how many do (decode TP > prefill TP: several),
                # an older consumer nothing (one).
                if snd.last is None:
                    continue
                reads, expected = self.pool.readers([snd.last])
                if reads[0] - snd.baseline < max(1, expected[0]):
                    continue
            elif snd.handoff is not None:
                reads, expected = self.pool.readers([snd.last]) if snd.last is not None \
                    else ([snd.baseline], [0])
                got = reads[0] - snd.baseline
                log.warning("kvshare_vllm: %s: %s before the lease ended; freeing it", req_id,
                            "no consumer read its KV" if got <= 0 else
                            f"{got} of {max(1, expected[0])} consumer ranks read its KV")
            self._drain_saves()
            for r in snd.puts:
                st = r.test()
                if st != _lib.KVS_OK:
                    log.warning("kvshare_vllm: offload of %s: %s", req_id, _lib.status_string(st))
                r.free()
            with self._lock:
                del self._sends[req_id]
            self._release(req_id)
            sending.add(req_id)
        return sending or None, recving or None

    def load_errors(self):
        bad, self._invalid = self._invalid, set()
        return bad

    def shutdown(self):
        if self._loaders is not None:
            self._saves.put(None)
            for _ in range(len(self._threads) - 1):
                self._loaders.put(None)
            for t in self._threads:
                t.join(timeout=5)
        for snd in self._sends.values():
            for r in snd.puts:
                r.free()
        self._sends.clear()
        if self.pool is not None:
            # withdraw everything first: pool_destroy waits for leases to end
            for b in list(self._refs):
                self.pool.unpublish([b], force=True)
            self.pool.close()
            self.pool = None
