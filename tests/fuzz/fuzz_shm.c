/* SPDX-License-Identifier: Apache-2.0 */
/* fuzz_shm.c - libFuzzer target: the same-host handover's answer, as a reader receives it,
 * and a pool client's offer of its memory, as a node receives it.
 *
 * Input: byte 0 below 0x80 is how many descriptors came with the answer, byte 1
 * how many regions the reader asked for; the rest is the answer (proto_int.h,
 * kvs__shm_parse_reply). An accepted answer must keep every promise the
 * reader relies on before it maps anything: a known kind per descriptor,
 * a region of some bytes inside its object without wrapping, and exactly
 * one descriptor per entry of status 0 (none for the identify answer, which
 * has no entries).
 * Byte 0 of 0x80 or more, byte 1 of 0: an offer (kvs__shm_parse_offer) that
 * came with byte 0 - 0x80 descriptors, from byte 2 on. An accepted offer has
 * at most KVS_SHM_MAX_IDS entries, one descriptor per offered (not
 * withdrawn) entry, each offered entry of a known kind and a region of some
 * bytes inside its object without wrapping, each withdrawal an id alone, no
 * id twice, and its session and mac inside the input. Byte 1 of 1: the node's answer to an
 * offer of byte 0 - 0x80 regions (kvs__shm_parse_offer_reply): accepted only
 * at its exact length. */
#include "proto_int.h"

#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int offer(uint32_t nfds, const uint8_t *req, size_t len)
{
    kvs__shm_offer_t out[KVS_SHM_MAX_IDS];
    const uint8_t *session = NULL, *mac = NULL;
    const char *why = NULL;
    uint32_t n = 99;
    if (kvs__shm_parse_offer(req, len, nfds, &session, &mac, out, &n, &why) != KVS_OK) {
        if (why == NULL || n != 0)
            abort(); /* a refusal says why and yields no entries */
        return 0;
    }
    if (n > KVS_SHM_MAX_IDS || len != KVS_SHM_OFFER_FIXED + (size_t)KVS_SHM_OFFER_ENTRY_LEN * n ||
        session != req + 4 || mac != req + 4 + KVS_PROTO_SESSION_LEN)
        abort();
    uint32_t offered = 0;
    for (uint32_t i = 0; i < n; i++) {
        const kvs__shm_offer_t *e = &out[i];
        if (e->kind == KVS_SHM_KIND_WITHDRAW) {
            if (e->base != 0 || e->len != 0 || e->off != 0 || e->size != 0)
                abort();
        } else if ((e->kind != KVS_SHM_KIND_MEMFD && e->kind != KVS_SHM_KIND_CUDA_VMM) ||
                   e->len == 0 || e->base + e->len < e->base || e->off > e->size ||
                   e->len > e->size - e->off) {
            abort();
        } else {
            offered++;
        }
        for (uint32_t k = 0; k < i; k++)
            if (out[k].id == e->id)
                abort();
    }
    if (offered != nfds)
        abort();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    if (data[0] >= 0x80 && data[1] == 1) {
        int32_t status[KVS_SHM_MAX_IDS + 64];
        const uint32_t n = data[0] - 0x80u;
        const char *why = NULL;
        if (kvs__shm_parse_offer_reply(data + 2, size - 2, n, status, &why) != KVS_OK)
            return why == NULL ? (abort(), 0) : 0;
        if (n > KVS_SHM_MAX_IDS || size - 2 != 8 + 4 * (size_t)n)
            abort();
        return 0;
    }
    if (data[0] >= 0x80)
        return offer(data[0] - 0x80u, data + 2, size - 2);
    const uint32_t nfds = data[0], n = data[1];
    kvs__shm_entry_t out[KVS_SHM_MAX_IDS];
    const char *why = NULL;
    if (kvs__shm_parse_reply(data + 2, size - 2, n, nfds, out, &why) != KVS_OK) {
        if (why == NULL)
            abort(); /* a refusal always says why */
        return 0;
    }
    /* n = 0 is the answer to an identify request (no regions): accepted only
     * with no descriptor, which the count check below enforces. */
    if (n > KVS_SHM_MAX_IDS)
        abort();
    uint32_t withfd = 0;
    for (uint32_t i = 0; i < n; i++) {
        const kvs__shm_entry_t *e = &out[i];
        if (e->status != 0) {
            if (e->kind != 0)
                abort();
            continue;
        }
        withfd++;
        if ((e->kind != KVS_SHM_KIND_MEMFD && e->kind != KVS_SHM_KIND_CUDA_VMM) || e->len == 0 ||
            e->base + e->len < e->base || e->off > e->size || e->len > e->size - e->off)
            abort();
    }
    if (withfd != nfds)
        abort();
    return 0;
}
