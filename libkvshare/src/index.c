/* SPDX-License-Identifier: Apache-2.0 */
/* index.c - the holder's block index in shared memory (see index_int.h).
 *
 * Every word is written and read with a relaxed atomic of its own size:
 * readers run in other processes while the writer changes entries, and the
 * sequence counter, not the words, says whether what a reader copied is
 * whole. */
#include "index_int.h"
#include "shm_int.h"

#include <string.h>

/* header offsets */
#define H_MAGIC      0u
#define H_VERSION    4u
#define H_NSLOTS     8u
#define H_POOLS      12u
#define H_SEGS       16u
#define H_ENT_BYTES  20u
#define H_SEQ        64u
#define H_INCOMPLETE 72u
#define H_REGIONS    80u
/* entry offsets */
#define E_LAYOUT   0u
#define E_KEY      8u
#define E_SERIAL   40u
#define E_IDX      48u
#define E_POOL     52u
#define E_ADDR     56u
#define E_LEN      64u
#define E_BLOCK    72u
#define E_GEN_ADDR 80u
#define E_GEN      88u
/* reader: how often it tries again while the writer is busy */
#define READ_TRIES 4
/* reader: the longest probe run it follows (at load <= 1/2 runs are short;
 * a longer one is a hostile or broken index, and the holder is asked) */
#define MAX_PROBES 4096u
/* reader: keys ahead whose first entries are fetched into the cache */
#define PREFETCH 8u

struct kvs__index {
    uint8_t *mem;
    size_t len;
    uint32_t nslots, count;
    uint64_t seq;
    const void *pool_id[KVS_INDEX_POOLS];
    uint32_t pool_refs[KVS_INDEX_POOLS];
};

static void w64(uint8_t *p, uint64_t v)
{
    __atomic_store_n((uint64_t *)(void *)p, v, __ATOMIC_RELAXED);
}
static void w32(uint8_t *p, uint32_t v)
{
    __atomic_store_n((uint32_t *)(void *)p, v, __ATOMIC_RELAXED);
}
static uint64_t r64(const uint8_t *p)
{
    return __atomic_load_n((const uint64_t *)(const void *)p, __ATOMIC_RELAXED);
}
static uint32_t r32(const uint8_t *p)
{
    return __atomic_load_n((const uint32_t *)(const void *)p, __ATOMIC_RELAXED);
}

static uint64_t key_hash(uint64_t layout_id, const uint8_t *key)
{
    uint64_t k;
    memcpy(&k, key, sizeof(k));
    uint64_t h = (k ^ layout_id) * 0x9E3779B97F4A7C15ull;
    return h ^ (h >> 29);
}

static uint8_t *ent(uint8_t *mem, size_t i)
{
    return mem + KVS_INDEX_ENTS_OFF + i * KVS_INDEX_ENT_BYTES;
}
static const uint8_t *cent(const uint8_t *mem, size_t i)
{
    return mem + KVS_INDEX_ENTS_OFF + i * KVS_INDEX_ENT_BYTES;
}
static uint8_t *pool_rec(uint8_t *mem, uint32_t p)
{
    return mem + KVS_INDEX_HDR_BYTES + (size_t)p * KVS_INDEX_POOL_BYTES;
}

/* --- writer ---------------------------------------------------------------- */
kvs__index_t *kvs__index_new(uint32_t nslots)
{
    if (nslots < KVS_INDEX_MIN_SLOTS || nslots > KVS_INDEX_MAX_SLOTS || (nslots & (nslots - 1)))
        return NULL;
    kvs__index_t *ix = kvs__calloc(1, sizeof(*ix));
    if (ix == NULL)
        return NULL;
    ix->len = kvs__index_bytes(nslots);
    ix->mem = kvs__shm_alloc(ix->len, "index");
    if (ix->mem == NULL) {
        kvs__free(ix);
        return NULL;
    }
    ix->nslots = nslots;
    w32(ix->mem + H_MAGIC, KVS_INDEX_MAGIC);
    w32(ix->mem + H_VERSION, KVS_INDEX_VERSION);
    w32(ix->mem + H_NSLOTS, nslots);
    w32(ix->mem + H_POOLS, KVS_INDEX_POOLS);
    w32(ix->mem + H_SEGS, KVS_INDEX_SEGS);
    w32(ix->mem + H_ENT_BYTES, KVS_INDEX_ENT_BYTES);
    return ix;
}

