/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_outputs.c - the public header's contract on outputs: a failing call
 * writes none of its *_p outputs (nor an output buffer), for every function
 * of kvshare.h that has one; and the functions that replace the deprecated
 * ones (kvs_progress_ex, kvs_put_ex, kvs_mem_register_ex, kvs_key_format_hex)
 * keep their predecessors' behaviour.
 */
#include <criterion/criterion.h>
#include <string.h>

#include "kvs_test.h"

#define POISON ((void *)0x5a5a5a5a)

static const kvs_key_t key_ab = {.bytes = {0xab, 0x01, 0xff}};

Test(outputs, hasher_create_and_chain)
{
    kvs_hasher_h h = POISON;
    kvs_hasher_params_t bad = {.field_mask = KVS_HASHER_FIELD_ALGO, .algo = (kvs_hash_algo_t)77};
    cr_assert_eq(kvs_hasher_create(&bad, &h), KVS_ERR_INVALID_PARAM);
    cr_assert_eq(h, POISON);
    kvs_hasher_params_t zero = {.field_mask = KVS_HASHER_FIELD_BLOCK_TOKENS, .block_tokens = 0};
    cr_assert_eq(kvs_hasher_create(&zero, &h), KVS_ERR_INVALID_PARAM);
    cr_assert_eq(h, POISON);

    cr_assert_eq(kvs_hasher_create(NULL, &h), KVS_OK);
    uint32_t tokens[32] = {0};
    kvs_key_t keys[2];
    size_t n = 99;
    cr_assert_eq(kvs_hasher_chain(NULL, NULL, tokens, 32, keys, 2, &n), KVS_ERR_INVALID_PARAM);
    cr_assert_eq(n, 99);
    cr_assert_eq(kvs_hasher_chain(h, NULL, NULL, 32, keys, 2, &n), KVS_ERR_INVALID_PARAM);
    cr_assert_eq(n, 99);
    cr_assert_eq(kvs_hasher_chain(h, NULL, tokens, 32, keys, 2, &n), KVS_OK);
    cr_assert_eq(n, 2);
    kvs_hasher_destroy(h);
}

Test(outputs, key_format_hex)
{
    char out[2 * KVS_KEY_BYTES + 1];
    char old[2 * KVS_KEY_BYTES + 1];

    /* Too small by one (the NUL), a zero or oversized digest, NULLs: nothing written. */
    memset(out, 'x', sizeof(out));
    cr_assert_eq(kvs_key_format_hex(&key_ab, 3, out, 6), KVS_ERR_INVALID_PARAM);
    cr_assert_eq(kvs_key_format_hex(&key_ab, 0, out, sizeof(out)), KVS_ERR_INVALID_PARAM);
    cr_assert_eq(kvs_key_format_hex(&key_ab, KVS_KEY_BYTES + 1, out, sizeof(out)),
                 KVS_ERR_INVALID_PARAM);
    cr_assert_eq(kvs_key_format_hex(NULL, 3, out, sizeof(out)), KVS_ERR_INVALID_PARAM);
    cr_assert_eq(kvs_key_format_hex(&key_ab, 3, NULL, sizeof(out)), KVS_ERR_INVALID_PARAM);
    for (size_t i = 0; i < sizeof(out); i++)
        cr_assert_eq(out[i], 'x', "byte %zu written on failure", i);

    /* Exactly big enough. */
    cr_assert_eq(kvs_key_format_hex(&key_ab, 3, out, 7), KVS_OK);
    cr_assert_str_eq(out, "ab01ff");
    /* The deprecated kvs_key_to_hex still writes the same text. */
    for (size_t len = 1; len <= KVS_KEY_BYTES; len++) {
        cr_assert_eq(kvs_key_format_hex(&key_ab, len, out, sizeof(out)), KVS_OK);
        kvs_key_to_hex(&key_ab, len, old);
        cr_assert_str_eq(out, old);
        cr_assert_eq(strlen(out), 2 * len);
    }
}

Test(outputs, layout_id)
{
    kvs_layout_t l = test_layout("m");
    uint64_t id = 7;
    l.tp_rank = l.tp_size; /* rank >= size */
    cr_assert_eq(kvs_layout_id(&l, &id), KVS_ERR_INVALID_PARAM);
    cr_assert_eq(id, 7);
    l = test_layout("m");
    l.model_id = NULL;
    cr_assert_eq(kvs_layout_id(&l, &id), KVS_ERR_INVALID_PARAM);
    cr_assert_eq(id, 7);
}

