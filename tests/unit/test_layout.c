/* SPDX-License-Identifier: Apache-2.0 */
/* test_layout.c - layout ids: every field counts, bad geometry is refused. */
#include "kvs_test.h"

#include <criterion/criterion.h>

static uint64_t id_of(const kvs_layout_t *l)
{
    uint64_t id = 0;
    cr_assert_eq(kvs_layout_id(l, &id), KVS_OK);
    return id;
}

Test(layout, stable_and_sensitive_to_every_field)
{
    kvs_layout_t base = test_layout("m");
    uint64_t id = id_of(&base);
    cr_assert_eq(id, id_of(&base), "same layout, same id");
    kvs_layout_t v[10];
    for (int i = 0; i < 10; i++)
        v[i] = base;
    v[0].model_id = "m2";
    v[1].dtype = KVS_DTYPE_FP16;
    v[2].block_tokens = 32;
    v[3].num_layers = 3;
    v[4].num_kv_heads = 8;
    v[5].head_dim = 128;
    v[6].tp_size = 2;
    v[7].tp_size = 2, v[7].tp_rank = 1;
    v[8].kv_layout = KVS_KV_HND;
    v[9].kv_order = KVS_KV_ORDER_BLOCK_OUTER;
    for (int i = 0; i < 10; i++) {
        uint64_t vi = id_of(&v[i]);
        cr_assert_neq(vi, id, "variant %d kept the id", i);
        for (int j = 0; j < i; j++)
            cr_assert_neq(vi, id_of(&v[j]), "variants %d and %d collide", i, j);
    }
}

Test(layout, rejects_bad_geometry_without_writing)
{
    kvs_layout_t l = test_layout("m");
    uint64_t id = 42;
    l.tp_rank = 1; /* rank >= size */
    cr_assert_eq(kvs_layout_id(&l, &id), KVS_ERR_INVALID_PARAM);
    l = test_layout("m");
    l.head_dim = 0;
    cr_assert_eq(kvs_layout_id(&l, &id), KVS_ERR_INVALID_PARAM);
    l = test_layout(NULL);
    cr_assert_eq(kvs_layout_id(&l, &id), KVS_ERR_INVALID_PARAM);
    l = test_layout("m");
    l.dtype = (kvs_dtype_t)99;
    cr_assert_eq(kvs_layout_id(&l, &id), KVS_ERR_INVALID_PARAM);
    cr_assert_eq(kvs_layout_id(NULL, &id), KVS_ERR_INVALID_PARAM);
    cr_assert_eq(id, 42, "a failing call must not write its output");
}
