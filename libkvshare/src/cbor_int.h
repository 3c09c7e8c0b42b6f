/* SPDX-License-Identifier: Apache-2.0 */
/* cbor_int.h - the few canonical-CBOR encodings that vLLM's block hash input needs. */
#ifndef KVS_CBOR_INT_H
#define KVS_CBOR_INT_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

enum {
    KVS_CBOR_UINT = 0,
    KVS_CBOR_BYTES = 2,
    KVS_CBOR_TEXT = 3,
    KVS_CBOR_ARRAY = 4,
};
#define KVS_CBOR_NULL 0xf6u

/* Longest head: 1 initial byte + 8 argument bytes. */
#define KVS_CBOR_HEAD_MAX 9u

/* Writes the shortest head for (major, value) at p; returns bytes written.
 * This is what cbor2's canonical mode emits for ints, lengths and counts. */
static inline size_t kvs__cbor_head(uint8_t *p, unsigned major, uint64_t v)
{
    uint8_t mt = (uint8_t)(major << 5);
    if (v < 24) {
        p[0] = (uint8_t)(mt | v);
        return 1;
    }
    if (v <= 0xff) {
        p[0] = mt | 24;
        p[1] = (uint8_t)v;
        return 2;
    }
    if (v <= 0xffff) {
        p[0] = mt | 25;
        p[1] = (uint8_t)(v >> 8);
        p[2] = (uint8_t)v;
        return 3;
    }
    if (v <= 0xffffffffu) {
        p[0] = mt | 26;
        p[1] = (uint8_t)(v >> 24);
        p[2] = (uint8_t)(v >> 16);
        p[3] = (uint8_t)(v >> 8);
        p[4] = (uint8_t)v;
        return 5;
    }
    p[0] = mt | 27;
    for (int i = 0; i < 8; i++)
        p[1 + i] = (uint8_t)(v >> (56 - 8 * i));
    return 9;
}

/* The head of an unsigned int below 2^32, without branches: the width
 * (1, 2, 3 or 5 bytes) of random token ids is unpredictable, and a
 * mispredicted compare chain per token cost more than hashing the block.
 * Always stores 8 bytes at p (the caller leaves KVS_CBOR_UINT32_SLACK bytes
 * after the last head); returns the encoded length, the same bytes as
 * kvs__cbor_head(p, KVS_CBOR_UINT, v). */
#define KVS_CBOR_UINT32_SLACK 3u
static inline size_t kvs__cbor_uint32(uint8_t *p, uint32_t v)
{
    unsigned cls = (unsigned)(v >= 24) + (unsigned)(v >= 256) + (unsigned)(v >= 65536);
    unsigned k = (1u << cls) >> 1; /* argument bytes: 0, 1, 2, 4 */
    uint64_t hdr = cls ? 23u + cls : v;
    /* The low k bytes of v, big-endian, in the first k bytes of arg in memory order. */
    uint32_t arg = __builtin_bswap32((uint32_t)((uint64_t)v << (32 - 8 * k)));
    uint64_t w = hdr | ((uint64_t)arg << 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    w = __builtin_bswap64(w);
#endif
    memcpy(p, &w, sizeof(w));
    return 1 + k;
}

/* Head + payload of a byte or text string; returns bytes written. */
size_t kvs__cbor_string(uint8_t *p, unsigned major, const void *data, size_t len);

#endif
