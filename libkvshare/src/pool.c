/* SPDX-License-Identifier: Apache-2.0 */
/* pool.c - pools of engine KV blocks, and publishing them into the store. */
#include "catalog_int.h"
#include "pool_int.h"
#include "shm_int.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

kvs_status_t kvs_pool_create(kvs_ctx_h ctx, const kvs_pool_params_t *params, kvs_pool_h *pool_p)
{
    kvs_status_t status;
    uint64_t layout_id;

    if (ctx == NULL || params == NULL || pool_p == NULL || params->segments == NULL ||
        params->num_segments == 0 || params->num_blocks == 0 || params->layout == NULL)
        return KVS_ERR_INVALID_PARAM;
    status = kvs_layout_id(params->layout, &layout_id);
    if (status != KVS_OK) {
        kvs__error(&ctx->log, "kvs_pool_create: invalid layout (%s)", kvs_status_string(status));
        return status;
    }
    size_t block_bytes = 0;
    bool host_only = true;
    for (size_t i = 0; i < params->num_segments; i++) {
        const kvs_segment_t *sg = &params->segments[i];
        if (sg->base == NULL || sg->block_bytes == 0 || sg->block_stride < sg->block_bytes ||
            (sg->mem_type != KVS_MEM_HOST && sg->mem_type != KVS_MEM_CUDA) ||
            (size_t)params->num_blocks > SIZE_MAX / sg->block_stride) {
            kvs__error(&ctx->log,
                       "kvs_pool_create: segment %zu invalid (base %p, stride %zu, bytes %zu)", i,
                       sg->base, sg->block_stride, sg->block_bytes);
            return KVS_ERR_INVALID_PARAM;
        }
        block_bytes += sg->block_bytes;
        host_only = host_only && sg->mem_type == KVS_MEM_HOST;
    }

    kvs_pool_h pool = kvs__calloc(1, sizeof(*pool));
    if (pool == NULL)
        return KVS_ERR_NO_MEMORY;
    pool->segs = kvs__malloc(params->num_segments * sizeof(*pool->segs));
    if (pool->segs == NULL)
        goto err_nomem;
    memcpy(pool->segs, params->segments, params->num_segments * sizeof(*pool->segs));
    pool->gen = kvs__shm_alloc(params->num_blocks * sizeof(*pool->gen), "pool-gen");
    if (pool->gen == NULL)
        goto err_nomem;
    pool->entry_of_block = kvs__calloc(params->num_blocks, sizeof(*pool->entry_of_block));
    if (pool->entry_of_block == NULL)
        goto err_nomem;
    if ((params->field_mask & KVS_POOL_FIELD_NAME) && params->name != NULL) {
        pool->name = kvs__strdup(params->name);
        if (pool->name == NULL)
            goto err_nomem;
    }
    if (block_bytes > UINT32_MAX) {
        kvs__error(&ctx->log, "kvs_pool_create: %zu bytes per block is more than 4 GiB",
                   block_bytes);
        kvs__free(pool->name);
        goto err_inval;
    }
    pool->ctx = ctx;
    pool->layout_id = layout_id;
    pool->nsegs = params->num_segments;
    pool->num_blocks = params->num_blocks;
    pool->block_bytes = block_bytes;
    pool->host_only = host_only;
    if (kvs__view_from_layout(params->layout, &pool->view) == KVS_OK &&
        block_bytes == kvs__view_block_bytes(&pool->view)) {
        uint64_t plane = kvs__view_plane_bytes(&pool->view), off = 0;
        pool->planable = true;
        for (size_t i = 0; i < pool->nsegs; i++) {
            off += pool->segs[i].block_bytes;
            pool->planable = pool->planable && off % plane == 0;
        }
    }
    /* Register each segment's span and the generations once, so peers can
     * read blocks without any registration on the data path. */
    if (ctx->peer != NULL) {
        pool->seg_memh = kvs__calloc(pool->nsegs, sizeof(*pool->seg_memh));
        if (pool->seg_memh == NULL) {
            kvs__free(pool->name);
            goto err_nomem;
        }
        for (size_t i = 0; i < pool->nsegs; i++) {
            const kvs_segment_t *sg = &pool->segs[i];
            size_t span = (size_t)(pool->num_blocks - 1) * sg->block_stride + sg->block_bytes;
            status = kvs__peer_mem_reg(ctx->peer, sg->base, span, sg->mem_type, &pool->seg_memh[i]);
            if (status != KVS_OK)
                goto err_dereg;
        }
        status =
            kvs__peer_mem_reg(ctx->peer, (void *)pool->gen, pool->num_blocks * sizeof(*pool->gen),
                              KVS_MEM_HOST, &pool->gen_memh);
        if (status != KVS_OK)
            goto err_dereg;
    }
    pthread_mutex_lock(&ctx->regions_lock);
    pool->next = ctx->pools;
    ctx->pools = pool;
    pthread_mutex_unlock(&ctx->regions_lock);
    atomic_fetch_add(&ctx->npools, 1);
    kvs__info(&ctx->log, "pool %s: %u blocks x %zu segments, %zu bytes/block, layout %016llx",
              pool->name ? pool->name : "(unnamed)", pool->num_blocks, pool->nsegs, block_bytes,
              (unsigned long long)layout_id);
    *pool_p = pool;
    return KVS_OK;

err_dereg:
    for (size_t i = 0; i < pool->nsegs; i++)
        if (pool->seg_memh[i] != NULL)
            kvs__peer_mem_dereg(ctx->peer, pool->seg_memh[i]);
    kvs__free(pool->seg_memh);
    kvs__free(pool->name);
    kvs__free(pool->entry_of_block);
    kvs__shm_free((void *)pool->gen);
    kvs__free(pool->segs);
    kvs__free(pool);
    return status;
err_inval:
    status = KVS_ERR_INVALID_PARAM;
    kvs__free(pool->entry_of_block);
    kvs__shm_free((void *)pool->gen);
    kvs__free(pool->segs);
    kvs__free(pool);
    return status;
err_nomem:
    kvs__free(pool->entry_of_block);
    kvs__shm_free((void *)pool->gen);
    kvs__free(pool->segs);
    kvs__free(pool);
    return KVS_ERR_NO_MEMORY;
}

