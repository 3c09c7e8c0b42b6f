/* SPDX-License-Identifier: Apache-2.0 */
/* ctx_int.h - the context object: configuration, logger, store, regions, transport. */
#ifndef KVS_CTX_INT_H
#define KVS_CTX_INT_H

#include "store_int.h"
#include "transport_int.h"

struct kvs_region {
    struct kvs_ctx *ctx;
    uint8_t *base;
    size_t length;
    kvs_mem_type_t mem_type;
    void *tl_memh; /* the transport's registration, if any */
    struct kvs_region *next;
};

struct kvs_ctx {
    kvs__config_t cfg;
    kvs__logger_t log;
    kvs__store_t store;
    pthread_mutex_t regions_lock;
    struct kvs_region *regions;
    size_t nregions;
    _Atomic size_t npools;
    const kvs__transport_ops_t *tl_ops; /* NULL: local only */
    void *tl;
    _Atomic uint64_t fetched_bytes;
};

#endif
