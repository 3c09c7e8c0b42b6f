/* SPDX-License-Identifier: Apache-2.0 */
/* keys.c - chained block keys, byte-identical to vLLM's sha256_cbor and xxhash_cbor.
 *
 * vLLM (v1/core/kv_cache_utils.py) hashes each full block as
 *     H(cbor2.dumps((parent or NONE_HASH, tuple(tokens), extra), canonical=True))
 * with NONE_HASH = H(cbor(PYTHONHASHSEED string)) and
 *     extra = tuple(lora_name? + mm keys + cache_salt (block 0 only) + ...) or None.
 * The parent is the previous digest as a byte string of its own length
 * (32 bytes for sha256, 16 for xxh3-128). */
#include "kvs_int.h"
#include "cbor_int.h"

#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>
/* Inlined: one short input per block, where the calls are a visible share. */
#define XXH_INLINE_ALL
#include <xxhash.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <tmmintrin.h>
#define KVS_KEYS_SSSE3 1
#endif

/* The encoder's stores reach this far past the last byte it encodes. */
#define KVS_TOKENS_SLACK 16u

struct kvs_hasher {
    kvs_hash_algo_t algo;
    uint32_t block_tokens;
    size_t digest_len;
    EVP_MD *md; /* fetched once: implicit fetches per digest are slow in OpenSSL 3 */
    kvs_key_t none_hash;
    bool ssse3; /* encode tokens four at a time (x86-64 with SSSE3) */
    /* For a pair of tokens of CBOR classes (ca, cb) (0..3: 1, 2, 3 or 5 bytes),
     * at [ca | cb << 2]: the shuffle from the pair's [BE a, BE b, hdr a,
     * hdr b] to its encoding, and that encoding's length. */
    uint8_t pair_mask[16][16];
    uint8_t pair_len[16];
};

static void build_pair_tables(kvs_hasher_h h)
{
    for (unsigned idx = 0; idx < 16; idx++) {
        unsigned ka = (1u << (idx & 3)) >> 1, kb = (1u << (idx >> 2)) >> 1;
        uint8_t *m = h->pair_mask[idx];
        unsigned n = 0;
        memset(m, 0x80, 16); /* 0x80: a zero byte */
        m[n++] = 8;
        for (unsigned j = 4 - ka; j < 4; j++)
            m[n++] = (uint8_t)j;
        m[n++] = 9;
        for (unsigned j = 8 - kb; j < 8; j++)
            m[n++] = (uint8_t)j;
        h->pair_len[idx] = (uint8_t)n;
    }
}

#ifdef KVS_KEYS_SSSE3
/* Canonical CBOR uint heads of tok[0..n), n a multiple of 4, at p; returns the
 * end. Four tokens at a time: their classes by compares, their headers by
 * select, then one shuffle per pair from [BE a, BE b, hdr a, hdr b] to the
 * pair's bytes. Stores 16 bytes per pair (KVS_TOKENS_SLACK). */
__attribute__((target("ssse3"))) static uint8_t *
encode_tokens_ssse3(const struct kvs_hasher *h, uint8_t *p, const uint32_t *tok, size_t n)
{
    const __m128i sign = _mm_set1_epi32(INT32_MIN);
    const __m128i c23 = _mm_set1_epi32(23);
    const __m128i gt23 = _mm_set1_epi32((int32_t)(23u ^ 0x80000000u));
    const __m128i gt255 = _mm_set1_epi32((int32_t)(255u ^ 0x80000000u));
    const __m128i gt65535 = _mm_set1_epi32((int32_t)(65535u ^ 0x80000000u));
    const __m128i bswap = _mm_setr_epi8(3, 2, 1, 0, 7, 6, 5, 4, 11, 10, 9, 8, 15, 14, 13, 12);
    const __m128i hpack =
        _mm_setr_epi8(0, 4, -1, -1, -1, -1, -1, -1, 8, 12, -1, -1, -1, -1, -1, -1);
    const __m128i cpack =
        _mm_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
    for (size_t t = 0; t < n; t += 4) {
        __m128i x = _mm_loadu_si128((const __m128i *)(const void *)(tok + t));
        __m128i xs = _mm_xor_si128(x, sign); /* unsigned order as signed */
        __m128i g1 = _mm_cmpgt_epi32(xs, gt23);
        __m128i g2 = _mm_cmpgt_epi32(xs, gt255);
        __m128i g3 = _mm_cmpgt_epi32(xs, gt65535);
        __m128i cls = _mm_sub_epi32(_mm_sub_epi32(_mm_sub_epi32(_mm_setzero_si128(), g1), g2), g3);
        /* Header: the value itself below 24, else 24 + class - 1. */
        __m128i hdr =
            _mm_or_si128(_mm_and_si128(g1, _mm_add_epi32(cls, c23)), _mm_andnot_si128(g1, x));
        __m128i xb = _mm_shuffle_epi8(x, bswap);
        __m128i hp = _mm_shuffle_epi8(hdr, hpack);
        __m128i r01 = _mm_unpacklo_epi64(xb, hp), r23 = _mm_unpackhi_epi64(xb, hp);
        uint32_t c = (uint32_t)_mm_cvtsi128_si32(_mm_shuffle_epi8(cls, cpack));
        unsigned i01 = (c & 3u) | ((c >> 6) & 0xcu);
        unsigned i23 = ((c >> 16) & 3u) | ((c >> 22) & 0xcu);
        _mm_storeu_si128(
            (__m128i *)(void *)p,
            _mm_shuffle_epi8(r01,
                             _mm_loadu_si128((const __m128i *)(const void *)h->pair_mask[i01])));
        p += h->pair_len[i01];
        _mm_storeu_si128(
            (__m128i *)(void *)p,
            _mm_shuffle_epi8(r23,
                             _mm_loadu_si128((const __m128i *)(const void *)h->pair_mask[i23])));
        p += h->pair_len[i23];
    }
    return p;
}
#endif

