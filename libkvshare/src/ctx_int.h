/* SPDX-License-Identifier: Apache-2.0 */
/* ctx_int.h - the context object: configuration, logger, store, regions, transport. */
#ifndef KVS_CTX_INT_H
#define KVS_CTX_INT_H

#include "store_int.h"
#include "peer_int.h"

struct kvs_region {
    struct kvs_ctx *ctx;
    uint8_t *base;
    size_t length;
    kvs_mem_type_t mem_type;
    void *tl_memh; /* the transport's registration, if any */
    struct kvs_region *next;
};

struct kvs_ctx {
    kvs__config_t cfg;
    pthread_mutex_t arena_lock; /* creating + registering slot classes */
    void *arena_memh[KVS_SLOT_CLASSES_MAX], *arena_gen_memh[KVS_SLOT_CLASSES_MAX];
    struct kvs_pool *pools; /* under regions_lock */
    kvs__logger_t log;
    kvs__store_t store;
    /* Lock order: the peer lock (peer.c) before regions_lock. The listener
     * asks which pools it serves (kvs__ctx_serves_layout() and friends)
     * holding the peer lock, so nothing calls into peer code, which takes
     * the peer lock, while holding regions_lock. */
    pthread_mutex_t regions_lock;
    struct kvs_region *regions;
    size_t nregions;
    _Atomic size_t npools;
    kvs__peer_t *peer; /* NULL: local only */
    _Atomic uint64_t fetched_bytes;
    /* KVSHARE_POOL resolved into nodes ("host:port"), refreshed from DNS */
    pthread_mutex_t pool_lock;
    char (*pool_nodes)[300];
    size_t npool_nodes;
    uint64_t pool_resolved_ms;
};

/* --- what a transport needs to answer peers (lease.c, pool.c) ---------- */
typedef struct kvs__piece_loc {
    void *addr;
    size_t len;
} kvs__piece_loc_t;

typedef struct kvs__block_loc {
    size_t npieces; /* in: capacity of pieces[]; out: pieces used */
    kvs__piece_loc_t *pieces;
    void *gen_addr; /* 8 bytes, little-endian u64 */
    uint64_t gen;
} kvs__block_loc_t;

/* Looks up @keys in the local store and leases the hits (for a peer). */
kvs_status_t kvs__serve_lookup(struct kvs_ctx *ctx, uint64_t layout_id, const kvs_key_t *keys,
                               size_t n, uint32_t lease_ms, kvs_lease_h *lease_p);
/* Counts one read on each block @lease still holds: a remote reader ended
 * it with RELEASE after its fetch, saying @readers would read them in all
 * (0: it did not say); each block keeps the largest such count. */
void kvs__lease_mark_read(kvs_lease_h lease, uint32_t readers);
/* Where hit @i of a local lease lives. KVS_ERR_STALE if it is gone. */
/* A same-host reader's READ (proto_int.h): it copied entries @idx (with
 * @serial, as the holder's mapped index showed them) under @layout_id.
 * Each entry still there counts a read (as a RELEASE would, with @readers)
 * and an access (for eviction), and a hit in the stats. Returns how many
 * counted. */
uint32_t kvs__serve_read(struct kvs_ctx *ctx, uint64_t layout_id, const uint32_t *idx,
                         const uint64_t *serial, uint32_t n, uint32_t readers);
kvs_status_t kvs__lease_locate(kvs_lease_h lease, size_t i, kvs__block_loc_t *loc);
/* The same for many hits: kvs__lease_locate_held() between
 * kvs__lease_hold() and kvs__lease_unhold(), which take and let go of the
 * store's lock (shared) once for all of them (a LOOKUP's reply describes
 * every hit: a lock round per block cost a holder ~1 us per 64 hits). */
void kvs__lease_hold(kvs_lease_h lease);
kvs_status_t kvs__lease_locate_held(kvs_lease_h lease, size_t i, kvs__block_loc_t *loc);
void kvs__lease_unhold(kvs_lease_h lease);
/* The generation hit @i has now (for a pushed block's final check). */
uint64_t kvs__lease_gen_now(kvs_lease_h lease, size_t i);
/* True when a pool of @layout_id exists; else writes the ids served to @list. */
bool kvs__ctx_serves_layout(struct kvs_ctx *ctx, uint64_t layout_id, char *list, size_t len);
const kvs__logger_t *kvs__ctx_log(struct kvs_ctx *ctx);
/* Pool node, pull PUT: reserves up to @n arena slots for blocks of
 * @block_bytes (*got_p of them, with their addresses in @addrs), which the
 * node then fills with GET. Each is published with kvs__publish_slots
 * (all at once, when every byte has landed) or given back with
 * kvs__unreserve_slots; until then no reader can find them. @fresh (may be
 * NULL): per slot, true when its pages may never have been touched (it has
 * held nothing since the arena was made, and the arena was not faulted in
 * at start: KVSHARE_PREFAULT). */
kvs_status_t kvs__reserve_slots(struct kvs_ctx *ctx, size_t block_bytes, uint32_t n,
                                uint32_t *cls_p, uint32_t *slots, uint8_t **addrs, bool *fresh,
                                uint32_t *got_p);
void kvs__unreserve_slots(struct kvs_ctx *ctx, uint32_t cls, const uint32_t *slots, uint32_t n);
kvs_status_t kvs__publish_slots(struct kvs_ctx *ctx, uint64_t layout_id, const kvs_key_t *keys,
                                uint32_t cls, const uint32_t *slots, uint32_t n, size_t block_bytes,
                                size_t *stored_p);
/* Stores @n blocks that arrived from a peer (pool nodes): block i is
 * data + i * block_bytes, keyed keys[i]. Returns how many were stored. */
kvs_status_t kvs__publish_staged(struct kvs_ctx *ctx, uint64_t layout_id, const kvs_key_t *keys,
                                 size_t n, const uint8_t *data, size_t block_bytes,
                                 size_t *stored_p);
/* True when the store already holds @key under @layout_id. */
bool kvs__ctx_has_key(struct kvs_ctx *ctx, uint64_t layout_id, const kvs_key_t *key);
/* The pool node that owns chains starting with @first (rendezvous hashing
 * over KVSHARE_POOL's nodes); writes "host:port" to @out. */
kvs_status_t kvs__pool_node_for(struct kvs_ctx *ctx, const kvs_key_t *first, char *out, size_t len);
/* Index of the node with the highest rendezvous weight for @key. */
size_t kvs__rendezvous(const kvs_key_t *key, const char *const *nodes, size_t n);

#endif
