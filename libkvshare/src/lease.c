/* SPDX-License-Identifier: Apache-2.0 */
/* lease.c - lookups that lease the longest cached prefix, fetches from a lease, requests. */
#include "pool_int.h"

#include <string.h>
#include <time.h>

struct kvs_lease {
    kvs_ctx_h ctx;
    uint64_t layout_id;
    size_t hits;
    kvs_source_t source;
    bool holds;       /* false for NO_LEASE probes: nothing to release */
    uint32_t readers; /* sent with a remote lease's RELEASE (0: not said) */
    kvs__ref_t *refs;
    void *remote; /* the transport's lease when source is PEER or POOL */
};

struct kvs_request {
    kvs_ctx_h ctx;
    kvs_status_t status; /* local requests complete before kvs_fetch returns */
    void *treq;          /* a transport request, for remote sources */
};

kvs_status_t kvs_lookup(kvs_ctx_h ctx, uint64_t layout_id, const kvs_key_t *keys, size_t nkeys,
                        const kvs_lookup_params_t *params, kvs_lease_h *lease_p)
{
    unsigned sources = KVS_SOURCE_LOCAL;
    uint32_t lease_ms;
    bool no_lease = false;
    uint32_t readers = 0;

    if (ctx == NULL || lease_p == NULL || (nkeys > 0 && keys == NULL))
        return KVS_ERR_INVALID_PARAM;
    lease_ms = ctx->cfg.lease_timeout_ms;
    if (ctx->cfg.pool[0] != '\0')
        sources |= KVS_SOURCE_POOL;
    if (params != NULL) {
        uint64_t m = params->field_mask;
        if (m & KVS_LOOKUP_FIELD_SOURCES)
            sources = params->sources;
        else if ((m & KVS_LOOKUP_FIELD_PEER) && params->peer != NULL)
            sources |= KVS_SOURCE_PEER;
        if ((m & KVS_LOOKUP_FIELD_LEASE_MS) && params->lease_ms > 0)
            lease_ms = params->lease_ms;
        no_lease = (m & KVS_LOOKUP_FIELD_NO_LEASE) != 0;
        if (m & KVS_LOOKUP_FIELD_READERS) {
            if (params->readers > KVS_LOOKUP_MAX_READERS)
                return KVS_ERR_INVALID_PARAM;
            readers = params->readers;
        }
        if ((sources & KVS_SOURCE_PEER) && (!(m & KVS_LOOKUP_FIELD_PEER) || params->peer == NULL))
            return KVS_ERR_INVALID_PARAM;
    }
    if (sources == 0 ||
        (sources & ~(unsigned)(KVS_SOURCE_LOCAL | KVS_SOURCE_PEER | KVS_SOURCE_POOL)))
        return KVS_ERR_INVALID_PARAM;
    /* A peer named explicitly must be asked; answering from the local store
     * alone would hide that it never was. */
    if ((sources & KVS_SOURCE_PEER || sources == KVS_SOURCE_POOL) && ctx->peer == NULL) {
        kvs__error(&ctx->log, "kvs_lookup: remote sources asked for, but this build has no "
                              "transport");
        return KVS_ERR_UNSUPPORTED;
    }

    kvs_lease_h lease = kvs__calloc(1, sizeof(*lease));
    if (lease == NULL)
        return KVS_ERR_NO_MEMORY;
    if (!no_lease && nkeys > 0) {
        lease->refs = kvs__malloc(nkeys * sizeof(*lease->refs));
        if (lease->refs == NULL) {
            kvs__free(lease);
            return KVS_ERR_NO_MEMORY;
        }
    }
    lease->ctx = ctx;
    lease->layout_id = layout_id;
    lease->holds = !no_lease;
    lease->readers = readers;
    if (sources & KVS_SOURCE_LOCAL) {
        lease->hits = kvs__store_find_prefix(&ctx->store, layout_id, keys, nkeys, lease->refs,
                                             kvs__now_ms() + lease_ms);
        if (lease->hits > 0)
            lease->source = KVS_SOURCE_LOCAL;
    }
    /* Then the dearer sources, in order of cost: the pool node that owns
     * this chain, then a named peer. Each is asked for the whole chain only
     * while what we hold is shorter; the longer answer wins. */
    uint32_t timeout_ms = ctx->cfg.fetch_timeout_ms;
    if (params != NULL && (params->field_mask & KVS_LOOKUP_FIELD_TIMEOUT_MS) &&
        params->timeout_ms > 0)
        timeout_ms = params->timeout_ms;
    for (int k = 0; k < 2 && !no_lease && nkeys > 0; k++) {
        kvs_source_t src = k == 0 ? KVS_SOURCE_POOL : KVS_SOURCE_PEER;
        if (!(sources & src) || lease->hits == nkeys)
            continue;
        char node[300];
        const char *where = params != NULL ? params->peer : NULL;
        if (src == KVS_SOURCE_POOL) {
            if (ctx->peer == NULL ||
                kvs__pool_node_for(ctx, &keys[0], node, sizeof(node)) != KVS_OK)
                continue; /* no pool reachable: a miss, not an error */
            where = node;
        }
        void *rl = NULL;
        size_t rhits = 0;
        kvs_status_t st = kvs__peer_lookup(ctx->peer, where, layout_id, keys, nkeys, lease_ms,
                                           timeout_ms, &rl, &rhits);
        if (st != KVS_OK) {
            if (src == KVS_SOURCE_POOL) {
                /* A node that is down or restarting costs a miss only. */
                kvs__warn(&ctx->log, "kvs_lookup: pool node %s: %s; treating as a miss", where,
                          kvs_status_string(st));
                continue;
            }
            kvs_lease_release(lease);
            return st;
        }
        if (rhits > lease->hits) {
            if (lease->remote != NULL)
                kvs__peer_release(ctx->peer, lease->remote, lease->readers);
            else if (lease->hits > 0)
                kvs__store_release(&ctx->store, lease->refs, lease->hits);
            lease->hits = rhits;
            lease->source = src;
            lease->remote = rl;
        } else {
            kvs__peer_release(ctx->peer, rl, lease->readers);
        }
    }
    *lease_p = lease;
    return KVS_OK;
}

