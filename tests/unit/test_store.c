/* SPDX-License-Identifier: Apache-2.0 */
/* test_store.c - the local store through the public API: publish, lookup, lease, fetch, evict. */
#include "kvs_test.h"

#include <criterion/criterion.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SEG  32
#define NSEG 2
#define BLK  (SEG * NSEG)

static size_t hits_of(kvs_ctx_h ctx, uint64_t layout, const kvs_key_t *keys, size_t n)
{
    kvs_lease_h l;
    cr_assert_eq(kvs_lookup(ctx, layout, keys, n, NULL, &l), KVS_OK);
    size_t h = kvs_lease_hits(l);
    kvs_lease_release(l);
    return h;
}

static bool present(kvs_ctx_h ctx, uint64_t layout, uint64_t keyno)
{
    kvs_key_t k = test_key(keyno);
    return hits_of(ctx, layout, &k, 1) == 1;
}

static void publish_one(test_pool_t *tp, uint64_t keyno, uint32_t block, unsigned flags)
{
    kvs_key_t k = test_key(keyno);
    test_fill_block(tp, block, keyno);
    size_t n = 99;
    cr_assert_eq(kvs_publish(tp->pool, &k, &block, 1, flags, &n), KVS_OK);
    cr_assert_eq(n, 1);
}

Test(store, copy_publish_then_fetch_returns_original_bytes)
{
    kvs_ctx_h ctx = test_ctx(1 << 20, KVS_STRATEGY_LRU, 0.9, 0.8);
    test_pool_t src, dst;
    test_pool_init(&src, ctx, "m", 8, NSEG, SEG);
    test_pool_init(&dst, ctx, "m", 8, NSEG, SEG);
    kvs_key_t keys[4];
    uint32_t ids[4] = {5, 1, 6, 2};
    for (int i = 0; i < 4; i++) {
        keys[i] = test_key((uint64_t)i);
        test_fill_block(&src, ids[i], (uint64_t)i);
    }
    size_t n;
    cr_assert_eq(kvs_publish(src.pool, keys, ids, 4, 0, &n), KVS_OK);
    cr_assert_eq(n, 4);
    /* Copy mode: the engine may reuse its blocks at once. */
    memset(src.mem, 0xee, NSEG * 8 * SEG);
    kvs_lease_h l;
    cr_assert_eq(kvs_lookup(ctx, kvs_pool_layout_id(src.pool), keys, 4, NULL, &l), KVS_OK);
    cr_assert_eq(kvs_lease_hits(l), 4);
    cr_assert_eq(kvs_lease_source(l), KVS_SOURCE_LOCAL);
    uint32_t dids[4] = {0, 3, 4, 7};
    kvs_request_h r;
    cr_assert_eq(kvs_fetch(l, dst.pool, dids, 4, NULL, &r), KVS_OK);
    cr_assert_eq(kvs_request_wait(r, -1), KVS_OK);
    kvs_request_free(r);
    for (int i = 0; i < 4; i++)
        cr_assert(test_block_is(&dst, dids[i], (uint64_t)i), "block %d content", i);
    kvs_lease_release(l);
    kvs_stats_t st;
    cr_assert_eq(kvs_stats_query(ctx, &st), KVS_OK);
    cr_assert_eq(st.blocks, 4);
    cr_assert_eq(st.bytes, 4 * BLK);
    cr_assert_eq(st.hits, 4);
    cr_assert_eq(st.fetched_bytes, 4 * BLK);
    cr_assert_eq(st.leased_blocks, 0);
    test_pool_free(&src);
    test_pool_free(&dst);
    kvs_ctx_destroy(ctx);
}

Test(store, longest_prefix_stops_at_first_miss)
{
    kvs_ctx_h ctx = test_ctx(1 << 20, KVS_STRATEGY_LRU, 0.9, 0.8);
    test_pool_t p;
    test_pool_init(&p, ctx, "m", 16, NSEG, SEG);
    for (uint32_t i = 0; i < 6; i++)
        if (i != 3)
            publish_one(&p, i, i, KVS_PUBLISH_ZERO_COPY);
    kvs_key_t chain[6];
    for (int i = 0; i < 6; i++)
        chain[i] = test_key((uint64_t)i);
    cr_assert_eq(hits_of(ctx, kvs_pool_layout_id(p.pool), chain, 6), 3);
    cr_assert_eq(hits_of(ctx, kvs_pool_layout_id(p.pool), chain + 4, 2), 2);
    cr_assert_eq(hits_of(ctx, kvs_pool_layout_id(p.pool), chain, 0), 0);
    kvs_stats_t st;
    kvs_stats_query(ctx, &st);
    cr_assert_eq(st.misses, 1);
    cr_assert_eq(st.zero_copy_blocks, 5);
    cr_assert_eq(st.bytes, 0, "zero-copy blocks use no arena");
    test_pool_free(&p);
    kvs_ctx_destroy(ctx);
}

