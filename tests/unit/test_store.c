/* SPDX-License-Identifier: Apache-2.0 */
/* test_store.c - the local store through the public API: publish, lookup, lease, fetch, evict. */
#include "ctx_int.h"
#include "kvs_test.h"

#include <criterion/criterion.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
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

/* Many candidates (the store selects the ones a batch takes before putting
 * them in order): exactly the least used go, whatever order they were
 * stored and used in. */
Test(store, eviction_of_many_takes_exactly_the_least_used)
{
    enum { SLOTS = 400, STORED = 360 }; /* high 0.9: the 361st evicts, down to 0.5 */
    kvs_ctx_h ctx = test_ctx(SLOTS * BLK, KVS_STRATEGY_LFU, 0.9, 0.5);
    test_pool_t p;
    test_pool_init(&p, ctx, "m", STORED + 1, NSEG, SEG);
    uint64_t lay = kvs_pool_layout_id(p.pool);
    uint32_t uses[STORED];
    for (uint32_t i = 0; i < STORED; i++)
        uses[i] = i;
    uint64_t x = 0x9e3779b97f4a7c15ull; /* a fixed shuffle: key k is used uses[k] times */
    for (uint32_t i = STORED - 1; i > 0; i--) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        uint32_t j = (uint32_t)((x >> 33) % (i + 1)), t = uses[i];
        uses[i] = uses[j];
        uses[j] = t;
    }
    for (uint32_t k = 0; k < STORED; k++)
        publish_one(&p, k, k, 0);
    for (uint32_t k = 0; k < STORED; k++)
        for (uint32_t u = 0; u < uses[k]; u++)
            cr_assert(present(ctx, lay, k));
    publish_one(&p, 100000, STORED, 0); /* 360 -> 200 slots: 160 go */
    kvs_stats_t st;
    kvs_stats_query(ctx, &st);
    cr_assert_eq(st.evictions, 160, "360 -> 200 of 400 slots: %llu",
                 (unsigned long long)st.evictions);
    for (uint32_t k = 0; k < STORED; k++)
        cr_assert_eq(present(ctx, lay, k), uses[k] >= 160, "key %u, used %u times", k, uses[k]);
    cr_assert(present(ctx, lay, 100000));
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
    cr_assert_eq(n, 99, "a failing call writes no output");
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
    cr_assert_eq(kvs_put_ex(p.pool, &k, ids, 1, NULL, &pr), KVS_ERR_UNSUPPORTED);
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
    kvs_mem_register_params_t cuda = {.field_mask = KVS_MEM_REGISTER_FIELD_MEM_TYPE,
                                      .mem_type = KVS_MEM_CUDA};
    cr_assert_eq(kvs_mem_register_ex(ctx, mem, 1024, NULL, &a), KVS_OK);
    cr_assert_eq(kvs_mem_register_ex(ctx, mem + 1024, 1024, &cuda, &b), KVS_OK);
    cr_assert_eq(kvs_mem_register_ex(ctx, mem + 1000, 100, NULL, &c), KVS_ERR_INVALID_PARAM);
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

/* --- slot classes: blocks of several sizes in one store --------------- */

#define BIG_SEG 128
#define BIG     (BIG_SEG * NSEG) /* 4 * BLK */

static kvs_ctx_h classes_ctx(uint64_t capacity, uint64_t slot_bytes, double high, double low)
{
    kvs_ctx_params_t p = {.field_mask = KVS_CTX_FIELD_NO_ENV | KVS_CTX_FIELD_CAPACITY |
                                        KVS_CTX_FIELD_WATERMARKS | KVS_CTX_FIELD_TRANSPORT |
                                        (slot_bytes ? KVS_CTX_FIELD_SLOT_BYTES : 0),
                          .transport = "none",
                          .capacity_bytes = capacity,
                          .slot_bytes = slot_bytes,
                          .high_watermark = high,
                          .low_watermark = low};
    kvs_ctx_h ctx = NULL;
    cr_assert_eq(kvs_ctx_create(&p, &ctx), KVS_OK);
    return ctx;
}

