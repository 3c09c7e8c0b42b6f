/* SPDX-License-Identifier: Apache-2.0 */
/* test_kvindex.c - the prefix index: longest consecutive prefix per pod, removals, models,
 * LoRA keys, per-pod clear, degraded pods, ageing and the memory bound. */
#include "ixalloc_int.h"
#include "kvindex_int.h"
#include "kvshare.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static kvs__idx_t *idx;
static uint32_t model_a, model_b;

static void setup(void)
{
    idx = kvs__idx_create(0);
    cr_assert_not_null(idx);
    model_a = (uint32_t)kvs__idx_model(idx, "A", 1, true);
    model_b = (uint32_t)kvs__idx_model(idx, "B", 1, true);
    cr_assert_neq(model_a, model_b);
}

static void teardown(void)
{
    kvs__idx_destroy(idx);
}

TestSuite(kvindex, .init = setup, .fini = teardown);

static uint32_t pod(const char *name, uint32_t model)
{
    int64_t p = kvs__idx_pod(idx, name, strlen(name), model, true);
    cr_assert_geq(p, 0);
    return (uint32_t)p;
}

static void chain(uint64_t *keys, size_t n, uint64_t base)
{
    for (size_t i = 0; i < n; i++)
        keys[i] = base * 1000003u + i * 7919u + 1;
}

/* Blocks of pod `name` in a score, or -1 when it is not listed. */
static long blocks_of(const kvs__idx_score_t *s, long n, const char *name)
{
    for (long i = 0; i < n; i++)
        if (strcmp(s[i].pod_name, name) == 0)
            return s[i].blocks;
    return -1;
}

Test(kvindex, each_pod_gets_its_longest_consecutive_prefix)
{
    uint64_t k[8];
    chain(k, 8, 1);
    uint32_t p1 = pod("p1", model_a), p2 = pod("p2", model_a), p3 = pod("p3", model_a);
    cr_assert_eq(kvs__idx_store(idx, p1, k, 8, NULL, 0, 1), 0);
    cr_assert_eq(kvs__idx_store(idx, p2, k, 3, NULL, 0, 1), 0);
    /* p3 holds blocks 1..7 but not block 0: no prefix at all. */
    cr_assert_eq(kvs__idx_store(idx, p3, k + 1, 7, NULL, 0, 1), 0);
    kvs__idx_score_t s[8];
    long n = kvs__idx_score(idx, model_a, k, 8, NULL, 0, s, 8);
    cr_assert_eq(n, 2);
    cr_assert_str_eq(s[0].pod_name, "p1");
    cr_assert_eq(s[0].blocks, 8);
    cr_assert_str_eq(s[1].pod_name, "p2");
    cr_assert_eq(s[1].blocks, 3);
    cr_assert_str_eq(s[0].medium, "GPU");
    /* A shorter prompt caps the score; a filter keeps only the pods asked for. */
    cr_assert_eq(kvs__idx_score(idx, model_a, k, 2, NULL, 0, s, 8), 2);
    cr_assert_eq(s[0].blocks, 2);
    cr_assert_eq(kvs__idx_score(idx, model_a, k, 8, &p2, 1, s, 8), 1);
    cr_assert_str_eq(s[0].pod_name, "p2");
    kvs__idx_stats_t st;
    kvs__idx_get_stats(idx, &st);
    cr_assert_eq(st.pairs, 18);
    cr_assert_eq(st.blocks, 8);
}

Test(kvindex, removing_a_middle_block_stops_the_prefix_there)
{
    uint64_t k[10];
    chain(k, 10, 2);
    uint32_t p1 = pod("p1", model_a), p2 = pod("p2", model_a);
    kvs__idx_store(idx, p1, k, 10, NULL, 0, 1);
    kvs__idx_store(idx, p2, k, 10, NULL, 0, 1);
    kvs__idx_remove(idx, p1, &k[4], 1, "GPU", 3, 2);
    kvs__idx_score_t s[4];
    long n = kvs__idx_score(idx, model_a, k, 10, NULL, 0, s, 4);
    cr_assert_eq(n, 2);
    cr_assert_eq(blocks_of(s, n, "p1"), 4);
    cr_assert_eq(blocks_of(s, n, "p2"), 10);
    /* Removing on another medium removes nothing. */
    kvs__idx_remove(idx, p2, &k[2], 1, "CPU", 3, 2);
    n = kvs__idx_score(idx, model_a, k, 10, NULL, 0, s, 4);
    cr_assert_eq(blocks_of(s, n, "p2"), 10);
}

Test(kvindex, two_models_are_isolated)
{
    uint64_t k[4];
    chain(k, 4, 3);
    uint32_t pa = pod("same-pod", model_a), pb = pod("same-pod", model_b);
    cr_assert_neq(pa, pb);
    kvs__idx_store(idx, pa, k, 4, NULL, 0, 1);
    kvs__idx_score_t s[4];
    cr_assert_eq(kvs__idx_score(idx, model_b, k, 4, NULL, 0, s, 4), 0);
    kvs__idx_store(idx, pb, k, 2, NULL, 0, 1);
    cr_assert_eq(kvs__idx_score(idx, model_b, k, 4, NULL, 0, s, 4), 1);
    cr_assert_eq(s[0].blocks, 2);
    cr_assert_eq(kvs__idx_score(idx, model_a, k, 4, NULL, 0, s, 4), 1);
    cr_assert_eq(s[0].blocks, 4);
    cr_assert_eq(kvs__idx_model(idx, "C", 1, false), -1);
}