Test(store, layout_mismatch_is_a_miss_and_fetch_refuses_other_layouts)
{
    kvs_ctx_h ctx = test_ctx(1 << 20, KVS_STRATEGY_LRU, 0.9, 0.8);
    test_pool_t a, b;
    test_pool_init(&a, ctx, "model-a", 4, NSEG, SEG);
    test_pool_init(&b, ctx, "model-b", 4, NSEG, SEG);
    cr_assert_neq(kvs_pool_layout_id(a.pool), kvs_pool_layout_id(b.pool));
    publish_one(&a, 1, 0, 0);
    kvs_key_t k = test_key(1);
    cr_assert_eq(hits_of(ctx, kvs_pool_layout_id(b.pool), &k, 1), 0, "other layout: miss");
    kvs_lease_h l;
    cr_assert_eq(kvs_lookup(ctx, kvs_pool_layout_id(a.pool), &k, 1, NULL, &l), KVS_OK);
    kvs_request_h r = (kvs_request_h)0x1;
    uint32_t d = 0;
    cr_assert_eq(kvs_fetch(l, b.pool, &d, 1, NULL, &r), KVS_ERR_LAYOUT_MISMATCH);
    cr_assert_eq(r, (kvs_request_h)0x1);
    /* Same key under both layouts: two distinct entries. */
    publish_one(&b, 1, 0, 0);
    kvs_stats_t st;
    kvs_stats_query(ctx, &st);
    cr_assert_eq(st.blocks, 2);
    kvs_lease_release(l);
    test_pool_free(&a);
    test_pool_free(&b);
    kvs_ctx_destroy(ctx);
}

static void eviction_fixture(kvs_strategy_t strategy, kvs_ctx_h *ctx, test_pool_t *p)
{
    /* 10 arena slots; high 0.9 -> evict when the 10th arrives, down to 5. */
    *ctx = test_ctx(10 * BLK, strategy, 0.9, 0.5);
    test_pool_init(p, *ctx, "m", 32, NSEG, SEG);
    for (uint32_t i = 0; i < 9; i++)
        publish_one(p, i, i, 0);
}

Test(store, lru_evicts_least_recently_used_down_to_low_watermark)
{
    kvs_ctx_h ctx;
    test_pool_t p;
    eviction_fixture(KVS_STRATEGY_LRU, &ctx, &p);
    uint64_t lay = kvs_pool_layout_id(p.pool);
    /* Touch 0..3 and 8: then 4..7 are the least recently used. */
    for (uint64_t k = 0; k < 4; k++)
        cr_assert(present(ctx, lay, k));
    cr_assert(present(ctx, lay, 8));
    publish_one(&p, 9, 9, 0);
    for (uint64_t k = 4; k < 8; k++)
        cr_assert(!present(ctx, lay, k), "key %llu should be evicted", (unsigned long long)k);
    for (uint64_t k = 0; k < 4; k++)
        cr_assert(present(ctx, lay, k), "key %llu should stay", (unsigned long long)k);
    cr_assert(present(ctx, lay, 8));
    cr_assert(present(ctx, lay, 9));
    kvs_stats_t st;
    kvs_stats_query(ctx, &st);
    cr_assert_eq(st.evictions, 4);
    cr_assert_eq(st.blocks, 6);
    test_pool_free(&p);
    kvs_ctx_destroy(ctx);
}

Test(store, lfu_evicts_least_frequently_used)
{
    kvs_ctx_h ctx;
    test_pool_t p;
    eviction_fixture(KVS_STRATEGY_LFU, &ctx, &p);
    uint64_t lay = kvs_pool_layout_id(p.pool);
    /* Keys 5..8 used 3 times, 0 used twice, the rest never: 1..4 go first. */
    for (int rep = 0; rep < 3; rep++)
        for (uint64_t k = 5; k < 9; k++)
            present(ctx, lay, k);
    present(ctx, lay, 0);
    present(ctx, lay, 0);
    publish_one(&p, 9, 9, 0);
    for (uint64_t k = 1; k < 5; k++)
        cr_assert(!present(ctx, lay, k), "key %llu should be evicted", (unsigned long long)k);
    cr_assert(present(ctx, lay, 0));
    for (uint64_t k = 5; k < 10; k++)
        cr_assert(present(ctx, lay, k), "key %llu should stay", (unsigned long long)k);
    test_pool_free(&p);
    kvs_ctx_destroy(ctx);
}

