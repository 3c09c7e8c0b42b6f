/* SPDX-License-Identifier: Apache-2.0 */
/* peer_int.h - the peer plane: bootstrap, authenticated sessions, leases and the protocol.
 *
 * The peer plane owns everything between "a peer's TCP address" and "bytes
 * in the caller's pool": kvshare's own bootstrap listener and handshake
 * (boot.c), the connection state machine, server handlers, remote leases,
 * fetches and puts. It drives a transport (transport_int.h) that only moves
 * bytes. See docs/transport.md and docs/security.md. */
#ifndef KVS_PEER_INT_H
#define KVS_PEER_INT_H

#include "transport_int.h"

struct kvs_ctx;
struct kvs_pool;
typedef struct kvs__peer kvs__peer_t;

/* Starts the peer plane over @ops: loads the secret (auth.c), starts the
 * transport, the bootstrap listener (cfg->listen) and, in thread mode, the
 * progress thread. On error writes one line to @err. */
kvs_status_t kvs__peer_create(struct kvs_ctx *ctx, const kvs__config_t *cfg,
                              const kvs__transport_ops_t *ops, kvs__peer_t **pp_p, char *err,
                              size_t err_len);
/* Fails every connection and request, stops the thread, frees. NULL is ok. */
void kvs__peer_destroy(kvs__peer_t *pp);
const char *kvs__peer_transport_name(const kvs__peer_t *pp);

kvs_status_t kvs__peer_mem_reg(kvs__peer_t *pp, void *base, size_t length, kvs_mem_type_t type,
                               void **memh_p);
void kvs__peer_mem_dereg(kvs__peer_t *pp, void *memh);
int kvs__peer_progress(kvs__peer_t *pp);
/* The bootstrap listener's "host:port" (KVS_ERR_NOT_FOUND: not listening). */
kvs_status_t kvs__peer_listen_addr(kvs__peer_t *pp, char *buf, size_t len);
size_t kvs__peer_count(kvs__peer_t *pp);
/* Bytes fetched by copying from a same-host holder's mapped memory. */
uint64_t kvs__peer_shm_bytes(kvs__peer_t *pp);
/* Of those, the bytes the context's copy helpers copied (KVSHARE_COPY_THREADS). */
uint64_t kvs__peer_copy_helped(kvs__peer_t *pp);
/* Messages sent on same-host control channels (KVS_STATS_FIELD_CTL). */
uint64_t kvs__peer_ctl_messages(kvs__peer_t *pp);
/* Our puts' blocks the nodes stored by reading them (pull) and by our
 * pushes, and connections whose puts fell back from pull to push. */
/* Lookups a holder's mapped index answered, those that asked the holder
 * instead, and blocks puts did not offer because a node's index showed them
 * (kvs_stats_t.index_lookups, index_asked, index_put_held). */
void kvs__peer_index_stats(kvs__peer_t *pp, uint64_t *answered_p, uint64_t *asked_p,
                           uint64_t *put_held_p);
void kvs__peer_put_stats(kvs__peer_t *pp, uint64_t *pulled_p, uint64_t *pushed_p,
                         uint64_t *fallbacks_p);

/* Makes (or finds) a ready connection to @peer for @layout_id. With
 * @background, a thread does the handshake and KVS_INPROGRESS is returned
 * at once; a lookup or put to that peer meanwhile waits for it instead of
 * connecting a second time. */
kvs_status_t kvs__peer_connect(kvs__peer_t *pp, const char *peer, uint64_t layout_id,
                               uint32_t timeout_ms, bool background);

/* Client side: a remote lease is the peer plane's own object. */
kvs_status_t kvs__peer_lookup(kvs__peer_t *pp, const char *peer, uint64_t layout_id,
                              const kvs_key_t *keys, size_t n, uint32_t lease_ms,
                              uint32_t timeout_ms, void **rlease_p, size_t *hits_p);
/* Ends @rlease with a RELEASE; @readers > 0 tells the holder how many
 * readers of these blocks to expect in all (kvs_lookup_params_t.readers). */
void kvs__peer_release(kvs__peer_t *pp, void *rlease, uint32_t readers);
/* When the holder of @rlease has another view: true, and the reader's own
 * heads a fetch from it fills (kvs_lease_heads); false: all of them. */
bool kvs__peer_lease_heads(kvs__peer_t *pp, void *rlease, uint32_t *first_p, uint32_t *count_p);
kvs_status_t kvs__peer_fetch(kvs__peer_t *pp, void *rlease, struct kvs_pool *dst,
                             const uint32_t *ids, size_t count, size_t first, uint32_t timeout_ms,
                             void **preq_p);
/* Offloads blocks of @src to the pool node @node (it keeps what it lacks). */
kvs_status_t kvs__peer_put(kvs__peer_t *pp, const char *node, struct kvs_pool *src,
                           const kvs_key_t *keys, const uint32_t *ids, size_t n,
                           uint32_t timeout_ms, void **preq_p);
kvs_status_t kvs__peer_req_test(kvs__peer_t *pp, void *preq);
kvs_status_t kvs__peer_req_wait(kvs__peer_t *pp, void *preq, int timeout_ms);
void kvs__peer_req_free(kvs__peer_t *pp, void *preq);

/* Per-connection bounds (docs/security.md lists them). */
#define KVS_PEER_MAX_PREAUTH     128u         /* connections still in the handshake */
#define KVS_PEER_MAX_CONNS       4096u        /* authenticated connections */
#define KVS_PEER_BOOT_TIMEOUT_MS 2000u        /* to complete the handshake */
#define KVS_PEER_MAX_LEASES      16384u       /* server leases one peer may hold */
#define KVS_PEER_MAX_PUSHES      32u          /* FETCH pushes one peer may have running */
#define KVS_PEER_MAX_PUTS        16u          /* PUTs one peer may have landing */
#define KVS_PEER_MAX_PUT_MAPS    64u          /* client regions a node maps per connection */
#define KVS_PEER_MAX_STAGING     (1ull << 30) /* staging bytes one peer may hold */
#define KVS_PEER_MAX_INBOX       256u         /* queued messages per connection */
#define KVS_PEER_CTL_MAX         65536u       /* bytes of a message on a control channel */
#define KVS_PEER_PUSH_WINDOW     128u         /* sends one push keeps in flight */
#define KVS_PEER_MAX_DIALERS     64u          /* background connects at once */
#define KVS_PEER_PUT_WINDOW      4u           /* batches one pull put has out at once */
#define KVS_PEER_PUT_BATCH_MAX   128u         /* blocks per pull PUT batch */
#define KVS_PEER_PUT_BATCH_BYTES (8u << 20)   /* bytes per pull PUT batch, at most */

/* Test hook: called by a lookup of @nkeys keys once its reply is here and
 * before the region table it may carry is applied, with no lock held. */
extern void (*kvs__peer_test_reply)(size_t nkeys);

#endif
