/* SPDX-License-Identifier: Apache-2.0 */
/* test_index.c - the holder's shared block index (index.c): what a reader finds, as the writer
 * adds and removes; what a hostile or broken mapping gets (never a read outside it, never a
 * hit it did not show); and a writer and a reader racing. */
#include "index_int.h"
#include "kvs_test.h"

#include <criterion/criterion.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#define LAYOUT 0x1234u

static kvs_key_t key_n(uint64_t n)
{
    kvs_key_t k;
    memset(&k, 0, sizeof(k));
    memcpy(k.bytes, &n, sizeof(n));
    k.bytes[31] = (uint8_t)(n * 7u);
    return k;
}

/* Keys that share their first 8 bytes: one home slot, one probe run. */
static kvs_key_t key_same_home(uint64_t n)
{
    kvs_key_t k = key_n(42);
    memcpy(k.bytes + 8, &n, sizeof(n));
    return k;
}

static kvs__index_loc_t arena_loc(uint64_t n)
{
    return (kvs__index_loc_t){
        .addr = 0x100000u + n * 4096u, .len = 4096, .gen_addr = 0x900000u + n * 8u, .gen = n};
}

static const uint8_t *map_of(const kvs__index_t *ix, size_t *len)
{
    return kvs__index_mem(ix, len);
}

static size_t read_chain(const kvs__index_t *ix, const kvs_key_t *keys, size_t n,
                         kvs__index_hit_t *hits, kvs__index_geo_t *geo, bool *complete,
                         kvs__index_res_t *res_p)
{
    size_t len, got = 99;
    const uint8_t *map = map_of(ix, &len);
    *res_p = kvs__index_read(map, len, LAYOUT, keys, n, hits, geo, &got, complete);
    return got;
}

Test(index, arena_and_pool_blocks_read_back_as_written)
{
    kvs__index_t *ix = kvs__index_new(KVS_INDEX_MIN_SLOTS);
    cr_assert_not_null(ix);
    kvs_key_t keys[6];
    for (uint64_t i = 0; i < 3; i++) {
        keys[i] = key_n(i);
        kvs__index_loc_t loc = arena_loc(i);
        kvs__index_add(ix, LAYOUT, &keys[i], (uint32_t)(10 + i), 100 + i, &loc);
    }
    int pool_id;
    kvs__index_seg_t segs[3] = {
        {0x7000000, 8192, 1024}, {0x8000000, 8192, 2048}, {0x9000000, 4096, 512}};
    for (uint64_t i = 3; i < 5; i++) {
        keys[i] = key_n(i);
        kvs__index_loc_t loc = {.pool = &pool_id,
                                .segs = segs,
                                .nsegs = 3,
                                .block = (uint32_t)(i * 2),
                                .gen_addr = 0xA00000u + i * 8u,
                                .gen = 7};
        kvs__index_add(ix, LAYOUT, &keys[i], (uint32_t)(10 + i), 100 + i, &loc);
    }
    keys[5] = key_n(99); /* never added: the chain ends before it */
    cr_assert_eq(kvs__index_count(ix), 5);
    kvs__index_hit_t hits[6];
    kvs__index_geo_t *geo = calloc(KVS_INDEX_POOLS, sizeof(*geo));
    bool complete = false;
    kvs__index_res_t res;
    size_t got = read_chain(ix, keys, 6, hits, geo, &complete, &res);
    cr_assert_eq(res, KVS_INDEX_READ);
    cr_assert_eq(got, 5);
    cr_assert(complete);
    for (uint64_t i = 0; i < 3; i++) {
        cr_assert_eq(hits[i].pool, KVS_INDEX_ARENA);
        cr_assert_eq(hits[i].addr, 0x100000u + i * 4096u);
        cr_assert_eq(hits[i].len, 4096);
        cr_assert_eq(hits[i].gen_addr, 0x900000u + i * 8u);
        cr_assert_eq(hits[i].gen, i);
        cr_assert_eq(hits[i].idx, 10 + i);
        cr_assert_eq(hits[i].serial, 100 + i);
    }
    for (uint64_t i = 3; i < 5; i++) {
        cr_assert_lt(hits[i].pool, KVS_INDEX_POOLS);
        cr_assert_eq(hits[i].block, i * 2);
        cr_assert_eq(hits[i].gen, 7);
        const kvs__index_geo_t *g = &geo[hits[i].pool];
        cr_assert_eq(g->nsegs, 3);
        for (int k = 0; k < 3; k++) {
            cr_assert_eq(g->seg[k].base, segs[k].base);
            cr_assert_eq(g->seg[k].stride, segs[k].stride);
            cr_assert_eq(g->seg[k].bytes, segs[k].bytes);
        }
    }
    /* Another layout sees none of them. */
    size_t len;
    const uint8_t *map = map_of(ix, &len);
    cr_assert_eq(kvs__index_read(map, len, LAYOUT + 1, keys, 5, hits, geo, &got, &complete),
                 KVS_INDEX_READ);
    cr_assert_eq(got, 0);
    free(geo);
    kvs__index_free(ix);
}