/* Canonical CBOR uint heads of tok[0..n) at p; returns the end. */
static inline uint8_t *encode_tokens(const struct kvs_hasher *h, uint8_t *p, const uint32_t *tok,
                                     size_t n)
{
    size_t t = 0;
#ifdef KVS_KEYS_SSSE3
    if (h->ssse3 && n >= 4) {
        t = n & ~(size_t)3;
        p = encode_tokens_ssse3(h, p, tok, t);
    }
#else
    (void)h;
#endif
    for (; t < n; t++)
        p += kvs__cbor_uint32(p, tok[t]);
    return p;
}

/* Digest of @len bytes into @out (zero-padded to 32). @mdctx is NULL for xxh3. */
static kvs_status_t digest(const kvs_hasher_h h, EVP_MD_CTX *mdctx, const uint8_t *data, size_t len,
                           kvs_key_t *out)
{
    memset(out->bytes, 0, sizeof(out->bytes));
    if (h->algo == KVS_HASH_XXHASH_CBOR) {
        XXH128_canonical_t c;
        XXH128_canonicalFromHash(&c, XXH3_128bits(data, len));
        memcpy(out->bytes, c.digest, sizeof(c.digest));
        return KVS_OK;
    }
    unsigned int n = 0;
    if (!EVP_DigestInit_ex2(mdctx, h->md, NULL) || !EVP_DigestUpdate(mdctx, data, len) ||
        !EVP_DigestFinal_ex(mdctx, out->bytes, &n) || n != 32)
        return KVS_ERR_NO_MEMORY; /* OpenSSL fails here only on allocation */
    return KVS_OK;
}

kvs_status_t kvs_hasher_create(const kvs_hasher_params_t *params, kvs_hasher_h *hasher_p)
{
    kvs_hash_algo_t algo = KVS_HASH_SHA256_CBOR;
    uint32_t block_tokens = 16;
    const char *seed = getenv("PYTHONHASHSEED");
    kvs_status_t status;

    if (hasher_p == NULL)
        return KVS_ERR_INVALID_PARAM;
    if (params != NULL) {
        if (params->field_mask & KVS_HASHER_FIELD_ALGO)
            algo = params->algo;
        if (params->field_mask & KVS_HASHER_FIELD_SEED)
            seed = params->seed;
        if (params->field_mask & KVS_HASHER_FIELD_BLOCK_TOKENS)
            block_tokens = params->block_tokens;
    }
    if (seed == NULL)
        seed = "0";
    if ((algo != KVS_HASH_SHA256_CBOR && algo != KVS_HASH_XXHASH_CBOR) || block_tokens == 0)
        return KVS_ERR_INVALID_PARAM;

    kvs_hasher_h h = kvs__calloc(1, sizeof(*h));
    if (h == NULL)
        return KVS_ERR_NO_MEMORY;
    h->algo = algo;
    h->block_tokens = block_tokens;
    h->digest_len = (algo == KVS_HASH_SHA256_CBOR) ? 32 : 16;
    build_pair_tables(h);
#ifdef KVS_KEYS_SSSE3
    __builtin_cpu_init(); /* cheap, and needed before constructors have run */
    h->ssse3 = __builtin_cpu_supports("ssse3");
#endif

    EVP_MD_CTX *mdctx = NULL;
    if (algo == KVS_HASH_SHA256_CBOR) {
        h->md = EVP_MD_fetch(NULL, "SHA256", NULL);
        mdctx = EVP_MD_CTX_new();
        if (h->md == NULL || mdctx == NULL) {
            status = KVS_ERR_NO_MEMORY;
            goto err_free;
        }
    }

    /* NONE_HASH = H(cbor text string of the seed). */
    size_t slen = strlen(seed);
    uint8_t small[256];
    uint8_t *buf = small;
    if (slen + KVS_CBOR_HEAD_MAX > sizeof(small)) {
        buf = kvs__malloc(slen + KVS_CBOR_HEAD_MAX);
        if (buf == NULL) {
            status = KVS_ERR_NO_MEMORY;
            goto err_free;
        }
    }
    size_t n = kvs__cbor_string(buf, KVS_CBOR_TEXT, seed, slen);
    status = digest(h, mdctx, buf, n, &h->none_hash);
    if (buf != small)
        kvs__free(buf);
    if (status != KVS_OK)
        goto err_free;
    EVP_MD_CTX_free(mdctx);
    *hasher_p = h;
    return KVS_OK;

err_free:
    EVP_MD_CTX_free(mdctx);
    EVP_MD_free(h->md);
    kvs__free(h);
    return status;
}

