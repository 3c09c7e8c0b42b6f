/* SPDX-License-Identifier: Apache-2.0 */
/* ctx.c - context life cycle, progress and statistics. */
#include "pool_int.h"

#include <stdio.h>
#include <string.h>

/* "auto" is the first real transport; the in-process loopback ones are
 * only ever chosen by name (tests). */
static const kvs__transport_ops_t *find_transport(const char *name)
{
    for (size_t i = 0; kvs__transports[i] != NULL; i++) {
        const char *tn = kvs__transports[i]->name;
        if (strcmp(name, tn) == 0 || (strcmp(name, "auto") == 0 && strncmp(tn, "loop", 4) != 0))
            return kvs__transports[i];
    }
    return NULL;
}

kvs_status_t kvs_ctx_create(const kvs_ctx_params_t *params, kvs_ctx_h *ctx_p)
{
    char *errbuf = NULL;
    size_t errlen = 0;
    kvs_status_t status;

    if (ctx_p == NULL)
        return KVS_ERR_INVALID_PARAM;
    if (params != NULL && (params->field_mask & KVS_CTX_FIELD_ERRBUF)) {
        errbuf = params->errbuf;
        errlen = params->errbuf_len;
    }
    if (errbuf != NULL && errlen > 0)
        errbuf[0] = '\0';

    kvs_ctx_h ctx = kvs__calloc(1, sizeof(*ctx));
    if (ctx == NULL)
        return KVS_ERR_NO_MEMORY;

    status = kvs__config_resolve(params, &ctx->cfg, errbuf, errlen);
    if (status != KVS_OK)
        goto err_free;
    ctx->log.level = ctx->cfg.log_level;
    ctx->log.fn = kvs__log_default_sink;
    if (params != NULL && (params->field_mask & KVS_CTX_FIELD_LOG_FN) && params->log_fn != NULL) {
        ctx->log.fn = params->log_fn;
        ctx->log.arg = params->log_arg;
    }

    status = kvs__store_init(&ctx->store, &ctx->cfg, &ctx->log);
    if (status != KVS_OK)
        goto err_free;
    if (params != NULL && (params->field_mask & KVS_CTX_FIELD_BLOCK_EVENTS)) {
        ctx->store.event_fn = params->block_event_fn;
        ctx->store.event_arg = params->block_event_arg;
    }
    if (pthread_mutex_init(&ctx->regions_lock, NULL) != 0) {
        status = KVS_ERR_NO_MEMORY;
        goto err_store;
    }

    if (pthread_mutex_init(&ctx->arena_lock, NULL) != 0) {
        status = KVS_ERR_NO_MEMORY;
        goto err_mutex;
    }
    pthread_mutex_init(&ctx->pool_lock, NULL);
    const kvs__transport_ops_t *ops = NULL;
    if (strcmp(ctx->cfg.transport, "none") != 0) {
        ops = find_transport(ctx->cfg.transport);
        if (ops == NULL && strcmp(ctx->cfg.transport, "auto") != 0) {
            status = KVS_ERR_UNSUPPORTED;
            if (errbuf != NULL && errlen > 0)
                snprintf(errbuf, errlen, "KVSHARE_TRANSPORT=%s: not built into this libkvshare",
                         ctx->cfg.transport);
            goto err_arena_lock;
        }
    }
    if (ops == NULL && (ctx->cfg.listen[0] != '\0' || ctx->cfg.pool[0] != '\0')) {
        status = KVS_ERR_UNSUPPORTED;
        if (errbuf != NULL && errlen > 0)
            snprintf(errbuf, errlen,
                     "%s is set but this context has no transport (KVSHARE_TRANSPORT=%s); "
                     "unset it to run local-only",
                     ctx->cfg.listen[0] != '\0' ? "KVSHARE_LISTEN" : "KVSHARE_POOL",
                     ctx->cfg.transport);
        goto err_arena_lock;
    }
    if (ops != NULL) {
        status = kvs__peer_create(ctx, &ctx->cfg, ops, &ctx->peer, errbuf, errlen);
        if (status != KVS_OK)
            goto err_arena_lock;
    }
    if (ctx->cfg.slot_bytes > 0) {
        status = kvs__ctx_arena_ensure(ctx, ctx->cfg.slot_bytes);
        if (status != KVS_OK) {
            if (errbuf != NULL && errlen > 0)
                snprintf(errbuf, errlen, "KVSHARE_SLOT_BYTES=%llu: arena setup failed: %s",
                         (unsigned long long)ctx->cfg.slot_bytes, kvs_status_string(status));
            goto err_tl;
        }
    }
    kvs__info(&ctx->log, "kvshare %s: capacity %llu bytes, strategy %s, progress %s", kvs_version(),
              (unsigned long long)ctx->cfg.capacity_bytes,
              ctx->cfg.strategy == KVS_STRATEGY_LRU ? "lru" : "lfu",
              ctx->cfg.progress == KVS_PROGRESS_THREAD ? "thread" : "poll");
    *ctx_p = ctx;
    return KVS_OK;

err_tl:
    kvs__peer_destroy(ctx->peer);
err_arena_lock:
    pthread_mutex_destroy(&ctx->pool_lock);
    kvs__free(ctx->pool_nodes);
    pthread_mutex_destroy(&ctx->arena_lock);
err_mutex:
    pthread_mutex_destroy(&ctx->regions_lock);
err_store:
    kvs__store_fini(&ctx->store);
err_free:
    if (status != KVS_OK && errbuf != NULL && errlen > 0 && errbuf[0] == '\0')
        snprintf(errbuf, errlen, "kvs_ctx_create: %s", kvs_status_string(status));
    if (params != NULL && (params->field_mask & KVS_CTX_FIELD_LOG_FN) && params->log_fn != NULL &&
        errbuf != NULL && errbuf[0] != '\0')
        params->log_fn(params->log_arg, KVS_LOG_ERROR, errbuf);
    kvs__free(ctx);
    return status;
}