/* Backward-shift deletion inside one probe run: every other member stays
 * findable, the removed one is gone, and adding it again finds it. */
Test(index, deleting_inside_a_probe_run_keeps_the_rest)
{
    kvs__index_t *ix = kvs__index_new(KVS_INDEX_MIN_SLOTS);
    kvs_key_t keys[12];
    for (uint64_t i = 0; i < 12; i++) {
        keys[i] = key_same_home(i);
        kvs__index_loc_t loc = arena_loc(i);
        kvs__index_add(ix, LAYOUT, &keys[i], (uint32_t)i, 1 + i, &loc);
    }
    kvs__index_hit_t hits[12];
    kvs__index_geo_t *geo = calloc(KVS_INDEX_POOLS, sizeof(*geo));
    bool complete;
    kvs__index_res_t res;
    for (uint64_t gone = 0; gone < 12; gone += 5) {
        kvs__index_del(ix, LAYOUT, &keys[gone]);
        for (uint64_t i = 0; i < 12; i++) {
            size_t got = read_chain(ix, &keys[i], 1, hits, geo, &complete, &res);
            cr_assert_eq(res, KVS_INDEX_READ);
            bool removed = i % 5 == 0 && i <= gone;
            cr_assert_eq(got, removed ? 0 : 1, "key %llu after removing %llu",
                         (unsigned long long)i, (unsigned long long)gone);
            if (got == 1)
                cr_assert_eq(hits[0].addr, arena_loc(i).addr);
        }
    }
    kvs__index_loc_t loc = arena_loc(0);
    kvs__index_add(ix, LAYOUT, &keys[0], 0, 77, &loc);
    cr_assert_eq(read_chain(ix, &keys[0], 1, hits, geo, &complete, &res), 1);
    cr_assert_eq(hits[0].serial, 77);
    kvs__index_del(ix, LAYOUT, &keys[50 % 12]); /* absent ones are ignored */
    free(geo);
    kvs__index_free(ix);
}

/* Past half full it leaves blocks out and says so: readers then trust its
 * hits, not its misses. */
Test(index, a_full_index_marks_itself_incomplete)
{
    kvs__index_t *ix = kvs__index_new(KVS_INDEX_MIN_SLOTS);
    for (uint64_t i = 0; i < KVS_INDEX_MIN_SLOTS / 2 + 3; i++) {
        kvs_key_t k = key_n(i);
        kvs__index_loc_t loc = arena_loc(i);
        kvs__index_add(ix, LAYOUT, &k, (uint32_t)i, 1 + i, &loc);
    }
    cr_assert_eq(kvs__index_count(ix), KVS_INDEX_MIN_SLOTS / 2);
    kvs_key_t k0 = key_n(0);
    kvs__index_hit_t hit;
    kvs__index_geo_t *geo = calloc(KVS_INDEX_POOLS, sizeof(*geo));
    bool complete = true;
    kvs__index_res_t res;
    cr_assert_eq(read_chain(ix, &k0, 1, &hit, geo, &complete, &res), 1);
    cr_assert_eq(res, KVS_INDEX_READ);
    cr_assert(!complete);
    free(geo);
    kvs__index_free(ix);
}