void kvs__pool_forget_block(struct kvs_pool *pool, uint32_t block)
{
    pool->entry_of_block[block] = 0;
    atomic_fetch_add_explicit(&pool->gen[block], 1, memory_order_release);
}

/* Removes the pool's unleased entries (all of them with @force); returns how
 * many leased ones remain. Exclusive lock held. */
static uint32_t drop_entries(kvs_pool_h pool, bool force)
{
    kvs__store_t *s = &pool->ctx->store;
    uint64_t now = kvs__now_ms();
    uint32_t left = 0;
    for (uint32_t b = 0; b < pool->num_blocks; b++) {
        uint32_t e1 = pool->entry_of_block[b];
        if (e1 == 0)
            continue;
        kvs__entry_t *e = &s->entries[e1 - 1];
        if (!force && kvs__entry_leased(e, now))
            left++;
        else
            kvs__store_remove(s, e);
    }
    return left;
}

void kvs_pool_destroy(kvs_pool_h pool)
{
    if (pool == NULL)
        return;
    kvs_ctx_h ctx = pool->ctx;
    kvs__store_t *s = &ctx->store;
    /* Remote readers may be mid-GET on leased blocks: give them until the
     * lease timeout, then pull the blocks anyway (generations bump). */
    uint64_t deadline = kvs__now_ms() + ctx->cfg.lease_timeout_ms;
    for (;;) {
        pthread_rwlock_wrlock(&s->lock);
        bool force = kvs__now_ms() >= deadline;
        uint32_t left = drop_entries(pool, force);
        pthread_rwlock_unlock(&s->lock);
        if (left == 0)
            break;
        if (force)
            break;
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    pthread_mutex_lock(&ctx->regions_lock);
    for (struct kvs_pool **pp = &ctx->pools; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == pool) {
            *pp = pool->next;
            break;
        }
    }
    pthread_mutex_unlock(&ctx->regions_lock);
    if (ctx->peer != NULL) {
        for (size_t i = 0; pool->seg_memh != NULL && i < pool->nsegs; i++)
            if (pool->seg_memh[i] != NULL)
                kvs__peer_mem_dereg(ctx->peer, pool->seg_memh[i]);
        if (pool->gen_memh != NULL)
            kvs__peer_mem_dereg(ctx->peer, pool->gen_memh);
    }
    kvs__free(pool->seg_memh);
    atomic_fetch_sub(&ctx->npools, 1);
    kvs__free(pool->name);
    kvs__free(pool->entry_of_block);
    kvs__shm_free((void *)pool->gen);
    kvs__free(pool->segs);
    kvs__free(pool);
}

