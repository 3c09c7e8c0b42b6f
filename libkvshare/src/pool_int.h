/* SPDX-License-Identifier: Apache-2.0 */
/* pool_int.h - a pool: the engine's KV memory as segments of same-numbered blocks. */
#ifndef KVS_POOL_INT_H
#define KVS_POOL_INT_H

#include "ctx_int.h"
#include "plan_int.h"

struct kvs_pool {
    struct kvs_ctx *ctx;
    uint64_t layout_id;
    kvs_segment_t *segs;
    size_t nsegs;
    uint32_t num_blocks;
    size_t block_bytes; /* sum over segments */
    bool host_only;
    char *name;
    _Atomic uint64_t *gen;    /* per block id */
    uint32_t *entry_of_block; /* store entry + 1 for published blocks; store lock */
    void **seg_memh;          /* transport registration per segment */
    void *gen_memh;
    kvs__view_t view;      /* the layout, for plans across views */
    bool planable;         /* segments cut each block into whole K/V planes */
    struct kvs_pool *next; /* ctx->pools, under ctx->regions_lock */
};

/* Creates and registers the arena of @slot_bytes slots once (no store lock
 * held): KVSHARE_SLOT_BYTES's class is made at start this way. */
kvs_status_t kvs__ctx_arena_ensure(struct kvs_ctx *ctx, size_t slot_bytes);
/* The slot class for blocks of @block_bytes (their size, rounded up to a
 * multiple of KVSHARE_SLOT_BYTES when set), created and registered on first
 * use. No store lock held. Errors: NO_SPACE (capacity below one slot, or
 * KVS_SLOT_CLASSES_MAX sizes already), NO_MEMORY, the transport's. */
kvs_status_t kvs__ctx_arena_for(struct kvs_ctx *ctx, size_t block_bytes, uint32_t *cls_p);

/* The view of a pool of @layout_id whose blocks can be planned (see
 * kvs_layout_t); false when there is none. */
bool kvs__ctx_view_of(struct kvs_ctx *ctx, uint64_t layout_id, kvs__view_t *v);
/* The layout id of a plannable pool of @model (kvs_model_id); false if none. */
bool kvs__ctx_find_model(struct kvs_ctx *ctx, uint64_t model, uint64_t *layout_id_p);
/* KV heads per block of the pool of @layout_id (0: no such pool). */
uint32_t kvs__ctx_layout_heads(struct kvs_ctx *ctx, uint64_t layout_id);

/* Called by the store (exclusive lock) when a zero-copy entry goes away. */
void kvs__pool_forget_block(struct kvs_pool *pool, uint32_t block);

#endif