/* Pools beyond its records, or with more segments than a record holds, are
 * present but not described: the reader asks the holder. A record is
 * reused once its pool's last entry goes. */
Test(index, pools_it_cannot_describe_send_readers_to_the_holder)
{
    kvs__index_t *ix = kvs__index_new(KVS_INDEX_MIN_SLOTS);
    static int pools[KVS_INDEX_POOLS + 1];
    kvs__index_seg_t seg = {0x10000000, 4096, 4096};
    kvs_key_t keys[KVS_INDEX_POOLS + 1];
    for (uint32_t p = 0; p <= KVS_INDEX_POOLS; p++) {
        keys[p] = key_n(1000 + p);
        kvs__index_loc_t loc = {
            .pool = &pools[p], .segs = &seg, .nsegs = 1, .block = p, .gen_addr = 0x5000, .gen = 1};
        kvs__index_add(ix, LAYOUT, &keys[p], p, 1 + p, &loc);
    }
    kvs__index_hit_t hit;
    kvs__index_geo_t *geo = calloc(KVS_INDEX_POOLS, sizeof(*geo));
    bool complete;
    kvs__index_res_t res;
    read_chain(ix, &keys[0], 1, &hit, geo, &complete, &res);
    cr_assert_eq(res, KVS_INDEX_READ);
    read_chain(ix, &keys[KVS_INDEX_POOLS], 1, &hit, geo, &complete, &res);
    cr_assert_eq(res, KVS_INDEX_UNSURE, "a pool past the records");
    /* Pool 0's only entry goes: its record serves the next new pool. */
    kvs__index_del(ix, LAYOUT, &keys[0]);
    kvs__index_del(ix, LAYOUT, &keys[KVS_INDEX_POOLS]);
    kvs__index_loc_t loc = {.pool = &pools[KVS_INDEX_POOLS],
                            .segs = &seg,
                            .nsegs = 1,
                            .block = 9,
                            .gen_addr = 0x5000,
                            .gen = 1};
    kvs__index_add(ix, LAYOUT, &keys[KVS_INDEX_POOLS], 3, 3, &loc);
    cr_assert_eq(read_chain(ix, &keys[KVS_INDEX_POOLS], 1, &hit, geo, &complete, &res), 1);
    cr_assert_eq(res, KVS_INDEX_READ);
    cr_assert_eq(hit.block, 9);
    /* Too many segments for a record. */
    static int big;
    kvs__index_seg_t *many = calloc(KVS_INDEX_SEGS + 1, sizeof(*many));
    kvs_key_t kb = key_n(5000);
    kvs__index_del(ix, LAYOUT, &keys[1]); /* a free record, so only the count refuses it */
    loc = (kvs__index_loc_t){.pool = &big, .segs = many, .nsegs = KVS_INDEX_SEGS + 1};
    kvs__index_add(ix, LAYOUT, &kb, 4, 4, &loc);
    read_chain(ix, &kb, 1, &hit, geo, &complete, &res);
    cr_assert_eq(res, KVS_INDEX_UNSURE);
    free(many);
    free(geo);
    kvs__index_free(ix);
}

/* A copy of an index, to break. */
static uint8_t *copy_of(const kvs__index_t *ix, size_t *len)
{
    const uint8_t *m = map_of(ix, len);
    uint8_t *c = malloc(*len);
    memcpy(c, m, *len);
    return c;
}

