/* SPDX-License-Identifier: Apache-2.0 */
/* fuzz_shm.c - libFuzzer target: the same-host handover's answer, as a reader receives it.
 *
 * Input: byte 0 is how many descriptors came with the answer, byte 1 how
 * many regions the reader asked for; the rest is the answer (proto_int.h,
 * kvs__shm_parse_reply). An accepted answer must keep every promise the
 * reader relies on before it maps anything: a known kind per descriptor,
 * a region of some bytes inside its object without wrapping, and exactly
 * one descriptor per entry of status 0 (none for the identify answer, which
 * has no entries). */
#include "proto_int.h"

#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
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
