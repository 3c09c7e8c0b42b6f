/* SPDX-License-Identifier: Apache-2.0 */
/* store_int.h - the local block store: catalog, host arena, leases, eviction.
 *
 * Concurrency: one pthread rwlock. Lookups hold it shared and touch entries
 * only through atomics (lease counts, access clock, frequency), so any
 * number of threads may look up while one thread publishes or evicts under
 * the exclusive lock. */
#ifndef KVS_STORE_INT_H
#define KVS_STORE_INT_H

#include "config_int.h"

#include <pthread.h>
#include <stdatomic.h>

struct kvs_pool;

typedef struct kvs__entry {
    kvs_key_t key;
    uint64_t layout_id;
    uint64_t serial;       /* unique per insertion; 0 marks a free entry */
    struct kvs_pool *pool; /* zero-copy holder; NULL: in the arena */
    uint32_t block;        /* pool block id, or arena slot */
    uint32_t next_free;
    uint32_t nbytes; /* the block's length (the publishing pool's block) */
    uint64_t gen;    /* the slot's generation when published */
    _Atomic uint32_t leases;
    _Atomic uint32_t freq;
    _Atomic uint64_t atime;
    _Atomic uint64_t lease_deadline_ms;
} kvs__entry_t;

/* What a lease holds per block: enough to find the entry again and to
 * notice that it was replaced (serial) in the meantime. */
typedef struct kvs__ref {
    uint32_t idx;
    uint32_t pad;
    uint64_t serial;
} kvs__ref_t;

typedef struct kvs__slot {
    uint64_t hash;
    uint32_t idx1; /* entry index + 1; 0 = empty */
    uint32_t pad;
} kvs__slot_t;

typedef struct kvs__evict_cand {
    uint64_t score;
    uint32_t idx;
    uint32_t pad;
} kvs__evict_cand_t;

typedef struct kvs__store {
    pthread_rwlock_t lock;
    const kvs__logger_t *log;
    /* catalog: open addressing, linear probing, backward-shift deletion */
    kvs__slot_t *slots;
    size_t nslots; /* power of two, >= 2 * count */
    kvs__entry_t *entries;
    uint32_t entries_cap;
    uint32_t free_head; /* UINT32_MAX: none */
    uint32_t count;
    uint32_t zero_copy_count;
    uint64_t next_serial;
    /* arena of fixed-size slots for copied blocks */
    uint8_t *arena;
    size_t arena_bytes;
    size_t slot_bytes;
    uint32_t arena_slots;
    uint32_t arena_used;
    uint32_t *arena_free; /* stack of free slot numbers */
    uint32_t arena_nfree;
    _Atomic uint64_t *arena_gen;
    kvs__evict_cand_t *cands; /* preallocated: eviction never allocates */
    /* policy */
    kvs_strategy_t strategy;
    uint64_t capacity_bytes;
    double high_wm, low_wm;
    uint32_t lease_timeout_ms;
    /* stats */
    _Atomic uint64_t clock;
    _Atomic uint64_t hits, misses, evictions, published;
    _Atomic uint64_t leased_blocks;
} kvs__store_t;

kvs_status_t kvs__store_init(kvs__store_t *s, const kvs__config_t *cfg, const kvs__logger_t *log);
void kvs__store_fini(kvs__store_t *s);

/* Frees the arena (only while it holds no entries). */
void kvs__store_arena_fini(kvs__store_t *s);
/* Creates the arena (once) with slots of @slot_bytes. */
kvs_status_t kvs__store_arena_init(kvs__store_t *s, size_t slot_bytes);

/* Longest present prefix of @keys under @layout_id. With @refs, leases each
 * hit until @deadline_ms (or release). Returns the hit count. */
size_t kvs__store_find_prefix(kvs__store_t *s, uint64_t layout_id, const kvs_key_t *keys, size_t n,
                              kvs__ref_t *refs, uint64_t deadline_ms);
void kvs__store_release(kvs__store_t *s, const kvs__ref_t *refs, size_t n);

/* Caller holds the lock exclusively for the following. */
kvs__entry_t *kvs__store_get(kvs__store_t *s, uint64_t layout_id, const kvs_key_t *key);
/* Inserts an entry; *entry_p receives it. KVS_ERR_NO_SPACE when an arena
 * slot is needed (pool == NULL) and none can be freed. */
kvs_status_t kvs__store_insert(kvs__store_t *s, uint64_t layout_id, const kvs_key_t *key,
                               struct kvs_pool *pool, uint32_t block, uint64_t gen,
                               kvs__entry_t **entry_p);
void kvs__store_remove(kvs__store_t *s, kvs__entry_t *e);
bool kvs__entry_leased(const kvs__entry_t *e, uint64_t now_ms);
static inline uint8_t *kvs__arena_slot(kvs__store_t *s, uint32_t slot)
{
    return s->arena + (size_t)slot * s->slot_bytes;
}

#endif