/* Keys as the daemon computes them: vLLM's own, through libkvshare's hasher. */
static void prompt_keys(const char *lora, uint64_t *out, size_t n)
{
    kvs_hasher_params_t hp = {.field_mask = KVS_HASHER_FIELD_ALGO | KVS_HASHER_FIELD_SEED |
                                            KVS_HASHER_FIELD_BLOCK_TOKENS,
                              .algo = KVS_HASH_XXHASH_CBOR,
                              .seed = "0",
                              .block_tokens = 4};
    kvs_hasher_h h;
    cr_assert_eq(kvs_hasher_create(&hp, &h), KVS_OK);
    uint32_t tokens[64];
    for (uint32_t i = 0; i < 64; i++)
        tokens[i] = 1000 + i;
    kvs_chain_params_t cp = {.field_mask = lora ? KVS_CHAIN_FIELD_LORA_NAME : 0, .lora_name = lora};
    kvs_key_t keys[16];
    size_t nk = 0;
    cr_assert_eq(kvs_hasher_chain(h, &cp, tokens, n * 4, keys, 16, &nk), KVS_OK);
    cr_assert_eq(nk, n);
    for (size_t i = 0; i < n; i++)
        out[i] = kvs_key_to_u64(&keys[i], kvs_hasher_digest_len(h));
    kvs_hasher_destroy(h);
}

Test(kvindex, lora_prompts_match_only_the_same_lora)
{
    uint64_t base[6], lora_x[6], lora_y[6];
    prompt_keys(NULL, base, 6);
    prompt_keys("x", lora_x, 6);
    prompt_keys("y", lora_y, 6);
    uint32_t p1 = pod("p1", model_a), p2 = pod("p2", model_a);
    kvs__idx_store(idx, p1, lora_x, 6, NULL, 0, 1); /* p1 ran the prompt under LoRA x */
    kvs__idx_store(idx, p2, base, 6, NULL, 0, 1);   /* p2 ran it on the base model */
    kvs__idx_score_t s[4];
    long n = kvs__idx_score(idx, model_a, lora_x, 6, NULL, 0, s, 4);
    cr_assert_eq(n, 1);
    cr_assert_str_eq(s[0].pod_name, "p1");
    cr_assert_eq(s[0].blocks, 6);
    n = kvs__idx_score(idx, model_a, base, 6, NULL, 0, s, 4);
    cr_assert_eq(n, 1);
    cr_assert_str_eq(s[0].pod_name, "p2");
    cr_assert_eq(kvs__idx_score(idx, model_a, lora_y, 6, NULL, 0, s, 4), 0);
}

Test(kvindex, clearing_one_pod_leaves_the_others)
{
    uint64_t k[50];
    chain(k, 50, 4);
    uint32_t p1 = pod("p1", model_a), p2 = pod("p2", model_a);
    kvs__idx_store(idx, p1, k, 50, NULL, 0, 1);
    kvs__idx_store(idx, p1, k, 10, "CPU", 3, 1);
    kvs__idx_store(idx, p2, k, 20, NULL, 0, 1);
    kvs__idx_clear_pod(idx, p1);
    kvs__idx_score_t s[4];
    long n = kvs__idx_score(idx, model_a, k, 50, NULL, 0, s, 4);
    cr_assert_eq(n, 1);
    cr_assert_str_eq(s[0].pod_name, "p2");
    cr_assert_eq(s[0].blocks, 20);
    kvs__idx_stats_t st;
    kvs__idx_get_stats(idx, &st);
    cr_assert_eq(st.pairs, 20);
    cr_assert_eq(st.blocks, 20, "blocks only p1 held are freed");
    /* The pod is usable again after its clear. */
    kvs__idx_store(idx, p1, k, 5, NULL, 0, 2);
    n = kvs__idx_score(idx, model_a, k, 50, NULL, 0, s, 4);
    cr_assert_eq(blocks_of(s, n, "p1"), 5);
}

Test(kvindex, medium_is_the_slowest_tier_along_the_prefix)
{
    uint64_t k[4];
    chain(k, 4, 5);
    uint32_t p1 = pod("p1", model_a);
    kvs__idx_store(idx, p1, k, 2, "GPU", 3, 1);
    kvs__idx_store(idx, p1, k + 2, 2, "cpu", 3, 1);
    kvs__idx_store(idx, p1, k, 1, "CPU", 3, 1); /* block 0 on both: GPU wins */
    kvs__idx_score_t s[2];
    cr_assert_eq(kvs__idx_score(idx, model_a, k, 2, NULL, 0, s, 2), 1);
    cr_assert_str_eq(s[0].medium, "GPU");
    cr_assert_eq(kvs__idx_score(idx, model_a, k, 4, NULL, 0, s, 2), 1);
    cr_assert_eq(s[0].blocks, 4);
    cr_assert_str_eq(s[0].medium, "CPU");
}

Test(kvindex, degraded_pods_score_zero_until_fresh)
{
    uint64_t k[3];
    chain(k, 3, 6);
    uint32_t p1 = pod("p1", model_a);
    kvs__idx_store(idx, p1, k, 3, NULL, 0, 1);
    kvs__idx_set_degraded(idx, p1, true);
    kvs__idx_score_t s[2];
    cr_assert_eq(kvs__idx_score(idx, model_a, k, 3, NULL, 0, s, 2), 0);
    kvs__idx_set_degraded(idx, p1, false);
    cr_assert_eq(kvs__idx_score(idx, model_a, k, 3, NULL, 0, s, 2), 1);
}