uint64_t kvs_pool_layout_id(kvs_pool_h pool)
{
    return pool->layout_id;
}

size_t kvs_pool_block_bytes(kvs_pool_h pool)
{
    return pool->block_bytes;
}

/* The class of exactly @slot_bytes, created and registered on first use.
 * A class appears to publishers only once it is registered: its number is
 * handed out after this returns, and only then do blocks go into it. */
static kvs_status_t arena_class(struct kvs_ctx *ctx, size_t slot_bytes, uint32_t *cls_p)
{
    kvs__store_t *s = &ctx->store;
    kvs_status_t status = KVS_OK;
    uint32_t cls;
    pthread_mutex_lock(&ctx->arena_lock);
    /* Classes are only added or dropped under arena_lock, so this scan
     * needs no store lock. */
    for (cls = 0; cls < s->narenas; cls++)
        if (s->arenas[cls].slot_bytes == slot_bytes)
            goto found;
    pthread_rwlock_wrlock(&s->lock);
    status = kvs__store_class_add(s, slot_bytes, &cls);
    pthread_rwlock_unlock(&s->lock);
    if (status != KVS_OK)
        goto out;
    if (ctx->peer == NULL)
        goto found;
    const kvs__arena_t *a = &s->arenas[cls];
    status = kvs__peer_mem_reg(ctx->peer, a->base, a->bytes, KVS_MEM_HOST, &ctx->arena_memh[cls]);
    if (status == KVS_OK)
        status = kvs__peer_mem_reg(ctx->peer, (void *)a->gen, (size_t)a->nslots * sizeof(*a->gen),
                                   KVS_MEM_HOST, &ctx->arena_gen_memh[cls]);
    if (status != KVS_OK) {
        kvs__error(&ctx->log, "registering the %zu-byte arena of %zu-byte slots: %s", a->bytes,
                   slot_bytes, kvs_status_string(status));
        if (ctx->arena_memh[cls] != NULL)
            kvs__peer_mem_dereg(ctx->peer, ctx->arena_memh[cls]);
        ctx->arena_memh[cls] = NULL;
        pthread_rwlock_wrlock(&s->lock);
        kvs__store_class_drop(s, cls);
        pthread_rwlock_unlock(&s->lock);
        goto out;
    }
found:
    *cls_p = cls;
out:
    pthread_mutex_unlock(&ctx->arena_lock);
    return status;
}

kvs_status_t kvs__ctx_arena_ensure(struct kvs_ctx *ctx, size_t slot_bytes)
{
    uint32_t cls;
    return arena_class(ctx, slot_bytes, &cls);
}

kvs_status_t kvs__ctx_arena_for(struct kvs_ctx *ctx, size_t block_bytes, uint32_t *cls_p)
{
    size_t slot = block_bytes;
    uint64_t g = ctx->cfg.slot_bytes;
    /* KVSHARE_SLOT_BYTES: blocks up to it share its class, larger ones go
     * to classes of its next multiple, so sizes fold into fewer classes. */
    if (g > 0 && g <= SIZE_MAX - block_bytes)
        slot = (block_bytes + (size_t)g - 1) / (size_t)g * (size_t)g;
    return arena_class(ctx, slot, cls_p);
}

static void copy_to_arena(kvs_pool_h pool, uint32_t block, uint8_t *dst)
{
    for (size_t i = 0; i < pool->nsegs; i++) {
        const kvs_segment_t *sg = &pool->segs[i];
        memcpy(dst, (const uint8_t *)sg->base + (size_t)block * sg->block_stride, sg->block_bytes);
        dst += sg->block_bytes;
    }
}

