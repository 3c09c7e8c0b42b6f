/* SPDX-License-Identifier: Apache-2.0 */
/* test_keys.c - block keys: known vLLM values, chaining, extra keys, edge cases.
 * The randomized comparison against vLLM's own algorithm is keys_vs_vllm.py. */
#include "kvs_int.h"

#include <criterion/criterion.h>
#include <string.h>

static kvs_hasher_h make(kvs_hash_algo_t algo, const char *seed, uint32_t bt)
{
    kvs_hasher_params_t p = {.field_mask = KVS_HASHER_FIELD_ALGO | KVS_HASHER_FIELD_SEED |
                                           KVS_HASHER_FIELD_BLOCK_TOKENS,
                             .algo = algo,
                             .seed = seed,
                             .block_tokens = bt};
    kvs_hasher_h h = NULL;
    cr_assert_eq(kvs_hasher_create(&p, &h), KVS_OK);
    return h;
}

static size_t chain(kvs_hasher_h h, const kvs_chain_params_t *cp, const uint32_t *t, size_t n,
                    kvs_key_t *keys, size_t max)
{
    size_t got = 999;
    cr_assert_eq(kvs_hasher_chain(h, cp, t, n, keys, max, &got), KVS_OK);
    return got;
}

static void hex(const kvs_key_t *k, size_t len, char *out)
{
    cr_assert_eq(kvs_key_format_hex(k, len, out, 2 * len + 1), KVS_OK);
}

/* NONE_HASH for PYTHONHASHSEED=0, as printed by vLLM (REFERENCES.md). */
Test(keys, none_hash_matches_vllm)
{
    kvs_hasher_h h = make(KVS_HASH_SHA256_CBOR, "0", 16);
    kvs_key_t k;
    char s[65];
    kvs_hasher_none_hash(h, &k);
    hex(&k, 32, s);
    cr_assert_str_eq(s, "4e1195df020de59e0d65a33a4279f1183e7ae4e5d980e309f8b55adff2e61c3e");
    kvs_hasher_destroy(h);
}

Test(keys, empty_and_partial_prompts)
{
    kvs_hasher_h h = make(KVS_HASH_SHA256_CBOR, "0", 16);
    uint32_t t[40];
    kvs_key_t keys[4];
    for (uint32_t i = 0; i < 40; i++)
        t[i] = i;
    cr_assert_eq(chain(h, NULL, NULL, 0, NULL, 0), 0, "empty prompt: no keys");
    cr_assert_eq(chain(h, NULL, t, 15, keys, 4), 0, "one partial block: no keys");
    cr_assert_eq(chain(h, NULL, t, 40, keys, 4), 2, "partial tail ignored");
    kvs_key_t k2[4];
    cr_assert_eq(chain(h, NULL, t, 32, k2, 4), 2);
    cr_assert_eq(memcmp(keys, k2, 2 * sizeof(kvs_key_t)), 0, "tail must not change keys");
    cr_assert_eq(chain(h, NULL, t, 40, keys, 1), 1, "max_keys caps the output");
    kvs_hasher_destroy(h);
}

Test(keys, continued_chain_equals_full_chain)
{
    kvs_hasher_h h = make(KVS_HASH_SHA256_CBOR, "42", 4);
    uint32_t t[24];
    for (uint32_t i = 0; i < 24; i++)
        t[i] = 1000 + i * 7;
    kvs_key_t full[6], part[6];
    cr_assert_eq(chain(h, NULL, t, 24, full, 6), 6);
    kvs_chain_params_t cp = {.field_mask = KVS_CHAIN_FIELD_PARENT, .parent = &full[2]};
    cr_assert_eq(chain(h, &cp, t + 12, 12, part, 6), 3);
    cr_assert_eq(memcmp(part, full + 3, 3 * sizeof(kvs_key_t)), 0);
    kvs_hasher_destroy(h);
}

Test(keys, large_token_ids_and_cbor_boundaries)
{
    /* Every CBOR head width: 0..23 inline, 24..255, ..65535, ..2^32-1. */
    kvs_hasher_h h = make(KVS_HASH_SHA256_CBOR, "0", 8);
    uint32_t a[8] = {0, 23, 24, 255, 256, 65535, 65536, UINT32_MAX};
    uint32_t b[8] = {0, 23, 24, 255, 256, 65535, 65536, UINT32_MAX - 1};
    kvs_key_t ka, kb;
    cr_assert_eq(chain(h, NULL, a, 8, &ka, 1), 1);
    cr_assert_eq(chain(h, NULL, b, 8, &kb, 1), 1);
    cr_assert_neq(memcmp(&ka, &kb, sizeof(ka)), 0);
    kvs_hasher_destroy(h);
}