void kvs_hasher_destroy(kvs_hasher_h hasher)
{
    if (hasher == NULL)
        return;
    EVP_MD_free(hasher->md);
    kvs__free(hasher);
}

bool kvs__hasher_set_simd(kvs_hasher_h h, bool on)
{
#ifdef KVS_KEYS_SSSE3
    h->ssse3 = on && __builtin_cpu_supports("ssse3");
#else
    (void)on;
#endif
    return h->ssse3;
}

size_t kvs_hasher_digest_len(kvs_hasher_h hasher)
{
    return hasher->digest_len;
}

void kvs_hasher_none_hash(kvs_hasher_h hasher, kvs_key_t *key_p)
{
    *key_p = hasher->none_hash;
}

/* Encodes the extra-keys tuple, or CBOR null when it is empty. */
static size_t encode_extra(uint8_t *p, const char *lora, const char *salt)
{
    unsigned count = (unsigned)(lora != NULL) + (unsigned)(salt != NULL);
    if (count == 0) {
        p[0] = KVS_CBOR_NULL;
        return 1;
    }
    size_t n = kvs__cbor_head(p, KVS_CBOR_ARRAY, count);
    /* vLLM's order: lora + mm + cache_salt + prompt_embeds. */
    if (lora != NULL)
        n += kvs__cbor_string(p + n, KVS_CBOR_TEXT, lora, strlen(lora));
    if (salt != NULL)
        n += kvs__cbor_string(p + n, KVS_CBOR_TEXT, salt, strlen(salt));
    return n;
}

