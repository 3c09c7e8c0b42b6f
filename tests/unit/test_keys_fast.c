/* SPDX-License-Identifier: Apache-2.0 */
/* test_keys_fast.c - kvs_hasher_chain's fast path against a plain reference.
 *
 * The chain encodes each block with branch-free integer heads into a buffer
 * whose prefix is written once and whose parent is the previous digest
 * written in place. The reference here rebuilds every block's CBOR from
 * scratch with the generic encoder (kvs__cbor_head / kvs__cbor_string, the
 * encoder test_keys and keys_vs_vllm check against cbor2) and hashes it with
 * one-shot XXH3-128 / SHA-256, with the SIMD token encoder (where the CPU has
 * one) and with the scalar one. Random blocks of many sizes, tokens of every
 * CBOR width, LoRA names, salts and continued chains: any divergence fails. */
#include "cbor_int.h"
#include "kvs_int.h"

#include <criterion/criterion.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

static uint64_t rng(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

/* A token of a random CBOR width (1, 2, 3 or 5 bytes), often on a boundary. */
static uint32_t rand_token(uint64_t *s)
{
    static const uint32_t edges[] = {0,     1,     22,     23,          24,          25,
                                     254,   255,   256,    257,         65534,       65535,
                                     65536, 65537, 151935, 0x7fffffffu, 0x80000000u, UINT32_MAX};
    uint64_t r = rng(s);
    switch (r % 6) {
    case 0:
        return edges[(r >> 8) % (sizeof(edges) / sizeof(edges[0]))];
    case 1:
        return (uint32_t)((r >> 8) % 24);
    case 2:
        return (uint32_t)(24 + (r >> 8) % (256 - 24));
    case 3:
        return (uint32_t)(256 + (r >> 8) % (65536 - 256));
    case 4:
        return (uint32_t)(65536 + (r >> 8) % 200000); /* a real vocabulary */
    default:
        return (uint32_t)(r >> 32);
    }
}

/* The reference key of one block: the whole CBOR built by the generic encoder. */
static void ref_block(kvs_hash_algo_t algo, const kvs_key_t *parent, const uint32_t *tok,
                      uint32_t bt, const char *lora, const char *salt, kvs_key_t *out)
{
    size_t dlen = algo == KVS_HASH_SHA256_CBOR ? 32 : 16;
    size_t cap = 64 + (size_t)bt * KVS_CBOR_HEAD_MAX + (lora ? strlen(lora) : 0) +
                 (salt ? strlen(salt) : 0) + 4 * KVS_CBOR_HEAD_MAX;
    uint8_t *buf = malloc(cap);
    cr_assert_not_null(buf);
    size_t n = kvs__cbor_head(buf, KVS_CBOR_ARRAY, 3);
    n += kvs__cbor_string(buf + n, KVS_CBOR_BYTES, parent->bytes, dlen);
    n += kvs__cbor_head(buf + n, KVS_CBOR_ARRAY, bt);
    for (uint32_t t = 0; t < bt; t++)
        n += kvs__cbor_head(buf + n, KVS_CBOR_UINT, tok[t]);
    unsigned count = (unsigned)(lora != NULL) + (unsigned)(salt != NULL);
    if (count == 0) {
        buf[n++] = KVS_CBOR_NULL;
    } else {
        n += kvs__cbor_head(buf + n, KVS_CBOR_ARRAY, count);
        if (lora != NULL)
            n += kvs__cbor_string(buf + n, KVS_CBOR_TEXT, lora, strlen(lora));
        if (salt != NULL)
            n += kvs__cbor_string(buf + n, KVS_CBOR_TEXT, salt, strlen(salt));
    }
    cr_assert_leq(n, cap);
    memset(out, 0, sizeof(*out));
    if (algo == KVS_HASH_XXHASH_CBOR) {
        XXH128_canonical_t c;
        XXH128_canonicalFromHash(&c, XXH3_128bits(buf, n));
        memcpy(out->bytes, c.digest, 16);
    } else {
        unsigned int len = 0;
        cr_assert(EVP_Digest(buf, n, out->bytes, &len, EVP_sha256(), NULL));
        cr_assert_eq(len, 32);
    }
    free(buf);
}

static void rand_name(uint64_t *s, char *out, size_t max)
{
    /* Lengths across the text-head widths: 0 (absent), <24, 24..255, 256+. */
    static const size_t lens[] = {0, 1, 5, 23, 24, 40, 255, 256, 300};
    size_t len = lens[rng(s) % (sizeof(lens) / sizeof(lens[0]))];
    if (len >= max)
        len = max - 1;
    for (size_t i = 0; i < len; i++)
        out[i] = (char)('a' + rng(s) % 26);
    out[len] = '\0';
}

Test(keys_fast, uint32_head_matches_generic_head)
{
    uint64_t s = 0x1234567;
    uint8_t a[16], b[16];
    for (int i = 0; i < 200000; i++) {
        uint32_t v = i < 70000 ? (uint32_t)i : rand_token(&s);
        memset(a, 0xaa, sizeof(a));
        memset(b, 0xaa, sizeof(b));
        size_t na = kvs__cbor_uint32(a, v);
        size_t nb = kvs__cbor_head(b, KVS_CBOR_UINT, v);
        cr_assert_eq(na, nb, "length of %u", v);
        cr_assert_eq(memcmp(a, b, na), 0, "bytes of %u", v);
        cr_assert_leq(na + KVS_CBOR_UINT32_SLACK, 8);
        for (size_t j = 8; j < sizeof(a); j++)
            cr_assert_eq(a[j], 0xaa, "wrote past 8 bytes for %u", v);
    }
}

static void check_algo(kvs_hash_algo_t algo, uint64_t seed, bool simd)
{
    static const uint32_t sizes[] = {1,  2,  3,  4,  5,  7,   8,   15,  16,  17, 23,
                                     24, 31, 32, 33, 64, 100, 255, 256, 257, 600};
    uint64_t s = seed;
    enum { MAX_BLOCKS = 9 };
    for (size_t si = 0; si < sizeof(sizes) / sizeof(sizes[0]); si++) {
        for (int round = 0; round < 12; round++) {
            uint32_t bt = sizes[si];
            char hseed[32];
            snprintf(hseed, sizeof(hseed), "%llu", (unsigned long long)(rng(&s) % 100000));
            kvs_hasher_params_t hp = {.field_mask = KVS_HASHER_FIELD_ALGO | KVS_HASHER_FIELD_SEED |
                                                    KVS_HASHER_FIELD_BLOCK_TOKENS,
                                      .algo = algo,
                                      .seed = hseed,
                                      .block_tokens = bt};
            kvs_hasher_h h = NULL;
            cr_assert_eq(kvs_hasher_create(&hp, &h), KVS_OK);
            if (!simd)
                kvs__hasher_set_simd(h, false);

            size_t nblocks = 1 + rng(&s) % MAX_BLOCKS;
            size_t ntok = nblocks * bt + rng(&s) % bt; /* maybe a partial tail */
            uint32_t *tok = malloc(ntok * sizeof(*tok));
            cr_assert_not_null(tok);
            for (size_t i = 0; i < ntok; i++)
                tok[i] = rand_token(&s);
            char lora[320], salt[320];
            rand_name(&s, lora, sizeof(lora));
            rand_name(&s, salt, sizeof(salt));
            kvs_key_t given_parent;
            for (size_t i = 0; i < sizeof(given_parent.bytes); i++)
                given_parent.bytes[i] = (uint8_t)rng(&s);
            if (algo == KVS_HASH_XXHASH_CBOR)
                memset(given_parent.bytes + 16, 0, 16);
            bool use_parent = rng(&s) % 3 == 0;

            kvs_chain_params_t cp = {.field_mask =
                                         KVS_CHAIN_FIELD_CACHE_SALT | KVS_CHAIN_FIELD_LORA_NAME,
                                     .cache_salt = salt,
                                     .lora_name = lora};
            if (use_parent) {
                cp.field_mask |= KVS_CHAIN_FIELD_PARENT;
                cp.parent = &given_parent;
            }
            kvs_key_t got[MAX_BLOCKS], want;
            size_t nk = 0;
            cr_assert_eq(kvs_hasher_chain(h, &cp, tok, ntok, got, MAX_BLOCKS, &nk), KVS_OK);
            cr_assert_eq(nk, nblocks);

            kvs_key_t parent;
            if (use_parent)
                parent = given_parent;
            else
                kvs_hasher_none_hash(h, &parent);
            const char *l = lora[0] ? lora : NULL;
            for (size_t b = 0; b < nblocks; b++) {
                const char *sl = (b == 0 && !use_parent && salt[0]) ? salt : NULL;
                ref_block(algo, &parent, tok + b * bt, bt, l, sl, &want);
                cr_assert_eq(
                    memcmp(&got[b], &want, sizeof(want)), 0,
                    "algo %d, %u-token blocks, block %zu of %zu, lora %zu B, salt %zu "
                    "B, parent given %d, simd %d: fast path differs from the generic encoder",
                    (int)algo, bt, b, nblocks, strlen(lora), strlen(salt), (int)use_parent,
                    (int)simd);
                parent = want;
            }
            free(tok);
            kvs_hasher_destroy(h);
        }
    }
}

Test(keys_fast, xxhash_chain_matches_generic_encoder)
{
    check_algo(KVS_HASH_XXHASH_CBOR, 0x9e3779b97f4a7c15ull, true);
    check_algo(KVS_HASH_XXHASH_CBOR, 0x9e3779b97f4a7c15ull, false);
}

Test(keys_fast, sha256_chain_matches_generic_encoder)
{
    check_algo(KVS_HASH_SHA256_CBOR, 0xc2b2ae3d27d4eb4full, true);
    check_algo(KVS_HASH_SHA256_CBOR, 0xc2b2ae3d27d4eb4full, false);
}

Test(keys_fast, simd_and_scalar_agree_on_long_chains)
{
    /* 8k tokens of a real vocabulary, as `kvshare bench index` hashes. */
    kvs_hasher_params_t hp = {.field_mask = KVS_HASHER_FIELD_ALGO | KVS_HASHER_FIELD_BLOCK_TOKENS,
                              .algo = KVS_HASH_XXHASH_CBOR,
                              .block_tokens = 16};
    kvs_hasher_h h = NULL;
    cr_assert_eq(kvs_hasher_create(&hp, &h), KVS_OK);
    static uint32_t tok[8192];
    static kvs_key_t a[512], b[512];
    uint64_t s = 42;
    for (size_t i = 0; i < 8192; i++)
        tok[i] = (uint32_t)(rng(&s) % 152064);
    size_t na = 0, nb = 0;
    bool simd = kvs__hasher_set_simd(h, true);
    cr_assert_eq(kvs_hasher_chain(h, NULL, tok, 8192, a, 512, &na), KVS_OK);
    cr_assert_not(kvs__hasher_set_simd(h, false));
    cr_assert_eq(kvs_hasher_chain(h, NULL, tok, 8192, b, 512, &nb), KVS_OK);
    cr_assert_eq(na, 512);
    cr_assert_eq(nb, 512);
    cr_assert_eq(memcmp(a, b, sizeof(a)), 0, "simd %d", (int)simd);
    kvs_hasher_destroy(h);
}
