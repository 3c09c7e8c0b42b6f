/* SPDX-License-Identifier: Apache-2.0 */
/* fuzz_kvevents.c - libFuzzer target: vLLM KV event batches from a hostile publisher.
 *
 * Input: one msgpack payload, as a ZMQ frame would carry it. The decoder must never read
 * outside it or crash, must give a reason for every refusal, and every batch it accepts
 * is applied to a small index (bounded, so eviction runs too) and scored, as the daemon
 * would: over 2 pods (the bitmap scorer) or, for odd-sized inputs, 66 (the holder walk). */
#include "kvevents_int.h"
#include "kvindex_int.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

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
