/* SPDX-License-Identifier: Apache-2.0 */
/* pull.c - a pull PUT's reads, planned and checked before any is posted. */
#include "pull_int.h"

#define refuse(why, wl, ...) kvs__failf(why, wl, KVS_ERR_PROTOCOL, __VA_ARGS__)

kvs_status_t kvs__pull_plan(const kvs__msg_t *m, const uint32_t *want, uint32_t n,
                            const kvs__pull_region_t *regions, size_t nregions,
                            kvs__pull_read_t *reads, char *why, size_t wl)
{
    const uint16_t nch = m->u.put.nchunks;
    if (m->hdr.type != KVS_MSG_PUT || !(m->hdr.flags & KVS_PROTO_FLAG_PULL) ||
        m->u.put.segs == NULL || m->u.put.ids == NULL)
        return refuse(why, wl, "not a pull PUT");
    /* Each segment's region once, not once per block. */
    size_t seg_region[KVS_PROTO_MAX_PIECES];
    for (uint16_t k = 0; k < nch; k++) {
        kvs__put_seg_t sg;
        kvs__proto_put_seg(m->u.put.segs, k, &sg);
        size_t r = 0;
        while (r < nregions && regions[r].id != sg.region)
            r++;
        if (r == nregions)
            return refuse(why, wl, "segment %u names region %u, which the client did not advertise",
                          k, sg.region);
        seg_region[k] = r;
    }
    for (uint32_t i = 0; i < n; i++) {
        if (want[i] >= m->u.put.nkeys)
            return refuse(why, wl, "block %u of %u", want[i], m->u.put.nkeys);
        uint32_t id = kvs__proto_u32_at(m->u.put.ids, want[i]);
        uint32_t off = 0;
        for (uint16_t k = 0; k < nch; k++) {
            kvs__put_seg_t sg;
            kvs__proto_put_seg(m->u.put.segs, k, &sg);
            uint32_t len = kvs__proto_u32_at(m->u.put.chunks, k);
            const kvs__pull_region_t *rg = &regions[seg_region[k]];
            uint64_t at, raddr;
            if (__builtin_mul_overflow((uint64_t)id, sg.stride, &at) ||
                __builtin_add_overflow(sg.base, at, &raddr))
                return refuse(why, wl, "block id %u, segment %u: address overflows", id, k);
            if (raddr < rg->base || len > rg->len || raddr - rg->base > rg->len - len)
                return refuse(why, wl,
                              "block id %u, segment %u: %u bytes at 0x%llx lie outside region %u "
                              "(0x%llx + %llu)",
                              id, k, len, (unsigned long long)raddr, rg->id,
                              (unsigned long long)rg->base, (unsigned long long)rg->len);
            reads[(size_t)i * nch + k] =
                (kvs__pull_read_t){.region = seg_region[k], .raddr = raddr, .len = len, .off = off};
            off += len; /* the decoder bounds a block below 4 GiB */
        }
    }
    return KVS_OK;
}
