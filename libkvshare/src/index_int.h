/* SPDX-License-Identifier: Apache-2.0 */
/* index_int.h - the holder's block index in shared memory: same-host readers
 * find blocks in it without a round trip.
 *
 * Why: a same-host fetch copies from the holder's mapped memory at memory
 * speed, but every batch still made a LOOKUP round trip (and a RELEASE) to
 * the holder's progress thread, asleep in poll(). On a host whose wake-ups
 * are slow, that round trip cost as much as the copy of 1 MiB. A reader
 * that maps this index finds a chain's blocks itself, copies, and checks
 * each block's generation before and after the copy, as for any mapped
 * read; afterwards it tells the holder what it read with a one-way READ
 * (reads counts for P/D, access times for eviction). No lease is taken: a
 * block evicted or withdrawn during the copy moves its generation, and the
 * reader gets KVS_ERR_STALE, never other bytes (docs/transport.md).
 *
 * Memory (a sealed memfd from kvs__shm_alloc, mapped read-only by readers):
 *   [0, 4096)            header: magic u32 "SIDX" | version u32 | nslots u32 |
 *                        pools u32 | segs u32 | ent_bytes u32; seq u64 at 64;
 *                        incomplete u32 at 72; regions u64 at 80
 *   [4096, ENTS_OFF)     KVS_INDEX_POOLS pool records: nsegs u32 | pad u32 |
 *                        reserved u64 | KVS_INDEX_SEGS x {base, stride, bytes} u64
 *   [ENTS_OFF, ...)      nslots entries of KVS_INDEX_ENT_BYTES (below)
 * Entry: layout_id u64 | key 32 bytes | serial u64 (0: empty) | idx u32 |
 *   pool u32 | addr u64 | len u64 | block u32 | pad u32 | gen_addr u64 | gen u64.
 *   pool < KVS_INDEX_POOLS: the block is block @block of that pool record's
 *   segments (one piece per segment); KVS_INDEX_ARENA: one piece [addr,
 *   addr + len); KVS_INDEX_OPAQUE: present but not described here (the
 *   reader asks the holder). Addresses are the holder's; readers translate
 *   them with the region table they have.
 *
 * Concurrency: one writer (the store's exclusive lock) and one sequence
 * counter for the whole index: odd while a change is being written. A reader
 * copies what it needs between two reads of it and retries when it moved.
 * Linear probing at load <= 1/2 with backward-shift deletion, as the store's
 * catalog: a reader racing a deletion may miss a key (a shorter prefix,
 * which the sequence check then catches anyway), never find a wrong one.
 * An index that could not hold every block says so (incomplete): readers
 * then trust its hits but not its misses.
 *
 * The reader treats the mapping as hostile: every count, pool number and
 * probe is bounded by what the reader computed from the mapping's size,
 * never by the header alone (fuzzed: tests/fuzz/fuzz_index.c). */
#ifndef KVS_INDEX_INT_H
#define KVS_INDEX_INT_H

#include "kvs_int.h"

#define KVS_INDEX_MAGIC      0x58444953u /* "SIDX" */
#define KVS_INDEX_VERSION    1u
#define KVS_INDEX_POOLS      16u
#define KVS_INDEX_SEGS       256u
#define KVS_INDEX_ENT_BYTES  96u
#define KVS_INDEX_HDR_BYTES  4096u
#define KVS_INDEX_POOL_BYTES (16u + KVS_INDEX_SEGS * 24u)
/* Entries start on the page after the pool records. */
#define KVS_INDEX_ENTS_OFF                                                                         \
    ((KVS_INDEX_HDR_BYTES + KVS_INDEX_POOLS * KVS_INDEX_POOL_BYTES + 4095u) & ~(size_t)4095u)
#define KVS_INDEX_ARENA     0xFFFFFFFEu
#define KVS_INDEX_OPAQUE    0xFFFFFFFFu
#define KVS_INDEX_MIN_SLOTS 1024u
#define KVS_INDEX_MAX_SLOTS (1u << 22)

/* Bytes of an index of @nslots entries. */
static inline size_t kvs__index_bytes(uint32_t nslots)
{
    return KVS_INDEX_ENTS_OFF + (size_t)nslots * KVS_INDEX_ENT_BYTES;
}

