/* SPDX-License-Identifier: Apache-2.0 */
/* transport_int.h - the vtables the core declares and connectors fill in.
 *
 * The core never includes a connector header: connectors/registry.c lists
 * the built-in implementations of these tables. */
#ifndef KVS_TRANSPORT_INT_H
#define KVS_TRANSPORT_INT_H

#include "config_int.h"

#define KVS_TRANSPORT_OPS_VERSION 1

struct kvs_ctx;
struct kvs_pool;

/* A transport moves protocol messages and block data between contexts in
 * different processes. The core calls it for registration, remote lookups
 * and fetches; the transport calls back into the core (kvs__serve_*) to
 * answer peers. Its calls may take the transport's own lock and then the
 * store lock, never the other way round: the core never calls a transport
 * with the store lock held. */
typedef struct kvs__transport_ops {
    uint32_t version; /* KVS_TRANSPORT_OPS_VERSION */
    const char *name;
    kvs_status_t (*init)(struct kvs_ctx *ctx, const kvs__config_t *cfg, void **tl_p, char *err,
                         size_t err_len);
    void (*fini)(void *tl);
    kvs_status_t (*mem_reg)(void *tl, void *base, size_t length, kvs_mem_type_t type,
                            void **memh_p);
    void (*mem_dereg)(void *tl, void *memh);
    int (*progress)(void *tl);
    kvs_status_t (*listen_addr)(void *tl, char *buf, size_t len);
    /* client side: a remote lease is the transport's own object */
    kvs_status_t (*lookup)(void *tl, const char *peer, uint64_t layout_id, const kvs_key_t *keys,
                           size_t n, uint32_t lease_ms, uint32_t timeout_ms, void **rlease_p,
                           size_t *hits_p);
    void (*release)(void *tl, void *rlease);
    kvs_status_t (*fetch)(void *tl, void *rlease, struct kvs_pool *dst, const uint32_t *ids,
                          size_t count, size_t first, uint32_t timeout_ms, void **treq_p);
    kvs_status_t (*req_test)(void *tl, void *treq);
    kvs_status_t (*req_wait)(void *tl, void *treq, int timeout_ms);
    void (*req_free)(void *tl, void *treq);
    /* offload blocks of @src to the pool node @node (it keeps what it lacks) */
    kvs_status_t (*put)(void *tl, const char *node, struct kvs_pool *src, const kvs_key_t *keys,
                        const uint32_t *ids, size_t n, uint32_t timeout_ms, void **treq_p);
    size_t (*npeers)(void *tl);
} kvs__transport_ops_t;

#define KVS_INDEX_OPS_VERSION 1

/* A cluster index (who holds which key), e.g. Redis. */
typedef struct kvs__index_ops {
    uint32_t version; /* KVS_INDEX_OPS_VERSION */
    const char *name;
    kvs_status_t (*open)(const char *uri, void **idx_p);
    void (*close)(void *idx);
    kvs_status_t (*add)(void *idx, uint64_t layout_id, const kvs_key_t *keys, size_t n,
                        const char *holder);
    kvs_status_t (*remove)(void *idx, uint64_t layout_id, const kvs_key_t *keys, size_t n,
                           const char *holder);
} kvs__index_ops_t;

/* NULL-terminated lists of built-in connectors (connectors/registry.c). */
extern const kvs__transport_ops_t *const kvs__transports[];
extern const kvs__index_ops_t *const kvs__indexes[];

#endif