Test(kvindex, idle_pods_age_out)
{
    uint64_t k[3];
    chain(k, 3, 7);
    uint32_t p1 = pod("p1", model_a), p2 = pod("p2", model_a);
    kvs__idx_store(idx, p1, k, 3, NULL, 0, 1000);
    kvs__idx_store(idx, p2, k, 3, NULL, 0, 5000);
    cr_assert_eq(kvs__idx_age(idx, 6000, 2000), 1);
    kvs__idx_score_t s[2];
    cr_assert_eq(kvs__idx_score(idx, model_a, k, 3, NULL, 0, s, 2), 1);
    cr_assert_str_eq(s[0].pod_name, "p2");
}

Test(kvindex, the_pair_bound_holds_and_the_index_stays_consistent)
{
    kvs__idx_t *small = kvs__idx_create(100);
    cr_assert_not_null(small);
    uint32_t m = (uint32_t)kvs__idx_model(small, "A", 1, true);
    uint32_t pods[4];
    for (uint32_t i = 0; i < 4; i++) {
        char name[16];
        snprintf(name, sizeof(name), "p%u", i);
        pods[i] = (uint32_t)kvs__idx_pod(small, name, strlen(name), m, true);
    }
    uint64_t k[300];
    chain(k, 300, 8);
    for (int round = 0; round < 3; round++)
        for (uint32_t i = 0; i < 4; i++)
            cr_assert_eq(kvs__idx_store(small, pods[i], k, 300, NULL, 0, 1), 0);
    kvs__idx_stats_t st;
    kvs__idx_get_stats(small, &st);
    cr_assert_leq(st.pairs, 100);
    cr_assert_gt(st.evicted, 0);
    /* Every remaining pair can be cleared pod by pod down to an empty index. */
    for (uint32_t i = 0; i < 4; i++)
        kvs__idx_clear_pod(small, pods[i]);
    kvs__idx_get_stats(small, &st);
    cr_assert_eq(st.pairs, 0);
    cr_assert_eq(st.blocks, 0);
    kvs__idx_destroy(small);
}

Test(kvindex, many_blocks_and_removals_keep_lookups_right)
{
    /* Grows the table several times and deletes with backward shifts: every surviving
     * block must still be found. */
    enum { N = 20000 };
    uint64_t *k = malloc(N * sizeof(*k));
    cr_assert_not_null(k);
    chain(k, N, 9);
    uint32_t p1 = pod("p1", model_a), p2 = pod("p2", model_a);
    kvs__idx_store(idx, p1, k, N, NULL, 0, 1);
    kvs__idx_store(idx, p2, k, N / 2, NULL, 0, 1);
    for (size_t i = 1; i < N; i += 3)
        kvs__idx_remove(idx, p1, &k[i], 1, NULL, 0, 1);
    kvs__idx_score_t s[2];
    long n = kvs__idx_score(idx, model_a, k, N, NULL, 0, s, 2);
    cr_assert_eq(blocks_of(s, n, "p1"), 1);
    cr_assert_eq(blocks_of(s, n, "p2"), N / 2);
    for (size_t i = 0; i < N; i += 3) /* each kept block still found, one at a time */
        cr_assert_eq(kvs__idx_score(idx, model_a, &k[i], 1, &p1, 1, s, 2), 1, "block %zu", i);
    free(k);
}

/* Up to 64 pods a model scores with slot bitmaps, beyond with a walk over holders: both
 * must give every pod its prefix and its slowest tier. */
static void many_pods(uint32_t npods)
{
    kvs__idx_t *x = kvs__idx_create(0);
    cr_assert_not_null(x);
    uint32_t m = (uint32_t)kvs__idx_model(x, "A", 1, true);
    uint64_t k[12];
    chain(k, 12, 10);
    for (uint32_t i = 0; i < npods; i++) {
        char name[16];
        snprintf(name, sizeof(name), "p%03u", i);
        uint32_t p = (uint32_t)kvs__idx_pod(x, name, strlen(name), m, true);
        size_t len = i % 13;
        cr_assert_eq(kvs__idx_store(x, p, k, len, i % 7 == 3 ? "CPU" : NULL, 3, 1), 0);
        if (i % 4 == 1)
            kvs__idx_remove(x, p, &k[2], 1, i % 7 == 3 ? "CPU" : NULL, 3, 1);
        if (i % 9 == 2)
            kvs__idx_set_degraded(x, p, true);
    }
    kvs__idx_score_t *s = calloc(npods, sizeof(*s));
    cr_assert_not_null(s);
    long n = kvs__idx_score(x, m, k, 12, NULL, 0, s, npods);
    long want_n = 0;
    for (uint32_t i = 0; i < npods; i++) {
        char name[16];
        snprintf(name, sizeof(name), "p%03u", i);
        long want = (long)(i % 13);
        if (i % 4 == 1 && want > 2)
            want = 2;
        if (want == 0 || i % 9 == 2) {
            cr_assert_eq(blocks_of(s, n, name), -1, "%s listed", name);
            continue;
        }
        want_n++;
        cr_assert_eq(blocks_of(s, n, name), want, "%s (%u pods)", name, npods);
        for (long j = 0; j < n; j++)
            if (strcmp(s[j].pod_name, name) == 0)
                cr_assert_str_eq(s[j].medium, i % 7 == 3 ? "CPU" : "GPU", "%s", name);
    }
    cr_assert_eq(n, want_n);
    for (long j = 1; j < n; j++)
        cr_assert_geq(s[j - 1].blocks, s[j].blocks, "sorted");
    /* A short out[] gets the best pods. */
    kvs__idx_score_t top[3];
    cr_assert_eq(kvs__idx_score(x, m, k, 12, NULL, 0, top, 3), want_n);
    cr_assert_eq(top[0].blocks, s[0].blocks);
    cr_assert_str_eq(top[2].pod_name, s[2].pod_name);
    free(s);
    kvs__idx_destroy(x);
}