kvs_status_t kvs__serve_lookup(struct kvs_ctx *ctx, uint64_t layout_id, const kvs_key_t *keys,
                               size_t n, uint32_t lease_ms, kvs_lease_h *lease_p)
{
    kvs_lookup_params_t lp = {.field_mask = KVS_LOOKUP_FIELD_SOURCES | KVS_LOOKUP_FIELD_LEASE_MS,
                              .sources = KVS_SOURCE_LOCAL,
                              .lease_ms = lease_ms};
    return kvs_lookup(ctx, layout_id, keys, n, &lp, lease_p);
}

void kvs__lease_mark_read(kvs_lease_h lease, uint32_t readers)
{
    if (lease == NULL || lease->source != KVS_SOURCE_LOCAL || !lease->holds)
        return;
    kvs__store_t *s = &lease->ctx->store;
    pthread_rwlock_rdlock(&s->lock);
    for (size_t i = 0; i < lease->hits; i++) {
        kvs__entry_t *e = &s->entries[lease->refs[i].idx];
        if (e->serial != lease->refs[i].serial)
            continue;
        /* The count first: a producer that sees this read also sees how
         * many to wait for (kvs_pool_readers() loads reads with acquire). */
        uint32_t had = atomic_load_explicit(&e->readers, memory_order_relaxed);
        while (had < readers &&
               !atomic_compare_exchange_weak_explicit(&e->readers, &had, readers,
                                                      memory_order_relaxed, memory_order_relaxed))
            ;
        atomic_fetch_add_explicit(&e->reads, 1, memory_order_release);
    }
    pthread_rwlock_unlock(&s->lock);
}