Test(store, leased_blocks_survive_eviction_and_full_store_says_no_space)
{
    kvs_ctx_h ctx;
    test_pool_t p;
    eviction_fixture(KVS_STRATEGY_LRU, &ctx, &p);
    uint64_t lay = kvs_pool_layout_id(p.pool);
    kvs_key_t all[10];
    for (int i = 0; i < 10; i++)
        all[i] = test_key((uint64_t)i);
    kvs_lease_h l, l9;
    cr_assert_eq(kvs_lookup(ctx, lay, all, 9, NULL, &l), KVS_OK);
    cr_assert_eq(kvs_lease_hits(l), 9);
    /* The 10th goes in the last free slot (nothing unleased to evict)... */
    publish_one(&p, 9, 9, 0);
    cr_assert_eq(kvs_lookup(ctx, lay, &all[9], 1, NULL, &l9), KVS_OK);
    cr_assert_eq(kvs_lease_hits(l9), 1);
    /* ...and the 11th finds only leased blocks. */
    kvs_key_t k10 = test_key(10);
    uint32_t b10 = 10;
    size_t n = 99;
    kvs_status_t st10 = kvs_publish(p.pool, &k10, &b10, 1, 0, &n);
    cr_assert_eq(st10, KVS_ERR_NO_SPACE, "%s", kvs_status_string(st10));
    cr_assert_eq(n, 0);
    for (uint64_t k = 0; k < 10; k++)
        cr_assert(present(ctx, lay, k), "nothing stored may be lost");
    /* The leased data is intact: fetch and compare. */
    test_pool_t dst;
    test_pool_init(&dst, ctx, "m", 9, NSEG, SEG);
    uint32_t ids[9] = {0, 1, 2, 3, 4, 5, 6, 7, 8};
    kvs_request_h r;
    cr_assert_eq(kvs_fetch(l, dst.pool, ids, 9, NULL, &r), KVS_OK);
    cr_assert_eq(kvs_request_test(r), KVS_OK);
    kvs_request_free(r);
    for (uint32_t i = 0; i < 9; i++)
        cr_assert(test_block_is(&dst, i, i));
    kvs_lease_release(l);
    kvs_lease_release(l9);
    /* Released: now eviction can make room. */
    cr_assert_eq(kvs_publish(p.pool, &k10, &b10, 1, 0, &n), KVS_OK);
    cr_assert_eq(n, 1);
    test_pool_free(&dst);
    test_pool_free(&p);
    kvs_ctx_destroy(ctx);
}

Test(store, expired_lease_no_longer_pins)
{
    kvs_ctx_h ctx;
    test_pool_t p;
    eviction_fixture(KVS_STRATEGY_LRU, &ctx, &p);
    uint64_t lay = kvs_pool_layout_id(p.pool);
    kvs_key_t all[9];
    for (int i = 0; i < 9; i++)
        all[i] = test_key((uint64_t)i);
    kvs_lookup_params_t lp = {.field_mask = KVS_LOOKUP_FIELD_LEASE_MS, .lease_ms = 1};
    kvs_lease_h l;
    cr_assert_eq(kvs_lookup(ctx, lay, all, 9, &lp, &l), KVS_OK);
    publish_one(&p, 9, 9, 0);
    /* Wait for the lease's deadline itself (2 ms of monotonic time). */
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    do
        clock_gettime(CLOCK_MONOTONIC, &t);
    while ((t.tv_sec - t0.tv_sec) * 1000000000L + (t.tv_nsec - t0.tv_nsec) < 3000000L);
    kvs_key_t k10 = test_key(10);
    uint32_t b10 = 10;
    cr_assert_eq(kvs_publish(p.pool, &k10, &b10, 1, 0, NULL), KVS_OK);
    /* The expired lease's blocks were evicted: fetching them is stale, never wrong. */
    test_pool_t dst;
    test_pool_init(&dst, ctx, "m", 9, NSEG, SEG);
    uint32_t ids[9] = {0, 1, 2, 3, 4, 5, 6, 7, 8};
    kvs_request_h r;
    cr_assert_eq(kvs_fetch(l, dst.pool, ids, 9, NULL, &r), KVS_OK);
    cr_assert_eq(kvs_request_test(r), KVS_ERR_STALE);
    kvs_request_free(r);
    kvs_lease_release(l); /* releasing after eviction is harmless */
    test_pool_free(&dst);
    test_pool_free(&p);
    kvs_ctx_destroy(ctx);
}