kvs_status_t kvs_hasher_chain(kvs_hasher_h h, const kvs_chain_params_t *params,
                              const uint32_t *tokens, size_t ntokens, kvs_key_t *keys,
                              size_t max_keys, size_t *nkeys_p)
{
    const kvs_key_t *parent;
    const char *salt = NULL, *lora = NULL;
    kvs_status_t status = KVS_OK;

    if (h == NULL || nkeys_p == NULL || (ntokens > 0 && tokens == NULL) ||
        (max_keys > 0 && keys == NULL))
        return KVS_ERR_INVALID_PARAM;
    parent = &h->none_hash;
    if (params != NULL) {
        if ((params->field_mask & KVS_CHAIN_FIELD_PARENT) && params->parent != NULL)
            parent = params->parent;
        if (params->field_mask & KVS_CHAIN_FIELD_CACHE_SALT)
            salt = params->cache_salt;
        if (params->field_mask & KVS_CHAIN_FIELD_LORA_NAME)
            lora = params->lora_name;
    }
    /* vLLM treats an empty salt or name as absent ("if request.cache_salt"). */
    if (salt != NULL && salt[0] == '\0')
        salt = NULL;
    if (lora != NULL && lora[0] == '\0')
        lora = NULL;
    /* The salt belongs to the prompt's first block only, not a continued chain. */
    if (parent != &h->none_hash)
        salt = NULL;

    size_t nblocks = ntokens / h->block_tokens;
    if (nblocks > max_keys)
        nblocks = max_keys;
    if (nblocks == 0) {
        *nkeys_p = 0;
        return KVS_OK;
    }

    size_t extra_max = 2 * KVS_CBOR_HEAD_MAX + 1 + (lora ? strlen(lora) + KVS_CBOR_HEAD_MAX : 0) +
                       (salt ? strlen(salt) + KVS_CBOR_HEAD_MAX : 0);
    /* One block's input, [parent, [tokens...], extra]: the array head and the
     * parent's head are the same for every block, so they are written once,
     * and each block's digest is written in place as the next one's parent.
     * Only the tokens and the extra keys are encoded per block. */
    const size_t dlen = h->digest_len;
    size_t need = 1 + KVS_CBOR_HEAD_MAX + dlen + KVS_CBOR_HEAD_MAX + (size_t)h->block_tokens * 5 +
                  KVS_TOKENS_SLACK + extra_max;
    uint8_t small[2048];
    uint8_t *buf = small;
    EVP_MD_CTX *mdctx = NULL;
    /* Extra keys of the later blocks are the same for every block, so they
     * are encoded once; block 0 may differ by the salt. */
    uint8_t extra_rest[KVS_CBOR_HEAD_MAX * 4 + 1];
    uint8_t *extra_rest_buf = extra_rest;
    size_t extra_rest_len = 0;
    if (need > sizeof(small)) {
        buf = kvs__malloc(need);
        if (buf == NULL)
            return KVS_ERR_NO_MEMORY;
    }
    if (h->algo == KVS_HASH_SHA256_CBOR) {
        mdctx = EVP_MD_CTX_new();
        if (mdctx == NULL) {
            status = KVS_ERR_NO_MEMORY;
            goto out;
        }
    }

    if (lora != NULL) {
        extra_rest_buf = kvs__malloc(extra_max);
        if (extra_rest_buf == NULL) {
            status = KVS_ERR_NO_MEMORY;
            goto out;
        }
    }
    extra_rest_len = encode_extra(extra_rest_buf, lora, NULL);

    buf[0] = 0x83; /* array of 3 */
    const size_t off_parent = 1 + kvs__cbor_head(buf + 1, KVS_CBOR_BYTES, dlen);
    memcpy(buf + off_parent, parent->bytes, dlen);
    uint8_t *const tok0 = buf + off_parent + dlen;
    uint8_t *const tok_start = tok0 + kvs__cbor_head(tok0, KVS_CBOR_ARRAY, h->block_tokens);
    const uint32_t bt = h->block_tokens;
    const uint32_t *tok = tokens;
    for (size_t b = 0; b < nblocks; b++, tok += bt) {
        uint8_t *p = tok_start;
        p = encode_tokens(h, p, tok, bt);
        if (b == 0 && salt != NULL) {
            p += encode_extra(p, lora, salt);
        } else if (extra_rest_len == 1) {
            *p++ = extra_rest_buf[0];
        } else {
            memcpy(p, extra_rest_buf, extra_rest_len);
            p += extra_rest_len;
        }
        const size_t len = (size_t)(p - buf);
        kvs_key_t *k = &keys[b];
        if (mdctx == NULL) {
            XXH128_canonical_t c;
            XXH128_canonicalFromHash(&c, XXH3_128bits(buf, len));
            memcpy(k->bytes, c.digest, 16);
            memset(k->bytes + 16, 0, KVS_KEY_BYTES - 16);
            memcpy(buf + off_parent, c.digest, 16);
        } else {
            unsigned int n = 0;
            if (!EVP_DigestInit_ex2(mdctx, h->md, NULL) || !EVP_DigestUpdate(mdctx, buf, len) ||
                !EVP_DigestFinal_ex(mdctx, k->bytes, &n) || n != 32) {
                status = KVS_ERR_NO_MEMORY; /* OpenSSL fails here only on allocation */
                goto out;
            }
            memcpy(buf + off_parent, k->bytes, 32);
        }
    }
    *nkeys_p = nblocks;

out:
    if (extra_rest_buf != extra_rest)
        kvs__free(extra_rest_buf);
    EVP_MD_CTX_free(mdctx);
    if (buf != small)
        kvs__free(buf);
    return status;
}

uint64_t kvs_key_to_u64(const kvs_key_t *key, size_t digest_len)
{
    if (digest_len < 8 || digest_len > KVS_KEY_BYTES)
        digest_len = KVS_KEY_BYTES;
    uint64_t v;
    memcpy(&v, key->bytes + digest_len - 8, sizeof(v));
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}

kvs_status_t kvs_key_format_hex(const kvs_key_t *key, size_t digest_len, char *out, size_t out_len)
{
    if (key == NULL || out == NULL || digest_len == 0 || digest_len > KVS_KEY_BYTES ||
        out_len < 2 * digest_len + 1)
        return KVS_ERR_INVALID_PARAM;
    kvs_key_to_hex(key, digest_len, out);
    return KVS_OK;
}

void kvs_key_to_hex(const kvs_key_t *key, size_t digest_len, char *out)
{
    static const char hex[] = "0123456789abcdef";
    if (digest_len > KVS_KEY_BYTES)
        digest_len = KVS_KEY_BYTES;
    for (size_t i = 0; i < digest_len; i++) {
        out[2 * i] = hex[key->bytes[i] >> 4];
        out[2 * i + 1] = hex[key->bytes[i] & 15];
    }
    out[2 * digest_len] = '\0';
}