uint32_t kvs__serve_read(struct kvs_ctx *ctx, uint64_t layout_id, const uint32_t *idx,
                         const uint64_t *serial, uint32_t n, uint32_t readers)
{
    kvs__store_t *s = &ctx->store;
    uint32_t counted = 0;
    pthread_rwlock_rdlock(&s->lock);
    uint64_t now = atomic_fetch_add_explicit(&s->clock, 1, memory_order_relaxed) + 1;
    for (uint32_t i = 0; i < n; i++) {
        /* The reader names entries as the index showed them: one gone or
         * replaced since (another serial), or of another layout, is skipped. */
        if (idx[i] >= s->entries_cap)
            continue;
        kvs__entry_t *e = &s->entries[idx[i]];
        if (serial[i] == 0 || e->serial != serial[i] || e->layout_id != layout_id)
            continue;
        atomic_store_explicit(&e->atime, now, memory_order_relaxed);
        atomic_fetch_add_explicit(&e->freq, 1, memory_order_relaxed);
        uint32_t had = atomic_load_explicit(&e->readers, memory_order_relaxed);
        while (had < readers &&
               !atomic_compare_exchange_weak_explicit(&e->readers, &had, readers,
                                                      memory_order_relaxed, memory_order_relaxed))
            ;
        atomic_fetch_add_explicit(&e->reads, 1, memory_order_release);
        counted++;
    }
    pthread_rwlock_unlock(&s->lock);
    atomic_fetch_add_explicit(&s->hits, counted, memory_order_relaxed);
    return counted;
}

void kvs__lease_hold(kvs_lease_h lease)
{
    pthread_rwlock_rdlock(&lease->ctx->store.lock);
}

void kvs__lease_unhold(kvs_lease_h lease)
{
    pthread_rwlock_unlock(&lease->ctx->store.lock);
}

kvs_status_t kvs__lease_locate(kvs_lease_h lease, size_t i, kvs__block_loc_t *loc)
{
    kvs__lease_hold(lease);
    kvs_status_t st = kvs__lease_locate_held(lease, i, loc);
    kvs__lease_unhold(lease);
    return st;
}

kvs_status_t kvs__lease_locate_held(kvs_lease_h lease, size_t i, kvs__block_loc_t *loc)
{
    kvs__store_t *s = &lease->ctx->store;
    kvs_status_t status = KVS_OK;
    if (i >= lease->hits || lease->source != KVS_SOURCE_LOCAL || !lease->holds)
        return KVS_ERR_INVALID_PARAM;
    const kvs__entry_t *e = &s->entries[lease->refs[i].idx];
    if (e->serial != lease->refs[i].serial) {
        status = KVS_ERR_STALE;
    } else if (e->pool == NULL) {
        loc->npieces = 1;
        loc->pieces[0].addr = kvs__arena_slot(s, e);
        loc->pieces[0].len = e->nbytes;
        loc->gen_addr = (void *)kvs__arena_gen(s, e);
    } else if (e->pool->nsegs > loc->npieces) {
        status = KVS_ERR_UNSUPPORTED;
    } else {
        for (size_t k = 0; k < e->pool->nsegs; k++) {
            const kvs_segment_t *sg = &e->pool->segs[k];
            loc->pieces[k].addr = (uint8_t *)sg->base + (size_t)e->block * sg->block_stride;
            loc->pieces[k].len = sg->block_bytes;
        }
        loc->npieces = e->pool->nsegs;
        loc->gen_addr = (void *)&e->pool->gen[e->block];
    }
    if (status == KVS_OK)
        loc->gen = e->gen;
    return status;
}

uint64_t kvs__lease_gen_now(kvs_lease_h lease, size_t i)
{
    kvs__store_t *s = &lease->ctx->store;
    uint64_t gen = UINT64_MAX; /* never equal to a published generation */
    pthread_rwlock_rdlock(&s->lock);
    const kvs__entry_t *e = &s->entries[lease->refs[i].idx];
    if (e->serial == lease->refs[i].serial)
        gen = e->pool != NULL ? atomic_load_explicit(&e->pool->gen[e->block], memory_order_acquire)
                              : atomic_load_explicit(kvs__arena_gen(s, e), memory_order_acquire);
    pthread_rwlock_unlock(&s->lock);
    return gen;
}