/* --- writer (the holder) --------------------------------------------------- */
typedef struct kvs__index kvs__index_t;
/* An index of @nslots (a power of two in [KVS_INDEX_MIN_SLOTS,
 * KVS_INDEX_MAX_SLOTS]) entries in shared memory; NULL when out of memory. */
kvs__index_t *kvs__index_new(uint32_t nslots);
void kvs__index_free(kvs__index_t *ix);
/* The shared memory (for the region handover) and its length. */
const void *kvs__index_mem(const kvs__index_t *ix, size_t *len_p);

/* Where a block lives, for kvs__index_add: @pool NULL for one piece at
 * [addr, addr + len); else block @block of @pool (an identity only, never
 * dereferenced), whose @nsegs segments are given by base/stride/bytes. */
typedef struct kvs__index_seg {
    uint64_t base, stride, bytes;
} kvs__index_seg_t;
typedef struct kvs__index_loc {
    const void *pool;
    const kvs__index_seg_t *segs;
    size_t nsegs;
    uint32_t block;
    uint64_t addr, len;
    uint64_t gen_addr, gen;
} kvs__index_loc_t;
/* Adds (layout, key) -> the holder's entry @idx of @serial at @loc. A full
 * index leaves the block out and marks itself incomplete; a pool it cannot
 * describe (too many segments or pools) gets an OPAQUE entry. */
void kvs__index_add(kvs__index_t *ix, uint64_t layout_id, const kvs_key_t *key, uint32_t idx,
                    uint64_t serial, const kvs__index_loc_t *loc);
/* Removes (layout, key); absent keys are ignored. */
void kvs__index_del(kvs__index_t *ix, uint64_t layout_id, const kvs_key_t *key);
uint32_t kvs__index_count(const kvs__index_t *ix);

/* The holder's region table version (peer.c counts each registration and
 * deregistration), written by the peer plane, not the store's writer: a
 * reader resolves the index's addresses with the region table it was last
 * sent, and trusts that only while this is the version it was sent at.
 * Blocks are published after their memory is registered and withdrawn
 * before it is let go, so an entry read between two equal loads of it
 * lies in a region that table has. */
void kvs__index_set_regions(kvs__index_t *ix, uint64_t version);
/* The version in a mapped index (acquire); UINT64_MAX for a mapping too
 * short to hold one. */
uint64_t kvs__index_regions(const uint8_t *map, size_t map_len);

/* --- reader ---------------------------------------------------------------- */
typedef struct kvs__index_hit {
    uint32_t idx;
    uint32_t pool; /* < KVS_INDEX_POOLS or KVS_INDEX_ARENA */
    uint32_t block;
    uint64_t serial;
    uint64_t addr, len;
    uint64_t gen_addr, gen;
} kvs__index_hit_t;
/* A pool record as a reader copied it. */
typedef struct kvs__index_geo {
    uint32_t nsegs;
    kvs__index_seg_t seg[KVS_INDEX_SEGS];
} kvs__index_geo_t;

typedef enum kvs__index_res {
    KVS_INDEX_READ = 0,     /* *hits_p is the prefix the index holds */
    KVS_INDEX_CHANGING = 1, /* the writer kept changing it: ask the holder */
    KVS_INDEX_UNSURE = 2,   /* an entry it does not describe: ask the holder */
    KVS_INDEX_BAD = 3,      /* not an index (header, sizes): stop using it */
} kvs__index_res_t;

/* Reads the longest prefix of @keys (n of them) under @layout_id from the
 * mapped index at @map (@map_len bytes): hits[0 .. *hits_p) with, for each
 * pool they name, geo[pool] copied (@geo holds KVS_INDEX_POOLS records).
 * *complete_p: the index held every block when read (a prefix shorter than
 * @n is then the holder's answer, else only a lower bound). */
kvs__index_res_t kvs__index_read(const uint8_t *map, size_t map_len, uint64_t layout_id,
                                 const kvs_key_t *keys, size_t n, kvs__index_hit_t *hits,
                                 kvs__index_geo_t *geo, size_t *hits_p, bool *complete_p);

#endif
