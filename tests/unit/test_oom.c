/* SPDX-License-Identifier: Apache-2.0 */
/* test_oom.c - every allocation site fails cleanly with KVS_ERR_NO_MEMORY and leaks nothing.
 *
 * Like libuv's loop_init_oom: run a scenario with the n-th allocation
 * failing, for n = 0, 1, 2, ... until the scenario completes without
 * reaching the failure. LeakSanitizer (ASan build) checks that every
 * failure path freed what it had. */
#include "kvs_int.h"
#include "kvs_test.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define CHECK(expr)                                                                                \
    do {                                                                                           \
        kvs_status_t s_ = (expr);                                                                  \
        if (s_ != KVS_OK) {                                                                        \
            status = s_;                                                                           \
            goto out;                                                                              \
        }                                                                                          \
    } while (0)

static char cfg_path[64];

/* Touches every allocation site of the core once. */
static kvs_status_t scenario(void)
{
    kvs_status_t status = KVS_OK;
    kvs_ctx_h ctx = NULL;
    kvs_pool_h src = NULL, dst = NULL, big = NULL;
    kvs_hasher_h h = NULL;
    kvs_lease_h lease = NULL;
    kvs_request_h req = NULL;
    kvs_region_h region = NULL;
    static uint8_t mem[2][64 * 64];
    static uint8_t bigmem[8 * 128];
    kvs_key_t keys[64];
    uint32_t ids[64];

    kvs_ctx_params_t cp = {.field_mask = KVS_CTX_FIELD_NO_ENV | KVS_CTX_FIELD_CONFIG_FILE |
                                         KVS_CTX_FIELD_CAPACITY,
                           .config_file = cfg_path,
                           .capacity_bytes = 40 * 64};
    CHECK(kvs_ctx_create(&cp, &ctx));
    char long_seed[600];
    memset(long_seed, 's', sizeof(long_seed) - 1);
    long_seed[sizeof(long_seed) - 1] = '\0';
    kvs_hasher_params_t hp = {.field_mask = KVS_HASHER_FIELD_SEED | KVS_HASHER_FIELD_BLOCK_TOKENS,
                              .seed = long_seed,
                              .block_tokens = 200}; /* big blocks: the heap buffer path */
    CHECK(kvs_hasher_create(&hp, &h));
    static uint32_t tokens[200 * 4];
    kvs_chain_params_t chp = {.field_mask = KVS_CHAIN_FIELD_LORA_NAME, .lora_name = "lora"};
    size_t nk;
    CHECK(kvs_hasher_chain(h, &chp, tokens, 800, keys, 4, &nk));
    CHECK(kvs_mem_register_ex(ctx, mem, sizeof(mem), NULL, &region));

    kvs_layout_t l = test_layout("oom");
    kvs_segment_t s1 = {.base = mem[0], .block_stride = 64, .block_bytes = 64};
    kvs_segment_t s2 = {.base = mem[1], .block_stride = 64, .block_bytes = 64};
    kvs_pool_params_t pp = {.field_mask = KVS_POOL_FIELD_NAME,
                            .layout = &l,
                            .segments = &s1,
                            .num_segments = 1,
                            .num_blocks = 64,
                            .name = "src"};
    CHECK(kvs_pool_create(ctx, &pp, &src));
    pp.segments = &s2;
    pp.field_mask = 0;
    CHECK(kvs_pool_create(ctx, &pp, &dst));
    for (uint32_t i = 0; i < 64; i++) {
        keys[i] = test_key(i);
        ids[i] = i;
    }
    /* 64 copies into 40 slots: arena creation, eviction; 600 zero-copy
     * entries would grow the entry array and the catalog. */
    CHECK(kvs_publish(src, keys, ids, 64, 0, NULL));
    static kvs_key_t many[1200];
    static uint32_t many_ids[1200];
    for (uint32_t i = 0; i < 1200; i++) {
        many[i] = test_key(1000 + i);
        many_ids[i] = i % 64;
    }
    CHECK(kvs_publish(dst, many, many_ids, 64, KVS_PUBLISH_ZERO_COPY, NULL));
    CHECK(kvs_lookup(ctx, kvs_pool_layout_id(src), keys + 60, 4, NULL, &lease));
    CHECK(kvs_fetch(lease, dst, ids, kvs_lease_hits(lease), NULL, &req));
    CHECK(kvs_request_test(req));
    /* Blocks of a second size: a second slot class, evicting the first's. */
    kvs_layout_t lb = test_layout("oom-big");
    kvs_segment_t sb = {.base = bigmem, .block_stride = 128, .block_bytes = 128};
    kvs_pool_params_t pb = {.layout = &lb, .segments = &sb, .num_segments = 1, .num_blocks = 8};
    CHECK(kvs_pool_create(ctx, &pb, &big));
    CHECK(kvs_publish(big, many + 1100, ids, 8, 0, NULL));
out:
    kvs_request_free(req);
    kvs_lease_release(lease);
    kvs_pool_destroy(big);
    kvs_pool_destroy(dst);
    kvs_pool_destroy(src);
    kvs_mem_deregister(region);
    kvs_hasher_destroy(h);
    kvs_ctx_destroy(ctx);
    return status;
}

static void write_config(void)
{
    /* Bigger than the reader's first 4 KiB buffer, so its realloc runs too. */
    snprintf(cfg_path, sizeof(cfg_path), "/tmp/kvs-oom-XXXXXX");
    int fd = mkstemp(cfg_path);
    cr_assert(fd >= 0);
    char pad[6000];
    memset(pad, ' ', sizeof(pad));
    cr_assert_eq(write(fd, "{\"strategy\": \"lfu\"", 18), 18);
    cr_assert_eq(write(fd, pad, sizeof(pad)), (ssize_t)sizeof(pad));
    cr_assert_eq(write(fd, "}", 1), 1);
    close(fd);
}

Test(oom, every_allocation_site_fails_cleanly, .timeout = 240)
{
    write_config();
    kvs__alloc_fail_after(-1, false);
    kvs__alloc_count(true);
    cr_assert_eq(scenario(), KVS_OK, "the scenario must pass without injection");
    unsigned long total = kvs__alloc_count(true);
    cr_assert_gt(total, 10);
    for (unsigned long n = 0; n < total; n++) {
        kvs__alloc_fail_after((long)n, false);
        kvs_status_t st = scenario();
        kvs__alloc_fail_after(-1, false);
        cr_assert_eq(st, KVS_ERR_NO_MEMORY, "allocation %lu of %lu: got '%s'", n, total,
                     kvs_status_string(st));
    }
    /* And with every allocation failing from some point on. */
    for (unsigned long n = 0; n < total; n += 7) {
        kvs__alloc_fail_after((long)n, true);
        kvs_status_t st = scenario();
        kvs__alloc_fail_after(-1, false);
        cr_assert_eq(st, KVS_ERR_NO_MEMORY, "sticky from %lu: got '%s'", n, kvs_status_string(st));
    }
    unlink(cfg_path);
}