/* Looks up key @keyno in @src's layout, fetches it into block 0 of @dst and
 * checks its bytes. */
static bool fetch_is(kvs_ctx_h ctx, const test_pool_t *src, test_pool_t *dst, uint64_t keyno)
{
    kvs_key_t k = test_key(keyno);
    kvs_lease_h l;
    cr_assert_eq(kvs_lookup(ctx, kvs_pool_layout_id(src->pool), &k, 1, NULL, &l), KVS_OK);
    bool ok = false;
    if (kvs_lease_hits(l) == 1) {
        memset(dst->mem, 0, dst->nsegs * dst->nblocks * dst->seg_bytes);
        uint32_t d = 0;
        kvs_request_h r;
        cr_assert_eq(kvs_fetch(l, dst->pool, &d, 1, NULL, &r), KVS_OK);
        ok = kvs_request_wait(r, -1) == KVS_OK && test_block_is(dst, 0, keyno);
        kvs_request_free(r);
    }
    kvs_lease_release(l);
    return ok;
}

Test(store, small_then_big_then_small_blocks_all_stay_retrievable)
{
    kvs_ctx_h ctx = test_ctx(1 << 20, KVS_STRATEGY_LRU, 0.9, 0.8);
    test_pool_t small, big, dsmall, dbig;
    test_pool_init(&small, ctx, "small-model", 16, NSEG, SEG);
    test_pool_init(&big, ctx, "big-model", 16, NSEG, BIG_SEG);
    test_pool_init(&dsmall, ctx, "small-model", 1, NSEG, SEG);
    test_pool_init(&dbig, ctx, "big-model", 1, NSEG, BIG_SEG);
    for (uint32_t i = 0; i < 4; i++)
        publish_one(&small, 100 + i, i, 0);
    for (uint32_t i = 0; i < 4; i++)
        publish_one(&big, 200 + i, i, 0);
    for (uint32_t i = 0; i < 4; i++)
        publish_one(&small, 300 + i, 4 + i, 0);
    /* The engines reuse their blocks at once (copy mode). */
    memset(small.mem, 0xee, NSEG * 16 * SEG);
    memset(big.mem, 0xee, NSEG * 16 * BIG_SEG);
    for (uint64_t i = 0; i < 4; i++) {
        cr_assert(fetch_is(ctx, &small, &dsmall, 100 + i), "first small block %llu",
                  (unsigned long long)i);
        cr_assert(fetch_is(ctx, &big, &dbig, 200 + i), "big block %llu", (unsigned long long)i);
        cr_assert(fetch_is(ctx, &small, &dsmall, 300 + i), "later small block %llu",
                  (unsigned long long)i);
    }
    kvs_stats_t st;
    cr_assert_eq(kvs_stats_query(ctx, &st), KVS_OK);
    cr_assert_eq(st.blocks, 12);
    cr_assert_eq(st.bytes, 8 * BLK + 4 * BIG, "each block takes a slot of its own size");
    cr_assert_eq(st.evictions, 0);
    test_pool_free(&dsmall);
    test_pool_free(&dbig);
    test_pool_free(&small);
    test_pool_free(&big);
    kvs_ctx_destroy(ctx);
}

