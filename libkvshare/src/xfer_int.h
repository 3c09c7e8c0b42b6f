/* SPDX-License-Identifier: Apache-2.0 */
/* xfer_int.h - fetches across views: a plan (plan_int.h) on the wire, without the transport.
 *
 * The peer plane (peer.c) calls these few functions where a fetch between
 * two views differs from one between equal layouts: the ranged FETCH it
 * sends (AM push path) and parses (holder), and where a pushed range
 * lands. The GETs, generation checks and permutation into the reader's
 * blocks use kvs__xfer_t directly. */
#ifndef KVS_XFER_INT_H
#define KVS_XFER_INT_H

#include "plan_int.h"
#include "proto_int.h"

/* Encodes the ranged FETCH (KVS_PROTO_FLAG_RANGES) of @x, for hits first .. first+count-1. */
kvs_status_t kvs__xfer_enc_fetch(kvs__buf_t *b, uint64_t req_id, const uint8_t *session,
                                 uint64_t lease_id, uint32_t first, const kvs__xfer_t *x);
/* Holder: copies a validated ranged FETCH's sets into flat arrays: set k
 * is (*ranges_p)[(*set_at_p)[k] .. (*set_at_p)[k+1]), block i uses set
 * (*set_of_p)[i]. NO_MEMORY (nothing allocated then). */
kvs_status_t kvs__xfer_take_ranges(const kvs__msg_t *m, kvs__range_t **ranges_p,
                                   uint32_t **set_at_p, uint16_t **set_of_p);
/* Reader: per block the index of its first range across the fetch (count
 * + 1 entries; the last is the total), for the AM path's once-only bits. */
kvs_status_t kvs__xfer_range_index(const kvs__xfer_t *x, size_t **at_p);

#endif