kvs_status_t kvs_publish(kvs_pool_h pool, const kvs_key_t *keys, const uint32_t *block_ids,
                         size_t count, unsigned flags, size_t *published_p)
{
    kvs_status_t status = KVS_OK;
    size_t published = 0;

    if (pool == NULL || (count > 0 && (keys == NULL || block_ids == NULL)) ||
        (flags & ~(unsigned)KVS_PUBLISH_ZERO_COPY))
        return KVS_ERR_INVALID_PARAM;
    kvs_ctx_h ctx = pool->ctx;
    kvs__store_t *s = &ctx->store;
    bool zcopy = flags & KVS_PUBLISH_ZERO_COPY;
    for (size_t i = 0; i < count; i++) {
        if (block_ids[i] >= pool->num_blocks) {
            kvs__error(&ctx->log, "kvs_publish: block id %u out of range (pool has %u)",
                       block_ids[i], pool->num_blocks);
            return KVS_ERR_INVALID_PARAM;
        }
    }
    if (!zcopy && !pool->host_only) {
        kvs__error(&ctx->log, "kvs_publish: copy mode needs host memory; publish CUDA blocks "
                              "with KVS_PUBLISH_ZERO_COPY");
        return KVS_ERR_UNSUPPORTED;
    }

    uint32_t cls = 0;
    if (!zcopy) {
        status = kvs__ctx_arena_for(ctx, pool->block_bytes, &cls);
        if (status != KVS_OK)
            return status;
    }
    pthread_rwlock_wrlock(&s->lock);
    for (size_t i = 0; i < count; i++) {
        uint32_t b = block_ids[i];
        if (kvs__store_get(s, pool->layout_id, &keys[i]) != NULL)
            continue; /* content-addressed: same key, same KV */
        kvs__entry_t *e;
        if (zcopy) {
            uint32_t old = pool->entry_of_block[b];
            if (old != 0) {
                /* The engine refilled a published block without
                 * unpublishing it: the old key's data is gone. */
                kvs__warn(&ctx->log,
                          "kvs_publish: block %u republished without "
                          "kvs_unpublish; dropping its old key",
                          b);
                kvs__store_remove(s, &s->entries[old - 1]);
            }
            status =
                kvs__store_insert(s, pool->layout_id, &keys[i], pool, b,
                                  atomic_load_explicit(&pool->gen[b], memory_order_acquire), &e);
            if (status != KVS_OK)
                goto out;
            pool->entry_of_block[b] = (uint32_t)(e - s->entries) + 1;
            e->nbytes = (uint32_t)pool->block_bytes;
            kvs__store_index(s, e);
        } else {
            status = kvs__store_insert(s, pool->layout_id, &keys[i], NULL, cls, 0, &e);
            if (status != KVS_OK) {
                if (status == KVS_ERR_NO_SPACE)
                    kvs__warn(&ctx->log,
                              "kvs_publish: store full (%llu of %llu bytes held, the rest "
                              "leased); published %zu of %zu",
                              (unsigned long long)s->arena_used_bytes,
                              (unsigned long long)s->capacity_bytes, published, count);
                goto out;
            }
            copy_to_arena(pool, b, kvs__arena_slot(s, e));
            e->nbytes = (uint32_t)pool->block_bytes;
            kvs__store_index(s, e); /* its bytes are in place */
        }
        published++;
    }
out:
    pthread_rwlock_unlock(&s->lock);
    /* A failing call writes no output, even NO_SPACE after a partial batch. */
    if (published_p != NULL && status == KVS_OK)
        *published_p = published;
    return status;
}

kvs_status_t kvs_unpublish(kvs_pool_h pool, const uint32_t *block_ids, size_t count, unsigned flags)
{
    if (pool == NULL || (count > 0 && block_ids == NULL) ||
        (flags & ~(unsigned)KVS_UNPUBLISH_FORCE))
        return KVS_ERR_INVALID_PARAM;
    for (size_t i = 0; i < count; i++)
        if (block_ids[i] >= pool->num_blocks)
            return KVS_ERR_INVALID_PARAM;
    kvs__store_t *s = &pool->ctx->store;
    uint64_t now = kvs__now_ms();
    pthread_rwlock_wrlock(&s->lock);
    if (!(flags & KVS_UNPUBLISH_FORCE)) {
        for (size_t i = 0; i < count; i++) {
            uint32_t e1 = pool->entry_of_block[block_ids[i]];
            if (e1 != 0 && kvs__entry_leased(&s->entries[e1 - 1], now)) {
                pthread_rwlock_unlock(&s->lock);
                return KVS_ERR_BUSY;
            }
        }
    }
    for (size_t i = 0; i < count; i++) {
        uint32_t b = block_ids[i];
        uint32_t e1 = pool->entry_of_block[b];
        if (e1 != 0)
            kvs__store_remove(s, &s->entries[e1 - 1]);
        else
            atomic_fetch_add_explicit(&pool->gen[b], 1, memory_order_release);
    }
    pthread_rwlock_unlock(&s->lock);
    /* The caller overwrites the blocks next, and same-host readers read them without a
     * lock (a seqlock): the new generations must be visible before any of those stores,
     * which the release above does not order on weakly ordered CPUs. */
    atomic_thread_fence(memory_order_seq_cst);
    return KVS_OK;
}