Test(store, pool_node_stores_puts_of_every_size_one_after_another)
{
    /* The reported bug: `kvshare serve` fixed its slot size at the first PUT
     * and refused every bigger block after it ("layout mismatch"). */
    kvs_ctx_params_t p = {.field_mask = KVS_CTX_FIELD_NO_ENV | KVS_CTX_FIELD_TRANSPORT |
                                        KVS_CTX_FIELD_POOL_NODE | KVS_CTX_FIELD_CAPACITY,
                          .transport = "none",
                          .pool_node = 1,
                          .capacity_bytes = 1 << 20};
    kvs_ctx_h ctx;
    cr_assert_eq(kvs_ctx_create(&p, &ctx), KVS_OK);
    static const size_t sizes[] = {64, 4096, 64, 1000, 4096, 7};
    static uint8_t data[4 * 4096];
    for (size_t r = 0; r < KVS_ARRAY_SIZE(sizes); r++) {
        kvs_key_t keys[4];
        for (size_t i = 0; i < 4; i++) {
            keys[i] = test_key(1000 * r + i);
            for (size_t b = 0; b < sizes[r]; b++)
                data[i * sizes[r] + b] = (uint8_t)(r * 31 + i * 7 + b);
        }
        size_t stored = 0;
        kvs_status_t got = kvs__publish_staged(ctx, 0x1234 + r, keys, 4, data, sizes[r], &stored);
        cr_assert_eq(got, KVS_OK, "round %zu: %zu-byte blocks: %s", r, sizes[r],
                     kvs_status_string(got));
        cr_assert_eq(stored, 4);
    }
    /* Every block of every round is there, with its own length and bytes. */
    for (size_t r = 0; r < KVS_ARRAY_SIZE(sizes); r++) {
        kvs_key_t keys[4];
        for (size_t i = 0; i < 4; i++)
            keys[i] = test_key(1000 * r + i);
        kvs_lease_h l;
        cr_assert_eq(kvs__serve_lookup(ctx, 0x1234 + r, keys, 4, 1000, &l), KVS_OK);
        cr_assert_eq(kvs_lease_hits(l), 4, "round %zu", r);
        for (size_t i = 0; i < 4; i++) {
            kvs__piece_loc_t piece;
            kvs__block_loc_t loc = {.npieces = 1, .pieces = &piece};
            cr_assert_eq(kvs__lease_locate(l, i, &loc), KVS_OK);
            cr_assert_eq(piece.len, sizes[r]);
            const uint8_t *got = piece.addr;
            for (size_t b = 0; b < sizes[r]; b++)
                cr_assert_eq(got[b], (uint8_t)(r * 31 + i * 7 + b), "round %zu block %zu byte %zu",
                             r, i, b);
        }
        kvs_lease_release(l);
    }
    kvs_ctx_destroy(ctx);
}

Test(store, eviction_between_watermarks_spans_every_class)
{
    /* 640 bytes; high 0.9 = 576, low 0.5 = 320. */
    kvs_ctx_h ctx = test_ctx(10 * BLK, KVS_STRATEGY_LRU, 0.9, 0.5);
    test_pool_t small, big;
    test_pool_init(&small, ctx, "small-model", 16, NSEG, SEG);
    test_pool_init(&big, ctx, "big-model", 16, NSEG, BIG_SEG);
    for (uint32_t i = 0; i < 8; i++)
        publish_one(&small, i, i, 0); /* 512 bytes: below high */
    kvs_stats_t st;
    kvs_stats_query(ctx, &st);
    cr_assert_eq(st.evictions, 0);
    /* A big block crosses high: the oldest blocks of the other class go
     * until 320 bytes are held, then it goes in. */
    publish_one(&big, 100, 0, 0);
    kvs_stats_query(ctx, &st);
    cr_assert_eq(st.evictions, 3, "512 - 3 * 64 = 320");
    cr_assert_eq(st.bytes, 320 + BIG);
    for (uint64_t i = 0; i < 3; i++)
        cr_assert_not(present(ctx, kvs_pool_layout_id(small.pool), i), "oldest %llu evicted",
                      (unsigned long long)i);
    for (uint64_t i = 3; i < 8; i++)
        cr_assert(present(ctx, kvs_pool_layout_id(small.pool), i), "newer %llu kept",
                  (unsigned long long)i);
    cr_assert(present(ctx, kvs_pool_layout_id(big.pool), 100));
    /* Many more big blocks: the store never holds more than its capacity
     * and keeps the newest. */
    for (uint32_t i = 1; i < 12; i++) {
        publish_one(&big, 100 + i, i, 0);
        kvs_stats_query(ctx, &st);
        cr_assert_leq(st.bytes, (uint64_t)(0.9 * 10 * BLK), "after big block %u", i);
    }
    cr_assert(present(ctx, kvs_pool_layout_id(big.pool), 111));
    cr_assert_not(present(ctx, kvs_pool_layout_id(big.pool), 100));
    /* And small blocks come back into the space the big ones left. */
    for (uint32_t i = 0; i < 6; i++) {
        publish_one(&small, 50 + i, i, 0);
        kvs_stats_query(ctx, &st);
        cr_assert_leq(st.bytes, (uint64_t)(0.9 * 10 * BLK), "after small block %u", i);
    }
    cr_assert(present(ctx, kvs_pool_layout_id(small.pool), 55));
    test_pool_free(&small);
    test_pool_free(&big);
    kvs_ctx_destroy(ctx);
}