void kvs_ctx_destroy(kvs_ctx_h ctx)
{
    if (ctx == NULL)
        return;
    if (atomic_load(&ctx->npools) != 0)
        kvs__warn(&ctx->log, "kvs_ctx_destroy: %zu pools still exist (they leak)",
                  atomic_load(&ctx->npools));
    /* Regions the caller forgot are dropped with a warning: their memory is
     * the caller's, only our bookkeeping is freed. */
    while (ctx->regions != NULL) {
        struct kvs_region *r = ctx->regions;
        kvs__warn(&ctx->log, "kvs_ctx_destroy: region %p+%zu still registered", (void *)r->base,
                  r->length);
        kvs_mem_deregister(r);
    }
    if (ctx->peer != NULL) {
        /* Peers' leases go first (fini releases them), then our memory. */
        for (uint32_t c = 0; c < ctx->store.narenas; c++) {
            if (ctx->arena_memh[c] != NULL)
                kvs__peer_mem_dereg(ctx->peer, ctx->arena_memh[c]);
            if (ctx->arena_gen_memh[c] != NULL)
                kvs__peer_mem_dereg(ctx->peer, ctx->arena_gen_memh[c]);
            /* Registrations die with the transport's context. */
            ctx->arena_memh[c] = ctx->arena_gen_memh[c] = NULL;
        }
        kvs__peer_destroy(ctx->peer);
        ctx->peer = NULL;
    }
    pthread_mutex_destroy(&ctx->arena_lock);
    pthread_mutex_destroy(&ctx->regions_lock);
    pthread_mutex_destroy(&ctx->pool_lock);
    kvs__free(ctx->pool_nodes);
    kvs__store_fini(&ctx->store);
    kvs__free(ctx);
}

kvs_status_t kvs_ctx_listen_addr(kvs_ctx_h ctx, char *buf, size_t len)
{
    if (ctx == NULL || buf == NULL || len == 0)
        return KVS_ERR_INVALID_PARAM;
    if (ctx->peer == NULL || ctx->cfg.listen[0] == '\0')
        return KVS_ERR_NOT_FOUND;
    return kvs__peer_listen_addr(ctx->peer, buf, len);
}

