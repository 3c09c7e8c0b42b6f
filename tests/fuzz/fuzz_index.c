/* SPDX-License-Identifier: Apache-2.0 */
/* fuzz_index.c - libFuzzer target: a holder's mapped block index (index_int.h), as a
 * same-host reader reads it. The mapping is another process's memory: whatever it holds, the
 * reader must not read outside it, loop without end, or report a hit it did not show.
 *
 * Input: byte 0: how many keys the reader asks for (1..8); byte 1: bit 0 cuts the mapping
 * short (by byte 2 x 97 bytes); then, in order while the input lasts, each written over a
 * valid empty index of KVS_INDEX_MIN_SLOTS entries: 8 header words (u32 each, XORed into
 * magic, version, slots, pools, segs, entry bytes, sequence, incomplete), the keys (32 bytes
 * each), one pool record's first 16 + 2 x 24 bytes (into record byte 3 % KVS_INDEX_POOLS),
 * and entries of KVS_INDEX_ENT_BYTES laid over every slot in turn (slot i gets entry i % E),
 * so that keys the input also names are found. A hit must be one of the entries laid down,
 * with the key asked for; a pool hit's record copied with 1..KVS_INDEX_SEGS segments. */
#include "index_int.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void xor32(uint8_t *p, const uint8_t *in)
{
    for (int i = 0; i < 4; i++)
        p[i] ^= in[i];
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 3)
        return 0;
    const size_t len = kvs__index_bytes(KVS_INDEX_MIN_SLOTS);
    static uint8_t *map;
    static kvs__index_geo_t *geo;
    if (map == NULL) {
        map = malloc(len);
        geo = malloc(KVS_INDEX_POOLS * sizeof(*geo));
        if (map == NULL || geo == NULL)
            abort();
    }
    memset(map, 0, len);
    const uint32_t hdr[6] = {KVS_INDEX_MAGIC, KVS_INDEX_VERSION, KVS_INDEX_MIN_SLOTS,
                             KVS_INDEX_POOLS, KVS_INDEX_SEGS,    KVS_INDEX_ENT_BYTES};
    memcpy(map, hdr, sizeof(hdr));
    size_t nkeys = (size_t)(data[0] % 8) + 1;
    size_t maplen = (data[1] & 1) ? len - (size_t)data[2] * 97u : len;
    size_t at = 3;
    static const size_t hoff[8] = {0, 4, 8, 12, 16, 20, 64, 72};
    for (int w = 0; w < 8 && at + 4 <= size; w++, at += 4)
        xor32(map + hoff[w], data + at);
    kvs_key_t keys[8];
    memset(keys, 0, sizeof(keys));
    for (size_t k = 0; k < nkeys && at < size; k++) {
        size_t n = size - at < KVS_KEY_BYTES ? size - at : KVS_KEY_BYTES;
        memcpy(keys[k].bytes, data + at, n);
        at += n;
    }
    uint8_t *rec =
        map + KVS_INDEX_HDR_BYTES + (size_t)(data[2] % KVS_INDEX_POOLS) * KVS_INDEX_POOL_BYTES;
    size_t rn = size - at < 16 + 48 ? size - at : 16 + 48;
    memcpy(rec, data + at, rn);
    at += rn;
    size_t nent = (size - at) / KVS_INDEX_ENT_BYTES;
    const uint8_t *ents = data + at;
    for (uint32_t s = 0; nent > 0 && s < KVS_INDEX_MIN_SLOTS; s++)
        memcpy(map + KVS_INDEX_ENTS_OFF + (size_t)s * KVS_INDEX_ENT_BYTES,
               ents + (s % nent) * KVS_INDEX_ENT_BYTES, KVS_INDEX_ENT_BYTES);
    /* The mapping ends where the reader was told it does: copy it to an
     * allocation of exactly that size, so ASan sees any read past it. */
    uint8_t *m = malloc(maplen ? maplen : 1);
    if (m == NULL)
        abort();
    memcpy(m, map, maplen);
    kvs__index_hit_t hits[8];
    size_t got = 99;
    bool complete = true;
    uint64_t layout = 0; /* the first entry's layout, so that its key can hit */
    if (nent > 0)
        memcpy(&layout, ents, 8);
    kvs__index_res_t res =
        kvs__index_read(m, maplen, layout, keys, nkeys, hits, geo, &got, &complete);
    if (res != KVS_INDEX_READ) {
        if (got != 0 || complete)
            abort(); /* nothing reported from a read that did not succeed */
        free(m);
        return 0;
    }
    if (got > nkeys)
        abort();
    for (size_t i = 0; i < got; i++) {
        const kvs__index_hit_t *h = &hits[i];
        /* The entry it came from: one laid down, with this key and layout. */
        bool found = false;
        for (size_t e = 0; e < nent && !found; e++) {
            const uint8_t *x = ents + e * KVS_INDEX_ENT_BYTES;
            uint64_t lay, ser;
            memcpy(&lay, x, 8);
            memcpy(&ser, x + 40, 8);
            found = lay == layout && ser == h->serial && ser != 0 &&
                    memcmp(x + 8, keys[i].bytes, KVS_KEY_BYTES) == 0;
        }
        if (!found)
            abort();
        if (h->pool != KVS_INDEX_ARENA && (h->pool >= KVS_INDEX_POOLS || geo[h->pool].nsegs == 0 ||
                                           geo[h->pool].nsegs > KVS_INDEX_SEGS))
            abort();
    }
    free(m);
    return 0;
}
