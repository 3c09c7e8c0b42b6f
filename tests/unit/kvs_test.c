/* SPDX-License-Identifier: Apache-2.0 */
/* kvs_test.c - fixtures for the core's unit tests: contexts, pools, keys. */
#include "kvs_test.h"

#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

kvs_layout_t test_layout(const char *model)
{
    kvs_layout_t l = {.model_id = model,
                      .dtype = KVS_DTYPE_BF16,
                      .block_tokens = 16,
                      .num_layers = 2,
                      .num_kv_heads = 4,
                      .head_dim = 64,
                      .tp_rank = 0,
                      .tp_size = 1};
    return l;
}

kvs_ctx_h test_ctx(uint64_t capacity_bytes, kvs_strategy_t strategy, double high, double low)
{
    /* Local-only: these tests are about the store, not the transport. */
    kvs_ctx_params_t p = {.field_mask = KVS_CTX_FIELD_NO_ENV | KVS_CTX_FIELD_CAPACITY |
                                        KVS_CTX_FIELD_STRATEGY | KVS_CTX_FIELD_WATERMARKS |
                                        KVS_CTX_FIELD_TRANSPORT,
                          .transport = "none",
                          .capacity_bytes = capacity_bytes,
                          .strategy = strategy,
                          .high_watermark = high,
                          .low_watermark = low};
    kvs_ctx_h ctx = NULL;
    cr_assert_eq(kvs_ctx_create(&p, &ctx), KVS_OK);
    return ctx;
}

void test_pool_init(test_pool_t *tp, kvs_ctx_h ctx, const char *model, uint32_t nblocks,
                    size_t nsegs, size_t seg_bytes)
{
    kvs_layout_t l = test_layout(model);
    kvs_segment_t segs[8];
    cr_assert(nsegs <= 8);
    tp->mem = calloc(nsegs * nblocks, seg_bytes);
    cr_assert_not_null(tp->mem);
    for (size_t s = 0; s < nsegs; s++) {
        segs[s].base = tp->mem + s * nblocks * seg_bytes;
        segs[s].block_stride = seg_bytes;
        segs[s].block_bytes = seg_bytes;
        segs[s].mem_type = KVS_MEM_HOST;
    }
    kvs_pool_params_t pp = {
        .layout = &l, .segments = segs, .num_segments = nsegs, .num_blocks = nblocks};
    tp->nsegs = nsegs;
    tp->seg_bytes = seg_bytes;
    tp->nblocks = nblocks;
    cr_assert_eq(kvs_pool_create(ctx, &pp, &tp->pool), KVS_OK);
}

void test_pool_free(test_pool_t *tp)
{
    kvs_pool_destroy(tp->pool);
    free(tp->mem);
}

static uint8_t pattern(uint64_t tag, size_t s, size_t i)
{
    uint64_t x = tag * 0x9E3779B97F4A7C15ull + s * 131 + i;
    x ^= x >> 31;
    return (uint8_t)(x * 0xBF58476D1CE4E5B9ull >> 56);
}

void test_fill_block(test_pool_t *tp, uint32_t b, uint64_t tag)
{
    for (size_t s = 0; s < tp->nsegs; s++) {
        uint8_t *p = tp->mem + (s * tp->nblocks + b) * tp->seg_bytes;
        for (size_t i = 0; i < tp->seg_bytes; i++)
            p[i] = pattern(tag, s, i);
    }
}

bool test_block_is(const test_pool_t *tp, uint32_t b, uint64_t tag)
{
    for (size_t s = 0; s < tp->nsegs; s++) {
        const uint8_t *p = tp->mem + (s * tp->nblocks + b) * tp->seg_bytes;
        for (size_t i = 0; i < tp->seg_bytes; i++)
            if (p[i] != pattern(tag, s, i))
                return false;
    }
    return true;
}

/* splitmix64: distinct n give distinct, well-spread keys. */
static uint64_t splitmix(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

kvs_key_t test_key(uint64_t n)
{
    kvs_key_t k;
    for (size_t w = 0; w < 4; w++) {
        uint64_t v = splitmix(n * 4 + w);
        memcpy(&k.bytes[8 * w], &v, 8);
    }
    return k;
}