Test(kvindex, sixty_four_pods_score_by_bitmap)
{
    many_pods(64);
}

Test(kvindex, more_than_sixty_four_pods_score_by_walk)
{
    many_pods(70);
    many_pods(200);
}

/* Every allocation of the index fails in turn (and every one after it): each call reports
 * it or copes, nothing crashes or leaks, and what was stored stays consistent. */
static void oom_scenario(uint32_t npods)
{
    kvs__idx_t *x = kvs__idx_create(5000);
    if (x == NULL)
        return;
    int64_t m = kvs__idx_model(x, "A", 1, true);
    uint64_t k[3000];
    chain(k, 3000, 11);
    uint32_t pods[70];
    uint32_t made = 0;
    for (uint32_t i = 0; m >= 0 && i < npods; i++) {
        char name[16];
        snprintf(name, sizeof(name), "p%u", i);
        int64_t p = kvs__idx_pod(x, name, strlen(name), (uint32_t)m, true);
        if (p < 0)
            break;
        pods[made++] = (uint32_t)p;
    }
    bool all_stored = made == npods;
    for (uint32_t i = 0; i < made; i++) {
        size_t len = i < 2 ? 3000 : 40;
        if (kvs__idx_store(x, pods[i], k, len, i == 1 ? "CPU" : NULL, 3, 1) != 0)
            all_stored = false;
    }
    kvs__idx_score_t s[70];
    long n = made ? kvs__idx_score(x, (uint32_t)m, k, 3000, NULL, 0, s, 70) : 0;
    if (all_stored && n >= 0) {
        /* 5000 pairs at most: eviction takes from the biggest pods (p0, p1), so the small
         * ones keep their 40 blocks. */
        cr_assert_geq(n, (long)npods - 2);
        for (uint32_t i = 2; i < npods; i++) {
            char name[16];
            snprintf(name, sizeof(name), "p%u", i);
            cr_assert_eq(blocks_of(s, n < 70 ? n : 70, name), 40, "%s", name);
        }
        kvs__idx_stats_t st;
        kvs__idx_get_stats(x, &st);
        cr_assert_leq(st.pairs, 5000);
    }
    kvs__idx_remove(x, made ? pods[0] : 0, k, 100, NULL, 0, 2);
    for (uint32_t i = 0; i < made; i++)
        kvs__idx_clear_pod(x, pods[i]);
    kvs__idx_stats_t st;
    kvs__idx_get_stats(x, &st);
    cr_assert_eq(st.pairs, 0);
    cr_assert_eq(st.blocks, 0);
    kvs__idx_destroy(x);
}

Test(kvindex, every_allocation_failure_is_survived)
{
    for (uint32_t npods = 3; npods <= 70; npods += 67) { /* bitmap and walk scorers */
        for (long n = 0;; n++) {
            kvs__ix_alloc_fail_after(n, true);
            oom_scenario(npods);
            unsigned long hit = kvs__ix_alloc_failures();
            kvs__ix_alloc_fail_after(-1, false);
            if (hit == 0)
                break; /* the whole scenario ran without reaching allocation n */
            cr_assert_lt(n, 100000, "no end to the allocations");
        }
    }
}

/* A sharing replica's resync reads back every copy of a pod, with its medium. */
Test(kvindex, pod_copies_lists_every_copy_with_its_medium)
{
    uint64_t k[30];
    chain(k, 30, 9);
    uint32_t p1 = pod("p1", model_a), p2 = pod("p2", model_a);
    kvs__idx_store(idx, p1, k, 20, NULL, 0, 1);
    kvs__idx_store(idx, p1, k, 5, "CPU", 3, 1);
    kvs__idx_store(idx, p2, k, 30, NULL, 0, 1);
    kvs__idx_remove(idx, p1, &k[3], 1, NULL, 0, 1);
    uint64_t h[64];
    const char *m[64];
    cr_assert_eq(kvs__idx_pod_copies(idx, p1, h, m, 2), 24, "the count, whatever max is");
    cr_assert_eq(kvs__idx_pod_copies(idx, p1, h, m, 64), 24);
    int gpu = 0, cpu = 0;
    for (int i = 0; i < 24; i++) {
        bool found = false;
        for (int j = 0; j < 20; j++)
            found |= h[i] == k[j];
        cr_assert(found);
        if (h[i] == k[3])
            cr_assert_str_eq(m[i], "CPU", "only block 3's GPU copy was removed");
        gpu += strcmp(m[i], "GPU") == 0;
        cpu += strcmp(m[i], "CPU") == 0;
    }
    cr_assert_eq(gpu, 19);
    cr_assert_eq(cpu, 5);
    cr_assert_eq(kvs__idx_pod_copies(idx, 999, h, m, 64), 0);
}

/* Equal prefixes are listed by pod name, whatever order the pods were first seen in, in
 * both scorers (bitmap up to 64 pods, the holder walk beyond); max_out keeps the first. */
