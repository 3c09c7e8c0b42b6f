/* SPDX-License-Identifier: Apache-2.0 */
/* cbor_int.h - the few canonical-CBOR encodings that vLLM's block hash input needs. */
#ifndef KVS_CBOR_INT_H
#define KVS_CBOR_INT_H

#include <stddef.h>
#include <stdint.h>

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

/* Head + payload of a byte or text string; returns bytes written. */
size_t kvs__cbor_string(uint8_t *p, unsigned major, const void *data, size_t len);

#endif
