/* SPDX-License-Identifier: Apache-2.0 */
/* xfer.c - fetches across views on the wire: the ranged FETCH, both ends. */
#include "xfer_int.h"

#include <string.h>

kvs_status_t kvs__xfer_enc_fetch(kvs__buf_t *b, uint64_t req_id, const uint8_t *session,
                                 uint64_t lease_id, uint32_t first, const kvs__xfer_t *x)
{
    uint16_t nr[KVS_PROTO_MAX_SETS];
    const kvs__range_t *rs[KVS_PROTO_MAX_SETS];
    if (x->nsets == 0 || x->nsets > KVS_PROTO_MAX_SETS || x->count > UINT32_MAX)
        return KVS_ERR_INVALID_PARAM;
    for (size_t k = 0; k < x->nsets; k++) {
        if (x->sets[k].nranges == 0 || x->sets[k].nranges > UINT16_MAX)
            return KVS_ERR_UNSUPPORTED; /* a holder with none of our heads, or too many runs */
        nr[k] = (uint16_t)x->sets[k].nranges;
        rs[k] = x->sets[k].ranges;
    }
    return kvs__enc_fetch_ranges(b, req_id, session, lease_id, first, (uint32_t)x->count,
                                 (uint16_t)x->nsets, nr, rs, x->set_of);
}

kvs_status_t kvs__xfer_take_ranges(const kvs__msg_t *m, kvs__range_t **ranges_p,
                                   uint32_t **set_at_p, uint16_t **set_of_p)
{
    uint16_t nsets = m->u.fetch.nsets;
    uint32_t count = m->u.fetch.count;
    size_t total = 0;
    for (uint16_t k = 0; k < nsets; k++) {
        uint16_t n;
        const uint8_t *r;
        kvs__proto_fetch_set(m->u.fetch.sets, k, &n, &r);
        total += n;
    }
    kvs__range_t *ranges = kvs__malloc((total ? total : 1) * sizeof(*ranges));
    uint32_t *set_at = kvs__malloc(((size_t)nsets + 1) * sizeof(*set_at));
    uint16_t *set_of = kvs__malloc((count ? count : 1) * sizeof(*set_of));
    if (ranges == NULL || set_at == NULL || set_of == NULL) {
        kvs__free(ranges);
        kvs__free(set_at);
        kvs__free(set_of);
        return KVS_ERR_NO_MEMORY;
    }
    size_t at = 0;
    for (uint16_t k = 0; k < nsets; k++) {
        uint16_t n;
        const uint8_t *r;
        kvs__proto_fetch_set(m->u.fetch.sets, k, &n, &r);
        set_at[k] = (uint32_t)at;
        for (uint16_t i = 0; i < n; i++, at++) {
            ranges[at].off = kvs__proto_u32_at(r, 2 * (size_t)i);
            ranges[at].len = kvs__proto_u32_at(r, 2 * (size_t)i + 1);
        }
    }
    set_at[nsets] = (uint32_t)at;
    for (uint32_t i = 0; i < count; i++)
        set_of[i] = kvs__proto_u16_at(m->u.fetch.set_of, i);
    *ranges_p = ranges;
    *set_at_p = set_at;
    *set_of_p = set_of;
    return KVS_OK;
}

kvs_status_t kvs__xfer_range_index(const kvs__xfer_t *x, size_t **at_p)
{
    size_t *at = kvs__malloc((x->count + 1) * sizeof(*at));
    if (at == NULL)
        return KVS_ERR_NO_MEMORY;
    size_t n = 0;
    for (size_t i = 0; i < x->count; i++) {
        at[i] = n;
        n += x->sets[x->set_of[i]].nranges;
    }
    at[x->count] = n;
    *at_p = at;
    return KVS_OK;
}