kvs_status_t kvs_pool_reads(kvs_pool_h pool, const uint32_t *block_ids, size_t count,
                            uint32_t *reads)
{
    return kvs_pool_readers(pool, block_ids, count, reads, NULL);
}

kvs_status_t kvs_pool_readers(kvs_pool_h pool, const uint32_t *block_ids, size_t count,
                              uint32_t *reads, uint32_t *expected)
{
    if (pool == NULL || (count > 0 && (block_ids == NULL || reads == NULL)))
        return KVS_ERR_INVALID_PARAM;
    for (size_t i = 0; i < count; i++)
        if (block_ids[i] >= pool->num_blocks)
            return KVS_ERR_INVALID_PARAM;
    kvs__store_t *s = &pool->ctx->store;
    pthread_rwlock_rdlock(&s->lock);
    for (size_t i = 0; i < count; i++) {
        uint32_t e1 = pool->entry_of_block[block_ids[i]];
        kvs__entry_t *e = e1 == 0 ? NULL : &s->entries[e1 - 1];
        /* reads with acquire: the count a reader announced is stored before
         * its read is counted (kvs__lease_mark_read). */
        reads[i] = e == NULL ? 0 : atomic_load_explicit(&e->reads, memory_order_acquire);
        if (expected != NULL)
            expected[i] = e == NULL ? 0 : atomic_load_explicit(&e->readers, memory_order_relaxed);
    }
    pthread_rwlock_unlock(&s->lock);
    return KVS_OK;
}

bool kvs__ctx_has_key(struct kvs_ctx *ctx, uint64_t layout_id, const kvs_key_t *key)
{
    kvs__store_t *s = &ctx->store;
    pthread_rwlock_rdlock(&s->lock);
    bool has = kvs__store_get(s, layout_id, key) != NULL;
    pthread_rwlock_unlock(&s->lock);
    return has;
}

kvs_status_t kvs__publish_staged(struct kvs_ctx *ctx, uint64_t layout_id, const kvs_key_t *keys,
                                 size_t n, const uint8_t *data, size_t block_bytes,
                                 size_t *stored_p)
{
    kvs__store_t *s = &ctx->store;
    size_t stored = 0;
    uint32_t cls;
    if (block_bytes == 0 || block_bytes > UINT32_MAX) {
        kvs__error(&ctx->log, "pool node: refusing blocks of %zu bytes (1 byte to 4 GiB)",
                   block_bytes);
        return KVS_ERR_INVALID_PARAM;
    }
    /* Each block size gets its own slot class: a node keeps blocks of every
     * model and layout it is sent, side by side. */
    kvs_status_t status = kvs__ctx_arena_for(ctx, block_bytes, &cls);
    if (status != KVS_OK)
        return status;
    pthread_rwlock_wrlock(&s->lock);
    for (size_t i = 0; i < n; i++) {
        if (kvs__store_get(s, layout_id, &keys[i]) != NULL)
            continue; /* stored meanwhile by another client: same key, same KV */
        kvs__entry_t *e;
        status = kvs__store_insert(s, layout_id, &keys[i], NULL, cls, 0, &e);
        if (status != KVS_OK)
            break;
        memcpy(kvs__arena_slot(s, e), data + i * block_bytes, block_bytes);
        e->nbytes = (uint32_t)block_bytes;
        kvs__store_index(s, e);
        stored++;
    }
    pthread_rwlock_unlock(&s->lock);
    *stored_p = stored;
    return status;
}