size_t kvs_lease_hits(kvs_lease_h lease)
{
    return lease != NULL ? lease->hits : 0;
}

kvs_source_t kvs_lease_source(kvs_lease_h lease)
{
    return lease != NULL ? lease->source : (kvs_source_t)0;
}

void kvs_lease_release(kvs_lease_h lease)
{
    if (lease == NULL)
        return;
    if (lease->remote != NULL)
        kvs__peer_release(lease->ctx->peer, lease->remote, lease->readers);
    else if (lease->holds && lease->hits > 0)
        kvs__store_release(&lease->ctx->store, lease->refs, lease->hits);
    kvs__free(lease->refs);
    kvs__free(lease);
}

/* Copies one leased block into dst's block @db, segment by segment, and
 * checks the source's generation afterwards. Store lock held shared. */
static kvs_status_t copy_block(kvs__store_t *s, const kvs__ref_t *ref, kvs_pool_h dst, uint32_t db,
                               size_t *bytes)
{
    const kvs__entry_t *e = &s->entries[ref->idx];
    if (e->serial != ref->serial)
        return KVS_ERR_STALE; /* evicted after its lease expired */
    const kvs_pool_h src = e->pool;
    const uint8_t *arena_src = src == NULL ? kvs__arena_slot(s, e) : NULL;
    for (size_t i = 0; i < dst->nsegs; i++) {
        const kvs_segment_t *ds = &dst->segs[i];
        uint8_t *d = (uint8_t *)ds->base + (size_t)db * ds->block_stride;
        if (src != NULL) {
            const kvs_segment_t *ss = &src->segs[i];
            memcpy(d, (const uint8_t *)ss->base + (size_t)e->block * ss->block_stride,
                   ds->block_bytes);
        } else {
            memcpy(d, arena_src, ds->block_bytes);
            arena_src += ds->block_bytes;
        }
        *bytes += ds->block_bytes;
    }
    /* The generation is read after the data: if the slot was reused while
     * we copied, the copy is discarded as stale. */
    uint64_t gen = src != NULL ? atomic_load_explicit(&src->gen[e->block], memory_order_acquire)
                               : atomic_load_explicit(kvs__arena_gen(s, e), memory_order_acquire);
    return gen == e->gen ? KVS_OK : KVS_ERR_STALE;
}

/* The destination must have the source's geometry segment by segment. */
static bool same_geometry(const kvs__store_t *s, const kvs__entry_t *e, kvs_pool_h dst)
{
    if (e->pool != NULL) {
        if (e->pool->nsegs != dst->nsegs)
            return false;
        for (size_t i = 0; i < dst->nsegs; i++)
            if (e->pool->segs[i].block_bytes != dst->segs[i].block_bytes)
                return false;
        return true;
    }
    return dst->block_bytes <= kvs__arena_slot_bytes(s, e);
}