Test(outputs, ctx_create_and_listen_addr)
{
    kvs_ctx_h ctx = POISON;
    char err[256] = "";
    kvs_ctx_params_t p = {.field_mask =
                              KVS_CTX_FIELD_NO_ENV | KVS_CTX_FIELD_TRANSPORT | KVS_CTX_FIELD_ERRBUF,
                          .transport = "carrier-pigeon",
                          .errbuf = err,
                          .errbuf_len = sizeof(err)};
    cr_assert_eq(kvs_ctx_create(&p, &ctx), KVS_ERR_CONFIG);
    cr_assert_eq(ctx, POISON);
    cr_assert_neq(err[0], '\0', "the errbuf says why");

    ctx = test_ctx(1 << 20, KVS_STRATEGY_LRU, 0.9, 0.8);
    char addr[64];
    memset(addr, 'x', sizeof(addr));
    cr_assert_eq(kvs_ctx_listen_addr(ctx, addr, sizeof(addr)), KVS_ERR_NOT_FOUND);
    cr_assert_eq(addr[0], 'x');
    kvs_ctx_destroy(ctx);
}

Test(outputs, progress_ex)
{
    unsigned events = 42;
    cr_assert_eq(kvs_progress_ex(NULL, &events), KVS_ERR_INVALID_PARAM);
    cr_assert_eq(events, 42);
    cr_assert_eq(kvs_progress(NULL), KVS_ERR_INVALID_PARAM, "the deprecated one unchanged");

    kvs_ctx_h ctx = test_ctx(1 << 20, KVS_STRATEGY_LRU, 0.9, 0.8);
    cr_assert_eq(kvs_progress_ex(ctx, &events), KVS_OK);
    cr_assert_eq(events, 0, "no transport: nothing to do");
    cr_assert_eq(kvs_progress_ex(ctx, NULL), KVS_OK);
    cr_assert_eq(kvs_progress(ctx), 0);
    kvs_ctx_destroy(ctx);
}

Test(outputs, mem_register_ex)
{
    kvs_ctx_h ctx = test_ctx(1 << 20, KVS_STRATEGY_LRU, 0.9, 0.8);
    static uint8_t mem[4096];
    kvs_region_h a = NULL, b = NULL, c = POISON;

    /* NULL params: host memory. */
    cr_assert_eq(kvs_mem_register_ex(ctx, mem, 1024, NULL, &a), KVS_OK);
    kvs_mem_register_params_t cuda = {.field_mask = KVS_MEM_REGISTER_FIELD_MEM_TYPE,
                                      .mem_type = KVS_MEM_CUDA};
    cr_assert_eq(kvs_mem_register_ex(ctx, mem + 1024, 1024, &cuda, &b), KVS_OK);
    cr_assert_eq(kvs_mem_region_count(ctx), 2);

    /* Overlap, an unknown type, empty: no region, *region_p untouched. */
    cr_assert_eq(kvs_mem_register_ex(ctx, mem + 1000, 100, NULL, &c), KVS_ERR_INVALID_PARAM);
    cr_assert_eq(c, POISON);
    kvs_mem_register_params_t bogus = {.field_mask = KVS_MEM_REGISTER_FIELD_MEM_TYPE,
                                       .mem_type = (kvs_mem_type_t)9};
    cr_assert_eq(kvs_mem_register_ex(ctx, mem + 2048, 100, &bogus, &c), KVS_ERR_INVALID_PARAM);
    cr_assert_eq(c, POISON);
    cr_assert_eq(kvs_mem_register_ex(ctx, mem + 2048, 0, NULL, &c), KVS_ERR_INVALID_PARAM);
    cr_assert_eq(c, POISON);
    /* The deprecated form refuses the same overlap the same way. */
    cr_assert_eq(kvs_mem_register(ctx, mem + 1000, 100, KVS_MEM_HOST, &c), KVS_ERR_INVALID_PARAM);
    cr_assert_eq(c, POISON);
    cr_assert_eq(kvs_mem_region_count(ctx), 2);

    kvs_mem_deregister(a);
    kvs_mem_deregister(b);
    cr_assert_eq(kvs_mem_region_count(ctx), 0);
    kvs_ctx_destroy(ctx);
}

Test(outputs, pool_create_and_reads)
{
    kvs_ctx_h ctx = test_ctx(1 << 20, KVS_STRATEGY_LRU, 0.9, 0.8);
    kvs_layout_t l = test_layout("m");
    static uint8_t mem[4096];
    kvs_segment_t seg = {.base = mem, .block_stride = 256, .block_bytes = 256};
    kvs_pool_params_t pp = {.layout = &l, .segments = &seg, .num_segments = 1, .num_blocks = 0};
    kvs_pool_h pool = POISON;
    cr_assert_eq(kvs_pool_create(ctx, &pp, &pool), KVS_ERR_INVALID_PARAM, "zero blocks");
    cr_assert_eq(pool, POISON);

    test_pool_t p;
    test_pool_init(&p, ctx, "m", 4, 1, 256);
    uint32_t ids[2] = {0, 4}; /* 4 is out of range */
    uint32_t reads[2] = {77, 77};
    cr_assert_eq(kvs_pool_reads(p.pool, ids, 2, reads), KVS_ERR_INVALID_PARAM);
    cr_assert_eq(reads[0], 77);
    cr_assert_eq(reads[1], 77);
    uint32_t expected[2] = {77, 77};
    cr_assert_eq(kvs_pool_readers(p.pool, ids, 2, reads, expected), KVS_ERR_INVALID_PARAM);
    cr_assert(reads[0] == 77 && reads[1] == 77 && expected[0] == 77 && expected[1] == 77);
    test_pool_free(&p);
    kvs_ctx_destroy(ctx);
}