const kvs__logger_t *kvs__ctx_log(struct kvs_ctx *ctx)
{
    return &ctx->log;
}

bool kvs__ctx_serves_layout(struct kvs_ctx *ctx, uint64_t layout_id, char *list, size_t len)
{
    bool found = ctx->cfg.pool_node; /* a pool node keeps any model's blocks */
    size_t off = 0;
    if (list != NULL && len > 0)
        list[0] = '\0';
    pthread_mutex_lock(&ctx->regions_lock);
    for (struct kvs_pool *p = ctx->pools; p != NULL && !found; p = p->next) {
        found = p->layout_id == layout_id;
        if (list != NULL && off + 20 < len)
            off += (size_t)snprintf(list + off, len - off, "%s%016llx", off ? ", " : "",
                                    (unsigned long long)p->layout_id);
    }
    pthread_mutex_unlock(&ctx->regions_lock);
    return found;
}

int kvs_progress(kvs_ctx_h ctx)
{
    if (ctx == NULL)
        return KVS_ERR_INVALID_PARAM;
    if (ctx->peer == NULL)
        return 0;
    return kvs__peer_progress(ctx->peer);
}

kvs_status_t kvs_progress_ex(kvs_ctx_h ctx, unsigned *events_p)
{
    int n = kvs_progress(ctx);
    if (n < 0)
        return (kvs_status_t)n;
    if (events_p != NULL)
        *events_p = (unsigned)n;
    return KVS_OK;
}

kvs_status_t kvs_stats_query(kvs_ctx_h ctx, kvs_stats_t *st)
{
    if (ctx == NULL || st == NULL)
        return KVS_ERR_INVALID_PARAM;
    kvs__store_t *s = &ctx->store;
    /* No memset of the whole struct: an older caller's may be shorter. */
    st->hits = atomic_load_explicit(&s->hits, memory_order_relaxed);
    st->misses = atomic_load_explicit(&s->misses, memory_order_relaxed);
    st->evictions = atomic_load_explicit(&s->evictions, memory_order_relaxed);
    st->published = atomic_load_explicit(&s->published, memory_order_relaxed);
    st->leased_blocks = atomic_load_explicit(&s->leased_blocks, memory_order_relaxed);
    st->fetched_bytes = atomic_load_explicit(&ctx->fetched_bytes, memory_order_relaxed);
    if (st->field_mask & KVS_STATS_FIELD_PEERS)
        st->peers = ctx->peer != NULL ? kvs__peer_count(ctx->peer) : 0;
    if (st->field_mask & KVS_STATS_FIELD_SHM)
        st->shm_fetched_bytes = ctx->peer != NULL ? kvs__peer_shm_bytes(ctx->peer) : 0;
    if (st->field_mask & KVS_STATS_FIELD_COPY)
        st->shm_helper_bytes = ctx->peer != NULL ? kvs__peer_copy_helped(ctx->peer) : 0;
    if (st->field_mask & KVS_STATS_FIELD_CTL)
        st->ctl_messages = ctx->peer != NULL ? kvs__peer_ctl_messages(ctx->peer) : 0;
    if (st->field_mask & KVS_STATS_FIELD_INDEX) {
        st->index_lookups = st->index_asked = st->index_put_held = 0;
        if (ctx->peer != NULL)
            kvs__peer_index_stats(ctx->peer, &st->index_lookups, &st->index_asked,
                                  &st->index_put_held);
    }
    if (st->field_mask & KVS_STATS_FIELD_PUTS) {
        st->put_pulled_blocks = st->put_pushed_blocks = st->put_fallbacks = 0;
        if (ctx->peer != NULL)
            kvs__peer_put_stats(ctx->peer, &st->put_pulled_blocks, &st->put_pushed_blocks,
                                &st->put_fallbacks);
    }
    pthread_rwlock_rdlock(&s->lock);
    st->blocks = s->count;
    st->zero_copy_blocks = s->zero_copy_count;
    st->bytes = s->arena_used_bytes;
    pthread_rwlock_unlock(&s->lock);
    st->capacity_bytes = ctx->cfg.capacity_bytes;
    return KVS_OK;
}
