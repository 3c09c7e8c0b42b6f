/* SPDX-License-Identifier: Apache-2.0 */
/* transport_int.h - the vtables the core declares and connectors fill in.
 *
 * The core never includes a connector header: connectors/registry.c lists
 * the built-in implementations of these tables. */
#ifndef KVS_TRANSPORT_INT_H
#define KVS_TRANSPORT_INT_H

#include "config_int.h"

#define KVS_TRANSPORT_OPS_VERSION 2

/* Completion of an operation a transport started: @length is the bytes
 * moved (a GET or receive: the whole requested length on success). */
typedef void (*kvs__tl_cb_t)(void *arg, kvs_status_t status, size_t length);

/* What a transport reports to the peer plane. Both are called only from
 * inside the transport's progress(), with the peer plane's lock held. */
typedef struct kvs__tl_events {
    void *arg;
    /* An active message: @hdr (KVS_PROTO_HDR_LEN bytes or more) and a
     * payload of @len bytes. When @rndv, the payload is not here yet: call
     * am_recv(@data, ...) during this callback to land it, or ignore it and
     * it is dropped. Otherwise @data is valid only during the callback. */
    void (*on_am)(void *arg, const void *hdr, size_t hlen, void *data, size_t len, bool rndv);
    /* An endpoint failed (peer gone): @ep_user is what connect() was given. */
    void (*on_ep_error)(void *arg, void *ep_user, kvs_status_t status);
} kvs__tl_events_t;

/* A transport moves bytes and nothing else: it never parses our messages,
 * holds no protocol state, and learns peers only from addresses the peer
 * plane gives it after the bootstrap handshake has authenticated them.
 * Operations that return KVS_INPROGRESS call their callback later, from
 * progress(); KVS_OK means done already (no callback); an error means
 * nothing was started (no callback). The peer plane serialises every call
 * under its own lock. */
typedef struct kvs__transport_ops {
    uint32_t version; /* KVS_TRANSPORT_OPS_VERSION */
    const char *name;
    kvs_status_t (*init)(const kvs__config_t *cfg, const kvs__logger_t *log,
                         const kvs__tl_events_t *ev, void **tl_p, char *err, size_t err_len);
    void (*fini)(void *tl);
    /* This process's address, to hand to authenticated peers. */
    kvs_status_t (*address)(void *tl, const void **addr_p, size_t *len_p);
    /* Endpoints to a peer's address. *rma_p: GET is native (not emulated). */
    kvs_status_t (*connect)(void *tl, const void *addr, size_t len, void *ep_user, void **ep_p,
                            bool *rma_p);
    /* Force-closes: what is outstanding completes with an error. */
    void (*disconnect)(void *tl, void *ep);
    kvs_status_t (*am_send)(void *tl, void *ep, const void *hdr, size_t hlen, const void *data,
                            size_t len, kvs__tl_cb_t cb, void *arg);
    kvs_status_t (*am_recv)(void *tl, void *data, void *dst, size_t len, kvs__tl_cb_t cb,
                            void *arg);
    kvs_status_t (*get)(void *tl, void *ep, void *local, size_t len, uint64_t raddr, void *rkey,
                        kvs__tl_cb_t cb, void *arg);
    kvs_status_t (*flush)(void *tl, void *ep, kvs__tl_cb_t cb, void *arg);
    /* Registers memory; the packed remote key stays valid until dereg. */
    kvs_status_t (*mem_reg)(void *tl, void *base, size_t length, kvs_mem_type_t type, void **memh_p,
                            const void **rkey_p, size_t *rkey_len_p);
    void (*mem_dereg)(void *tl, void *memh);
    kvs_status_t (*rkey_unpack)(void *tl, void *ep, const void *buf, size_t len, void **rkey_p);
    void (*rkey_destroy)(void *tl, void *rkey);
    int (*progress)(void *tl);
    /* A descriptor that becomes readable when progress has work, or -1. */
    int (*event_fd)(void *tl);
    /* true: armed, safe to sleep on event_fd; false: progress again first. */
    bool (*arm)(void *tl);
} kvs__transport_ops_t;

/* NULL-terminated list of built-in transports (connectors/registry.c). */
extern const kvs__transport_ops_t *const kvs__transports[];

#endif