Test(keys, salt_first_block_only_lora_every_block)
{
    kvs_hasher_h h = make(KVS_HASH_SHA256_CBOR, "0", 4);
    uint32_t t[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    kvs_key_t plain[2], salted[2], lora[2], empty[2], cont[1];
    chain(h, NULL, t, 8, plain, 2);
    kvs_chain_params_t cs = {.field_mask = KVS_CHAIN_FIELD_CACHE_SALT, .cache_salt = "tenant-a"};
    chain(h, &cs, t, 8, salted, 2);
    cr_assert_neq(memcmp(&plain[0], &salted[0], sizeof(kvs_key_t)), 0);
    cr_assert_neq(memcmp(&plain[1], &salted[1], sizeof(kvs_key_t)), 0, "salt reaches block 1");
    kvs_chain_params_t cl = {.field_mask = KVS_CHAIN_FIELD_LORA_NAME, .lora_name = "adapter"};
    chain(h, &cl, t, 8, lora, 2);
    cr_assert_neq(memcmp(&plain[0], &lora[0], sizeof(kvs_key_t)), 0);
    kvs_chain_params_t ce = {.field_mask = KVS_CHAIN_FIELD_CACHE_SALT | KVS_CHAIN_FIELD_LORA_NAME,
                             .cache_salt = "",
                             .lora_name = ""};
    chain(h, &ce, t, 8, empty, 2);
    cr_assert_eq(memcmp(plain, empty, sizeof(plain)), 0, "empty salt/name = none (vLLM)");
    /* A continued chain is not the prompt's first block: no salt applies. */
    kvs_chain_params_t cc = {.field_mask = KVS_CHAIN_FIELD_PARENT | KVS_CHAIN_FIELD_CACHE_SALT,
                             .parent = &plain[0],
                             .cache_salt = "tenant-a"};
    chain(h, &cc, t + 4, 4, cont, 1);
    cr_assert_eq(memcmp(&cont[0], &plain[1], sizeof(kvs_key_t)), 0);
    kvs_hasher_destroy(h);
}

Test(keys, xxhash_is_16_bytes_zero_padded)
{
    kvs_hasher_h h = make(KVS_HASH_XXHASH_CBOR, "0", 16);
    cr_assert_eq(kvs_hasher_digest_len(h), 16);
    uint32_t t[16] = {0};
    kvs_key_t k;
    chain(h, NULL, t, 16, &k, 1);
    for (int i = 16; i < 32; i++)
        cr_assert_eq(k.bytes[i], 0);
    kvs_hasher_destroy(h);
}

Test(keys, int_view_is_last_8_digest_bytes_big_endian)
{
    kvs_key_t k;
    for (int i = 0; i < 32; i++)
        k.bytes[i] = (uint8_t)i;
    cr_assert_eq(kvs_key_to_u64(&k, 32), 0x18191a1b1c1d1e1full);
    cr_assert_eq(kvs_key_to_u64(&k, 16), 0x08090a0b0c0d0e0full);
}

Test(keys, seeds_differ_and_long_seeds_work)
{
    char long_seed[1000];
    memset(long_seed, 'x', sizeof(long_seed) - 1);
    long_seed[sizeof(long_seed) - 1] = '\0';
    kvs_hasher_h a = make(KVS_HASH_SHA256_CBOR, "0", 16);
    kvs_hasher_h b = make(KVS_HASH_SHA256_CBOR, long_seed, 16);
    kvs_key_t ka, kb;
    kvs_hasher_none_hash(a, &ka);
    kvs_hasher_none_hash(b, &kb);
    cr_assert_neq(memcmp(&ka, &kb, sizeof(ka)), 0);
    kvs_hasher_destroy(a);
    kvs_hasher_destroy(b);
}

Test(keys, bad_params)
{
    kvs_hasher_h h = (kvs_hasher_h)0x1;
    kvs_hasher_params_t p = {.field_mask = KVS_HASHER_FIELD_BLOCK_TOKENS, .block_tokens = 0};
    cr_assert_eq(kvs_hasher_create(&p, &h), KVS_ERR_INVALID_PARAM);
    p.field_mask = KVS_HASHER_FIELD_ALGO;
    p.algo = (kvs_hash_algo_t)7;
    cr_assert_eq(kvs_hasher_create(&p, &h), KVS_ERR_INVALID_PARAM);
    cr_assert_eq(h, (kvs_hasher_h)0x1, "failing create must not write *hasher_p");
    cr_assert_eq(kvs_hasher_create(NULL, NULL), KVS_ERR_INVALID_PARAM);
    kvs_hasher_h ok = make(KVS_HASH_SHA256_CBOR, "0", 16);
    size_t n;
    uint32_t t[16] = {0};
    cr_assert_eq(kvs_hasher_chain(ok, NULL, t, 16, NULL, 1, &n), KVS_ERR_INVALID_PARAM);
    cr_assert_eq(kvs_hasher_chain(ok, NULL, NULL, 16, NULL, 0, &n), KVS_ERR_INVALID_PARAM);
    kvs_hasher_destroy(ok);
    kvs_hasher_destroy(NULL);
}