void kvs__index_free(kvs__index_t *ix)
{
    if (ix == NULL)
        return;
    kvs__shm_free(ix->mem);
    kvs__free(ix);
}

const void *kvs__index_mem(const kvs__index_t *ix, size_t *len_p)
{
    *len_p = ix->len;
    return ix->mem;
}

uint32_t kvs__index_count(const kvs__index_t *ix)
{
    return ix->count;
}

void kvs__index_set_regions(kvs__index_t *ix, uint64_t version)
{
    if (ix != NULL)
        __atomic_store_n((uint64_t *)(void *)(ix->mem + H_REGIONS), version, __ATOMIC_RELEASE);
}

uint64_t kvs__index_regions(const uint8_t *map, size_t map_len)
{
    if (map == NULL || map_len < KVS_INDEX_HDR_BYTES)
        return UINT64_MAX;
    return __atomic_load_n((const uint64_t *)(const void *)(map + H_REGIONS), __ATOMIC_ACQUIRE);
}

static void wbegin(kvs__index_t *ix)
{
    __atomic_store_n((uint64_t *)(void *)(ix->mem + H_SEQ), ++ix->seq, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE); /* odd before any word of the change */
}

static void wend(kvs__index_t *ix)
{
    __atomic_store_n((uint64_t *)(void *)(ix->mem + H_SEQ), ++ix->seq, __ATOMIC_RELEASE);
}

static bool ent_is(const uint8_t *e, uint64_t layout_id, const uint8_t *key)
{
    if (r64(e + E_SERIAL) == 0 || r64(e + E_LAYOUT) != layout_id)
        return false;
    for (unsigned w = 0; w < 4; w++) {
        uint64_t k;
        memcpy(&k, key + 8 * w, 8);
        if (r64(e + E_KEY + 8 * w) != k)
            return false;
    }
    return true;
}

/* The slot holding (layout, key), or the empty slot ending its probe run. */
static size_t find(const kvs__index_t *ix, uint64_t layout_id, const uint8_t *key, bool *found_p)
{
    size_t mask = ix->nslots - 1;
    size_t i = key_hash(layout_id, key) & mask;
    for (;;) {
        const uint8_t *e = cent(ix->mem, i);
        if (r64(e + E_SERIAL) == 0) {
            *found_p = false;
            return i;
        }
        if (ent_is(e, layout_id, key)) {
            *found_p = true;
            return i;
        }
        i = (i + 1) & mask; /* load <= 1/2: an empty slot always ends the run */
    }
}

/* The pool record for @loc's pool: found, or taken and filled (inside the
 * caller's write); KVS_INDEX_OPAQUE when it cannot be described. */
static uint32_t pool_for(kvs__index_t *ix, const kvs__index_loc_t *loc)
{
    uint32_t free_p = KVS_INDEX_OPAQUE;
    for (uint32_t p = 0; p < KVS_INDEX_POOLS; p++) {
        if (ix->pool_refs[p] > 0 && ix->pool_id[p] == loc->pool)
            return p;
        if (ix->pool_refs[p] == 0 && free_p == KVS_INDEX_OPAQUE)
            free_p = p;
    }
    if (free_p == KVS_INDEX_OPAQUE || loc->nsegs == 0 || loc->nsegs > KVS_INDEX_SEGS)
        return KVS_INDEX_OPAQUE;
    uint8_t *r = pool_rec(ix->mem, free_p);
    w32(r, (uint32_t)loc->nsegs);
    for (size_t k = 0; k < loc->nsegs; k++) {
        w64(r + 16 + 24 * k, loc->segs[k].base);
        w64(r + 16 + 24 * k + 8, loc->segs[k].stride);
        w64(r + 16 + 24 * k + 16, loc->segs[k].bytes);
    }
    ix->pool_id[free_p] = loc->pool;
    return free_p;
}

static void pool_unref(kvs__index_t *ix, uint32_t p)
{
    if (p < KVS_INDEX_POOLS && ix->pool_refs[p] > 0 && --ix->pool_refs[p] == 0)
        ix->pool_id[p] = NULL;
}