Test(store, capacity_edges)
{
    /* Exactly 3 slots, high 1.0: three fit without eviction. */
    kvs_ctx_h ctx = test_ctx(3 * BLK, KVS_STRATEGY_LRU, 1.0, 0.5);
    test_pool_t p;
    test_pool_init(&p, ctx, "m", 8, NSEG, SEG);
    for (uint32_t i = 0; i < 3; i++)
        publish_one(&p, i, i, 0);
    kvs_stats_t st;
    kvs_stats_query(ctx, &st);
    cr_assert_eq(st.evictions, 0);
    cr_assert_eq(st.bytes, 3 * BLK);
    publish_one(&p, 3, 3, 0);
    kvs_stats_query(ctx, &st);
    cr_assert_gt(st.evictions, 0);
    cr_assert_leq(st.bytes, 3 * BLK);
    test_pool_free(&p);
    kvs_ctx_destroy(ctx);

    /* A capacity below one block: publishing says no space, clearly. */
    ctx = test_ctx(BLK - 1, KVS_STRATEGY_LRU, 0.9, 0.8);
    test_pool_init(&p, ctx, "m", 8, NSEG, SEG);
    kvs_key_t k = test_key(1);
    uint32_t b = 0;
    cr_assert_eq(kvs_publish(p.pool, &k, &b, 1, 0, NULL), KVS_ERR_NO_SPACE);
    /* Zero-copy needs no arena and still works. */
    cr_assert_eq(kvs_publish(p.pool, &k, &b, 1, KVS_PUBLISH_ZERO_COPY, NULL), KVS_OK);
    test_pool_free(&p);
    kvs_ctx_destroy(ctx);
}

Test(store, duplicates_are_skipped_and_bad_block_ids_refused)
{
    kvs_ctx_h ctx = test_ctx(1 << 20, KVS_STRATEGY_LRU, 0.9, 0.8);
    test_pool_t p;
    test_pool_init(&p, ctx, "m", 4, NSEG, SEG);
    kvs_key_t k[2] = {test_key(1), test_key(1)};
    uint32_t ids[2] = {0, 1};
    size_t n;
    cr_assert_eq(kvs_publish(p.pool, k, ids, 2, 0, &n), KVS_OK);
    cr_assert_eq(n, 1, "the same key twice is stored once");
    uint32_t bad = 4;
    n = 77;
    cr_assert_eq(kvs_publish(p.pool, k, &bad, 1, 0, &n), KVS_ERR_INVALID_PARAM);
    cr_assert_eq(n, 77);
    cr_assert_eq(kvs_publish(p.pool, k, ids, 1, 0x80, &n), KVS_ERR_INVALID_PARAM);
    test_pool_free(&p);
    kvs_ctx_destroy(ctx);
}