Test(store, a_lease_in_one_class_survives_pressure_from_another)
{
    kvs_ctx_h ctx = test_ctx(10 * BLK, KVS_STRATEGY_LRU, 0.9, 0.5);
    test_pool_t small, big, dbig, dsmall;
    test_pool_init(&small, ctx, "small-model", 32, NSEG, SEG);
    test_pool_init(&big, ctx, "big-model", 4, NSEG, BIG_SEG);
    test_pool_init(&dbig, ctx, "big-model", 1, NSEG, BIG_SEG);
    test_pool_init(&dsmall, ctx, "small-model", 1, NSEG, SEG);
    publish_one(&big, 7, 0, 0);
    kvs_key_t k = test_key(7);
    kvs_lease_h l;
    cr_assert_eq(kvs_lookup(ctx, kvs_pool_layout_id(big.pool), &k, 1, NULL, &l), KVS_OK);
    cr_assert_eq(kvs_lease_hits(l), 1);
    memset(big.mem, 0xee, NSEG * 4 * BIG_SEG);
    /* A flood of small blocks evicts among themselves, never the leased one. */
    for (uint64_t i = 0; i < 100; i++) {
        kvs_key_t sk = test_key(1000 + i);
        uint32_t b = (uint32_t)(i % 32);
        test_fill_block(&small, b, 1000 + i);
        cr_assert_eq(kvs_publish(small.pool, &sk, &b, 1, 0, NULL), KVS_OK, "small block %llu",
                     (unsigned long long)i);
    }
    kvs_stats_t st;
    kvs_stats_query(ctx, &st);
    cr_assert_gt(st.evictions, 0);
    uint32_t d = 0;
    kvs_request_h r;
    cr_assert_eq(kvs_fetch(l, dbig.pool, &d, 1, NULL, &r), KVS_OK);
    cr_assert_eq(kvs_request_wait(r, -1), KVS_OK, "the leased block was disturbed");
    kvs_request_free(r);
    cr_assert(test_block_is(&dbig, 0, 7));
    kvs_lease_release(l);
    test_pool_free(&big);
    test_pool_free(&dbig);

    /* The other way: leased small blocks hold the space a big block needs,
     * so it is refused until they are released. Pools go before their context. */
    test_pool_free(&small);
    test_pool_free(&dsmall);
    kvs_ctx_destroy(ctx);
    ctx = test_ctx(10 * BLK, KVS_STRATEGY_LRU, 0.9, 0.5);
    test_pool_init(&small, ctx, "small-model", 32, NSEG, SEG);
    test_pool_init(&big, ctx, "big-model", 4, NSEG, BIG_SEG);
    kvs_key_t keys[8];
    for (uint32_t i = 0; i < 8; i++) {
        publish_one(&small, i, i, 0);
        keys[i] = test_key(i);
    }
    cr_assert_eq(kvs_lookup(ctx, kvs_pool_layout_id(small.pool), keys, 8, NULL, &l), KVS_OK);
    cr_assert_eq(kvs_lease_hits(l), 8);
    kvs_key_t bk = test_key(500);
    uint32_t bb = 0;
    test_fill_block(&big, 0, 500);
    size_t n = 99;
    cr_assert_eq(kvs_publish(big.pool, &bk, &bb, 1, 0, &n), KVS_ERR_NO_SPACE,
                 "512 leased + 256 > 640");
    cr_assert_eq(n, 99, "a failing call writes no output");
    for (uint64_t i = 0; i < 8; i++)
        cr_assert(present(ctx, kvs_pool_layout_id(small.pool), i), "leased %llu kept",
                  (unsigned long long)i);
    kvs_lease_release(l);
    cr_assert_eq(kvs_publish(big.pool, &bk, &bb, 1, 0, &n), KVS_OK);
    cr_assert_eq(n, 1);
    kvs_stats_query(ctx, &st);
    cr_assert_leq(st.bytes, 10 * BLK);
    test_pool_free(&small);
    test_pool_free(&big);
    kvs_ctx_destroy(ctx);
}