void kvs__index_add(kvs__index_t *ix, uint64_t layout_id, const kvs_key_t *key, uint32_t idx,
                    uint64_t serial, const kvs__index_loc_t *loc)
{
    if (ix == NULL || serial == 0)
        return;
    bool found;
    size_t i = find(ix, layout_id, key->bytes, &found);
    wbegin(ix);
    uint8_t *e = ent(ix->mem, i);
    if (found) {
        pool_unref(ix, r32(e + E_POOL));
    } else if ((size_t)(ix->count + 1) * 2 > ix->nslots) {
        /* Full: this block is left out, and readers stop trusting misses. */
        w32(ix->mem + H_INCOMPLETE, 1);
        wend(ix);
        return;
    } else {
        ix->count++;
    }
    uint32_t pool = KVS_INDEX_ARENA;
    if (loc->pool != NULL) {
        pool = pool_for(ix, loc);
        if (pool != KVS_INDEX_OPAQUE)
            ix->pool_refs[pool]++;
    }
    w64(e + E_LAYOUT, layout_id);
    for (unsigned w = 0; w < 4; w++) {
        uint64_t k;
        memcpy(&k, key->bytes + 8 * w, 8);
        w64(e + E_KEY + 8 * w, k);
    }
    w32(e + E_IDX, idx);
    w32(e + E_POOL, pool);
    w64(e + E_ADDR, loc->pool != NULL ? 0 : loc->addr);
    w64(e + E_LEN, loc->pool != NULL ? 0 : loc->len);
    w32(e + E_BLOCK, loc->block);
    w64(e + E_GEN_ADDR, loc->gen_addr);
    w64(e + E_GEN, loc->gen);
    w64(e + E_SERIAL, serial);
    wend(ix);
}

static void ent_move(uint8_t *to, const uint8_t *from)
{
    for (unsigned w = 0; w < KVS_INDEX_ENT_BYTES / 8; w++)
        w64(to + 8 * w, r64(from + 8 * w));
}

void kvs__index_del(kvs__index_t *ix, uint64_t layout_id, const kvs_key_t *key)
{
    if (ix == NULL)
        return;
    bool found;
    size_t i = find(ix, layout_id, key->bytes, &found);
    if (!found)
        return;
    wbegin(ix);
    pool_unref(ix, r32(ent(ix->mem, i) + E_POOL));
    /* Backward shift, as the store's catalog: later members of the run move
     * into the hole when their home is at or before it. */
    size_t mask = ix->nslots - 1;
    size_t hole = i;
    for (size_t j = (i + 1) & mask; r64(cent(ix->mem, j) + E_SERIAL) != 0; j = (j + 1) & mask) {
        const uint8_t *e = cent(ix->mem, j);
        uint8_t k[KVS_KEY_BYTES];
        for (unsigned w = 0; w < 4; w++) {
            uint64_t v = r64(e + E_KEY + 8 * w);
            memcpy(k + 8 * w, &v, 8);
        }
        size_t h = key_hash(r64(e + E_LAYOUT), k) & mask;
        if (((j - h) & mask) >= ((j - hole) & mask)) {
            ent_move(ent(ix->mem, hole), e);
            hole = j;
        }
    }
    w64(ent(ix->mem, hole) + E_SERIAL, 0);
    ix->count--;
    wend(ix);
}

