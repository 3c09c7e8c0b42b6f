/* SPDX-License-Identifier: Apache-2.0 */
/* store_int.h - the local block store: catalog, host arenas, leases, eviction.
 *
 * Concurrency: one pthread rwlock. Lookups hold it shared and touch entries
 * only through atomics (lease counts, access clock, frequency), so any
 * number of threads may look up while one thread publishes or evicts under
 * the exclusive lock.
 *
 * Slot classes: copied blocks live in arenas of equal slots, one arena per
 * slot size, created on the first block that needs it. Each arena spans the
 * whole capacity (anonymous memory, committed on first touch), so any one
 * size may fill the store; what all arenas hold together is kept between the
 * watermarks of the capacity, evicting in strategy order across classes. */
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
    uint32_t cls;    /* arena entries: the slot class (index into arenas[]) */
    uint64_t gen;    /* the slot's generation when published */
    _Atomic uint32_t leases;
    /* Leases a remote reader ended with RELEASE (not by expiry or a drop):
     * how a producer learns its consumers have read (kvs_pool_reads()). */
    _Atomic uint32_t reads;
    /* The most readers any of those RELEASEs said to expect (0: none said):
     * with reads, when the last of several consumer ranks has read
     * (kvs_pool_readers()). */
    _Atomic uint32_t readers;
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

/* At most this many distinct slot sizes per store (KVSHARE_SLOT_BYTES rounds
 * block sizes up to its multiples, to fold more sizes into fewer classes). */
#define KVS_SLOT_CLASSES_MAX 16

/* One slot class: an arena of fixed-size slots for copied blocks. */
typedef struct kvs__arena {
    uint8_t *base;
    size_t bytes;
    size_t slot_bytes;
    uint32_t nslots;
    uint32_t used;
    uint32_t *free; /* stack of free slot numbers */
    uint32_t nfree;
    _Atomic uint64_t *gen; /* per slot */
} kvs__arena_t;

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
    /* slot classes for copied blocks; entries [0, narenas) are live and
     * never move (a class is only dropped, last, before it holds a block) */
    kvs__arena_t arenas[KVS_SLOT_CLASSES_MAX];
    uint32_t narenas;
    uint64_t arena_used_bytes; /* sum of used * slot_bytes over classes */
    kvs__evict_cand_t *cands;  /* one per slot of every class: eviction never allocates */
    size_t cands_cap;
    bool prefault; /* KVSHARE_PREFAULT: arenas' pages faulted in when made */
    /* policy */
    kvs_strategy_t strategy;
    uint64_t capacity_bytes;
    double high_wm, low_wm;
    uint32_t lease_timeout_ms;
    /* The index same-host readers map (index_int.h); NULL: none. Set once
     * under the exclusive lock, and kept in step by kvs__store_index() and
     * kvs__store_remove(). */
    struct kvs__index *index;
    /* the observer of stores and removals (kvs_ctx_params_t.block_event_fn); NULL: none */
    kvs_block_event_fn event_fn;
    void *event_arg;
    /* stats */
    _Atomic uint64_t clock;
    _Atomic uint64_t hits, misses, evictions, published;
    _Atomic uint64_t leased_blocks;
} kvs__store_t;

kvs_status_t kvs__store_init(kvs__store_t *s, const kvs__config_t *cfg, const kvs__logger_t *log);
void kvs__store_fini(kvs__store_t *s);

/* Frees every arena (only while they hold no entries). */
void kvs__store_arena_fini(kvs__store_t *s);
/* The class of exactly @slot_bytes: found, or created (exclusive lock or no
 * other thread). KVS_ERR_NO_SPACE when the capacity is below one slot or
 * KVS_SLOT_CLASSES_MAX classes exist; NO_MEMORY. */
kvs_status_t kvs__store_class_add(kvs__store_t *s, size_t slot_bytes, uint32_t *cls_p);
/* Undoes the kvs__store_class_add() that created @cls, the last class,
 * before any block went into it. */
void kvs__store_class_drop(kvs__store_t *s, uint32_t cls);
/* kvs__store_class_add() for callers that need no class number. */
kvs_status_t kvs__store_arena_init(kvs__store_t *s, size_t slot_bytes);

/* Longest present prefix of @keys under @layout_id. With @refs, leases each
 * hit until @deadline_ms (or release). Returns the hit count. */
size_t kvs__store_find_prefix(kvs__store_t *s, uint64_t layout_id, const kvs_key_t *keys, size_t n,
                              kvs__ref_t *refs, uint64_t deadline_ms);
void kvs__store_release(kvs__store_t *s, const kvs__ref_t *refs, size_t n);

/* Caller holds the lock exclusively for the following. */
kvs__entry_t *kvs__store_get(kvs__store_t *s, uint64_t layout_id, const kvs_key_t *key);
/* Inserts an entry; *entry_p receives it. With @pool, @block is the pool's
 * block id; without (a copy into an arena), @block is the slot class and
 * the entry gets a free slot of it, evicting first when the store is above
 * its high watermark. KVS_ERR_NO_SPACE when no slot can be freed. */
kvs_status_t kvs__store_insert(kvs__store_t *s, uint64_t layout_id, const kvs_key_t *key,
                               struct kvs_pool *pool, uint32_t block, uint64_t gen,
                               kvs__entry_t **entry_p);
void kvs__store_remove(kvs__store_t *s, kvs__entry_t *e);
/* Shows entry @e to same-host readers through the store's index, if any:
 * called once its bytes are in place and nbytes is set (an insert alone
 * must not: a copy-mode entry is catalogued before its bytes are copied,
 * which local readers cannot see under the lock, but mapped readers would). */
void kvs__store_index(kvs__store_t *s, const kvs__entry_t *e);
/* Gives the store index @ix (exclusive lock held): every entry present is
 * added to it. */
void kvs__store_set_index(kvs__store_t *s, struct kvs__index *ix);
bool kvs__entry_leased(const kvs__entry_t *e, uint64_t now_ms);
/* Slots for blocks still landing (a pull PUT writes into them first):
 * kvs__store_reserve takes up to @n free slots of class @cls, evicting as
 * an insert does, and returns how many it got. Reserved slots count as used
 * but are in no catalog, so no reader can find them; each is then either
 * catalogued (kvs__store_insert_slot) or given back (kvs__store_unreserve,
 * which moves its generation on). Exclusive lock held for all three. */
uint32_t kvs__store_reserve(kvs__store_t *s, uint32_t cls, uint32_t n, uint32_t *slots);
kvs_status_t kvs__store_insert_slot(kvs__store_t *s, uint64_t layout_id, const kvs_key_t *key,
                                    uint32_t cls, uint32_t slot, kvs__entry_t **entry_p);
void kvs__store_unreserve(kvs__store_t *s, uint32_t cls, const uint32_t *slots, uint32_t n);

/* Where an arena entry's bytes, generation and slot size are. */
static inline uint8_t *kvs__arena_slot(kvs__store_t *s, const kvs__entry_t *e)
{
    return s->arenas[e->cls].base + (size_t)e->block * s->arenas[e->cls].slot_bytes;
}
static inline _Atomic uint64_t *kvs__arena_gen(kvs__store_t *s, const kvs__entry_t *e)
{
    return &s->arenas[e->cls].gen[e->block];
}
static inline size_t kvs__arena_slot_bytes(const kvs__store_t *s, const kvs__entry_t *e)
{
    return s->arenas[e->cls].slot_bytes;
}

#endif