Test(index, a_broken_mapping_is_refused_or_sent_to_the_holder)
{
    kvs__index_t *ix = kvs__index_new(KVS_INDEX_MIN_SLOTS);
    static int pool;
    kvs__index_seg_t seg = {0x10000000, 4096, 4096};
    kvs_key_t k = key_n(1);
    kvs__index_loc_t loc = {
        .pool = &pool, .segs = &seg, .nsegs = 1, .block = 2, .gen_addr = 8, .gen = 1};
    kvs__index_add(ix, LAYOUT, &k, 1, 1, &loc);
    kvs__index_hit_t hit;
    kvs__index_geo_t *geo = calloc(KVS_INDEX_POOLS, sizeof(*geo));
    bool complete;
    size_t len, got;
    uint8_t *m = copy_of(ix, &len);
    cr_assert_eq(kvs__index_read(m, len, LAYOUT, &k, 1, &hit, geo, &got, &complete),
                 KVS_INDEX_READ);
    cr_assert_eq(got, 1);
    /* Shorter than it says, or than a header. */
    cr_assert_eq(kvs__index_read(m, len - 1, LAYOUT, &k, 1, &hit, geo, &got, &complete),
                 KVS_INDEX_BAD);
    cr_assert_eq(kvs__index_read(m, 64, LAYOUT, &k, 1, &hit, geo, &got, &complete), KVS_INDEX_BAD);
    cr_assert_eq(kvs__index_regions(m, 64), UINT64_MAX);
    cr_assert_eq(kvs__index_read(NULL, len, LAYOUT, &k, 1, &hit, geo, &got, &complete),
                 KVS_INDEX_BAD);
    /* Header words one at a time: magic, version, slots (not a power of two, too many). */
    static const struct {
        size_t off;
        uint32_t v;
    } bad[] = {{0, 0x41414141}, {4, 2},  {8, 1000}, {8, KVS_INDEX_MAX_SLOTS * 2},
               {12, 3},         {16, 1}, {20, 64}};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        uint8_t *b = copy_of(ix, &len);
        memcpy(b + bad[i].off, &bad[i].v, 4);
        cr_assert_eq(kvs__index_read(b, len, LAYOUT, &k, 1, &hit, geo, &got, &complete),
                     KVS_INDEX_BAD, "header word at %zu", bad[i].off);
        cr_assert_eq(got, 0);
        free(b);
    }
    /* A writer that never finishes (odd sequence): the holder is asked. */
    uint8_t *b = copy_of(ix, &len);
    b[64] |= 1;
    cr_assert_eq(kvs__index_read(b, len, LAYOUT, &k, 1, &hit, geo, &got, &complete),
                 KVS_INDEX_CHANGING);
    free(b);
    /* Every entry's pool word out of range: refused (the entry is the only one used). */
    b = copy_of(ix, &len);
    for (uint32_t s = 0; s < KVS_INDEX_MIN_SLOTS; s++) {
        uint32_t p = KVS_INDEX_POOLS + 3;
        memcpy(b + KVS_INDEX_ENTS_OFF + (size_t)s * KVS_INDEX_ENT_BYTES + 52, &p, 4);
    }
    cr_assert_eq(kvs__index_read(b, len, LAYOUT, &k, 1, &hit, geo, &got, &complete), KVS_INDEX_BAD);
    free(b);
    /* Its pool record claims too many segments. */
    b = copy_of(ix, &len);
    for (uint32_t p = 0; p < KVS_INDEX_POOLS; p++) {
        uint32_t n = KVS_INDEX_SEGS + 1;
        memcpy(b + KVS_INDEX_HDR_BYTES + (size_t)p * KVS_INDEX_POOL_BYTES, &n, 4);
    }
    cr_assert_neq(kvs__index_read(b, len, LAYOUT, &k, 1, &hit, geo, &got, &complete),
                  KVS_INDEX_READ);
    free(b);
    /* Every slot taken by another key: no run ends, the probe is bounded. */
    b = copy_of(ix, &len);
    for (uint32_t s = 0; s < KVS_INDEX_MIN_SLOTS; s++) {
        uint8_t *e = b + KVS_INDEX_ENTS_OFF + (size_t)s * KVS_INDEX_ENT_BYTES;
        memset(e, 0x77, KVS_INDEX_ENT_BYTES);
    }
    kvs_key_t other = key_n(3);
    cr_assert_eq(kvs__index_read(b, len, LAYOUT, &other, 1, &hit, geo, &got, &complete),
                 KVS_INDEX_UNSURE);
    free(b);
    free(m);
    free(geo);
    kvs__index_free(ix);
}