kvs_status_t kvs_fetch(kvs_lease_h lease, kvs_pool_h dst, const uint32_t *dst_block_ids,
                       size_t count, const kvs_fetch_params_t *params, kvs_request_h *req_p)
{
    size_t first = 0;
    if (lease == NULL || dst == NULL || req_p == NULL || (count > 0 && dst_block_ids == NULL))
        return KVS_ERR_INVALID_PARAM;
    kvs_ctx_h ctx = lease->ctx;
    if (params != NULL && (params->field_mask & KVS_FETCH_FIELD_FIRST))
        first = params->first;
    if (first > lease->hits || count > lease->hits - first) {
        kvs__error(&ctx->log, "kvs_fetch: blocks %zu..%zu asked, lease covers %zu", first,
                   first + count, lease->hits);
        return KVS_ERR_INVALID_PARAM;
    }
    if (!lease->holds && lease->remote == NULL) {
        kvs__error(&ctx->log, "kvs_fetch: the lookup was a probe (NO_LEASE); nothing to fetch");
        return KVS_ERR_INVALID_PARAM;
    }
    if (dst->ctx != ctx || dst->layout_id != lease->layout_id) {
        kvs__error(&ctx->log, "kvs_fetch: destination layout %016llx, blocks are %016llx",
                   (unsigned long long)dst->layout_id, (unsigned long long)lease->layout_id);
        return KVS_ERR_LAYOUT_MISMATCH;
    }
    for (size_t i = 0; i < count; i++)
        if (dst_block_ids[i] >= dst->num_blocks)
            return KVS_ERR_INVALID_PARAM;
    if (lease->remote != NULL) {
        uint32_t timeout_ms = ctx->cfg.fetch_timeout_ms;
        if (params != NULL && (params->field_mask & KVS_FETCH_FIELD_TIMEOUT_MS) &&
            params->timeout_ms > 0)
            timeout_ms = params->timeout_ms;
        kvs_request_h rreq = kvs__calloc(1, sizeof(*rreq));
        if (rreq == NULL)
            return KVS_ERR_NO_MEMORY;
        kvs_status_t st = kvs__peer_fetch(ctx->peer, lease->remote, dst, dst_block_ids, count,
                                          first, timeout_ms, &rreq->treq);
        if (st != KVS_OK) {
            kvs__free(rreq);
            return st;
        }
        rreq->ctx = ctx;
        rreq->status = KVS_INPROGRESS;
        *req_p = rreq;
        return KVS_OK;
    }
    if (!dst->host_only) {
        kvs__error(&ctx->log, "kvs_fetch: local copies into CUDA memory need the transport");
        return KVS_ERR_UNSUPPORTED;
    }

    kvs_request_h req = kvs__calloc(1, sizeof(*req));
    if (req == NULL)
        return KVS_ERR_NO_MEMORY;
    req->ctx = ctx;

    kvs__store_t *s = &ctx->store;
    kvs_status_t status = KVS_OK;
    size_t bytes = 0;
    pthread_rwlock_rdlock(&s->lock);
    for (size_t i = 0; i < count && status == KVS_OK; i++) {
        const kvs__ref_t *ref = &lease->refs[first + i];
        if (s->entries[ref->idx].serial != ref->serial)
            status = KVS_ERR_STALE; /* gone: force-unpublished, or evicted after expiry */
        else if (!same_geometry(s, &s->entries[ref->idx], dst))
            status = KVS_ERR_LAYOUT_MISMATCH;
        else
            status = copy_block(s, ref, dst, dst_block_ids[i], &bytes);
    }
    pthread_rwlock_unlock(&s->lock);
    if (status != KVS_OK)
        kvs__warn(&ctx->log, "kvs_fetch: %s", kvs_status_string(status));
    atomic_fetch_add_explicit(&ctx->fetched_bytes, bytes, memory_order_relaxed);
    req->status = status;
    *req_p = req;
    return KVS_OK;
}

kvs_status_t kvs_peer_connect(kvs_ctx_h ctx, uint64_t layout_id, const char *peer,
                              const kvs_connect_params_t *params)
{
    if (ctx == NULL || peer == NULL || peer[0] == '\0')
        return KVS_ERR_INVALID_PARAM;
    uint32_t timeout_ms = ctx->cfg.fetch_timeout_ms;
    unsigned flags = 0;
    if (params != NULL) {
        if ((params->field_mask & KVS_CONNECT_FIELD_TIMEOUT_MS) && params->timeout_ms > 0)
            timeout_ms = params->timeout_ms;
        if (params->field_mask & KVS_CONNECT_FIELD_FLAGS)
            flags = params->flags;
    }
    if (flags & ~(unsigned)KVS_CONNECT_BACKGROUND)
        return KVS_ERR_INVALID_PARAM;
    if (ctx->peer == NULL) {
        kvs__error(&ctx->log, "kvs_peer_connect: this build has no transport");
        return KVS_ERR_UNSUPPORTED;
    }
    return kvs__peer_connect(ctx->peer, peer, layout_id, timeout_ms,
                             (flags & KVS_CONNECT_BACKGROUND) != 0);
}