Test(kvindex, ties_sort_by_name_in_both_scorers)
{
    for (uint32_t npods = 5; npods <= 70; npods += 65) {
        kvs__idx_t *x = kvs__idx_create(0);
        cr_assert_not_null(x);
        uint32_t mdl = (uint32_t)kvs__idx_model(x, "m", 1, true);
        uint64_t k[8];
        chain(k, 8, 77);
        for (uint32_t i = 0; i < npods; i++) {
            char name[16];
            snprintf(name, sizeof(name), "p%03u", (i * 37u) % 101u); /* not in name order */
            uint32_t p = (uint32_t)kvs__idx_pod(x, name, strlen(name), mdl, true);
            kvs__idx_store(x, p, k, i % 2 ? 8 : 4, NULL, 0, 1);
        }
        kvs__idx_score_t s[80];
        long n = kvs__idx_score(x, mdl, k, 8, NULL, 0, s, 80);
        cr_assert_eq(n, npods);
        for (long j = 1; j < n; j++) {
            cr_assert(s[j - 1].blocks > s[j].blocks ||
                          (s[j - 1].blocks == s[j].blocks &&
                           strcmp(s[j - 1].pod_name, s[j].pod_name) < 0),
                      "%u pods: %s (%u) before %s (%u)", npods, s[j - 1].pod_name, s[j - 1].blocks,
                      s[j].pod_name, s[j].blocks);
        }
        kvs__idx_score_t top[2];
        cr_assert_eq(kvs__idx_score(x, mdl, k, 8, NULL, 0, top, 2), n);
        cr_assert_str_eq(top[0].pod_name, s[0].pod_name);
        cr_assert_str_eq(top[1].pod_name, s[1].pod_name);
        kvs__idx_destroy(x);
    }
}

/* ---- one writer and lock-free readers at once ---- */

#include <pthread.h>

#define ST_DOCS 12
#define ST_KEYS 48
#define ST_PODS 80 /* model 1: the holder walk (> 64 pods); model 0: 8 pods, the bitmaps */

typedef struct stress {
    kvs__idx_t *x;
    uint32_t model[2], npods[2];
    uint32_t pod[2][ST_PODS];
    uint64_t keys[ST_DOCS][ST_KEYS];
    uint8_t cap[2][ST_PODS][ST_DOCS];  /* the longest prefix ever stored */
    uint8_t held[2][ST_PODS][ST_DOCS]; /* what the writer holds now (the shadow) */
    bool degraded[2][ST_PODS];
    bool exact;
    int done;
    unsigned long scores, errors;
} stress_t;

