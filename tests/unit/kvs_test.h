/* SPDX-License-Identifier: Apache-2.0 */
/* kvs_test.h - helpers shared by the core's unit tests. */
#ifndef KVS_TEST_H
#define KVS_TEST_H

#include "kvshare.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A host pool of @nblocks over @nsegs segments of @seg_bytes each, in one
 * malloc'd buffer (freed by test_pool_free). */
typedef struct test_pool {
    kvs_pool_h pool;
    uint8_t *mem;
    size_t nsegs, seg_bytes;
    uint32_t nblocks;
} test_pool_t;

kvs_layout_t test_layout(const char *model);
kvs_ctx_h test_ctx(uint64_t capacity_bytes, kvs_strategy_t strategy, double high, double low);
void test_pool_init(test_pool_t *tp, kvs_ctx_h ctx, const char *model, uint32_t nblocks,
                    size_t nsegs, size_t seg_bytes);
void test_pool_free(test_pool_t *tp);
/* Fills block b of every segment with bytes derived from @tag. */
void test_fill_block(test_pool_t *tp, uint32_t b, uint64_t tag);
bool test_block_is(const test_pool_t *tp, uint32_t b, uint64_t tag);
kvs_key_t test_key(uint64_t n);

#endif