/* --- reader ---------------------------------------------------------------- */
static kvs__index_res_t read_once(const uint8_t *map, uint32_t nslots, uint64_t layout_id,
                                  const kvs_key_t *keys, size_t n, kvs__index_hit_t *hits,
                                  kvs__index_geo_t *geo, size_t *hits_p)
{
    size_t mask = nslots - 1;
    uint32_t have_geo = 0;
    size_t h = 0;
    /* The holder wrote these lines: each first probe is a miss to another
     * core's cache or to memory. Fetch a few keys ahead, as the store's
     * own lookup does, so that a chain's misses overlap. */
    for (size_t k = 0; k < n && k < PREFETCH; k++) {
        const uint8_t *e = cent(map, key_hash(layout_id, keys[k].bytes) & mask);
        __builtin_prefetch(e);
        __builtin_prefetch(e + KVS_INDEX_ENT_BYTES - 1);
    }
    for (; h < n; h++) {
        const uint8_t *key = keys[h].bytes;
        if (h + PREFETCH < n) {
            const uint8_t *e = cent(map, key_hash(layout_id, keys[h + PREFETCH].bytes) & mask);
            __builtin_prefetch(e);
            __builtin_prefetch(e + KVS_INDEX_ENT_BYTES - 1);
        }
        size_t i = key_hash(layout_id, key) & mask;
        const uint8_t *e = NULL;
        uint32_t probes = 0;
        for (; probes < MAX_PROBES; probes++, i = (i + 1) & mask) {
            const uint8_t *c = cent(map, i);
            if (r64(c + E_SERIAL) == 0)
                break;
            if (ent_is(c, layout_id, key)) {
                e = c;
                break;
            }
        }
        if (e == NULL && probes == MAX_PROBES)
            return KVS_INDEX_UNSURE; /* no honest index has runs this long */
        if (e == NULL)
            break; /* the prefix ends here */
        kvs__index_hit_t *o = &hits[h];
        o->serial = r64(e + E_SERIAL);
        o->idx = r32(e + E_IDX);
        o->pool = r32(e + E_POOL);
        o->addr = r64(e + E_ADDR);
        o->len = r64(e + E_LEN);
        o->block = r32(e + E_BLOCK);
        o->gen_addr = r64(e + E_GEN_ADDR);
        o->gen = r64(e + E_GEN);
        if (o->pool == KVS_INDEX_OPAQUE)
            return KVS_INDEX_UNSURE;
        if (o->pool == KVS_INDEX_ARENA)
            continue;
        if (o->pool >= KVS_INDEX_POOLS)
            return KVS_INDEX_BAD;
        if (!(have_geo & (1u << o->pool))) {
            const uint8_t *r = map + KVS_INDEX_HDR_BYTES + (size_t)o->pool * KVS_INDEX_POOL_BYTES;
            kvs__index_geo_t *g = &geo[o->pool];
            g->nsegs = r32(r);
            if (g->nsegs == 0 || g->nsegs > KVS_INDEX_SEGS)
                return KVS_INDEX_CHANGING; /* a record being rewritten, or garbage */
            for (uint32_t k = 0; k < g->nsegs; k++) {
                g->seg[k].base = r64(r + 16 + 24 * k);
                g->seg[k].stride = r64(r + 16 + 24 * k + 8);
                g->seg[k].bytes = r64(r + 16 + 24 * k + 16);
            }
            have_geo |= 1u << o->pool;
        }
    }
    *hits_p = h;
    return KVS_INDEX_READ;
}

kvs__index_res_t kvs__index_read(const uint8_t *map, size_t map_len, uint64_t layout_id,
                                 const kvs_key_t *keys, size_t n, kvs__index_hit_t *hits,
                                 kvs__index_geo_t *geo, size_t *hits_p, bool *complete_p)
{
    *hits_p = 0;
    *complete_p = false;
    if (map == NULL || map_len < KVS_INDEX_ENTS_OFF || r32(map + H_MAGIC) != KVS_INDEX_MAGIC ||
        r32(map + H_VERSION) != KVS_INDEX_VERSION || r32(map + H_POOLS) != KVS_INDEX_POOLS ||
        r32(map + H_SEGS) != KVS_INDEX_SEGS || r32(map + H_ENT_BYTES) != KVS_INDEX_ENT_BYTES)
        return KVS_INDEX_BAD;
    uint32_t nslots = r32(map + H_NSLOTS);
    if (nslots < KVS_INDEX_MIN_SLOTS || nslots > KVS_INDEX_MAX_SLOTS || (nslots & (nslots - 1)) ||
        kvs__index_bytes(nslots) > map_len)
        return KVS_INDEX_BAD;
    const uint64_t *seqp = (const uint64_t *)(const void *)(map + H_SEQ);
    kvs__index_res_t res = KVS_INDEX_CHANGING;
    for (int t = 0; t < READ_TRIES; t++) {
        uint64_t s1 = __atomic_load_n(seqp, __ATOMIC_ACQUIRE);
        if (s1 & 1)
            continue;
        size_t h = 0;
        res = read_once(map, nslots, layout_id, keys, n, hits, geo, &h);
        bool complete = r32(map + H_INCOMPLETE) == 0;
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (__atomic_load_n(seqp, __ATOMIC_RELAXED) != s1) {
            res = KVS_INDEX_CHANGING;
            continue; /* what was copied may be torn: not even BAD is to be believed */
        }
        if (res == KVS_INDEX_READ) {
            *hits_p = h;
            *complete_p = complete;
        }
        if (res != KVS_INDEX_CHANGING)
            return res;
    }
    return res;
}