Test(index, the_region_version_reads_back)
{
    kvs__index_t *ix = kvs__index_new(KVS_INDEX_MIN_SLOTS);
    size_t len;
    const uint8_t *m = map_of(ix, &len);
    cr_assert_eq(kvs__index_regions(m, len), 0);
    kvs__index_set_regions(ix, 41);
    cr_assert_eq(kvs__index_regions(m, len), 41);
    cr_assert_null(kvs__index_new(1000));                    /* not a power of two */
    cr_assert_null(kvs__index_new(KVS_INDEX_MIN_SLOTS / 2)); /* too few */
    kvs__index_free(ix);
    kvs__index_free(NULL);
}

/* One writer adds and removes keys whose entries say which key they are
 * (addr = f(key)); readers never find a key with another key's entry, nor
 * one that was never added. */
static kvs__index_t *race_ix;
static atomic_bool race_stop;

static void *race_writer(void *arg)
{
    (void)arg;
    uint64_t n = 0;
    while (!atomic_load(&race_stop)) {
        uint64_t i = n % 200;
        kvs_key_t k = key_same_home(i % 3 == 0 ? i : i + 1000); /* long runs and short */
        kvs__index_loc_t loc = arena_loc(i % 3 == 0 ? i : i + 1000);
        if ((n / 200) % 2 == 0)
            kvs__index_add(race_ix, LAYOUT, &k, (uint32_t)i, 1 + n, &loc);
        else
            kvs__index_del(race_ix, LAYOUT, &k);
        n++;
    }
    return NULL;
}

Test(index, readers_racing_the_writer_never_see_a_wrong_entry)
{
    race_ix = kvs__index_new(KVS_INDEX_MIN_SLOTS);
    atomic_store(&race_stop, false);
    pthread_t w;
    cr_assert_eq(pthread_create(&w, NULL, race_writer, NULL), 0);
    kvs__index_geo_t *geo = calloc(KVS_INDEX_POOLS, sizeof(*geo));
    size_t len;
    const uint8_t *m = map_of(race_ix, &len);
    uint64_t reads = 0, hits = 0, changing = 0;
    uint64_t t_end = kvs__now_ms() + 300;
    while (kvs__now_ms() < t_end) {
        for (uint64_t i = 0; i < 200; i++) {
            uint64_t id = i % 3 == 0 ? i : i + 1000;
            kvs_key_t k = key_same_home(id);
            kvs__index_hit_t hit;
            size_t got;
            bool complete;
            kvs__index_res_t res =
                kvs__index_read(m, len, LAYOUT, &k, 1, &hit, geo, &got, &complete);
            cr_assert(res == KVS_INDEX_READ || res == KVS_INDEX_CHANGING, "res %d", res);
            reads++;
            changing += res == KVS_INDEX_CHANGING;
            if (res == KVS_INDEX_READ && got == 1) {
                hits++;
                cr_assert_eq(hit.addr, arena_loc(id).addr, "key %llu read with another's entry",
                             (unsigned long long)id);
                cr_assert_eq(hit.gen_addr, arena_loc(id).gen_addr);
            }
        }
    }
    atomic_store(&race_stop, true);
    pthread_join(w, NULL);
    cr_assert_gt(hits, 0, "%llu reads, %llu changing", (unsigned long long)reads,
                 (unsigned long long)changing);
    free(geo);
    kvs__index_free(race_ix);
}
