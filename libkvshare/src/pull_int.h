/* SPDX-License-Identifier: Apache-2.0 */
/* pull_int.h - a pull PUT's reads, planned and checked before any is posted (pure code).
 *
 * In a pull PUT (KVS_PROTO_FLAG_PULL) the client says where its blocks are
 * and the pool node reads them with GET. Every address there comes from
 * the network: the node reads only what lies inside a region the client
 * registered and advertised to it, and refuses the whole put otherwise,
 * before a single read is posted. */
#ifndef KVS_PULL_INT_H
#define KVS_PULL_INT_H

#include "proto_int.h"

/* A region the client advertised on this connection. */
typedef struct kvs__pull_region {
    uint32_t id;
    uint64_t base, len;
} kvs__pull_region_t;

/* One read: @len bytes at @raddr in the client's region @region (an index
 * into the regions given), landing at @off within the block. */
typedef struct kvs__pull_read {
    size_t region;
    uint64_t raddr;
    uint32_t len;
    uint32_t off;
} kvs__pull_read_t;

/* Plans the reads of the @n blocks @want (indices into the PUT's keys,
 * each < m->u.put.nkeys) of the decoded pull PUT @m: reads[i * nchunks + k]
 * is segment k of block want[i]. A block id whose address overflows, an
 * unknown region, or a read that does not lie wholly inside its region
 * refuses the put: KVS_ERR_PROTOCOL with the reason in @why. Reads nothing,
 * allocates nothing. */
kvs_status_t kvs__pull_plan(const kvs__msg_t *m, const uint32_t *want, uint32_t n,
                            const kvs__pull_region_t *regions, size_t nregions,
                            kvs__pull_read_t *reads, char *why, size_t wl);

#endif