static uint64_t st_rand(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void *stress_writer(void *arg)
{
    stress_t *t = arg;
    uint64_t rng = 42, junk[64];
    for (int op = 0; op < 6000; op++) {
        int mi = (int)(st_rand(&rng) % 2);
        uint32_t pi = (uint32_t)(st_rand(&rng) % t->npods[mi]),
                 d = (uint32_t)(st_rand(&rng) % ST_DOCS);
        uint32_t p = t->pod[mi][pi];
        unsigned r = (unsigned)(st_rand(&rng) % 100);
        if (r < 55) { /* a prefix, never beyond the pod's cap for that document */
            size_t len = t->cap[mi][pi][d] ? st_rand(&rng) % (t->cap[mi][pi][d] + 1u) : 0;
            cr_assert_eq(kvs__idx_store(t->x, p, t->keys[d], len, NULL, 0, 1), 0);
            if (len > t->held[mi][pi][d])
                t->held[mi][pi][d] = (uint8_t)len;
        } else if (r < 80) { /* a suffix goes */
            size_t k = st_rand(&rng) % ST_KEYS;
            kvs__idx_remove(t->x, p, t->keys[d] + k, ST_KEYS - k, NULL, 0, 1);
            if (t->held[mi][pi][d] > k)
                t->held[mi][pi][d] = (uint8_t)k;
        } else if (r < 83) {
            kvs__idx_clear_pod(t->x, p);
            memset(t->held[mi][pi], 0, sizeof(t->held[mi][pi]));
        } else if (r < 85) {
            t->degraded[mi][pi] = !t->degraded[mi][pi];
            kvs__idx_set_degraded(t->x, p, t->degraded[mi][pi]);
        } else { /* unrelated blocks, on another tier: table growth, tombstones, reuse */
            for (int i = 0; i < 64; i++)
                junk[i] = st_rand(&rng);
            cr_assert_eq(kvs__idx_store(t->x, p, junk, 64, "CPU", 3, 1), 0);
            kvs__idx_remove(t->x, p, junk, (size_t)(st_rand(&rng) % 65), "CPU", 3, 1);
        }
    }
    __atomic_store_n(&t->done, 1, __ATOMIC_RELEASE);
    return NULL;
}

static void *stress_reader(void *arg)
{
    stress_t *t = arg;
    uint64_t rng = (uint64_t)(uintptr_t)&rng;
    kvs__idx_score_t s[ST_PODS];
    unsigned long n_scores = 0, errors = 0;
    while (!__atomic_load_n(&t->done, __ATOMIC_ACQUIRE)) {
        int mi = (int)(st_rand(&rng) % 2);
        uint32_t d = (uint32_t)(st_rand(&rng) % ST_DOCS);
        long n = kvs__idx_score(t->x, t->model[mi], t->keys[d], ST_KEYS, NULL, 0, s, ST_PODS);
        n_scores++;
        if (n < 0 || n > (long)t->npods[mi]) {
            errors++;
            continue;
        }
        for (long i = 0; i < n; i++) {
            uint32_t pi = 0;
            while (pi < t->npods[mi] && t->pod[mi][pi] != s[i].pod)
                pi++;
            /* a pod of this model, never more blocks than it was ever given, sorted */
            if (pi == t->npods[mi] || s[i].blocks < 1 || s[i].blocks > t->cap[mi][pi][d] ||
                strcmp(s[i].pod_name, kvs__idx_pod_name(t->x, s[i].pod)) != 0 ||
                (i > 0 && s[i - 1].blocks < s[i].blocks))
                errors++;
        }
        kvs__idx_stats_t st;
        kvs__idx_get_stats(t->x, &st);
        if (t->exact ? false : st.pairs > 3000)
            errors++;
    }
    __atomic_fetch_add(&t->scores, n_scores, __ATOMIC_RELAXED);
    __atomic_fetch_add(&t->errors, errors, __ATOMIC_RELAXED);
    return NULL;
}

static void stress_run(uint64_t max_pairs)
{
    stress_t *t = calloc(1, sizeof(*t));
    cr_assert_not_null(t);
    t->x = kvs__idx_create(max_pairs);
    t->exact = max_pairs == 0;
    cr_assert_not_null(t->x);
    uint64_t rng = 7;
    t->npods[0] = 8;
    t->npods[1] = ST_PODS;
    for (int mi = 0; mi < 2; mi++) {
        char name[16];
        snprintf(name, sizeof(name), "m%d", mi);
        t->model[mi] = (uint32_t)kvs__idx_model(t->x, name, strlen(name), true);
        for (uint32_t i = 0; i < t->npods[mi]; i++) {
            snprintf(name, sizeof(name), "pod-%02u", (i * 37u) % 101u);
            t->pod[mi][i] = (uint32_t)kvs__idx_pod(t->x, name, strlen(name), t->model[mi], true);
            for (int d = 0; d < ST_DOCS; d++)
                t->cap[mi][i][d] = (uint8_t)(st_rand(&rng) % (ST_KEYS + 1));
        }
    }
    for (int d = 0; d < ST_DOCS; d++)
        chain(t->keys[d], ST_KEYS, 500 + (uint64_t)d); /* the same keys in both models */
    pthread_t w, r[3];
    for (int i = 0; i < 3; i++)
        cr_assert_eq(pthread_create(&r[i], NULL, stress_reader, t), 0);
    cr_assert_eq(pthread_create(&w, NULL, stress_writer, t), 0);
    pthread_join(w, NULL);
    for (int i = 0; i < 3; i++)
        pthread_join(r[i], NULL);
    cr_assert_eq(t->errors, 0, "%lu of %lu scores broke an invariant", t->errors, t->scores);
    cr_assert_gt(t->scores, 0);
    cr_log_info("%lu scores during the writes", t->scores);
    if (t->exact) { /* quiesced: every score is exactly the shadow's */
        kvs__idx_score_t s[ST_PODS];
        for (int mi = 0; mi < 2; mi++)
            for (uint32_t d = 0; d < ST_DOCS; d++) {
                long n =
                    kvs__idx_score(t->x, t->model[mi], t->keys[d], ST_KEYS, NULL, 0, s, ST_PODS);
                long want = 0;
                for (uint32_t pi = 0; pi < t->npods[mi]; pi++) {
                    long b = -1;
                    for (long i = 0; i < n; i++)
                        if (s[i].pod == t->pod[mi][pi])
                            b = s[i].blocks;
                    long h = t->degraded[mi][pi] || t->held[mi][pi][d] == 0
                                 ? -1
                                 : (long)t->held[mi][pi][d];
                    want += h > 0;
                    cr_assert_eq(b, h, "model %d doc %u pod %u", mi, d, pi);
                }
                cr_assert_eq(n, want);
            }
    }
    kvs__idx_destroy(t->x);
    free(t);
}

Test(kvindex, readers_never_see_more_than_was_stored_while_one_writer_runs)
{
    stress_run(0);
}

Test(kvindex, readers_survive_eviction_at_the_bound_while_one_writer_runs)
{
    stress_run(3000);
}

/* Freed entries, tables and holder arrays come back after their grace period: churn with
 * no reader in flight keeps the index's memory flat. */
Test(kvindex, churn_reuses_freed_memory)
{
    uint32_t p1 = pod("p1", model_a), p2 = pod("p2", model_a);
    uint64_t k[64];
    kvs__idx_stats_t st;
    for (uint64_t round = 0; round < 4000; round++) {
        chain(k, 64, 1000 + round);
        cr_assert_eq(kvs__idx_store(idx, p1, k, 64, NULL, 0, 1), 0);
        cr_assert_eq(kvs__idx_store(idx, p2, k, 32, NULL, 0, 1), 0); /* holder arrays */
        kvs__idx_remove(idx, p1, k, 64, NULL, 0, 1);
        kvs__idx_clear_pod(idx, p2);
    }
    kvs__idx_get_stats(idx, &st);
    cr_assert_eq(st.pairs, 0);
    cr_assert_eq(st.blocks, 0);
    /* 256 000 blocks came and went: one 16384-entry segment (768 KiB) and a small table
     * hold them all when entries are reused. */
    cr_assert_lt(st.bytes, 1u << 20, "%llu bytes", (unsigned long long)st.bytes);
}

/* ---- shards: one writer per shard, lock-free readers (the daemon's --shards N) ---- */

#include "ixshard_int.h"

#define SH_N      4
#define SH_MODELS 8
#define SH_PODS   6
#define SH_OPS    6000

/* What the receive thread queues for a shard: one change to one (model, pod). */
typedef struct sh_op {
    uint8_t model, pod, doc, kind; /* kind: 0 store a prefix, 1 remove a suffix, 2 clear,
                                      3 degraded flip */
    uint8_t len;
} sh_op_t;

typedef struct sh_test {
    kvs__idx_t *x[SH_N];
    kvs__ring_t *ring[SH_N];
    unsigned shard[SH_MODELS];
    uint32_t model[SH_MODELS], pod[SH_MODELS][SH_PODS];
    uint64_t keys[ST_DOCS][ST_KEYS];
    uint8_t cap[SH_MODELS][SH_PODS][ST_DOCS];
    /* the shadow: each (model, pod) is written by its shard's writer only */
    uint8_t held[SH_MODELS][SH_PODS][ST_DOCS];
    bool degraded[SH_MODELS][SH_PODS];
    int fed, done;
    unsigned long scores, errors, applied[SH_N];
} sh_test_t;

typedef struct sh_writer {
    sh_test_t *t;
    unsigned id;
} sh_writer_t;

/* A shard's writer: applies its queue to its own index, until the feed ends and the queue
 * is empty. */
static void *sh_writer(void *arg)
{
    sh_writer_t *w = arg;
    sh_test_t *t = w->t;
    for (;;) {
        sh_op_t *op = kvs__ring_peek(t->ring[w->id]);
        if (op == NULL) {
            if (__atomic_load_n(&t->fed, __ATOMIC_ACQUIRE) &&
                kvs__ring_peek(t->ring[w->id]) == NULL)
                break;
            kvs__ring_wait(t->ring[w->id], 5);
            continue;
        }
        kvs__idx_t *x = t->x[w->id];
        uint32_t p = t->pod[op->model][op->pod];
        uint8_t *held = &t->held[op->model][op->pod][op->doc];
        if (t->shard[op->model] != w->id) /* routed to the wrong shard */
            __atomic_fetch_add(&t->errors, 1, __ATOMIC_RELAXED);
        else if (op->kind == 0) {
            if (kvs__idx_store(x, p, t->keys[op->doc], op->len, NULL, 0, 1) != 0)
                __atomic_fetch_add(&t->errors, 1, __ATOMIC_RELAXED);
            if (op->len > *held)
                *held = op->len;
        } else if (op->kind == 1) {
            kvs__idx_remove(x, p, t->keys[op->doc] + op->len, ST_KEYS - op->len, NULL, 0, 1);
            if (*held > op->len)
                *held = op->len;
        } else if (op->kind == 2) {
            kvs__idx_clear_pod(x, p);
            memset(t->held[op->model][op->pod], 0, sizeof(t->held[op->model][op->pod]));
        } else {
            t->degraded[op->model][op->pod] = !t->degraded[op->model][op->pod];
            kvs__idx_set_degraded(x, p, t->degraded[op->model][op->pod]);
        }
        kvs__ring_pop(t->ring[w->id]);
        t->applied[w->id]++;
    }
    return NULL;
}

/* The receive thread: random changes, each queued for its model's shard. */
static void *sh_feeder(void *arg)
{
    sh_test_t *t = arg;
    uint64_t rng = 99;
    static const volatile int never;
    for (int i = 0; i < SH_OPS; i++) {
        sh_op_t op = {.model = (uint8_t)(st_rand(&rng) % SH_MODELS),
                      .pod = (uint8_t)(st_rand(&rng) % SH_PODS),
                      .doc = (uint8_t)(st_rand(&rng) % ST_DOCS)};
        unsigned r = (unsigned)(st_rand(&rng) % 100);
        uint8_t cap = t->cap[op.model][op.pod][op.doc];
        op.kind = (uint8_t)(r < 60 ? 0 : r < 90 ? 1 : r < 96 ? 2 : 3);
        op.len = (uint8_t)(op.kind == 0 ? (cap ? st_rand(&rng) % (cap + 1u) : 0)
                                        : st_rand(&rng) % ST_KEYS);
        unsigned s = kvs__shard_of((const char[]){'m', (char)('0' + op.model)}, 2, SH_N);
        sh_op_t *slot = kvs__ring_slot_wait(t->ring[s], &never);
        *slot = op;
        kvs__ring_push(t->ring[s]);
    }
    __atomic_store_n(&t->fed, 1, __ATOMIC_RELEASE);
    for (unsigned s = 0; s < SH_N; s++)
        kvs__ring_wake(t->ring[s]);
    return NULL;
}

/* A score: reads only its model's shard, lock-free. */
static void *sh_reader(void *arg)
{
    sh_test_t *t = arg;
    uint64_t rng = (uint64_t)(uintptr_t)&rng;
    kvs__idx_score_t s[SH_PODS];
    unsigned long n_scores = 0, errors = 0;
    while (!__atomic_load_n(&t->done, __ATOMIC_ACQUIRE)) {
        unsigned m = (unsigned)(st_rand(&rng) % SH_MODELS), d = (unsigned)(st_rand(&rng) % ST_DOCS);
        kvs__idx_t *x = t->x[kvs__shard_of((const char[]){'m', (char)('0' + m)}, 2, SH_N)];
        long n = kvs__idx_score(x, t->model[m], t->keys[d], ST_KEYS, NULL, 0, s, SH_PODS);
        n_scores++;
        if (n < 0 || n > SH_PODS) {
            errors++;
            continue;
        }
        for (long i = 0; i < n; i++) {
            uint32_t pi = 0;
            while (pi < SH_PODS && t->pod[m][pi] != s[i].pod)
                pi++;
            if (pi == SH_PODS || s[i].blocks < 1 || s[i].blocks > t->cap[m][pi][d] ||
                (i > 0 && s[i - 1].blocks < s[i].blocks))
                errors++;
        }
    }
    __atomic_fetch_add(&t->scores, n_scores, __ATOMIC_RELAXED);
    __atomic_fetch_add(&t->errors, errors, __ATOMIC_RELAXED);
    return NULL;
}

Test(kvindex, shards_one_writer_per_shard_readers_read_the_models_shard)
{
    sh_test_t *t = calloc(1, sizeof(*t));
    cr_assert_not_null(t);
    uint64_t rng = 11;
    for (unsigned s = 0; s < SH_N; s++) {
        t->x[s] = kvs__idx_create(0);
        t->ring[s] = kvs__ring_create(64, sizeof(sh_op_t)); /* small: the feeder waits too */
        cr_assert(t->x[s] != NULL && t->ring[s] != NULL);
    }
    unsigned used = 0;
    for (unsigned m = 0; m < SH_MODELS; m++) {
        char name[8] = {'m', (char)('0' + m), 0};
        t->shard[m] = kvs__shard_of(name, 2, SH_N);
        used |= 1u << t->shard[m];
        kvs__idx_t *x = t->x[t->shard[m]];
        t->model[m] = (uint32_t)kvs__idx_model(x, name, 2, true);
        for (unsigned p = 0; p < SH_PODS; p++) { /* the same pod names in every model */
            snprintf(name, sizeof(name), "p%u", p);
            t->pod[m][p] = (uint32_t)kvs__idx_pod(x, name, strlen(name), t->model[m], true);
            for (int d = 0; d < ST_DOCS; d++)
                t->cap[m][p][d] = (uint8_t)(st_rand(&rng) % (ST_KEYS + 1));
        }
    }
    cr_assert_gt(__builtin_popcount(used), 1, "the models spread over several shards");
    for (int d = 0; d < ST_DOCS; d++)
        chain(t->keys[d], ST_KEYS, 900 + (uint64_t)d); /* the same keys in every model */
    pthread_t f, w[SH_N], r[3];
    sh_writer_t wa[SH_N];
    for (int i = 0; i < 3; i++)
        cr_assert_eq(pthread_create(&r[i], NULL, sh_reader, t), 0);
    for (unsigned s = 0; s < SH_N; s++) {
        wa[s] = (sh_writer_t){t, s};
        cr_assert_eq(pthread_create(&w[s], NULL, sh_writer, &wa[s]), 0);
    }
    cr_assert_eq(pthread_create(&f, NULL, sh_feeder, t), 0);
    pthread_join(f, NULL);
    for (unsigned s = 0; s < SH_N; s++)
        pthread_join(w[s], NULL);
    __atomic_store_n(&t->done, 1, __ATOMIC_RELEASE);
    for (int i = 0; i < 3; i++)
        pthread_join(r[i], NULL);
    cr_assert_eq(t->errors, 0, "%lu of %lu scores broke an invariant", t->errors, t->scores);
    unsigned long applied = 0;
    for (unsigned s = 0; s < SH_N; s++) {
        applied += t->applied[s];
        cr_assert_eq(kvs__ring_depth(t->ring[s]), 0);
        cr_assert_leq(kvs__ring_high_water(t->ring[s]), 64);
    }
    cr_assert_eq(applied, SH_OPS);
    /* quiesced: every score, read from the model's shard, is exactly the shadow's; no other
     * shard knows the model */
    kvs__idx_score_t s[SH_PODS];
    for (unsigned m = 0; m < SH_MODELS; m++) {
        char name[3] = {'m', (char)('0' + m), 0};
        for (unsigned o = 0; o < SH_N; o++)
            cr_assert_eq(kvs__idx_model(t->x[o], name, 2, false) >= 0, o == t->shard[m],
                         "model %s in shard %u", name, o);
        for (unsigned d = 0; d < ST_DOCS; d++) {
            long n = kvs__idx_score(t->x[t->shard[m]], t->model[m], t->keys[d], ST_KEYS, NULL, 0, s,
                                    SH_PODS);
            long want = 0;
            for (unsigned p = 0; p < SH_PODS; p++) {
                long b = -1;
                for (long i = 0; i < n; i++)
                    if (s[i].pod == t->pod[m][p])
                        b = s[i].blocks;
                long h = t->degraded[m][p] || t->held[m][p][d] == 0 ? -1 : (long)t->held[m][p][d];
                want += h > 0;
                cr_assert_eq(b, h, "model %u doc %u pod %u", m, d, p);
            }
            cr_assert_eq(n, want);
        }
    }
    for (unsigned o = 0; o < SH_N; o++) {
        kvs__ring_destroy(t->ring[o]);
        kvs__idx_destroy(t->x[o]);
    }
    free(t);
}

/* The shard of a model is stable (FNV-1a of its name) and within range. */
Test(kvindex, shard_of_a_model_is_stable_and_in_range)
{
    cr_assert_eq(kvs__shard_of("anything", 8, 1), 0);
    unsigned seen = 0;
    for (unsigned i = 0; i < 64; i++) {
        char name[16];
        int n = snprintf(name, sizeof(name), "model-%u", i);
        unsigned s = kvs__shard_of(name, (size_t)n, 4);
        cr_assert_lt(s, 4);
        cr_assert_eq(s, kvs__shard_of(name, (size_t)n, 4));
        seen |= 1u << s;
    }
    cr_assert_eq(seen, 0xfu, "64 models leave a shard empty");
    /* FNV-1a 64 of "a" is 0xaf63dc4c8601ec8c: shards stay where they were across versions */
    cr_assert_eq(kvs__shard_of("a", 1, 1000), (unsigned)(0xaf63dc4c8601ec8cull % 1000));
}
