/* SPDX-License-Identifier: Apache-2.0 */
/* registry.c - the connectors built into libkvshare, as lists of vtables.
 *
 * The core only sees these lists; which connectors exist is decided by the
 * build (CMake finds UCX and defines KVS_HAVE_UCX). */
#include "transport_int.h"

#include <stddef.h>

#ifdef KVS_HAVE_UCX
extern const kvs__transport_ops_t kvs__ucx_transport;
#endif
/* In-process loopback (libkvshare/src/tl_loop.c): never picked by "auto";
 * tests name it to run the protocol between contexts of one process. */
extern const kvs__transport_ops_t kvs__loop_transport;
extern const kvs__transport_ops_t kvs__loop_am_transport;
/* Tests only: claims GET, and every GET fails (the pull put's fallback). */
extern const kvs__transport_ops_t kvs__loop_noget_transport;

/* "auto" takes the first entry. */
const kvs__transport_ops_t *const kvs__transports[] = {
#ifdef KVS_HAVE_UCX
    &kvs__ucx_transport,
#endif
    &kvs__loop_transport, &kvs__loop_am_transport, &kvs__loop_noget_transport, NULL,
};