Test(store, slot_bytes_rounds_sizes_into_fewer_classes)
{
    /* KVSHARE_SLOT_BYTES=128: 64-byte blocks take 128-byte slots, 192-byte
     * ones 256, 512-byte ones 512. */
    kvs_ctx_h ctx = classes_ctx(1 << 20, 128, 0.9, 0.8);
    test_pool_t a, b, c, da, db, dc;
    test_pool_init(&a, ctx, "a", 4, NSEG, SEG); /* 64 */
    test_pool_init(&b, ctx, "b", 4, 3, 64);     /* 192 */
    test_pool_init(&c, ctx, "c", 4, NSEG, 256); /* 512 */
    test_pool_init(&da, ctx, "a", 1, NSEG, SEG);
    test_pool_init(&db, ctx, "b", 1, 3, 64);
    test_pool_init(&dc, ctx, "c", 1, NSEG, 256);
    publish_one(&a, 1, 0, 0);
    publish_one(&b, 2, 0, 0);
    publish_one(&c, 3, 0, 0);
    publish_one(&a, 4, 1, 0);
    kvs_stats_t st;
    kvs_stats_query(ctx, &st);
    cr_assert_eq(st.bytes, 128 + 256 + 512 + 128);
    cr_assert(fetch_is(ctx, &a, &da, 1));
    cr_assert(fetch_is(ctx, &b, &db, 2));
    cr_assert(fetch_is(ctx, &c, &dc, 3));
    cr_assert(fetch_is(ctx, &a, &da, 4));
    test_pool_free(&a);
    test_pool_free(&b);
    test_pool_free(&c);
    test_pool_free(&da);
    test_pool_free(&db);
    test_pool_free(&dc);
    kvs_ctx_destroy(ctx);
}

Test(store, too_many_block_sizes_are_refused_clearly)
{
    kvs_ctx_h ctx = test_ctx(1 << 20, KVS_STRATEGY_LRU, 0.9, 0.8);
    test_pool_t p[KVS_SLOT_CLASSES_MAX + 1];
    char model[32];
    for (size_t i = 0; i <= KVS_SLOT_CLASSES_MAX; i++) {
        snprintf(model, sizeof(model), "m%zu", i);
        test_pool_init(&p[i], ctx, model, 2, 1, 8 * (i + 1));
        kvs_key_t k = test_key(i);
        uint32_t b = 0;
        kvs_status_t want = i < KVS_SLOT_CLASSES_MAX ? KVS_OK : KVS_ERR_NO_SPACE;
        kvs_status_t got = kvs_publish(p[i].pool, &k, &b, 1, 0, NULL);
        cr_assert_eq(got, want, "size %zu: %s", 8 * (i + 1), kvs_status_string(got));
    }
    /* Zero-copy needs no class; sizes already known still work. */
    kvs_key_t k = test_key(999);
    uint32_t b = 1;
    cr_assert_eq(kvs_publish(p[KVS_SLOT_CLASSES_MAX].pool, &k, &b, 1, KVS_PUBLISH_ZERO_COPY, NULL),
                 KVS_OK);
    k = test_key(998);
    cr_assert_eq(kvs_publish(p[0].pool, &k, &b, 1, 0, NULL), KVS_OK);
    for (size_t i = 0; i <= KVS_SLOT_CLASSES_MAX; i++)
        test_pool_free(&p[i]);
    kvs_ctx_destroy(ctx);
}

