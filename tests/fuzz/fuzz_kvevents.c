/* SPDX-License-Identifier: Apache-2.0 */
/* fuzz_kvevents.c - libFuzzer target: vLLM KV event batches from a hostile publisher.
 *
 * Input: one msgpack payload, as a ZMQ frame would carry it. The decoder must never read
 * outside it or crash, must give a reason for every refusal, and every batch it accepts
 * is applied to a small index (bounded, so eviction runs too) and scored, as the daemon
 * would: over 2 pods (the bitmap scorer) or, for odd-sized inputs, 66 (the holder walk).
 * Token mode (--keys tokens) derives its keys from the same events, parents through its
 * bounded maps. */
#include "kvevents_int.h"
#include "kvindex_int.h"
#include "tokkeys_int.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Token mode over the batch: keys never exceed the event's blocks, the bound holds. */
static void token_mode(const kvs__ev_batch_t *b)
{
    static kvs_hasher_h h;
    if (h == NULL) {
        kvs_hasher_params_t hp = {.field_mask = KVS_HASHER_FIELD_ALGO |
                                                KVS_HASHER_FIELD_BLOCK_TOKENS |
                                                KVS_HASHER_FIELD_SEED,
                                  .algo = KVS_HASH_XXHASH_CBOR,
                                  .seed = "0",
                                  .block_tokens = 16}; /* the seeds' */
        if (kvs_hasher_create(&hp, &h) != KVS_OK)
            return;
    }
    kvs__tk_t *tk = kvs__tk_create(h, 16, 64);
    if (tk == NULL)
        return;
    for (size_t i = 0; i < b->nevents; i++) {
        const kvs__ev_t *e = &b->events[i];
        uint64_t *out = malloc((e->nhashes ? e->nhashes : 1) * sizeof(*out));
        if (out == NULL)
            break;
        size_t n = 0;
        if (e->type == KVS__EV_STORED) {
            kvs__tk_result_t r = kvs__tk_stored(tk, (uint32_t)(i % 3), e, out, &n);
            if (n > e->nhashes || (r != KVS__TK_OK && r != KVS__TK_FULL && n != 0))
                abort();
        } else if (e->type == KVS__EV_REMOVED) {
            if (kvs__tk_removed(tk, (uint32_t)(i % 3), e->hashes, e->nhashes, out) > e->nhashes)
                abort();
        } else {
            kvs__tk_clear_pod(tk, (uint32_t)(i % 3));
        }
        free(out);
        if (kvs__tk_entries(tk) > 64)
            abort();
    }
    kvs__tk_destroy(tk);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static kvs__ev_decoder_t *dec;
    if (dec == NULL && (dec = kvs__ev_decoder_create()) == NULL)
        return 0;
    kvs__ev_batch_t b;
    char why[160] = "";
    if (kvs__ev_decode(dec, data, size, &b, NULL, why, sizeof(why)) != 0) {
        if (why[0] == '\0')
            abort(); /* a refusal always says why */
        return 0;
    }
    token_mode(&b);
    kvs__idx_t *idx = kvs__idx_create(64);
    if (idx == NULL)
        return 0;
    uint32_t m = (uint32_t)kvs__idx_model(idx, "m", 1, true);
    enum { MAX_PODS = 66 };
    size_t npods = (size & 1) ? MAX_PODS : 2;
    uint32_t pods[MAX_PODS];
    for (size_t i = 0; i < npods; i++) {
        char name[8];
        name[0] = 'p';
        name[1] = (char)('0' + i / 10);
        name[2] = (char)('0' + i % 10);
        int64_t p = kvs__idx_pod(idx, name, 3, m, true);
        if (p < 0)
            goto out;
        pods[i] = (uint32_t)p;
    }
    for (size_t i = 0; i < b.nevents; i++) {
        const kvs__ev_t *e = &b.events[i];
        uint32_t p = pods[i % 2]; /* two pods hold blocks; the others only count */
        if (e->type == KVS__EV_STORED)
            kvs__idx_store(idx, p, e->hashes, e->nhashes, e->medium.ptr, e->medium.len, i);
        else if (e->type == KVS__EV_REMOVED)
            kvs__idx_remove(idx, p, e->hashes, e->nhashes, e->medium.ptr, e->medium.len, i);
        else
            kvs__idx_clear_pod(idx, p);
    }
    for (size_t i = 0; i < b.nevents; i++) {
        kvs__idx_score_t s[2];
        long n = kvs__idx_score(idx, m, b.events[i].hashes, b.events[i].nhashes, NULL, 0, s, 2);
        if (n == 2 && s[0].blocks < s[1].blocks)
            abort(); /* sorted */
        if (n > 2 || (n > 0 && s[0].blocks > b.events[i].nhashes))
            abort(); /* two pods; a prefix no longer than the prompt */
    }
    kvs__idx_stats_t st;
    kvs__idx_get_stats(idx, &st);
    if (st.pairs > 64)
        abort(); /* the bound holds */
out:
    kvs__idx_destroy(idx);
    return 0;
}