Test(store, zero_copy_generations_unpublish_and_stale_reads)
{
    kvs_ctx_h ctx = test_ctx(1 << 20, KVS_STRATEGY_LRU, 0.9, 0.8);
    test_pool_t p, dst;
    test_pool_init(&p, ctx, "m", 4, NSEG, SEG);
    test_pool_init(&dst, ctx, "m", 4, NSEG, SEG);
    uint64_t lay = kvs_pool_layout_id(p.pool);
    publish_one(&p, 1, 2, KVS_PUBLISH_ZERO_COPY);
    kvs_key_t k = test_key(1);
    kvs_lease_h l;
    cr_assert_eq(kvs_lookup(ctx, lay, &k, 1, NULL, &l), KVS_OK);
    uint32_t b = 2, d = 0;
    /* Leased: a polite unpublish is refused and changes nothing. */
    cr_assert_eq(kvs_unpublish(p.pool, &b, 1, 0), KVS_ERR_BUSY);
    cr_assert(present(ctx, lay, 1));
    /* Forced: the generation moves, so the reader gets STALE, not new data. */
    cr_assert_eq(kvs_unpublish(p.pool, &b, 1, KVS_UNPUBLISH_FORCE), KVS_OK);
    test_fill_block(&p, 2, 99); /* the engine reuses the block */
    kvs_request_h r;
    cr_assert_eq(kvs_fetch(l, dst.pool, &d, 1, NULL, &r), KVS_OK);
    kvs_status_t fst = kvs_request_test(r);
    cr_assert_eq(fst, KVS_ERR_STALE, "%s", kvs_status_string(fst));
    kvs_request_free(r);
    kvs_lease_release(l);
    cr_assert(!present(ctx, lay, 1));

    /* Publish, fetch zero-copy data, unpublish unleased, republish. */
    publish_one(&p, 5, 2, KVS_PUBLISH_ZERO_COPY);
    k = test_key(5);
    cr_assert_eq(kvs_lookup(ctx, lay, &k, 1, NULL, &l), KVS_OK);
    cr_assert_eq(kvs_fetch(l, dst.pool, &d, 1, NULL, &r), KVS_OK);
    cr_assert_eq(kvs_request_test(r), KVS_OK);
    cr_assert(test_block_is(&dst, 0, 5));
    kvs_request_free(r);
    kvs_lease_release(l);
    cr_assert_eq(kvs_unpublish(p.pool, &b, 1, 0), KVS_OK);
    cr_assert(!present(ctx, lay, 5));
    /* Republishing a block without unpublishing drops its old key. */
    publish_one(&p, 6, 2, KVS_PUBLISH_ZERO_COPY);
    publish_one(&p, 7, 2, KVS_PUBLISH_ZERO_COPY);
    cr_assert(!present(ctx, lay, 6));
    cr_assert(present(ctx, lay, 7));
    test_pool_free(&p);
    test_pool_free(&dst);
    kvs_ctx_destroy(ctx);
}

Test(store, fetch_argument_errors_write_nothing)
{
    kvs_ctx_h ctx = test_ctx(1 << 20, KVS_STRATEGY_LRU, 0.9, 0.8);
    test_pool_t p;
    test_pool_init(&p, ctx, "m", 4, NSEG, SEG);
    publish_one(&p, 1, 0, 0);
    kvs_key_t k = test_key(1);
    kvs_lease_h l;
    cr_assert_eq(kvs_lookup(ctx, kvs_pool_layout_id(p.pool), &k, 1, NULL, &l), KVS_OK);
    kvs_request_h r = (kvs_request_h)0x1;
    uint32_t ids[2] = {0, 1}, bad = 9;
    cr_assert_eq(kvs_fetch(l, p.pool, ids, 2, NULL, &r), KVS_ERR_INVALID_PARAM, "beyond hits");
    cr_assert_eq(kvs_fetch(l, p.pool, &bad, 1, NULL, &r), KVS_ERR_INVALID_PARAM, "bad block");
    kvs_fetch_params_t fp = {.field_mask = KVS_FETCH_FIELD_FIRST, .first = 1};
    cr_assert_eq(kvs_fetch(l, p.pool, ids, 1, &fp, &r), KVS_ERR_INVALID_PARAM, "first+count");
    cr_assert_eq(r, (kvs_request_h)0x1);
    kvs_lease_release(l);
    /* A probe holds nothing and cannot be fetched from. */
    kvs_lookup_params_t lp = {.field_mask = KVS_LOOKUP_FIELD_NO_LEASE};
    cr_assert_eq(kvs_lookup(ctx, kvs_pool_layout_id(p.pool), &k, 1, &lp, &l), KVS_OK);
    cr_assert_eq(kvs_lease_hits(l), 1);
    cr_assert_eq(kvs_fetch(l, p.pool, ids, 1, NULL, &r), KVS_ERR_INVALID_PARAM);
    kvs_lease_release(l);
    /* Remote features without a transport say so. */
    kvs_request_h pr = NULL;
    cr_assert_eq(kvs_put(p.pool, &k, ids, 1, &pr), KVS_ERR_UNSUPPORTED);
    kvs_lookup_params_t peer = {.field_mask = KVS_LOOKUP_FIELD_SOURCES | KVS_LOOKUP_FIELD_PEER,
                                .sources = KVS_SOURCE_PEER,
                                .peer = "127.0.0.1:1"};
    cr_assert_eq(kvs_lookup(ctx, kvs_pool_layout_id(p.pool), &k, 1, &peer, &l),
                 KVS_ERR_UNSUPPORTED);
    peer.sources = KVS_SOURCE_LOCAL | KVS_SOURCE_PEER;
    cr_assert_eq(kvs_lookup(ctx, kvs_pool_layout_id(p.pool), &k, 1, &peer, &l), KVS_ERR_UNSUPPORTED,
                 "a named peer is never silently skipped");
    test_pool_free(&p);
    kvs_ctx_destroy(ctx);
}