/* The fixed bug: kvs_publish wrote *published_p when it failed with NO_SPACE. */
Test(outputs, publish_no_space_leaves_count)
{
    kvs_ctx_h ctx = test_ctx(255, KVS_STRATEGY_LRU, 0.9, 0.8); /* under one 256-byte block */
    test_pool_t p;
    test_pool_init(&p, ctx, "m", 4, 1, 256);
    kvs_key_t k = test_key(1);
    uint32_t b = 0, bad = 4;
    size_t n = 99;
    cr_assert_eq(kvs_publish(p.pool, &k, &b, 1, 0, &n), KVS_ERR_NO_SPACE);
    cr_assert_eq(n, 99);
    cr_assert_eq(kvs_publish(p.pool, &k, &bad, 1, KVS_PUBLISH_ZERO_COPY, &n),
                 KVS_ERR_INVALID_PARAM);
    cr_assert_eq(n, 99);
    cr_assert_eq(kvs_publish(p.pool, &k, &b, 1, 0x80, &n), KVS_ERR_INVALID_PARAM, "bad flags");
    cr_assert_eq(n, 99);
    cr_assert_eq(kvs_publish(p.pool, &k, &b, 1, KVS_PUBLISH_ZERO_COPY, &n), KVS_OK);
    cr_assert_eq(n, 1);
    test_pool_free(&p);
    kvs_ctx_destroy(ctx);
}

Test(outputs, lookup_fetch_put)
{
    kvs_ctx_h ctx = test_ctx(1 << 20, KVS_STRATEGY_LRU, 0.9, 0.8);
    test_pool_t p, dst;
    test_pool_init(&p, ctx, "m", 4, 1, 256);
    test_pool_init(&dst, ctx, "m", 4, 1, 256);
    kvs_key_t keys[2] = {test_key(1), test_key(2)};
    uint32_t ids[2] = {0, 1};
    test_fill_block(&p, 0, 1);
    test_fill_block(&p, 1, 2);
    cr_assert_eq(kvs_publish(p.pool, keys, ids, 2, 0, NULL), KVS_OK);

    kvs_lease_h lease = POISON;
    cr_assert_eq(kvs_lookup(ctx, kvs_pool_layout_id(p.pool), NULL, 2, NULL, &lease),
                 KVS_ERR_INVALID_PARAM);
    cr_assert_eq(lease, POISON);
    /* A named peer without a transport: an error, and no lease handle. */
    kvs_lookup_params_t lp = {.field_mask = KVS_LOOKUP_FIELD_SOURCES | KVS_LOOKUP_FIELD_PEER,
                              .sources = KVS_SOURCE_PEER,
                              .peer = "127.0.0.1:1"};
    kvs_status_t st = kvs_lookup(ctx, kvs_pool_layout_id(p.pool), keys, 2, &lp, &lease);
    if (st != KVS_OK) {
        cr_assert_eq(lease, POISON, "%s wrote the lease", kvs_status_string(st));
    } else {
        kvs_lease_release(lease);
    }

    cr_assert_eq(kvs_lookup(ctx, kvs_pool_layout_id(p.pool), keys, 2, NULL, &lease), KVS_OK);
    cr_assert_eq(kvs_lease_hits(lease), 2);
    kvs_request_h req = POISON;
    uint32_t three[3] = {0, 1, 2};
    cr_assert_eq(kvs_fetch(lease, dst.pool, three, 3, NULL, &req), KVS_ERR_INVALID_PARAM,
                 "more blocks than hits");
    cr_assert_eq(req, POISON);
    uint32_t oob[2] = {0, 4};
    cr_assert_eq(kvs_fetch(lease, dst.pool, oob, 2, NULL, &req), KVS_ERR_INVALID_PARAM);
    cr_assert_eq(req, POISON);
    kvs_lease_release(lease);

    /* No KVSHARE_POOL: kvs_put_ex and the deprecated kvs_put refuse alike. */
    kvs_put_params_t pp = {.field_mask = KVS_PUT_FIELD_TIMEOUT_MS, .timeout_ms = 100};
    cr_assert_eq(kvs_put_ex(p.pool, keys, ids, 2, &pp, &req), KVS_ERR_UNSUPPORTED);
    cr_assert_eq(req, POISON);
    cr_assert_eq(kvs_put_ex(p.pool, keys, ids, 2, NULL, &req), KVS_ERR_UNSUPPORTED);
    cr_assert_eq(req, POISON);
    cr_assert_eq(kvs_put(p.pool, keys, ids, 2, &req), KVS_ERR_UNSUPPORTED);
    cr_assert_eq(req, POISON);
    cr_assert_eq(kvs_put_ex(p.pool, keys, oob, 2, NULL, &req), KVS_ERR_INVALID_PARAM);
    cr_assert_eq(req, POISON);

    test_pool_free(&dst);
    test_pool_free(&p);
    kvs_ctx_destroy(ctx);
}
