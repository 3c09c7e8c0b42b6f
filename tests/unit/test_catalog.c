/* SPDX-License-Identifier: Apache-2.0 */
/* test_catalog.c - the hash index: growth, collisions, backward-shift deletion. */
#include "catalog_int.h"
#include "kvs_test.h"

#include <criterion/criterion.h>

static kvs__store_t st;
static kvs__logger_t lg;

static void setup(void)
{
    kvs__config_t c;
    kvs_ctx_params_t p = {.field_mask = KVS_CTX_FIELD_NO_ENV | KVS_CTX_FIELD_WATERMARKS |
                                        KVS_CTX_FIELD_CAPACITY,
                          .capacity_bytes = 1 << 20,
                          .high_watermark = 1.0,
                          .low_watermark = 0.5};
    cr_assert_eq(kvs__config_resolve(&p, &c, NULL, 0), KVS_OK);
    cr_assert_eq(kvs__store_init(&st, &c, &lg), KVS_OK);
    cr_assert_eq(kvs__store_arena_init(&st, 8), KVS_OK);
}

static void teardown(void)
{
    kvs__store_fini(&st);
}

TestSuite(catalog, .init = setup, .fini = teardown);

static kvs__entry_t *add(uint64_t layout, const kvs_key_t *k)
{
    kvs__entry_t *e = NULL;
    cr_assert_eq(kvs__store_insert(&st, layout, k, NULL, 0, 0, &e), KVS_OK);
    return e;
}

Test(catalog, grows_and_survives_churn)
{
    enum { N = 5000 };
    for (uint64_t i = 0; i < N; i++) {
        kvs_key_t k = test_key(i);
        add(7, &k);
    }
    cr_assert_geq(st.nslots, 2 * N, "table grew to keep load <= 1/2");
    for (uint64_t i = 0; i < N; i += 3) {
        kvs_key_t k = test_key(i);
        kvs__entry_t *e = kvs__store_get(&st, 7, &k);
        cr_assert_not_null(e);
        kvs__store_remove(&st, e);
    }
    for (uint64_t i = 0; i < N; i++) {
        kvs_key_t k = test_key(i);
        bool want = (i % 3) != 0;
        cr_assert_eq(kvs__store_get(&st, 7, &k) != NULL, want, "key %llu: want %d",
                     (unsigned long long)i, want);
        cr_assert_null(kvs__store_get(&st, 8, &k), "other layout must miss");
    }
    cr_assert_eq(st.count, N - (N + 2) / 3);
}

Test(catalog, colliding_hashes_probe_and_delete_correctly)
{
    /* Same first 8 bytes and layout -> same hash -> one probe run. */
    kvs_key_t k[6];
    for (int i = 0; i < 6; i++) {
        k[i] = test_key(1);
        k[i].bytes[31] = (uint8_t)i;
        add(1, &k[i]);
    }
    for (int del = 0; del < 6; del += 2)
        kvs__store_remove(&st, kvs__store_get(&st, 1, &k[del]));
    for (int i = 0; i < 6; i++)
        cr_assert_eq(kvs__store_get(&st, 1, &k[i]) != NULL, (i % 2) == 1, "key %d", i);
    /* Removed keys can come back. */
    add(1, &k[0]);
    cr_assert_not_null(kvs__store_get(&st, 1, &k[0]));
}