Test(store, regions_register_and_refuse_overlap)
{
    kvs_ctx_h ctx = test_ctx(1 << 20, KVS_STRATEGY_LRU, 0.9, 0.8);
    static uint8_t mem[4096];
    kvs_region_h a, b, c = (kvs_region_h)0x1;
    cr_assert_eq(kvs_mem_register(ctx, mem, 1024, KVS_MEM_HOST, &a), KVS_OK);
    cr_assert_eq(kvs_mem_register(ctx, mem + 1024, 1024, KVS_MEM_CUDA, &b), KVS_OK);
    cr_assert_eq(kvs_mem_register(ctx, mem + 1000, 100, KVS_MEM_HOST, &c), KVS_ERR_INVALID_PARAM);
    cr_assert_eq(c, (kvs_region_h)0x1);
    cr_assert_eq(kvs_mem_region_count(ctx), 2);
    kvs_mem_deregister(a);
    cr_assert_eq(kvs_mem_region_count(ctx), 1);
    kvs_mem_deregister(b);
    kvs_mem_deregister(NULL);
    cr_assert_eq(kvs_mem_region_count(ctx), 0);
    kvs_ctx_destroy(ctx);
}

/* Readers look up and fetch while one writer publishes and evicts. Every
 * block's bytes derive from its key, so a wrong block is caught. */
typedef struct conc {
    kvs_ctx_h ctx;
    uint64_t layout;
    atomic_bool stop;
    atomic_ulong bad;
    atomic_ulong fetched;
} conc_t;

static void *reader(void *arg)
{
    conc_t *c = arg;
    test_pool_t dst;
    test_pool_init(&dst, c->ctx, "m", 8, NSEG, SEG);
    uint64_t x = (uint64_t)(uintptr_t)&dst;
    while (!atomic_load(&c->stop)) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        uint64_t first = (x >> 33) % 2000;
        kvs_key_t keys[8];
        for (int i = 0; i < 8; i++)
            keys[i] = test_key(first + (uint64_t)i);
        kvs_lease_h l;
        if (kvs_lookup(c->ctx, c->layout, keys, 8, NULL, &l) != KVS_OK) {
            atomic_fetch_add(&c->bad, 1);
            continue;
        }
        size_t h = kvs_lease_hits(l);
        uint32_t ids[8] = {0, 1, 2, 3, 4, 5, 6, 7};
        kvs_request_h r;
        if (h > 0 && kvs_fetch(l, dst.pool, ids, h, NULL, &r) == KVS_OK) {
            if (kvs_request_test(r) == KVS_OK) {
                for (size_t i = 0; i < h; i++)
                    if (!test_block_is(&dst, (uint32_t)i, first + i))
                        atomic_fetch_add(&c->bad, 1);
                atomic_fetch_add(&c->fetched, h);
            }
            kvs_request_free(r);
        }
        kvs_lease_release(l);
    }
    test_pool_free(&dst);
    return NULL;
}

Test(store, concurrent_lookups_with_one_publisher_never_see_wrong_data, .timeout = 120)
{
    conc_t c = {.ctx = test_ctx(200 * BLK, KVS_STRATEGY_LRU, 0.9, 0.7)};
    test_pool_t src;
    test_pool_init(&src, c.ctx, "m", 64, NSEG, SEG);
    c.layout = kvs_pool_layout_id(src.pool);
    pthread_t th[4];
    for (int i = 0; i < 4; i++)
        cr_assert_eq(pthread_create(&th[i], NULL, reader, &c), 0);
    for (uint64_t round = 0; round < 20000; round++) {
        uint64_t keyno = round % 2000;
        uint32_t b = (uint32_t)(round % 64);
        kvs_key_t k = test_key(keyno);
        test_fill_block(&src, b, keyno);
        kvs_status_t st = kvs_publish(src.pool, &k, &b, 1, 0, NULL);
        cr_assert(st == KVS_OK || st == KVS_ERR_NO_SPACE, "%s", kvs_status_string(st));
    }
    atomic_store(&c.stop, true);
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    cr_assert_eq(atomic_load(&c.bad), 0, "readers saw wrong or failed data");
    kvs_stats_t st;
    kvs_stats_query(c.ctx, &st);
    cr_assert_gt(st.evictions, 0, "the writer must have evicted");
    cr_assert_eq(st.leased_blocks, 0);
    test_pool_free(&src);
    kvs_ctx_destroy(c.ctx);
}