typedef struct seen_events {
    kvs_block_event_t ev[64];
    size_t n;
} seen_events_t;

static void on_block_event(void *arg, const kvs_block_event_t *ev)
{
    seen_events_t *s = arg;
    if (s->n < 64)
        s->ev[s->n++] = *ev;
}

/* The observer sees every store and every removal, whatever made it: publish, eviction,
 * unpublish (what `kvshare serve --events` publishes). */
Test(store, block_events_report_stores_evictions_and_unpublishes)
{
    static seen_events_t seen;
    seen.n = 0;
    kvs_ctx_params_t cp = {.field_mask = KVS_CTX_FIELD_NO_ENV | KVS_CTX_FIELD_CAPACITY |
                                         KVS_CTX_FIELD_WATERMARKS | KVS_CTX_FIELD_TRANSPORT |
                                         KVS_CTX_FIELD_BLOCK_EVENTS,
                           .transport = "none",
                           .capacity_bytes = 10 * BLK,
                           .high_watermark = 0.9,
                           .low_watermark = 0.5,
                           .block_event_fn = on_block_event,
                           .block_event_arg = &seen};
    kvs_ctx_h ctx;
    cr_assert_eq(kvs_ctx_create(&cp, &ctx), KVS_OK);
    test_pool_t p;
    test_pool_init(&p, ctx, "m", 32, NSEG, SEG);
    uint64_t lay = kvs_pool_layout_id(p.pool);
    for (uint32_t i = 0; i < 9; i++)
        publish_one(&p, i, i, 0);
    cr_assert_eq(seen.n, 9);
    for (size_t i = 0; i < 9; i++) {
        kvs_key_t k = test_key(i);
        cr_assert_eq(seen.ev[i].type, KVS_BLOCK_EVENT_STORED);
        cr_assert_eq(seen.ev[i].layout_id, lay);
        cr_assert_arr_eq(seen.ev[i].key.bytes, k.bytes, KVS_KEY_BYTES);
    }
    publish_one(&p, 9, 9, 0); /* evicts 0..3 (LRU: the oldest), then stores 9 */
    cr_assert_eq(seen.n, 9 + 4 + 1);
    for (size_t i = 9; i < 13; i++) {
        kvs_key_t k = test_key(i - 9);
        cr_assert_eq(seen.ev[i].type, KVS_BLOCK_EVENT_REMOVED);
        cr_assert_arr_eq(seen.ev[i].key.bytes, k.bytes, KVS_KEY_BYTES);
    }
    cr_assert_eq(seen.ev[13].type, KVS_BLOCK_EVENT_STORED);
    /* Zero-copy: published, then unpublished. */
    publish_one(&p, 20, 20, KVS_PUBLISH_ZERO_COPY);
    uint32_t b = 20;
    cr_assert_eq(kvs_unpublish(p.pool, &b, 1, 0), KVS_OK);
    cr_assert_eq(seen.n, 16);
    cr_assert_eq(seen.ev[14].type, KVS_BLOCK_EVENT_STORED);
    cr_assert_eq(seen.ev[15].type, KVS_BLOCK_EVENT_REMOVED);
    test_pool_free(&p);
    kvs_ctx_destroy(ctx);
}

/* KVSHARE_PREFAULT=1 with KVSHARE_SLOT_BYTES: the arena is made at start with every page in
 * (committed and written once, by the kernel and from user space) and still all zeros. */