kvs_status_t kvs_put(kvs_pool_h pool, const kvs_key_t *keys, const uint32_t *block_ids,
                     size_t count, kvs_request_h *req_p)
{
    return kvs_put_ex(pool, keys, block_ids, count, NULL, req_p);
}

kvs_status_t kvs_put_ex(kvs_pool_h pool, const kvs_key_t *keys, const uint32_t *block_ids,
                        size_t count, const kvs_put_params_t *params, kvs_request_h *req_p)
{
    if (pool == NULL || req_p == NULL || count == 0 || keys == NULL || block_ids == NULL)
        return KVS_ERR_INVALID_PARAM;
    kvs_ctx_h ctx = pool->ctx;
    uint32_t timeout_ms = ctx->cfg.fetch_timeout_ms;
    if (params != NULL && (params->field_mask & KVS_PUT_FIELD_TIMEOUT_MS) && params->timeout_ms > 0)
        timeout_ms = params->timeout_ms;
    for (size_t i = 0; i < count; i++)
        if (block_ids[i] >= pool->num_blocks)
            return KVS_ERR_INVALID_PARAM;
    if (ctx->peer == NULL || ctx->cfg.pool[0] == '\0') {
        kvs__error(&ctx->log, "kvs_put: no cache pool: set KVSHARE_POOL (and build with UCX)");
        return KVS_ERR_UNSUPPORTED;
    }
    /* CUDA blocks: only a node on this host that maps our allocations can
     * take them (the transport takes no CUDA memory); kvs__peer_put decides,
     * per node, and says why not (KVS_ERR_UNSUPPORTED). */
    char node[300];
    kvs_status_t st = kvs__pool_node_for(ctx, &keys[0], node, sizeof(node));
    if (st != KVS_OK)
        return st;
    kvs_request_h req = kvs__calloc(1, sizeof(*req));
    if (req == NULL)
        return KVS_ERR_NO_MEMORY;
    st = kvs__peer_put(ctx->peer, node, pool, keys, block_ids, count, timeout_ms, &req->treq);
    if (st != KVS_OK) {
        kvs__free(req);
        return st;
    }
    req->ctx = ctx;
    req->status = KVS_INPROGRESS;
    *req_p = req;
    return KVS_OK;
}

kvs_status_t kvs_request_test(kvs_request_h req)
{
    if (req == NULL)
        return KVS_ERR_INVALID_PARAM;
    if (req->treq != NULL && req->status == KVS_INPROGRESS)
        req->status = kvs__peer_req_test(req->ctx->peer, req->treq);
    return req->status;
}

kvs_status_t kvs_request_wait(kvs_request_h req, int timeout_ms)
{
    if (req == NULL)
        return KVS_ERR_INVALID_PARAM;
    if (req->treq != NULL && req->status == KVS_INPROGRESS)
        req->status = kvs__peer_req_wait(req->ctx->peer, req->treq, timeout_ms);
    return req->status; /* local requests are complete when returned */
}

void kvs_request_free(kvs_request_h req)
{
    if (req == NULL)
        return;
    if (req->treq != NULL)
        kvs__peer_req_free(req->ctx->peer, req->treq);
    kvs__free(req);
}

kvs_status_t kvs_lease_heads(kvs_lease_h lease, uint32_t *first_p, uint32_t *count_p)
{
    if (lease == NULL || first_p == NULL || count_p == NULL)
        return KVS_ERR_INVALID_PARAM;
    uint32_t first = 0, count = 0;
    if (lease->hits > 0 &&
        (lease->remote == NULL ||
         !kvs__peer_lease_heads(lease->ctx->peer, lease->remote, &first, &count)))
        count = kvs__ctx_layout_heads(lease->ctx, lease->layout_id);
    *first_p = first;
    *count_p = count;
    return KVS_OK;
}