kvs_status_t kvs__reserve_slots(struct kvs_ctx *ctx, size_t block_bytes, uint32_t n,
                                uint32_t *cls_p, uint32_t *slots, uint8_t **addrs, bool *fresh,
                                uint32_t *got_p)
{
    kvs__store_t *s = &ctx->store;
    uint32_t cls;
    if (block_bytes == 0 || block_bytes > UINT32_MAX)
        return KVS_ERR_INVALID_PARAM;
    kvs_status_t status = kvs__ctx_arena_for(ctx, block_bytes, &cls);
    if (status != KVS_OK)
        return status;
    pthread_rwlock_wrlock(&s->lock);
    uint32_t got = kvs__store_reserve(s, cls, n, slots);
    const kvs__arena_t *a = &s->arenas[cls];
    for (uint32_t i = 0; i < got; i++) {
        addrs[i] = a->base + (size_t)slots[i] * a->slot_bytes;
        /* A slot's generation moves each time it is given back, and the
         * arena never returns pages: one that moved was written before. */
        if (fresh != NULL)
            fresh[i] =
                !s->prefault && atomic_load_explicit(&a->gen[slots[i]], memory_order_relaxed) == 0;
    }
    pthread_rwlock_unlock(&s->lock);
    *cls_p = cls;
    *got_p = got;
    return KVS_OK;
}

void kvs__unreserve_slots(struct kvs_ctx *ctx, uint32_t cls, const uint32_t *slots, uint32_t n)
{
    kvs__store_t *s = &ctx->store;
    pthread_rwlock_wrlock(&s->lock);
    kvs__store_unreserve(s, cls, slots, n);
    pthread_rwlock_unlock(&s->lock);
}

kvs_status_t kvs__publish_slots(struct kvs_ctx *ctx, uint64_t layout_id, const kvs_key_t *keys,
                                uint32_t cls, const uint32_t *slots, uint32_t n, size_t block_bytes,
                                size_t *stored_p)
{
    kvs__store_t *s = &ctx->store;
    kvs_status_t status = KVS_OK;
    size_t stored = 0;
    pthread_rwlock_wrlock(&s->lock);
    for (uint32_t i = 0; i < n; i++) {
        kvs__entry_t *e = NULL;
        /* A key stored meanwhile by another client keeps its copy (same key,
         * same KV); a catalog that cannot grow stores fewer. Either way the
         * slot goes back. */
        if (status == KVS_OK && kvs__store_get(s, layout_id, &keys[i]) == NULL)
            status = kvs__store_insert_slot(s, layout_id, &keys[i], cls, slots[i], &e);
        if (e == NULL) {
            kvs__store_unreserve(s, cls, &slots[i], 1);
            continue;
        }
        e->nbytes = (uint32_t)block_bytes;
        kvs__store_index(s, e);
        stored++;
    }
    pthread_rwlock_unlock(&s->lock);
    *stored_p = stored;
    return status;
}

static struct kvs_pool *pool_of(struct kvs_ctx *ctx, uint64_t layout_id)
{
    struct kvs_pool *p = ctx->pools;
    while (p != NULL && p->layout_id != layout_id)
        p = p->next;
    return p;
}

bool kvs__ctx_view_of(struct kvs_ctx *ctx, uint64_t layout_id, kvs__view_t *v)
{
    pthread_mutex_lock(&ctx->regions_lock);
    struct kvs_pool *p = pool_of(ctx, layout_id);
    bool ok = p != NULL && p->planable;
    if (ok)
        *v = p->view;
    pthread_mutex_unlock(&ctx->regions_lock);
    return ok;
}

bool kvs__ctx_find_model(struct kvs_ctx *ctx, uint64_t model, uint64_t *layout_id_p)
{
    pthread_mutex_lock(&ctx->regions_lock);
    struct kvs_pool *p = ctx->pools;
    while (p != NULL && !(p->planable && p->view.model == model))
        p = p->next;
    if (p != NULL)
        *layout_id_p = p->layout_id;
    pthread_mutex_unlock(&ctx->regions_lock);
    return p != NULL;
}

uint32_t kvs__ctx_layout_heads(struct kvs_ctx *ctx, uint64_t layout_id)
{
    pthread_mutex_lock(&ctx->regions_lock);
    struct kvs_pool *p = pool_of(ctx, layout_id);
    uint32_t heads = p != NULL ? p->view.heads : 0;
    pthread_mutex_unlock(&ctx->regions_lock);
    return heads;
}