Test(store, prefault_makes_every_arena_page_resident_and_zero)
{
    setenv("KVSHARE_PREFAULT", "1", 1);
    setenv("KVSHARE_SLOT_BYTES", "4096", 1);
    /* test_ctx ignores the environment; KVSHARE_PREFAULT is read only from it. */
    kvs_ctx_params_t p = {.field_mask = KVS_CTX_FIELD_CAPACITY | KVS_CTX_FIELD_TRANSPORT,
                          .transport = "none",
                          .capacity_bytes = 64 * 4096};
    kvs_ctx_h ctx = NULL;
    cr_assert_eq(kvs_ctx_create(&p, &ctx), KVS_OK);
    unsetenv("KVSHARE_PREFAULT");
    unsetenv("KVSHARE_SLOT_BYTES");
    cr_assert_eq(ctx->store.narenas, 1u);
    const kvs__arena_t *a = &ctx->store.arenas[0];
    cr_assert_eq(a->bytes, (size_t)64 * 4096);
    size_t pages = a->bytes / 4096;
    unsigned char *vec = calloc(pages, 1);
    cr_assert_not_null(vec);
    cr_assert_eq(mincore(a->base, a->bytes, vec), 0);
    for (size_t i = 0; i < pages; i++)
        cr_assert(vec[i] & 1, "arena page %zu of %zu is not resident", i, pages);
    free(vec);
    for (size_t i = 0; i < a->bytes; i++)
        cr_assert_eq(((const uint8_t *)a->base)[i], 0, "arena byte %zu", i);
    kvs_ctx_destroy(ctx);
}

/* A pool node commits the pages of the slots a pull put lands in only where
 * they may never have been touched: a slot is fresh until it is first given
 * back (its generation moves then, and the arena keeps its pages), and no
 * slot of an arena faulted in at start is. */
static void reserve_all(kvs_ctx_h ctx, uint32_t n, uint32_t *slots, bool *fresh, uint32_t *cls)
{
    uint8_t *addrs[16];
    uint32_t got = 0;
    cr_assert_eq(kvs__reserve_slots(ctx, 4096, n, cls, slots, addrs, fresh, &got), KVS_OK);
    cr_assert_eq(got, n);
}

Test(store, reserved_slots_are_fresh_until_first_given_back)
{
    for (int prefault = 0; prefault <= 1; prefault++) {
        if (prefault)
            setenv("KVSHARE_PREFAULT", "1", 1);
        kvs_ctx_params_t p = {.field_mask = KVS_CTX_FIELD_TRANSPORT | KVS_CTX_FIELD_POOL_NODE |
                                            KVS_CTX_FIELD_CAPACITY | KVS_CTX_FIELD_SLOT_BYTES,
                              .transport = "none",
                              .pool_node = 1,
                              .capacity_bytes = 16 * 4096,
                              .slot_bytes = 4096};
        if (!prefault)
            p.field_mask |= KVS_CTX_FIELD_NO_ENV;
        kvs_ctx_h ctx = NULL;
        cr_assert_eq(kvs_ctx_create(&p, &ctx), KVS_OK);
        unsetenv("KVSHARE_PREFAULT");
        uint32_t slots[16], again[8], cls = 0;
        bool fresh[16];
        reserve_all(ctx, 16, slots, fresh, &cls);
        for (int i = 0; i < 16; i++)
            cr_assert_eq(fresh[i], !prefault, "prefault %d: slot %u", prefault, slots[i]);
        kvs__unreserve_slots(ctx, cls, slots, 8); /* given back: written, or at least committed */
        reserve_all(ctx, 8, again, fresh, &cls);
        for (int i = 0; i < 8; i++)
            cr_assert(!fresh[i], "prefault %d: slot %u given back is fresh again", prefault,
                      again[i]);
        kvs__unreserve_slots(ctx, cls, again, 8);
        kvs__unreserve_slots(ctx, cls, slots + 8, 8);
        kvs_ctx_destroy(ctx);
    }
}
