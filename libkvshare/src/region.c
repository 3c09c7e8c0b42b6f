/* SPDX-License-Identifier: Apache-2.0 */
/* region.c - memory ranges registered once with the context and its transport. */
#include "ctx_int.h"
#include "shm_int.h"

/* Takes @r off the context's list (and out of the count when @counted). */
static void region_unlink(kvs_ctx_h ctx, struct kvs_region *r, bool counted)
{
    pthread_mutex_lock(&ctx->regions_lock);
    for (struct kvs_region **pp = &ctx->regions; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == r) {
            *pp = r->next;
            if (counted)
                ctx->nregions--;
            break;
        }
    }
    pthread_mutex_unlock(&ctx->regions_lock);
}

kvs_status_t kvs_mem_register_ex(kvs_ctx_h ctx, void *base, size_t length,
                                 const kvs_mem_register_params_t *params, kvs_region_h *region_p)
{
    kvs_mem_type_t mem_type = KVS_MEM_HOST;
    if (params != NULL && (params->field_mask & KVS_MEM_REGISTER_FIELD_MEM_TYPE))
        mem_type = params->mem_type;
    return kvs_mem_register(ctx, base, length, mem_type, region_p);
}

kvs_status_t kvs_mem_register(kvs_ctx_h ctx, void *base, size_t length, kvs_mem_type_t mem_type,
                              kvs_region_h *region_p)
{
    kvs_status_t status;
    if (ctx == NULL || base == NULL || length == 0 || region_p == NULL ||
        (mem_type != KVS_MEM_HOST && mem_type != KVS_MEM_CUDA) ||
        (uintptr_t)base + length < (uintptr_t)base)
        return KVS_ERR_INVALID_PARAM;

    struct kvs_region *r = kvs__calloc(1, sizeof(*r));
    if (r == NULL)
        return KVS_ERR_NO_MEMORY;
    r->ctx = ctx;
    r->base = base;
    r->length = length;
    r->mem_type = mem_type;

    /* Lock order: the peer lock before regions_lock (the listener asks the
     * pools which layouts it serves while holding the peer lock), so the
     * transport registration runs with regions_lock released. The range is
     * claimed first, so a concurrent overlapping registration still fails;
     * it counts (kvs_mem_region_count()) once registered. */
    pthread_mutex_lock(&ctx->regions_lock);
    for (struct kvs_region *o = ctx->regions; o != NULL; o = o->next) {
        if (r->base < o->base + o->length && o->base < r->base + length) {
            kvs__error(&ctx->log, "kvs_mem_register(%p, %zu): overlaps region %p+%zu", base, length,
                       (void *)o->base, o->length);
            pthread_mutex_unlock(&ctx->regions_lock);
            kvs__free(r);
            return KVS_ERR_INVALID_PARAM;
        }
    }
    r->next = ctx->regions;
    ctx->regions = r;
    pthread_mutex_unlock(&ctx->regions_lock);
    if (ctx->peer != NULL) {
        status = kvs__peer_mem_reg(ctx->peer, base, length, mem_type, &r->tl_memh);
        if (status != KVS_OK) {
            kvs__error(&ctx->log, "kvs_mem_register(%p, %zu): transport %s: %s", base, length,
                       kvs__peer_transport_name(ctx->peer), kvs_status_string(status));
            region_unlink(ctx, r, false);
            kvs__free(r);
            return status;
        }
    }
    pthread_mutex_lock(&ctx->regions_lock);
    ctx->nregions++;
    pthread_mutex_unlock(&ctx->regions_lock);
    kvs__debug(&ctx->log, "registered %s region %p+%zu", mem_type == KVS_MEM_CUDA ? "cuda" : "host",
               base, length);
    *region_p = r;
    return KVS_OK;
}

void kvs_mem_deregister(kvs_region_h region)
{
    if (region == NULL)
        return;
    kvs_ctx_h ctx = region->ctx;
    region_unlink(ctx, region, true);
    if (ctx->peer != NULL && region->tl_memh != NULL)
        kvs__peer_mem_dereg(ctx->peer, region->tl_memh);
    kvs__free(region);
}

size_t kvs_mem_region_count(kvs_ctx_h ctx)
{
    if (ctx == NULL)
        return 0;
    pthread_mutex_lock(&ctx->regions_lock);
    size_t n = ctx->nregions;
    pthread_mutex_unlock(&ctx->regions_lock);
    return n;
}

kvs_status_t kvs_mem_alloc(kvs_ctx_h ctx, size_t length, kvs_mem_type_t mem_type, void **ptr_p)
{
    if (ctx == NULL || length == 0 || ptr_p == NULL ||
        (mem_type != KVS_MEM_HOST && mem_type != KVS_MEM_CUDA))
        return KVS_ERR_INVALID_PARAM;
    if (mem_type == KVS_MEM_CUDA) {
        kvs__error(&ctx->log, "kvs_mem_alloc(%zu): CUDA memory is not supported yet", length);
        return KVS_ERR_UNSUPPORTED;
    }
    void *p = kvs__shm_alloc(length, "mem");
    if (p == NULL) {
        kvs__error(&ctx->log, "kvs_mem_alloc(%zu): out of memory", length);
        return KVS_ERR_NO_MEMORY;
    }
    *ptr_p = p;
    return KVS_OK;
}

void kvs_mem_free(kvs_ctx_h ctx, void *ptr)
{
    (void)ctx;
    kvs__shm_free(ptr);
}
