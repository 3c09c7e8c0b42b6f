/* SPDX-License-Identifier: Apache-2.0 */
/* ucx_tl.c - the UCX transport: listener, handshake, remote lookups, GET or AM-push fetches.
 *
 * Threading: one UCP context and worker per kvs context, in
 * UCS_THREAD_MODE_SINGLE, with every UCX call made under tl->lock. In thread
 * mode a progress thread sleeps on the worker's event fd (ucp_worker_arm)
 * and drives the worker; callers block on tl->cond. In poll mode callers
 * drive the worker themselves (kvs_progress, kvs_request_wait).
 *
 * Connections: a control endpoint from the peer's sockaddr with
 * UCP_ERR_HANDLING_MODE_PEER carries every message and detects dead peers.
 * UCX 1.13 drops shared memory from PEER-mode endpoints, so after the
 * handshake the client makes a second endpoint from the server's worker
 * address (error mode NONE) and uses it for one-sided GETs when UCX gives it
 * a native RMA lane (shm, CMA, RDMA). When it does not (TCP), the client asks
 * the server to push blocks with active messages instead. See
 * docs/transport.md. */
#include "pool_int.h"
#include "proto_int.h"

#include <arpa/inet.h>
#include <errno.h>
#include <sched.h>
#include <netdb.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <ucp/api/ucp.h>
#include <unistd.h>

#define AM_ID            0x4bu
#define MAX_PIECES       KVS_PROTO_MAX_PIECES
#define MAX_SERVER_LEASE 65536u
#define IDLE_WAKE_MS     20
/* Coalesced GETs stop growing here: past it UCX's CMA path slows down
 * (measured: 16 MiB GETs ran at a tenth of 256 KiB ones). */
#define MAX_RUN    (1u << 20)
#define GEN_WINDOW (64u << 10)

typedef struct tl tl_t;
typedef struct conn conn_t;

/* Memory we expose to peers. */
typedef struct region {
    uint32_t id;
    uint8_t *base;
    size_t len;
    ucp_mem_h memh;
    void *rkey_buf;
    size_t rkey_len;
    struct region *next;
} region_t;

/* A peer's region as we know it: unpacked on first use, then cached. */
typedef struct rregion {
    uint32_t id;
    uint64_t base, len;
    uint8_t *rkey_buf;
    uint32_t rkey_len;
    ucp_rkey_h rkey;
} rregion_t;

typedef struct srv_lease {
    uint64_t id;
    kvs_lease_h lease;
    struct srv_lease *next;
} srv_lease_t;

typedef enum conn_state {
    C_HELLO,
    C_AUTH,
    C_READY,
    C_FAILED,
    C_SERVER_WAIT_HELLO,
    C_SERVER_WAIT_AUTH
} conn_state_t;

struct conn {
    tl_t *tl;
    bool server;
    conn_state_t state;
    kvs_status_t fail_status;
    char peer[256];
    char why[256];
    uint64_t layout_id;
    uint64_t session;
    ucp_ep_h ep;      /* control endpoint */
    ucp_ep_h data_ep; /* GET endpoint; NULL: AM push over ep */
    bool closing;
    uint8_t nonce_c[KVS_PROTO_NONCE_LEN], nonce_s[KVS_PROTO_NONCE_LEN];
    uint64_t hello_req;
    rregion_t *rr;
    size_t nrr, caprr;
    srv_lease_t *leases;
    uint32_t nleases;
    uint64_t regions_sent; /* region table version this peer has */
    int refs;              /* client: leases and requests using it; +1 while listed */
    conn_t *next;
};

/* A caller waiting for a reply with a given request id. */
typedef struct waiter {
    uint64_t req_id;
    conn_t *conn;
    bool done;
    uint8_t *msg; /* the reply, owned by the waiter once done */
    size_t len;
    struct waiter *next;
} waiter_t;

/* A client's remote lease. */
typedef struct rlease {
    conn_t *conn;
    uint64_t lease_id;
    uint32_t hits;
    uint8_t *blocks; /* copy of the reply's block descriptors */
    size_t blocks_len;
    const uint8_t **block_at; /* hits pointers into blocks */
} rlease_t;

/* A fetch in flight (client). */
typedef struct treq {
    tl_t *tl;
    conn_t *conn;
    rlease_t *rl;
    struct kvs_pool *dst;
    uint32_t *dst_ids;
    size_t first, count;
    uint64_t req_id;
    uint64_t deadline_ns;
    kvs_status_t status;
    int stage;          /* GET: 1 data, 2 generations; AM: 1 */
    int outstanding;    /* UCX operations whose callbacks are pending */
    bool freed;         /* the user freed it; the last callback frees */
    bool done_msg;      /* AM: FETCH_DONE received */
    bool is_put;        /* a kvs_put: done when the node says PUT_DONE */
    uint64_t *gens_now; /* GET: generations read after the data */
    uint8_t *genwin;    /* GET: one window over the holder's generation array */
    uint64_t genwin_base;
    size_t bytes_expected, bytes_got;
    struct treq *next;
} treq_t;

/* Blocks a peer is putting into this pool node (server). */
typedef struct sput {
    conn_t *conn;
    uint64_t req_id;
    uint64_t layout_id;
    uint32_t n; /* accepted blocks, in the order the client pushes them */
    kvs_key_t *keys;
    size_t block_bytes;
    uint8_t *staging; /* n * block_bytes */
    size_t got, want;
    int outstanding; /* rendezvous receives still landing */
    bool dead;       /* its connection failed: free once nothing lands */
    uint64_t deadline_ns;
    struct sput *next;
} sput_t;

/* A push in flight (server). */
typedef struct push {
    conn_t *conn;
    kvs_lease_h lease;
    uint64_t req_id;
    uint32_t first, count;
    int outstanding;
    kvs_status_t status;
    struct push *next;
} push_t;

/* A received message waiting to be handled outside UCX callbacks. */
typedef struct inmsg {
    conn_t *conn;
    ucp_ep_h ep;
    uint8_t *buf;
    size_t len;
    bool ready; /* false while a rendezvous receive is still landing */
    struct inmsg *next;
} inmsg_t;

typedef struct pending_conn {
    ucp_conn_request_h req;
    struct pending_conn *next;
} pending_conn_t;

struct tl {
    struct kvs_ctx *ctx;
    const kvs__logger_t *log;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    ucp_context_h ucp;
    ucp_worker_h worker;
    ucp_address_t *waddr;
    size_t waddr_len;
    ucp_listener_h listener;
    char listen_addr[300];
    bool thread_mode;
    pthread_t thread;
    bool thread_started, stopping;
    int efd, wakefd, epfd;
    uint8_t secret[4096];
    size_t secret_len;
    bool have_secret;
    region_t *regions;
    uint32_t next_region_id;
    uint64_t regions_version;
    conn_t *conns;
    waiter_t *waiters;
    treq_t *reqs;
    treq_t *zombies; /* freed by the user, still owed UCX callbacks */
    push_t *pushes;
    sput_t *sputs;
    inmsg_t *inbox, **inbox_tail;
    pending_conn_t *pending;
    uint64_t next_req_id;
    uint64_t next_lease_id;
    /* Per-block piece scratch for describing and pushing blocks (lock held). */
    kvs__piece_loc_t *scratch_locs;
    kvs__piece_t *scratch_pieces;
};

static void conn_fail(conn_t *c, kvs_status_t st, const char *fmt, ...) KVS_PRINTF(3, 4);
static void handle(tl_t *tl, inmsg_t *m);

static uint64_t now_ns(void)
{
    return kvs__now_ns();
}

static void kick(tl_t *tl)
{
    if (tl->thread_mode) {
        uint64_t one = 1;
        ssize_t n = write(tl->wakefd, &one, sizeof(one));
        (void)n; /* a full counter already means "wake up" */
    }
}

/* ---------------------------------------------------------------------- */
/* Sending                                                                  */
/* ---------------------------------------------------------------------- */
static void send_done(void *request, ucs_status_t status, void *user_data)
{
    (void)status;
    kvs__free(user_data);
    ucp_request_free(request);
}

/* Sends one message on @ep; takes ownership of @buf (from a kvs__buf_t). */
static kvs_status_t send_msg(tl_t *tl, ucp_ep_h ep, uint8_t *buf, size_t len)
{
    ucp_request_param_t p = {.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK |
                                             UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS,
                             .cb.send = send_done,
                             .user_data = buf,
                             .flags = UCP_AM_SEND_FLAG_REPLY};
    ucs_status_ptr_t r = ucp_am_send_nbx(ep, AM_ID, NULL, 0, buf, len, &p);
    kick(tl);
    if (r == NULL) {
        kvs__free(buf);
        return KVS_OK;
    }
    if (UCS_PTR_IS_ERR(r)) {
        kvs__free(buf);
        return KVS_ERR_PEER_FAILED;
    }
    return KVS_OK;
}

static kvs_status_t send_buf(tl_t *tl, ucp_ep_h ep, kvs__buf_t *b)
{
    kvs_status_t st = kvs__proto_finish(b);
    if (st != KVS_OK) {
        kvs__buf_free(b);
        return st;
    }
    uint8_t *data = b->data;
    size_t len = b->len;
    kvs__buf_init(b);
    return send_msg(tl, ep, data, len);
}

static void send_error(tl_t *tl, ucp_ep_h ep, uint64_t req_id, kvs_status_t status,
                       const char *text)
{
    kvs__buf_t b;
    kvs__buf_init(&b);
    size_t n = strlen(text);
    if (n > KVS_PROTO_MAX_TEXT)
        n = KVS_PROTO_MAX_TEXT;
    kvs__proto_begin(&b, KVS_MSG_ERROR, 0, req_id, 0);
    kvs__buf_u32(&b, (uint32_t)status);
    kvs__buf_u16(&b, (uint16_t)n);
    kvs__buf_put(&b, text, n);
    send_buf(tl, ep, &b);
}

/* ---------------------------------------------------------------------- */
/* Connections                                                              */
/* ---------------------------------------------------------------------- */
static void ep_close(tl_t *tl, ucp_ep_h ep)
{
    if (ep == NULL)
        return;
    ucp_request_param_t p = {.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS,
                             .flags = UCP_EP_CLOSE_FLAG_FORCE};
    ucs_status_ptr_t r = ucp_ep_close_nbx(ep, &p);
    if (UCS_PTR_IS_PTR(r)) {
        /* Force close completes within a few progress calls. */
        for (int i = 0; i < 100000 && ucp_request_check_status(r) == UCS_INPROGRESS; i++)
            ucp_worker_progress(tl->worker);
        ucp_request_free(r);
    }
}

static void release_server_leases(conn_t *c)
{
    while (c->leases != NULL) {
        srv_lease_t *l = c->leases;
        c->leases = l->next;
        kvs_lease_release(l->lease);
        kvs__free(l);
    }
    c->nleases = 0;
}

static void conn_free(conn_t *c)
{
    tl_t *tl = c->tl;
    for (size_t i = 0; i < c->nrr; i++) {
        if (c->rr[i].rkey != NULL)
            ucp_rkey_destroy(c->rr[i].rkey);
        kvs__free(c->rr[i].rkey_buf);
    }
    kvs__free(c->rr);
    release_server_leases(c);
    ep_close(tl, c->data_ep);
    ep_close(tl, c->ep);
    kvs__free(c);
}

static void conn_unlink(conn_t *c)
{
    for (conn_t **pp = &c->tl->conns; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == c) {
            *pp = c->next;
            c->refs--; /* the list's reference */
            return;
        }
    }
}

static void conn_unref(conn_t *c)
{
    if (--c->refs == 0)
        conn_free(c);
}

/* Fails a connection: every waiter and request on it completes with @st,
 * and it leaves the peer table so the next use reconnects. Callers hold the
 * lock; endpoints are closed when the last user lets go. */
static void conn_fail(conn_t *c, kvs_status_t st, const char *fmt, ...)
{
    tl_t *tl = c->tl;
    if (c->state == C_FAILED)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->why, sizeof(c->why), fmt, ap);
    va_end(ap);
    /* A client going away is routine for a server; for a client, losing
     * its server is worth a warning. */
    if (c->server && st == KVS_ERR_PEER_FAILED)
        kvs__info(tl->log, "peer %s: disconnected (%s)", c->peer, c->why);
    else
        kvs__warn(tl->log, "peer %s: %s", c->peer, c->why);
    c->state = C_FAILED;
    c->fail_status = st;
    release_server_leases(c);
    for (waiter_t *w = tl->waiters; w != NULL; w = w->next)
        if (w->conn == c)
            w->done = true;
    for (treq_t *r = tl->reqs; r != NULL; r = r->next)
        if (r->conn == c && r->status == KVS_INPROGRESS)
            r->status = st;
    /* Pushes outlive their connection only while UCX owes them callbacks;
     * they must not reach the connection (or its leases) again. */
    for (push_t *p = tl->pushes; p != NULL; p = p->next) {
        if (p->conn == c) {
            p->status = st;
            p->conn = NULL;
            p->lease = NULL;
        }
    }
    for (sput_t *p = tl->sputs; p != NULL; p = p->next)
        if (p->conn == c)
            p->dead = true;
    /* Close now so UCX cancels what is outstanding on these endpoints. */
    ucp_ep_h ep = c->ep, dep = c->data_ep;
    c->ep = c->data_ep = NULL;
    ep_close(tl, dep);
    ep_close(tl, ep);
    conn_unlink(c);
    if (c->refs == 0)
        conn_free(c);
    pthread_cond_broadcast(&tl->cond);
}

static void ep_error(void *arg, ucp_ep_h ep, ucs_status_t status)
{
    conn_t *c = arg;
    (void)ep;
    /* Inside a UCX callback: only mark; the drain loop closes. */
    if (c->state != C_FAILED && !c->closing) {
        c->closing = true;
        snprintf(c->why, sizeof(c->why), "endpoint error: %s", ucs_status_string(status));
    }
}

static conn_t *conn_new(tl_t *tl, bool server)
{
    conn_t *c = kvs__calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    c->tl = tl;
    c->server = server;
    c->refs = 1; /* the list's */
    c->next = tl->conns;
    tl->conns = c;
    return c;
}

static conn_t *conn_by_ep(tl_t *tl, ucp_ep_h ep)
{
    for (conn_t *c = tl->conns; c != NULL; c = c->next)
        if (c->ep == ep)
            return c;
    return NULL;
}

/* Accepts a peer (from the drain loop, not the listener callback). */
static void accept_conn(tl_t *tl, ucp_conn_request_h req)
{
    conn_t *c = conn_new(tl, true);
    if (c == NULL) {
        ucp_listener_reject(tl->listener, req);
        return;
    }
    ucp_conn_request_attr_t ra = {.field_mask = UCP_CONN_REQUEST_ATTR_FIELD_CLIENT_ADDR};
    if (ucp_conn_request_query(req, &ra) == UCS_OK) {
        char host[INET6_ADDRSTRLEN] = "?";
        const struct sockaddr *sa = (const struct sockaddr *)&ra.client_address;
        int port = 0;
        if (sa->sa_family == AF_INET) {
            inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, host, sizeof(host));
            port = ntohs(((const struct sockaddr_in *)sa)->sin_port);
        } else if (sa->sa_family == AF_INET6) {
            inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, host, sizeof(host));
            port = ntohs(((const struct sockaddr_in6 *)sa)->sin6_port);
        }
        snprintf(c->peer, sizeof(c->peer), "%s:%d", host, port);
    }
    ucp_ep_params_t ep = {.field_mask = UCP_EP_PARAM_FIELD_CONN_REQUEST |
                                        UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                                        UCP_EP_PARAM_FIELD_ERR_HANDLER,
                          .conn_request = req,
                          .err_mode = UCP_ERR_HANDLING_MODE_PEER,
                          .err_handler = {.cb = ep_error, .arg = c}};
    ucs_status_t s = ucp_ep_create(tl->worker, &ep, &c->ep);
    if (s != UCS_OK) {
        c->ep = NULL;
        conn_fail(c, KVS_ERR_TRANSPORT, "accepting: ucp_ep_create: %s", ucs_status_string(s));
        return;
    }
    c->state = C_SERVER_WAIT_HELLO;
    kvs__debug(tl->log, "peer %s: connected", c->peer);
}

static void conn_request_cb(ucp_conn_request_h req, void *arg)
{
    tl_t *tl = arg;
    pending_conn_t *p = kvs__malloc(sizeof(*p));
    if (p == NULL) {
        ucp_listener_reject(tl->listener, req);
        return;
    }
    p->req = req;
    p->next = tl->pending;
    tl->pending = p;
}

/* ---------------------------------------------------------------------- */
/* Receiving                                                                */
/* ---------------------------------------------------------------------- */
static void inbox_push(tl_t *tl, inmsg_t *m)
{
    m->next = NULL;
    *tl->inbox_tail = m;
    tl->inbox_tail = &m->next;
}

static void rndv_msg_done(void *request, ucs_status_t status, size_t length, void *user_data)
{
    inmsg_t *m = user_data;
    (void)length;
    m->ready = true;
    if (status != UCS_OK) {
        kvs__free(m->buf);
        m->buf = NULL; /* handled as a failed receive */
    }
    ucp_request_free(request);
}

static treq_t *req_by_id(tl_t *tl, uint64_t id)
{
    for (treq_t *r = tl->reqs; r != NULL; r = r->next)
        if (r->req_id == id)
            return r;
    return NULL;
}

static void data_done(void *request, ucs_status_t status, size_t length, void *user_data)
{
    treq_t *r = user_data;
    r->outstanding--;
    if (status == UCS_OK)
        r->bytes_got += length;
    else if (r->status == KVS_INPROGRESS)
        r->status = KVS_ERR_PEER_FAILED;
    ucp_request_free(request);
}

/* Where byte @off of pushed block @i lands in the requester's pool. */
static uint8_t *dst_addr(treq_t *r, uint32_t i, uint32_t off, size_t len)
{
    struct kvs_pool *dst = r->dst;
    size_t base = 0;
    for (size_t s = 0; s < dst->nsegs; s++) {
        const kvs_segment_t *sg = &dst->segs[s];
        if (off >= base && off + len <= base + sg->block_bytes)
            return (uint8_t *)sg->base + (size_t)r->dst_ids[i] * sg->block_stride + (off - base);
        base += sg->block_bytes;
    }
    return NULL;
}

static void sput_recv_done(void *request, ucs_status_t status, size_t length, void *user_data)
{
    sput_t *p = user_data;
    p->outstanding--;
    if (status == UCS_OK)
        p->got += length;
    else
        p->dead = true;
    ucp_request_free(request);
}

/* A piece of a block being put into this node: it lands in the staging
 * buffer we chose; the client never learns where our memory is. */
static ucs_status_t on_put_data(tl_t *tl, conn_t *c, const kvs__msg_t *m, void *data, size_t length,
                                const ucp_am_recv_param_t *param)
{
    sput_t *p = tl->sputs;
    while (p != NULL && !(p->conn == c && p->req_id == m->hdr.req_id))
        p = p->next;
    if (p == NULL || p->dead || m->u.data.block >= p->n ||
        (size_t)m->u.data.offset + length > p->block_bytes) {
        if (p != NULL)
            p->dead = true; /* out of bounds: never write outside staging */
        return UCS_OK;
    }
    uint8_t *dst = p->staging + (size_t)m->u.data.block * p->block_bytes + m->u.data.offset;
    if (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) {
        ucp_request_param_t rp = {.op_attr_mask =
                                      UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA,
                                  .cb.recv_am = sput_recv_done,
                                  .user_data = p};
        ucs_status_ptr_t st = ucp_am_recv_data_nbx(tl->worker, data, dst, length, &rp);
        if (st == NULL)
            p->got += length;
        else if (UCS_PTR_IS_ERR(st))
            p->dead = true;
        else
            p->outstanding++;
        return UCS_OK;
    }
    memcpy(dst, data, length);
    p->got += length;
    return UCS_OK;
}

/* A pushed piece of a block: it goes straight into the destination. */
static ucs_status_t on_data(tl_t *tl, const void *header, size_t hlen, void *data, size_t length,
                            const ucp_am_recv_param_t *param)
{
    kvs__msg_t m;
    char why[128];
    if (kvs__proto_decode(header, hlen, &m, why, sizeof(why)) != KVS_OK ||
        m.hdr.type != KVS_MSG_DATA)
        return UCS_OK; /* not ours to land; the request will time out or fail */
    conn_t *c = (param->recv_attr & UCP_AM_RECV_ATTR_FIELD_REPLY_EP)
                    ? conn_by_ep(tl, param->reply_ep)
                    : NULL;
    if (c != NULL && c->server)
        return on_put_data(tl, c, &m, data, length, param);
    treq_t *r = req_by_id(tl, m.hdr.req_id);
    if (r == NULL || r->status != KVS_INPROGRESS || m.u.data.block >= r->count)
        return UCS_OK;
    uint8_t *dst = dst_addr(r, m.u.data.block, m.u.data.offset, length);
    if (dst == NULL) {
        r->status = KVS_ERR_PROTOCOL;
        return UCS_OK;
    }
    if (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) {
        ucp_request_param_t p = {.op_attr_mask =
                                     UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA,
                                 .cb.recv_am = data_done,
                                 .user_data = r};
        ucs_status_ptr_t s = ucp_am_recv_data_nbx(tl->worker, data, dst, length, &p);
        if (s == NULL) {
            r->bytes_got += length;
        } else if (UCS_PTR_IS_ERR(s)) {
            r->status = KVS_ERR_TRANSPORT;
        } else {
            r->outstanding++;
        }
        return UCS_OK;
    }
    memcpy(dst, data, length);
    r->bytes_got += length;
    return UCS_OK;
}

static ucs_status_t am_cb(void *arg, const void *header, size_t header_length, void *data,
                          size_t length, const ucp_am_recv_param_t *param)
{
    tl_t *tl = arg;
    if (header_length > 0)
        return on_data(tl, header, header_length, data, length, param);
    ucp_ep_h ep = (param->recv_attr & UCP_AM_RECV_ATTR_FIELD_REPLY_EP) ? param->reply_ep : NULL;
    if (length > KVS_PROTO_HDR_LEN + KVS_PROTO_MAX_BODY)
        return UCS_OK; /* refused by the parser anyway; never allocate for it */
    inmsg_t *m = kvs__calloc(1, sizeof(*m));
    uint8_t *buf = kvs__malloc(length ? length : 1);
    if (m == NULL || buf == NULL) {
        kvs__free(m);
        kvs__free(buf);
        return UCS_OK;
    }
    m->ep = ep;
    m->buf = buf;
    m->len = length;
    if (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) {
        ucp_request_param_t p = {.op_attr_mask =
                                     UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA,
                                 .cb.recv_am = rndv_msg_done,
                                 .user_data = m};
        ucs_status_ptr_t s = ucp_am_recv_data_nbx(tl->worker, data, buf, length, &p);
        if (s == NULL) {
            m->ready = true;
        } else if (UCS_PTR_IS_ERR(s)) {
            kvs__free(buf);
            kvs__free(m);
            return UCS_OK;
        }
    } else {
        memcpy(buf, data, length);
        m->ready = true;
    }
    inbox_push(tl, m);
    return UCS_OK;
}

/* ---------------------------------------------------------------------- */
/* Authentication                                                           */
/* ---------------------------------------------------------------------- */
static void proof(const tl_t *tl, const char *role, const uint8_t *nc, const uint8_t *ns,
                  uint8_t *out)
{
    uint8_t msg[16 + 2 * KVS_PROTO_NONCE_LEN];
    size_t rl = strlen(role);
    memcpy(msg, role, rl);
    memcpy(msg + rl, nc, KVS_PROTO_NONCE_LEN);
    memcpy(msg + rl + KVS_PROTO_NONCE_LEN, ns, KVS_PROTO_NONCE_LEN);
    unsigned int n = 0;
    memset(out, 0, KVS_PROTO_MAC_LEN);
    if (tl->have_secret)
        HMAC(EVP_sha256(), tl->secret, (int)tl->secret_len, msg, rl + 2 * KVS_PROTO_NONCE_LEN, out,
             &n);
}

/* ---------------------------------------------------------------------- */
/* Regions                                                                  */
/* ---------------------------------------------------------------------- */
static const region_t *region_of(const tl_t *tl, const void *addr, size_t len)
{
    const uint8_t *a = addr;
    for (const region_t *r = tl->regions; r != NULL; r = r->next)
        if (a >= r->base && a + len <= r->base + r->len)
            return r;
    return NULL;
}

static void put_regions(tl_t *tl, conn_t *c, kvs__buf_t *b)
{
    uint32_t n = 0;
    size_t count_at = b->len;
    kvs__buf_u32(b, 0);
    for (const region_t *r = tl->regions; r != NULL; r = r->next) {
        kvs__region_desc_t d = {.id = r->id,
                                .base = (uint64_t)(uintptr_t)r->base,
                                .length = r->len,
                                .rkey_len = (uint32_t)r->rkey_len,
                                .rkey = r->rkey_buf};
        kvs__proto_put_region(b, &d);
        n++;
    }
    kvs__buf_patch_u32(b, count_at, n);
    c->regions_sent = tl->regions_version;
}

static kvs_status_t take_regions(conn_t *c, const kvs__msg_t *m)
{
    const uint8_t *cur = m->regions;
    for (uint32_t i = 0; i < m->nregions; i++) {
        kvs__region_desc_t d;
        kvs__proto_region(&cur, &d);
        bool known = false;
        for (size_t k = 0; k < c->nrr && !known; k++)
            known = c->rr[k].id == d.id;
        if (known)
            continue; /* unpacked once, cached for the connection's life */
        if (c->nrr == c->caprr) {
            size_t cap = c->caprr ? c->caprr * 2 : 8;
            rregion_t *nr = kvs__realloc(c->rr, cap * sizeof(*nr));
            if (nr == NULL)
                return KVS_ERR_NO_MEMORY;
            c->rr = nr;
            c->caprr = cap;
        }
        rregion_t *rr = &c->rr[c->nrr];
        memset(rr, 0, sizeof(*rr));
        rr->rkey_buf = kvs__malloc(d.rkey_len);
        if (rr->rkey_buf == NULL)
            return KVS_ERR_NO_MEMORY;
        memcpy(rr->rkey_buf, d.rkey, d.rkey_len);
        rr->id = d.id;
        rr->base = d.base;
        rr->len = d.length;
        rr->rkey_len = d.rkey_len;
        c->nrr++;
    }
    return KVS_OK;
}

static rregion_t *rregion(conn_t *c, uint32_t id, uint64_t addr, uint64_t len)
{
    for (size_t k = 0; k < c->nrr; k++) {
        rregion_t *r = &c->rr[k];
        if (r->id != id)
            continue;
        if (addr < r->base || len > r->len || addr - r->base > r->len - len)
            return NULL; /* a descriptor outside its region: refuse it */
        if (r->rkey == NULL && ucp_ep_rkey_unpack(c->data_ep != NULL ? c->data_ep : c->ep,
                                                  r->rkey_buf, &r->rkey) != UCS_OK) {
            r->rkey = NULL;
            return NULL;
        }
        return r;
    }
    return NULL;
}

/* ---------------------------------------------------------------------- */
/* Server side                                                              */
/* ---------------------------------------------------------------------- */
static void srv_hello(tl_t *tl, conn_t *c, const kvs__msg_t *m)
{
    char served[512];
    c->layout_id = m->u.hello.layout_id;
    if (!kvs__ctx_serves_layout(tl->ctx, c->layout_id, served, sizeof(served))) {
        char text[700];
        snprintf(text, sizeof(text), "layout mismatch: peer has %016llx, this node serves %s",
                 (unsigned long long)c->layout_id, served[0] ? served : "no pools");
        send_error(tl, c->ep, m->hdr.req_id, KVS_ERR_LAYOUT_MISMATCH, text);
        kvs__warn(tl->log, "peer %s: %s", c->peer, text);
        c->state = C_SERVER_WAIT_HELLO; /* the client hangs up */
        return;
    }
    memcpy(c->nonce_c, m->u.hello.nonce, KVS_PROTO_NONCE_LEN);
    if (RAND_bytes(c->nonce_s, sizeof(c->nonce_s)) != 1) {
        conn_fail(c, KVS_ERR_IO, "RAND_bytes failed");
        return;
    }
    uint8_t mac[KVS_PROTO_MAC_LEN];
    proof(tl, "kvshare-server", c->nonce_c, c->nonce_s, mac);
    kvs__buf_t b;
    kvs__buf_init(&b);
    kvs__proto_begin(&b, KVS_MSG_CHALLENGE, 0, m->hdr.req_id, 0);
    kvs__buf_put(&b, c->nonce_s, sizeof(c->nonce_s));
    kvs__buf_put(&b, mac, sizeof(mac));
    kvs__buf_u8(&b, tl->have_secret ? 1 : 0);
    send_buf(tl, c->ep, &b);
    c->state = C_SERVER_WAIT_AUTH;
}

static void srv_auth(tl_t *tl, conn_t *c, const kvs__msg_t *m)
{
    if (tl->have_secret) {
        uint8_t want[KVS_PROTO_MAC_LEN];
        proof(tl, "kvshare-client", c->nonce_c, c->nonce_s, want);
        if (CRYPTO_memcmp(want, m->u.auth.mac, sizeof(want)) != 0) {
            send_error(tl, c->ep, m->hdr.req_id, KVS_ERR_AUTH,
                       "authentication failed: the peer does not hold this node's "
                       "KVSHARE_AUTH_TOKEN_FILE secret");
            kvs__warn(tl->log, "peer %s: refused: bad or missing auth proof", c->peer);
            c->state = C_SERVER_WAIT_HELLO;
            return;
        }
    }
    if (RAND_bytes((unsigned char *)&c->session, sizeof(c->session)) != 1)
        c->session = now_ns();
    kvs__buf_t b;
    kvs__buf_init(&b);
    kvs__proto_begin(&b, KVS_MSG_HELLO_ACK, KVS_PROTO_FLAG_REGIONS, m->hdr.req_id, c->session);
    kvs__buf_u32(&b, (uint32_t)tl->waddr_len);
    kvs__buf_put(&b, tl->waddr, tl->waddr_len);
    put_regions(tl, c, &b);
    send_buf(tl, c->ep, &b);
    c->state = C_READY;
    kvs__info(tl->log, "peer %s: ready (layout %016llx)", c->peer,
              (unsigned long long)c->layout_id);
}

static void srv_lookup(tl_t *tl, conn_t *c, const kvs__msg_t *m)
{
    uint64_t rid = m->hdr.req_id;
    if (m->u.lookup.layout_id != c->layout_id) {
        send_error(tl, c->ep, rid, KVS_ERR_LAYOUT_MISMATCH, "lookup under another layout");
        return;
    }
    if (c->nleases >= MAX_SERVER_LEASE) {
        send_error(tl, c->ep, rid, KVS_ERR_BUSY, "too many leases held by this peer");
        return;
    }
    kvs_lease_h lease = NULL;
    kvs_key_t *keys = NULL;
    kvs__buf_t b;
    kvs__buf_init(&b);
    kvs_status_t st = KVS_ERR_NO_MEMORY;
    uint32_t n = m->u.lookup.nkeys;
    /* Keys are copied out: the message buffer's alignment is arbitrary. */
    keys = kvs__malloc((n ? n : 1) * sizeof(*keys));
    if (keys == NULL)
        goto fail;
    memcpy(keys, m->u.lookup.keys, (size_t)n * KVS_KEY_BYTES);
    uint32_t lease_ms = m->u.lookup.lease_ms ? m->u.lookup.lease_ms : tl->ctx->cfg.lease_timeout_ms;
    if (lease_ms > tl->ctx->cfg.lease_timeout_ms)
        lease_ms = tl->ctx->cfg.lease_timeout_ms; /* the holder decides the ceiling */
    st = kvs__serve_lookup(tl->ctx, c->layout_id, keys, n, lease_ms, &lease);
    if (st != KVS_OK)
        goto fail;
    size_t hits = kvs_lease_hits(lease);
    uint64_t lease_id = ++tl->next_lease_id;
    bool with_regions = c->regions_sent != tl->regions_version;
    kvs__proto_begin(&b, KVS_MSG_LOOKUP_REPLY, with_regions ? KVS_PROTO_FLAG_REGIONS : 0, rid,
                     c->session);
    kvs__buf_u32(&b, (uint32_t)KVS_OK);
    kvs__buf_u64(&b, lease_id);
    size_t hits_at = b.len;
    kvs__buf_u32(&b, 0);
    if (with_regions)
        put_regions(tl, c, &b);
    /* Scratch for one block's pieces (one per layer: 80 for a 70B model). */
    kvs__piece_loc_t *locs = tl->scratch_locs;
    kvs__piece_t *pieces = tl->scratch_pieces;
    size_t described = 0;
    for (size_t i = 0; i < hits; i++) {
        kvs__block_loc_t loc = {.npieces = MAX_PIECES, .pieces = locs};
        if (kvs__lease_locate(lease, i, &loc) != KVS_OK)
            break; /* the prefix ends where a block cannot be described */
        const region_t *gr = region_of(tl, loc.gen_addr, 8);
        bool ok = gr != NULL;
        for (size_t k = 0; ok && k < loc.npieces; k++) {
            const region_t *pr = region_of(tl, locs[k].addr, locs[k].len);
            ok = pr != NULL && locs[k].len <= UINT32_MAX;
            if (ok) {
                pieces[k].region = pr->id;
                pieces[k].len = (uint32_t)locs[k].len;
                pieces[k].addr = (uint64_t)(uintptr_t)locs[k].addr;
            }
        }
        if (!ok) {
            kvs__warn(tl->log,
                      "peer %s: hit %zu (%p+%zu, generation at %p) lies outside "
                      "registered memory",
                      c->peer, i, locs[0].addr, locs[0].len, loc.gen_addr);
            break;
        }
        kvs__block_desc_t d = {.gen_region = gr->id,
                               .gen_addr = (uint64_t)(uintptr_t)loc.gen_addr,
                               .gen = loc.gen,
                               .npieces = (uint16_t)loc.npieces};
        kvs__proto_put_block(&b, &d, pieces);
        described++;
    }
    kvs__buf_patch_u32(&b, hits_at, (uint32_t)described);
    if (b.failed)
        goto fail;
    if (described > 0) {
        srv_lease_t *sl = kvs__malloc(sizeof(*sl));
        if (sl == NULL)
            goto fail;
        sl->id = lease_id;
        sl->lease = lease;
        sl->next = c->leases;
        c->leases = sl;
        c->nleases++;
        lease = NULL; /* held until RELEASE, the lease deadline, or the peer's end */
    }
    kvs_lease_release(lease);
    kvs__free(keys);
    send_buf(tl, c->ep, &b);
    return;
fail:
    kvs_lease_release(lease);
    kvs__free(keys);
    kvs__buf_free(&b);
    send_error(tl, c->ep, rid, st == KVS_OK ? KVS_ERR_NO_MEMORY : st, kvs_status_string(st));
}

#define MAX_PUT_BYTES (1ull << 30)

static void srv_put(tl_t *tl, conn_t *c, const kvs__msg_t *m)
{
    uint64_t rid = m->hdr.req_id;
    if (!tl->ctx->cfg.pool_node) {
        send_error(tl, c->ep, rid, KVS_ERR_UNSUPPORTED,
                   "this node is not a pool node (kvshare serve) and takes no PUT");
        return;
    }
    size_t block_bytes = 0;
    for (uint16_t k = 0; k < m->u.put.nchunks; k++)
        block_bytes += kvs__proto_u32_at(m->u.put.chunks, k);
    if (block_bytes == 0) {
        send_error(tl, c->ep, rid, KVS_ERR_INVALID_PARAM, "PUT of empty blocks");
        return;
    }
    sput_t *p = kvs__calloc(1, sizeof(*p));
    uint32_t *idx = kvs__malloc((m->u.put.nkeys ? m->u.put.nkeys : 1) * sizeof(*idx));
    kvs_key_t *keys = kvs__malloc((m->u.put.nkeys ? m->u.put.nkeys : 1) * sizeof(*keys));
    if (p == NULL || idx == NULL || keys == NULL)
        goto nomem;
    /* Take only what we do not hold, and no more than a bounded staging. */
    uint32_t n = 0;
    for (uint32_t i = 0; i < m->u.put.nkeys; i++) {
        kvs_key_t k;
        memcpy(&k, m->u.put.keys + (size_t)i * KVS_KEY_BYTES, sizeof(k));
        if ((uint64_t)(n + 1) * block_bytes > MAX_PUT_BYTES)
            break;
        if (kvs__ctx_has_key(tl->ctx, m->u.put.layout_id, &k))
            continue;
        keys[n] = k;
        idx[n++] = i;
    }
    p->staging = kvs__malloc(n ? (size_t)n * block_bytes : 1);
    if (p->staging == NULL)
        goto nomem;
    p->conn = c;
    p->req_id = rid;
    p->layout_id = m->u.put.layout_id;
    p->n = n;
    p->keys = keys;
    p->block_bytes = block_bytes;
    p->want = (size_t)n * block_bytes;
    p->deadline_ns = now_ns() + (uint64_t)tl->ctx->cfg.fetch_timeout_ms * 1000000u * 4;
    p->next = tl->sputs;
    tl->sputs = p;
    kvs__buf_t b;
    kvs__buf_init(&b);
    kvs__proto_begin(&b, KVS_MSG_PUT_ACK, 0, rid, c->session);
    kvs__buf_u32(&b, (uint32_t)KVS_OK);
    kvs__buf_u32(&b, n);
    for (uint32_t i = 0; i < n; i++)
        kvs__buf_u32(&b, idx[i]);
    kvs__free(idx);
    send_buf(tl, c->ep, &b);
    return;
nomem:
    if (p != NULL)
        kvs__free(p->staging);
    kvs__free(p);
    kvs__free(idx);
    kvs__free(keys);
    send_error(tl, c->ep, rid, KVS_ERR_NO_MEMORY, "out of memory staging a PUT");
}

static void sput_free(tl_t *tl, sput_t *p)
{
    for (sput_t **pp = &tl->sputs; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == p) {
            *pp = p->next;
            break;
        }
    }
    kvs__free(p->staging);
    kvs__free(p->keys);
    kvs__free(p);
}

/* Stores completed puts, and drops failed or expired ones. Lock held. */
static int finish_puts(tl_t *tl)
{
    int n = 0;
    uint64_t t = now_ns();
    for (sput_t *p = tl->sputs, *next; p != NULL; p = next) {
        next = p->next;
        if (p->outstanding > 0)
            continue;
        if (!p->dead && p->got < p->want && t <= p->deadline_ns)
            continue;
        if (!p->dead && p->got == p->want) {
            size_t stored = 0;
            kvs_status_t st = kvs__publish_staged(tl->ctx, p->layout_id, p->keys, p->n, p->staging,
                                                  p->block_bytes, &stored);
            kvs__buf_t b;
            kvs__buf_init(&b);
            kvs__proto_begin(&b, KVS_MSG_PUT_DONE, 0, p->req_id, p->conn->session);
            kvs__buf_u32(&b, (uint32_t)st);
            kvs__buf_u32(&b, (uint32_t)stored);
            send_buf(tl, p->conn->ep, &b);
            kvs__debug(tl->log, "peer %s: stored %zu of %u put blocks", p->conn->peer, stored,
                       p->n);
        } else if (!p->dead) {
            kvs__warn(tl->log, "peer %s: put of %u blocks expired with %zu of %zu bytes",
                      p->conn->peer, p->n, p->got, p->want);
        }
        sput_free(tl, p);
        n++;
    }
    return n;
}

static srv_lease_t **find_lease(conn_t *c, uint64_t id)
{
    for (srv_lease_t **pp = &c->leases; *pp != NULL; pp = &(*pp)->next)
        if ((*pp)->id == id)
            return pp;
    return NULL;
}

static void srv_release(conn_t *c, const kvs__msg_t *m)
{
    srv_lease_t **pp = find_lease(c, m->u.release.lease_id);
    if (pp == NULL)
        return; /* already released, expired with the peer, or never ours */
    srv_lease_t *l = *pp;
    /* A push still reading this lease keeps its own reference. */
    for (push_t *p = c->tl->pushes; p != NULL; p = p->next)
        if (p->lease == l->lease)
            return;
    *pp = l->next;
    c->nleases--;
    kvs_lease_release(l->lease);
    kvs__free(l);
}

static void push_finish(tl_t *tl, push_t *p)
{
    conn_t *c = p->conn; /* NULL once its connection failed */
    if (c != NULL && c->state == C_READY) {
        kvs__buf_t b;
        kvs__buf_init(&b);
        kvs__proto_begin(&b, KVS_MSG_FETCH_DONE, 0, p->req_id, c->session);
        kvs__buf_u32(&b, (uint32_t)p->status);
        kvs__buf_u32(&b, p->count);
        /* Generations are read after every byte left: a block that changed
         * meanwhile shows a different number and the requester discards it. */
        for (uint32_t i = 0; i < p->count; i++)
            kvs__buf_u64(&b, p->status == KVS_OK ? kvs__lease_gen_now(p->lease, p->first + i) : 0);
        send_buf(tl, c->ep, &b);
    }
    for (push_t **pp = &tl->pushes; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == p) {
            *pp = p->next;
            break;
        }
    }
    kvs__free(p);
}

static void push_sent(void *request, ucs_status_t status, void *user_data)
{
    push_t *p = user_data;
    p->outstanding--;
    if (status != UCS_OK && p->status == KVS_OK)
        p->status = KVS_ERR_PEER_FAILED;
    ucp_request_free(request);
}

/* Sends one piece of a block as a DATA message: the header names the
 * request, the block's index in it and the piece's offset; the payload goes
 * from @src (rendezvous for large pieces). The caller tracks the result. */
static ucs_status_ptr_t send_data(ucp_ep_h ep, uint64_t req_id, uint64_t session, uint32_t block,
                                  uint32_t offset, const void *src, size_t len,
                                  const ucp_request_param_t *param)
{
    uint8_t hdr[KVS_PROTO_HDR_LEN + 8];
    kvs__buf_t hb = {.data = hdr, .cap = sizeof(hdr)};
    kvs__proto_begin(&hb, KVS_MSG_DATA, 0, req_id, session);
    kvs__buf_u32(&hb, block);
    kvs__buf_u32(&hb, offset);
    kvs__proto_finish(&hb);
    return ucp_am_send_nbx(ep, AM_ID, hdr, sizeof(hdr), src, len, param);
}

static void srv_fetch(tl_t *tl, conn_t *c, const kvs__msg_t *m)
{
    srv_lease_t **pp = find_lease(c, m->u.fetch.lease_id);
    uint64_t rid = m->hdr.req_id;
    if (pp == NULL) {
        send_error(tl, c->ep, rid, KVS_ERR_NOT_FOUND, "no such lease (released or expired)");
        return;
    }
    kvs_lease_h lease = (*pp)->lease;
    if ((size_t)m->u.fetch.first + m->u.fetch.count > kvs_lease_hits(lease)) {
        send_error(tl, c->ep, rid, KVS_ERR_INVALID_PARAM, "fetch beyond the lease");
        return;
    }
    push_t *p = kvs__calloc(1, sizeof(*p));
    if (p == NULL) {
        send_error(tl, c->ep, rid, KVS_ERR_NO_MEMORY, "out of memory");
        return;
    }
    p->conn = c;
    p->lease = lease;
    p->req_id = rid;
    p->first = m->u.fetch.first;
    p->count = m->u.fetch.count;
    p->status = KVS_OK;
    p->next = tl->pushes;
    tl->pushes = p;
    kvs__piece_loc_t *locs = tl->scratch_locs;
    for (uint32_t i = 0; i < p->count && p->status == KVS_OK; i++) {
        kvs__block_loc_t loc = {.npieces = MAX_PIECES, .pieces = locs};
        if (kvs__lease_locate(lease, p->first + i, &loc) != KVS_OK) {
            p->status = KVS_ERR_STALE;
            break;
        }
        /* Cut the block into the requester's segment sizes; each chunk must
         * lie within one of our pieces (same geometry on both sides). */
        uint32_t off = 0;
        for (uint16_t k = 0; k < m->u.fetch.nchunks && p->status == KVS_OK; k++) {
            uint32_t len = kvs__proto_u32_at(m->u.fetch.chunks, k);
            size_t pbase = 0;
            const uint8_t *src = NULL;
            for (size_t q = 0; q < loc.npieces; q++) {
                if (off >= pbase && (size_t)off + len <= pbase + locs[q].len) {
                    src = (const uint8_t *)locs[q].addr + (off - pbase);
                    break;
                }
                pbase += locs[q].len;
            }
            if (src == NULL) {
                p->status = KVS_ERR_LAYOUT_MISMATCH;
                break;
            }
            ucp_request_param_t prm = {.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK |
                                                       UCP_OP_ATTR_FIELD_USER_DATA |
                                                       UCP_OP_ATTR_FIELD_FLAGS,
                                       .cb.send = push_sent,
                                       .user_data = p,
                                       .flags = UCP_AM_SEND_FLAG_REPLY};
            ucs_status_ptr_t s = send_data(c->ep, rid, c->session, i, off, src, len, &prm);
            if (UCS_PTR_IS_ERR(s))
                p->status = KVS_ERR_PEER_FAILED;
            else if (s != NULL)
                p->outstanding++;
            off += len;
        }
    }
    if (p->outstanding == 0)
        push_finish(tl, p);
}

/* ---------------------------------------------------------------------- */
/* Message dispatch (outside UCX callbacks, lock held)                      */
/* ---------------------------------------------------------------------- */
static void deliver_reply(tl_t *tl, conn_t *c, inmsg_t *in, const kvs__msg_t *m)
{
    for (waiter_t *w = tl->waiters; w != NULL; w = w->next) {
        if (w->conn == c && w->req_id == m->hdr.req_id && !w->done) {
            w->msg = in->buf;
            w->len = in->len;
            in->buf = NULL;
            w->done = true;
            pthread_cond_broadcast(&tl->cond);
            return;
        }
    }
}

static void client_fetch_done(tl_t *tl, const kvs__msg_t *m)
{
    treq_t *r = req_by_id(tl, m->hdr.req_id);
    if (r == NULL || r->status != KVS_INPROGRESS)
        return;
    if (m->u.fetch_done.status != KVS_OK) {
        r->status = (kvs_status_t)m->u.fetch_done.status;
        return;
    }
    if (m->u.fetch_done.count != r->count) {
        r->status = KVS_ERR_PROTOCOL;
        return;
    }
    for (uint32_t i = 0; i < r->count; i++)
        r->gens_now[i] = kvs__proto_u64_at(m->u.fetch_done.gens, i);
    r->done_msg = true;
}

static void handle(tl_t *tl, inmsg_t *in)
{
    conn_t *c = in->ep != NULL ? conn_by_ep(tl, in->ep) : NULL;
    if (c == NULL || c->state == C_FAILED || in->buf == NULL)
        return; /* from a connection already gone */
    kvs__msg_t m;
    char why[256];
    if (kvs__proto_decode(in->buf, in->len, &m, why, sizeof(why)) != KVS_OK) {
        kvs__error(tl->log, "peer %s: malformed message (%s); dropping the connection", c->peer,
                   why);
        conn_fail(c, KVS_ERR_PROTOCOL, "malformed message: %s", why);
        return;
    }
    switch ((kvs__msg_type_t)m.hdr.type) {
    case KVS_MSG_HELLO:
        if (c->server && c->state == C_SERVER_WAIT_HELLO)
            srv_hello(tl, c, &m);
        else
            conn_fail(c, KVS_ERR_PROTOCOL, "unexpected HELLO");
        return;
    case KVS_MSG_AUTH:
        if (c->server && c->state == C_SERVER_WAIT_AUTH)
            srv_auth(tl, c, &m);
        else
            conn_fail(c, KVS_ERR_PROTOCOL, "unexpected AUTH");
        return;
    case KVS_MSG_LOOKUP:
    case KVS_MSG_RELEASE:
    case KVS_MSG_FETCH:
    case KVS_MSG_PUT:
        if (!c->server || c->state != C_READY || m.hdr.session != c->session) {
            conn_fail(c, KVS_ERR_PROTOCOL, "request before the handshake completed");
            return;
        }
        if (m.hdr.type == KVS_MSG_LOOKUP)
            srv_lookup(tl, c, &m);
        else if (m.hdr.type == KVS_MSG_RELEASE)
            srv_release(c, &m);
        else if (m.hdr.type == KVS_MSG_FETCH)
            srv_fetch(tl, c, &m);
        else
            srv_put(tl, c, &m);
        return;
    case KVS_MSG_PUT_ACK:
        if (c->server)
            conn_fail(c, KVS_ERR_PROTOCOL, "PUT_ACK sent to a server");
        else
            deliver_reply(tl, c, in, &m);
        return;
    case KVS_MSG_PUT_DONE:
        if (!c->server) {
            treq_t *r = req_by_id(tl, m.hdr.req_id);
            if (r != NULL && r->is_put && r->status == KVS_INPROGRESS)
                r->status = (kvs_status_t)m.u.put_done.status;
        }
        return;
    case KVS_MSG_CHALLENGE:
    case KVS_MSG_HELLO_ACK:
    case KVS_MSG_LOOKUP_REPLY:
    case KVS_MSG_ERROR:
        if (c->server) {
            conn_fail(c, KVS_ERR_PROTOCOL, "reply-type message %u sent to a server", m.hdr.type);
            return;
        }
        if (m.hdr.type == KVS_MSG_ERROR) {
            treq_t *r = req_by_id(tl, m.hdr.req_id);
            if (r != NULL && r->status == KVS_INPROGRESS) {
                r->status = (kvs_status_t)m.u.error.status;
                kvs__warn(tl->log, "peer %s: %.*s", c->peer, (int)m.u.error.text_len,
                          m.u.error.text);
                return;
            }
        }
        deliver_reply(tl, c, in, &m);
        return;
    case KVS_MSG_FETCH_DONE:
        if (!c->server)
            client_fetch_done(tl, &m);
        return;
    case KVS_MSG_DATA:
    case KVS_MSG_EVENT:
        conn_fail(c, KVS_ERR_PROTOCOL, "unexpected message type %u", m.hdr.type);
        return;
    }
}

static void check_deadlines(tl_t *tl)
{
    uint64_t t = now_ns();
    for (treq_t *r = tl->reqs; r != NULL; r = r->next) {
        if (r->status == KVS_INPROGRESS && t > r->deadline_ns && r->conn->state != C_FAILED) {
            /* Closing the connection cancels what is in flight, so nothing
             * lands in the destination after we report the timeout. */
            r->status = KVS_ERR_TIMED_OUT;
            conn_fail(r->conn, KVS_ERR_TIMED_OUT, "fetch timed out");
            r->status = KVS_ERR_TIMED_OUT;
        }
    }
}

static int advance_requests(tl_t *tl);

/* Drives the worker and everything queued behind it. Lock held. */
static int progress_locked(tl_t *tl)
{
    int n = 0;
    while (ucp_worker_progress(tl->worker) != 0)
        n++;
    while (tl->pending != NULL) {
        pending_conn_t *p = tl->pending;
        tl->pending = p->next;
        accept_conn(tl, p->req);
        kvs__free(p);
        n++;
    }
    while (tl->inbox != NULL && tl->inbox->ready) {
        inmsg_t *m = tl->inbox;
        tl->inbox = m->next;
        if (tl->inbox == NULL)
            tl->inbox_tail = &tl->inbox;
        handle(tl, m);
        kvs__free(m->buf);
        kvs__free(m);
        n++;
    }
    for (conn_t *c = tl->conns, *next; c != NULL; c = next) {
        next = c->next;
        if (c->closing && c->state != C_FAILED) {
            char why[sizeof(c->why)];
            memcpy(why, c->why, sizeof(why));
            conn_fail(c, KVS_ERR_PEER_FAILED, "%s", why);
            n++;
        }
    }
    for (push_t *p = tl->pushes, *next; p != NULL; p = next) {
        next = p->next;
        if (p->outstanding == 0) {
            push_finish(tl, p);
            n++;
        }
    }
    n += finish_puts(tl);
    n += advance_requests(tl);
    check_deadlines(tl);
    if (n > 0)
        pthread_cond_broadcast(&tl->cond);
    return n;
}

/* ---------------------------------------------------------------------- */
/* Waiting                                                                  */
/* ---------------------------------------------------------------------- */
/* Sleeps on tl->cond until @until_ns at the latest (lock held). */
static void cond_sleep(tl_t *tl, uint64_t until_ns)
{
    uint64_t t = now_ns();
    if (until_ns <= t)
        return;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t rel = until_ns - t;
    ts.tv_sec += (time_t)(rel / 1000000000u);
    ts.tv_nsec += (long)(rel % 1000000000u);
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    pthread_cond_timedwait(&tl->cond, &tl->lock, &ts);
}

/* Waits (lock held) until *flag is true or the deadline passes. The waiter
 * drives the worker itself while there is work, so a reply is handled on
 * this thread without a hand-off; it sleeps only when nothing moves (the
 * progress thread, in thread mode, wakes it for events meanwhile). */
static bool wait_until(tl_t *tl, const bool *flag, uint64_t deadline_ns)
{
    while (!*flag) {
        uint64_t t = now_ns();
        if (t >= deadline_ns)
            return false;
        if (progress_locked(tl) > 0 || *flag)
            continue;
        if (tl->thread_mode)
            cond_sleep(tl, deadline_ns - t > 1000000u ? t + 1000000u : deadline_ns);
    }
    return true;
}

static waiter_t *waiter_add(tl_t *tl, conn_t *c, uint64_t req_id)
{
    waiter_t *w = kvs__calloc(1, sizeof(*w));
    if (w == NULL)
        return NULL;
    w->conn = c;
    w->req_id = req_id;
    w->next = tl->waiters;
    tl->waiters = w;
    return w;
}

static void waiter_del(tl_t *tl, waiter_t *w)
{
    for (waiter_t **pp = &tl->waiters; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == w) {
            *pp = w->next;
            break;
        }
    }
    kvs__free(w->msg);
    kvs__free(w);
}

/* Sends @b and waits for the reply with the same request id. On KVS_OK the
 * decoded reply is in *m and its buffer in *w (free with waiter_del). */
static kvs_status_t request(tl_t *tl, conn_t *c, kvs__buf_t *b, uint64_t req_id,
                            uint64_t deadline_ns, waiter_t **w_p, kvs__msg_t *m)
{
    waiter_t *w = waiter_add(tl, c, req_id);
    if (w == NULL) {
        kvs__buf_free(b);
        return KVS_ERR_NO_MEMORY;
    }
    kvs_status_t st = send_buf(tl, c->ep, b);
    if (st != KVS_OK) {
        waiter_del(tl, w);
        conn_fail(c, st, "send failed");
        return st;
    }
    if (!wait_until(tl, &w->done, deadline_ns)) {
        waiter_del(tl, w);
        conn_fail(c, KVS_ERR_TIMED_OUT, "no reply before the deadline");
        return KVS_ERR_TIMED_OUT;
    }
    if (w->msg == NULL) { /* woken by a failure */
        waiter_del(tl, w);
        return c->fail_status != KVS_OK ? c->fail_status : KVS_ERR_PEER_FAILED;
    }
    char why[256];
    st = kvs__proto_decode(w->msg, w->len, m, why, sizeof(why));
    if (st != KVS_OK) {
        waiter_del(tl, w);
        conn_fail(c, KVS_ERR_PROTOCOL, "malformed reply: %s", why);
        return KVS_ERR_PROTOCOL;
    }
    if (m->hdr.type == KVS_MSG_ERROR) {
        kvs__error(tl->log, "peer %s: %.*s", c->peer, (int)m->u.error.text_len, m->u.error.text);
        st = (kvs_status_t)m->u.error.status;
        waiter_del(tl, w);
        return st < 0 ? st : KVS_ERR_PROTOCOL;
    }
    *w_p = w;
    return KVS_OK;
}

/* ---------------------------------------------------------------------- */
/* Client side: connect + handshake                                         */
/* ---------------------------------------------------------------------- */
static kvs_status_t resolve(const char *peer, struct sockaddr_storage *ss, socklen_t *len)
{
    char host[256];
    const char *colon = strrchr(peer, ':');
    if (colon == NULL || colon == peer || (size_t)(colon - peer) >= sizeof(host))
        return KVS_ERR_INVALID_PARAM;
    size_t hl = (size_t)(colon - peer);
    memcpy(host, peer, hl);
    host[hl] = '\0';
    if (host[0] == '[' && hl > 2 && host[hl - 1] == ']') {
        memmove(host, host + 1, hl - 2);
        host[hl - 2] = '\0';
    }
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ai = NULL;
    if (getaddrinfo(host, colon + 1, &hints, &ai) != 0 || ai == NULL)
        return KVS_ERR_NOT_FOUND;
    memcpy(ss, ai->ai_addr, ai->ai_addrlen);
    *len = ai->ai_addrlen;
    freeaddrinfo(ai);
    return KVS_OK;
}

/* True when UCX gave the endpoint a native RMA lane (not TCP's emulation). */
static bool has_native_rma(tl_t *tl, ucp_ep_h ep)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (f == NULL)
        return false;
    ucp_ep_print_info(ep, f);
    fclose(f);
    bool native = false;
    for (char *line = strtok(text, "\n"); line != NULL; line = strtok(NULL, "\n")) {
        if (strstr(line, "lane[") != NULL && strstr(line, "rma_bw") != NULL) {
            kvs__debug(tl->log, "GET endpoint %s", line);
            if (strstr(line, "tcp/") == NULL)
                native = true;
        }
    }
    free(text);
    return native;
}

static kvs_status_t handshake(tl_t *tl, conn_t *c, uint64_t deadline)
{
    kvs__buf_t b;
    kvs__msg_t m;
    waiter_t *w = NULL;
    kvs_status_t st;
    char host[64];

    if (RAND_bytes(c->nonce_c, sizeof(c->nonce_c)) != 1)
        return KVS_ERR_IO;
    if (gethostname(host, sizeof(host)) != 0)
        strcpy(host, "?");
    host[sizeof(host) - 1] = '\0';
    char name[96];
    int nl = snprintf(name, sizeof(name), "%s:%d", host, (int)getpid());
    kvs__buf_init(&b);
    uint64_t rid = ++tl->next_req_id;
    kvs__proto_begin(&b, KVS_MSG_HELLO, 0, rid, 0);
    kvs__buf_u64(&b, c->layout_id);
    kvs__buf_put(&b, c->nonce_c, sizeof(c->nonce_c));
    kvs__buf_u16(&b, (uint16_t)nl);
    kvs__buf_put(&b, name, (size_t)nl);
    st = request(tl, c, &b, rid, deadline, &w, &m);
    if (st != KVS_OK)
        return st;
    if (m.hdr.type != KVS_MSG_CHALLENGE) {
        waiter_del(tl, w);
        conn_fail(c, KVS_ERR_PROTOCOL, "expected CHALLENGE, got type %u", m.hdr.type);
        return KVS_ERR_PROTOCOL;
    }
    memcpy(c->nonce_s, m.u.challenge.nonce, sizeof(c->nonce_s));
    bool required = m.u.challenge.auth_required;
    uint8_t want[KVS_PROTO_MAC_LEN];
    proof(tl, "kvshare-server", c->nonce_c, c->nonce_s, want);
    bool server_proved =
        tl->have_secret && required && CRYPTO_memcmp(want, m.u.challenge.mac, sizeof(want)) == 0;
    waiter_del(tl, w);
    if (required && !tl->have_secret) {
        conn_fail(c, KVS_ERR_AUTH,
                  "the peer requires authentication: set "
                  "KVSHARE_AUTH_TOKEN_FILE to the shared secret");
        return KVS_ERR_AUTH;
    }
    if (tl->have_secret && !server_proved) {
        conn_fail(c, KVS_ERR_AUTH, "the peer did not prove the shared secret; refusing it");
        return KVS_ERR_AUTH;
    }
    uint8_t mac[KVS_PROTO_MAC_LEN];
    proof(tl, "kvshare-client", c->nonce_c, c->nonce_s, mac);
    kvs__buf_init(&b);
    rid = ++tl->next_req_id;
    kvs__proto_begin(&b, KVS_MSG_AUTH, 0, rid, 0);
    kvs__buf_put(&b, mac, sizeof(mac));
    st = request(tl, c, &b, rid, deadline, &w, &m);
    if (st != KVS_OK)
        return st;
    if (m.hdr.type != KVS_MSG_HELLO_ACK) {
        waiter_del(tl, w);
        conn_fail(c, KVS_ERR_PROTOCOL, "expected HELLO_ACK, got type %u", m.hdr.type);
        return KVS_ERR_PROTOCOL;
    }
    c->session = m.hdr.session;
    st = take_regions(c, &m);
    if (st == KVS_OK && m.u.hello_ack.addr_len > 0) {
        /* The GET endpoint: from the worker address, so UCX may pick shared
         * memory or CMA (which PEER error mode would exclude). */
        ucp_ep_params_t ep = {.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS |
                                            UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE,
                              .address = (const ucp_address_t *)m.u.hello_ack.addr,
                              .err_mode = UCP_ERR_HANDLING_MODE_NONE};
        ucp_ep_h dep = NULL;
        if (ucp_ep_create(tl->worker, &ep, &dep) == UCS_OK) {
            if (has_native_rma(tl, dep))
                c->data_ep = dep;
            else
                ep_close(tl, dep);
        }
    }
    waiter_del(tl, w);
    if (st != KVS_OK) {
        conn_fail(c, st, "region table: %s", kvs_status_string(st));
        return st;
    }
    c->state = C_READY;
    kvs__info(tl->log, "peer %s: ready, data path %s", c->peer,
              c->data_ep ? "GET" : "active-message push");
    return KVS_OK;
}

/* Finds or makes a ready connection to @peer for @layout_id. Lock held.
 * On KVS_OK the caller holds a reference. */
static kvs_status_t get_conn(tl_t *tl, const char *peer, uint64_t layout_id, uint64_t deadline,
                             conn_t **c_p)
{
    for (conn_t *c = tl->conns; c != NULL; c = c->next) {
        if (!c->server && c->layout_id == layout_id && strcmp(c->peer, peer) == 0 &&
            c->state == C_READY) {
            c->refs++;
            *c_p = c;
            return KVS_OK;
        }
    }
    struct sockaddr_storage ss;
    socklen_t sl;
    kvs_status_t st = resolve(peer, &ss, &sl);
    if (st != KVS_OK) {
        kvs__error(tl->log, "peer '%s': cannot resolve (expected HOST:PORT)", peer);
        return st == KVS_ERR_NOT_FOUND ? KVS_ERR_PEER_FAILED : st;
    }
    if (strlen(peer) >= sizeof(((conn_t *)0)->peer))
        return KVS_ERR_INVALID_PARAM;
    conn_t *c = conn_new(tl, false);
    if (c == NULL)
        return KVS_ERR_NO_MEMORY;
    strcpy(c->peer, peer);
    c->layout_id = layout_id;
    c->state = C_HELLO;
    c->refs++; /* ours, for the handshake */
    ucp_ep_params_t ep = {.field_mask = UCP_EP_PARAM_FIELD_FLAGS | UCP_EP_PARAM_FIELD_SOCK_ADDR |
                                        UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                                        UCP_EP_PARAM_FIELD_ERR_HANDLER,
                          .flags = UCP_EP_PARAMS_FLAGS_CLIENT_SERVER,
                          .sockaddr = {.addr = (const struct sockaddr *)&ss, .addrlen = sl},
                          .err_mode = UCP_ERR_HANDLING_MODE_PEER,
                          .err_handler = {.cb = ep_error, .arg = c}};
    ucs_status_t us = ucp_ep_create(tl->worker, &ep, &c->ep);
    if (us != UCS_OK) {
        c->ep = NULL;
        conn_fail(c, KVS_ERR_PEER_FAILED, "connect: %s", ucs_status_string(us));
        conn_unref(c);
        return KVS_ERR_PEER_FAILED;
    }
    st = handshake(tl, c, deadline);
    if (st != KVS_OK) {
        if (c->state != C_FAILED)
            conn_fail(c, st, "handshake: %s", kvs_status_string(st));
        conn_unref(c);
        return st;
    }
    *c_p = c;
    return KVS_OK;
}

/* ---------------------------------------------------------------------- */
/* Client side: lookup, release, fetch                                      */
/* ---------------------------------------------------------------------- */
static void lock(tl_t *tl)
{
    pthread_mutex_lock(&tl->lock);
}

static void unlock(tl_t *tl)
{
    pthread_mutex_unlock(&tl->lock);
}

static kvs_status_t tl_lookup(void *arg, const char *peer, uint64_t layout_id,
                              const kvs_key_t *keys, size_t n, uint32_t lease_ms,
                              uint32_t timeout_ms, void **rlease_p, size_t *hits_p)
{
    tl_t *tl = arg;
    conn_t *c = NULL;
    waiter_t *w = NULL;
    kvs__msg_t m;
    rlease_t *rl = NULL;
    kvs_status_t st;
    if (n > KVS_PROTO_MAX_KEYS)
        n = KVS_PROTO_MAX_KEYS; /* a longer chain is asked for in part */
    uint64_t deadline = now_ns() + (uint64_t)timeout_ms * 1000000u;
    lock(tl);
    st = get_conn(tl, peer, layout_id, deadline, &c);
    if (st != KVS_OK)
        goto out;
    kvs__buf_t b;
    kvs__buf_init(&b);
    uint64_t rid = ++tl->next_req_id;
    kvs__proto_begin(&b, KVS_MSG_LOOKUP, 0, rid, c->session);
    kvs__buf_u64(&b, layout_id);
    kvs__buf_u32(&b, lease_ms);
    kvs__buf_u32(&b, (uint32_t)n);
    kvs__buf_put(&b, keys, n * KVS_KEY_BYTES);
    st = request(tl, c, &b, rid, deadline, &w, &m);
    if (st != KVS_OK)
        goto out_unref;
    if (m.hdr.type != KVS_MSG_LOOKUP_REPLY || m.u.lookup_reply.hits > n) {
        conn_fail(c, KVS_ERR_PROTOCOL, "bad LOOKUP_REPLY");
        st = KVS_ERR_PROTOCOL;
        goto out_w;
    }
    if ((st = take_regions(c, &m)) != KVS_OK)
        goto out_w;
    rl = kvs__calloc(1, sizeof(*rl));
    if (rl == NULL) {
        st = KVS_ERR_NO_MEMORY;
        goto out_w;
    }
    rl->hits = m.u.lookup_reply.hits;
    rl->lease_id = m.u.lookup_reply.lease_id;
    rl->blocks_len = m.u.lookup_reply.blocks_len;
    rl->blocks = kvs__malloc(rl->blocks_len ? rl->blocks_len : 1);
    rl->block_at = kvs__calloc(rl->hits ? rl->hits : 1, sizeof(*rl->block_at));
    if (rl->blocks == NULL || rl->block_at == NULL) {
        st = KVS_ERR_NO_MEMORY;
        goto out_w;
    }
    memcpy(rl->blocks, m.u.lookup_reply.blocks, rl->blocks_len);
    const uint8_t *cur = rl->blocks;
    for (uint32_t i = 0; i < rl->hits; i++) {
        rl->block_at[i] = cur;
        kvs__block_desc_t d;
        kvs__proto_block(&cur, &d);
    }
    rl->conn = c;
    c = NULL; /* the lease keeps the reference */
    *rlease_p = rl;
    *hits_p = rl->hits;
    rl = NULL;
out_w:
    waiter_del(tl, w);
out_unref:
    if (c != NULL)
        conn_unref(c);
out:
    if (rl != NULL) {
        kvs__free(rl->blocks);
        kvs__free(rl->block_at);
        kvs__free(rl);
    }
    unlock(tl);
    return st;
}

static void tl_release(void *arg, void *rlease)
{
    tl_t *tl = arg;
    rlease_t *rl = rlease;
    if (rl == NULL)
        return;
    lock(tl);
    conn_t *c = rl->conn;
    if (c->state == C_READY && rl->hits > 0) {
        kvs__buf_t b;
        kvs__buf_init(&b);
        kvs__proto_begin(&b, KVS_MSG_RELEASE, 0, ++tl->next_req_id, c->session);
        kvs__buf_u64(&b, rl->lease_id);
        send_buf(tl, c->ep, &b); /* fire and forget: the lease deadline backs it up */
    }
    conn_unref(c);
    unlock(tl);
    kvs__free(rl->blocks);
    kvs__free(rl->block_at);
    kvs__free(rl);
}

static void get_done(void *request, ucs_status_t status, void *user_data)
{
    treq_t *r = user_data;
    r->outstanding--;
    if (status != UCS_OK && r->status == KVS_INPROGRESS)
        r->status = KVS_ERR_PEER_FAILED;
    ucp_request_free(request);
}

static void track(treq_t *r, ucs_status_ptr_t s)
{
    if (UCS_PTR_IS_ERR(s)) {
        if (r->status == KVS_INPROGRESS)
            r->status = KVS_ERR_PEER_FAILED;
    } else if (s != NULL) {
        r->outstanding++;
    }
}

static ucp_request_param_t get_param(treq_t *r)
{
    ucp_request_param_t p = {.op_attr_mask =
                                 UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA,
                             .cb.send = get_done,
                             .user_data = r};
    return p;
}

/* Posts the GETs of every block, coalescing runs that are adjacent on both
 * sides, then one flush. */
static kvs_status_t post_data_gets(tl_t *tl, treq_t *r)
{
    conn_t *c = r->conn;
    ucp_request_param_t p = get_param(r);
    uint8_t *run_local = NULL;
    uint64_t run_remote = 0;
    size_t run_len = 0;
    ucp_rkey_h run_rkey = NULL;
    (void)tl;
    for (size_t i = 0; i < r->count; i++) {
        kvs__block_desc_t d;
        const uint8_t *cur = r->rl->block_at[r->first + i];
        kvs__proto_block(&cur, &d);
        size_t off = 0;
        for (size_t s = 0; s < r->dst->nsegs; s++) {
            const kvs_segment_t *sg = &r->dst->segs[s];
            uint8_t *local = (uint8_t *)sg->base + (size_t)r->dst_ids[i] * sg->block_stride;
            size_t len = sg->block_bytes;
            /* Find the remote piece holding [off, off+len). */
            size_t pbase = 0;
            kvs__piece_t pc = {0};
            bool found = false;
            for (uint16_t k = 0; k < d.npieces && !found; k++) {
                kvs__proto_piece(d.pieces, k, &pc);
                if (off >= pbase && off + len <= pbase + pc.len)
                    found = true;
                else
                    pbase += pc.len;
            }
            if (!found)
                return KVS_ERR_LAYOUT_MISMATCH;
            uint64_t raddr = pc.addr + (off - pbase);
            rregion_t *rr = rregion(c, pc.region, raddr, len);
            if (rr == NULL)
                return KVS_ERR_PROTOCOL;
            if (run_len > 0 && run_rkey == rr->rkey && run_local + run_len == local &&
                run_remote + run_len == raddr && run_len + len <= MAX_RUN) {
                run_len += len;
            } else {
                if (run_len > 0)
                    track(r, ucp_get_nbx(c->data_ep, run_local, run_len, run_remote, run_rkey, &p));
                run_local = local;
                run_remote = raddr;
                run_len = len;
                run_rkey = rr->rkey;
            }
            off += len;
            r->bytes_expected += len;
        }
    }
    if (run_len > 0)
        track(r, ucp_get_nbx(c->data_ep, run_local, run_len, run_remote, run_rkey, &p));
    track(r, ucp_ep_flush_nbx(c->data_ep, &p));
    return KVS_OK;
}

/* After the data: read each block's generation (stage 2). */
static kvs_status_t post_gen_gets(treq_t *r)
{
    conn_t *c = r->conn;
    ucp_request_param_t p = get_param(r);
    /* Generations live in one array per pool: when this batch's all sit in
     * one region within a small window, one GET reads them all. */
    uint64_t lo = UINT64_MAX, hi = 0;
    uint32_t region = 0;
    bool one_region = true;
    for (size_t i = 0; i < r->count; i++) {
        kvs__block_desc_t d;
        const uint8_t *cur = r->rl->block_at[r->first + i];
        kvs__proto_block(&cur, &d);
        if (i == 0)
            region = d.gen_region;
        one_region = one_region && d.gen_region == region;
        lo = d.gen_addr < lo ? d.gen_addr : lo;
        hi = d.gen_addr + 8 > hi ? d.gen_addr + 8 : hi;
    }
    if (r->count > 1 && one_region && hi - lo <= GEN_WINDOW) {
        rregion_t *rr = rregion(c, region, lo, hi - lo);
        if (rr == NULL)
            return KVS_ERR_PROTOCOL;
        r->genwin = kvs__malloc((size_t)(hi - lo));
        if (r->genwin == NULL)
            return KVS_ERR_NO_MEMORY;
        r->genwin_base = lo;
        track(r, ucp_get_nbx(c->data_ep, r->genwin, (size_t)(hi - lo), lo, rr->rkey, &p));
    } else {
        for (size_t i = 0; i < r->count; i++) {
            kvs__block_desc_t d;
            const uint8_t *cur = r->rl->block_at[r->first + i];
            kvs__proto_block(&cur, &d);
            rregion_t *rr = rregion(c, d.gen_region, d.gen_addr, 8);
            if (rr == NULL)
                return KVS_ERR_PROTOCOL;
            track(r, ucp_get_nbx(c->data_ep, &r->gens_now[i], 8, d.gen_addr, rr->rkey, &p));
        }
    }
    track(r, ucp_ep_flush_nbx(c->data_ep, &p));
    return KVS_OK;
}

static uint64_t le64(const uint8_t *b)
{
    uint64_t g = 0;
    for (int k = 7; k >= 0; k--)
        g = (g << 8) | b[k];
    return g;
}

static void check_gens(treq_t *r)
{
    for (size_t i = 0; i < r->count; i++) {
        kvs__block_desc_t d;
        const uint8_t *cur = r->rl->block_at[r->first + i];
        kvs__proto_block(&cur, &d);
        /* GETs bring the holder's little-endian u64s; pushes decoded them. */
        uint64_t g = r->gens_now[i];
        if (r->genwin != NULL)
            g = le64(r->genwin + (d.gen_addr - r->genwin_base));
        else if (r->conn->data_ep != NULL)
            g = le64((const uint8_t *)&r->gens_now[i]);
        if (g != d.gen) {
            r->status = KVS_ERR_STALE;
            return;
        }
    }
    r->status = KVS_OK;
}

/* Moves requests through their stages as their operations complete. */
static int advance_requests(tl_t *tl)
{
    int moved = 0;
    for (treq_t *r = tl->reqs; r != NULL; r = r->next) {
        if (r->status != KVS_INPROGRESS || r->outstanding > 0 || r->is_put)
            continue;
        if (r->conn->data_ep != NULL) {
            if (r->stage == 1) {
                r->stage = 2;
                kvs_status_t st = post_gen_gets(r);
                if (st != KVS_OK)
                    r->status = st;
            } else {
                check_gens(r);
            }
            moved++;
        } else if (r->done_msg) {
            if (r->bytes_got != r->bytes_expected)
                r->status = KVS_ERR_PROTOCOL;
            else
                check_gens(r);
            moved++;
        }
        if (r->status != KVS_INPROGRESS)
            pthread_cond_broadcast(&tl->cond);
    }
    return moved;
}

static kvs_status_t tl_fetch(void *arg, void *rlease, struct kvs_pool *dst, const uint32_t *ids,
                             size_t count, size_t first, uint32_t timeout_ms, void **treq_p)
{
    tl_t *tl = arg;
    rlease_t *rl = rlease;
    kvs_status_t st = KVS_OK;
    if (!dst->host_only)
        return KVS_ERR_UNSUPPORTED; /* CUDA destinations need a CUDA-enabled UCX */
    treq_t *r = kvs__calloc(1, sizeof(*r));
    if (r == NULL)
        return KVS_ERR_NO_MEMORY;
    r->dst_ids = kvs__malloc((count ? count : 1) * sizeof(*r->dst_ids));
    r->gens_now = kvs__calloc(count ? count : 1, sizeof(*r->gens_now));
    if (r->dst_ids == NULL || r->gens_now == NULL) {
        kvs__free(r->dst_ids);
        kvs__free(r->gens_now);
        kvs__free(r->genwin);
        kvs__free(r);
        return KVS_ERR_NO_MEMORY;
    }
    memcpy(r->dst_ids, ids, count * sizeof(*ids));
    r->tl = tl;
    r->rl = rl;
    r->dst = dst;
    r->first = first;
    r->count = count;
    r->status = KVS_INPROGRESS;
    r->stage = 1;
    r->deadline_ns = now_ns() + (uint64_t)timeout_ms * 1000000u;
    lock(tl);
    conn_t *c = rl->conn;
    r->conn = c;
    c->refs++;
    r->req_id = ++tl->next_req_id;
    r->next = tl->reqs;
    tl->reqs = r;
    if (c->state != C_READY) {
        r->status = c->fail_status != KVS_OK ? c->fail_status : KVS_ERR_PEER_FAILED;
    } else if (count == 0) {
        r->status = KVS_OK;
    } else if (c->data_ep != NULL) {
        st = post_data_gets(tl, r);
        if (st != KVS_OK)
            r->status = st;
    } else {
        /* TCP: ask the holder to push, cut into our segment sizes. */
        kvs__buf_t b;
        kvs__buf_init(&b);
        kvs__proto_begin(&b, KVS_MSG_FETCH, 0, r->req_id, c->session);
        kvs__buf_u64(&b, rl->lease_id);
        kvs__buf_u32(&b, (uint32_t)first);
        kvs__buf_u32(&b, (uint32_t)count);
        kvs__buf_u16(&b, (uint16_t)dst->nsegs);
        for (size_t s = 0; s < dst->nsegs; s++) {
            kvs__buf_u32(&b, (uint32_t)dst->segs[s].block_bytes);
            r->bytes_expected += dst->segs[s].block_bytes * count;
        }
        if (dst->nsegs > KVS_PROTO_MAX_PIECES)
            r->status = KVS_ERR_UNSUPPORTED;
        else if ((st = send_buf(tl, c->ep, &b)) != KVS_OK)
            r->status = st;
    }
    kick(tl);
    unlock(tl);
    *treq_p = r;
    return KVS_OK;
}

static kvs_status_t tl_req_test(void *arg, void *treq)
{
    tl_t *tl = arg;
    treq_t *r = treq;
    lock(tl);
    if (!tl->thread_mode)
        progress_locked(tl);
    kvs_status_t st =
        r->outstanding > 0 && r->status != KVS_INPROGRESS ? KVS_INPROGRESS : r->status;
    unlock(tl);
    return st;
}

/* Finished, with nothing of UCX's left to call back, or failed on a
 * connection whose endpoints are closed (so nothing can land any more). */
static bool req_settled(const treq_t *r)
{
    return r->status != KVS_INPROGRESS && (r->outstanding == 0 || r->conn->state == C_FAILED);
}

static kvs_status_t tl_req_wait(void *arg, void *treq, int timeout_ms)
{
    tl_t *tl = arg;
    treq_t *r = treq;
    uint64_t deadline =
        timeout_ms < 0 ? r->deadline_ns + 1000000000u : now_ns() + (uint64_t)timeout_ms * 1000000u;
    lock(tl);
    while (!req_settled(r)) {
        uint64_t t = now_ns();
        if (t >= deadline)
            break;
        /* Drive the request from this thread; sleep only when idle. */
        if (progress_locked(tl) > 0 || req_settled(r))
            continue;
        if (tl->thread_mode)
            cond_sleep(tl, deadline - t > 1000000u ? t + 1000000u : deadline);
    }
    kvs_status_t st = req_settled(r) ? r->status : KVS_INPROGRESS;
    unlock(tl);
    return st;
}

static void tl_req_free(void *arg, void *treq)
{
    tl_t *tl = arg;
    treq_t *r = treq;
    lock(tl);
    if (r->status == KVS_INPROGRESS) {
        /* Cancel: closing the connection stops every operation that could
         * still write into the destination. */
        r->status = KVS_ERR_CANCELED;
        conn_fail(r->conn, KVS_ERR_CANCELED, "request cancelled");
    }
    uint64_t deadline = now_ns() + 1000000000u;
    while (r->outstanding > 0 && now_ns() < deadline)
        progress_locked(tl);
    for (treq_t **pp = &tl->reqs; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == r) {
            *pp = r->next;
            break;
        }
    }
    conn_unref(r->conn);
    r->conn = NULL;
    if (r->outstanding > 0) {
        /* UCX still owes callbacks on a closed endpoint: keep the request
         * (its callbacks touch it) until the worker is destroyed. */
        r->freed = true;
        r->next = tl->zombies;
        tl->zombies = r;
        unlock(tl);
        return;
    }
    unlock(tl);
    kvs__free(r->dst_ids);
    kvs__free(r->gens_now);
    kvs__free(r->genwin);
    kvs__free(r);
}

static kvs_status_t tl_put(void *arg, const char *node, struct kvs_pool *src, const kvs_key_t *keys,
                           const uint32_t *ids, size_t n, uint32_t timeout_ms, void **treq_p)
{
    tl_t *tl = arg;
    conn_t *c = NULL;
    waiter_t *w = NULL;
    kvs__msg_t m;
    treq_t *r = NULL;
    if (n > KVS_PROTO_MAX_KEYS || src->nsegs > KVS_PROTO_MAX_PIECES)
        return KVS_ERR_INVALID_PARAM;
    uint64_t deadline = now_ns() + (uint64_t)timeout_ms * 1000000u;
    lock(tl);
    kvs_status_t st = get_conn(tl, node, src->layout_id, deadline, &c);
    if (st != KVS_OK)
        goto out;
    kvs__buf_t b;
    kvs__buf_init(&b);
    uint64_t rid = ++tl->next_req_id;
    kvs__proto_begin(&b, KVS_MSG_PUT, 0, rid, c->session);
    kvs__buf_u64(&b, src->layout_id);
    kvs__buf_u32(&b, (uint32_t)n);
    kvs__buf_u16(&b, (uint16_t)src->nsegs);
    for (size_t s = 0; s < src->nsegs; s++)
        kvs__buf_u32(&b, (uint32_t)src->segs[s].block_bytes);
    kvs__buf_put(&b, keys, n * KVS_KEY_BYTES);
    st = request(tl, c, &b, rid, deadline, &w, &m);
    if (st != KVS_OK)
        goto out;
    if (m.hdr.type != KVS_MSG_PUT_ACK || m.u.put_ack.count > n) {
        conn_fail(c, KVS_ERR_PROTOCOL, "bad PUT_ACK");
        st = KVS_ERR_PROTOCOL;
        goto out;
    }
    r = kvs__calloc(1, sizeof(*r));
    if (r == NULL) {
        st = KVS_ERR_NO_MEMORY;
        goto out;
    }
    r->tl = tl;
    r->conn = c;
    c->refs++;
    r->req_id = rid;
    r->is_put = true;
    r->status = m.u.put_ack.count == 0 ? KVS_OK : KVS_INPROGRESS;
    r->deadline_ns = deadline + (uint64_t)timeout_ms * 1000000u;
    r->next = tl->reqs;
    tl->reqs = r;
    /* Push the wanted blocks; the node lands them where it chooses. */
    ucp_request_param_t p = {.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK |
                                             UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS,
                             .cb.send = get_done,
                             .user_data = r,
                             .flags = UCP_AM_SEND_FLAG_REPLY};
    for (uint32_t k = 0; k < m.u.put_ack.count && r->status == KVS_INPROGRESS; k++) {
        uint32_t i = kvs__proto_u32_at(m.u.put_ack.idx, k);
        if (i >= n || ids[i] >= src->num_blocks) {
            r->status = KVS_ERR_PROTOCOL;
            break;
        }
        uint32_t off = 0;
        for (size_t s = 0; s < src->nsegs; s++) {
            const kvs_segment_t *sg = &src->segs[s];
            track(r, send_data(c->ep, rid, c->session, k, off,
                               (const uint8_t *)sg->base + (size_t)ids[i] * sg->block_stride,
                               sg->block_bytes, &p));
            off += (uint32_t)sg->block_bytes;
        }
    }
    kick(tl);
    *treq_p = r;
out:
    if (w != NULL)
        waiter_del(tl, w);
    if (c != NULL)
        conn_unref(c);
    unlock(tl);
    return st;
}

static size_t tl_npeers(void *arg)
{
    tl_t *tl = arg;
    size_t n = 0;
    lock(tl);
    for (conn_t *c = tl->conns; c != NULL; c = c->next)
        n += c->state == C_READY;
    unlock(tl);
    return n;
}

static kvs_status_t tl_mem_reg(void *arg, void *base, size_t length, kvs_mem_type_t type,
                               void **memh_p)
{
    tl_t *tl = arg;
    region_t *r = kvs__calloc(1, sizeof(*r));
    if (r == NULL)
        return KVS_ERR_NO_MEMORY;
    ucp_mem_map_params_t mp = {
        .field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH |
                      UCP_MEM_MAP_PARAM_FIELD_MEMORY_TYPE,
        .address = base,
        .length = length,
        .memory_type = type == KVS_MEM_CUDA ? UCS_MEMORY_TYPE_CUDA : UCS_MEMORY_TYPE_HOST};
    lock(tl);
    ucs_status_t s = ucp_mem_map(tl->ucp, &mp, &r->memh);
    if (s != UCS_OK) {
        unlock(tl);
        kvs__error(tl->log, "ucp_mem_map(%p, %zu): %s", base, length, ucs_status_string(s));
        kvs__free(r);
        return KVS_ERR_TRANSPORT;
    }
    s = ucp_rkey_pack(tl->ucp, r->memh, &r->rkey_buf, &r->rkey_len);
    if (s != UCS_OK) {
        ucp_mem_unmap(tl->ucp, r->memh);
        unlock(tl);
        kvs__error(tl->log, "ucp_rkey_pack(%p, %zu): %s", base, length, ucs_status_string(s));
        kvs__free(r);
        return KVS_ERR_TRANSPORT;
    }
    r->id = ++tl->next_region_id;
    r->base = base;
    r->len = length;
    r->next = tl->regions;
    tl->regions = r;
    tl->regions_version++;
    unlock(tl);
    *memh_p = r;
    return KVS_OK;
}

static void tl_mem_dereg(void *arg, void *memh)
{
    tl_t *tl = arg;
    region_t *r = memh;
    lock(tl);
    for (region_t **pp = &tl->regions; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == r) {
            *pp = r->next;
            break;
        }
    }
    tl->regions_version++;
    ucp_rkey_buffer_release(r->rkey_buf);
    ucp_mem_unmap(tl->ucp, r->memh);
    unlock(tl);
    kvs__free(r);
}

static int tl_progress(void *arg)
{
    tl_t *tl = arg;
    lock(tl);
    int n = progress_locked(tl);
    unlock(tl);
    return n;
}

static kvs_status_t tl_listen_addr(void *arg, char *buf, size_t len)
{
    tl_t *tl = arg;
    if (tl->listener == NULL)
        return KVS_ERR_NOT_FOUND;
    if (strlen(tl->listen_addr) >= len)
        return KVS_ERR_INVALID_PARAM;
    strcpy(buf, tl->listen_addr);
    return KVS_OK;
}

static void *progress_thread(void *arg)
{
    tl_t *tl = arg;
    unsigned busy = 0;
    lock(tl);
    while (!tl->stopping) {
        progress_locked(tl);
        ucs_status_t s = ucp_worker_arm(tl->worker);
        unlock(tl);
        if (s == UCS_ERR_BUSY) {
            /* Events are pending: progress again, but let callers take the
             * lock in between, and stop spinning if it never settles (a
             * dead peer's transport can keep the worker busy). */
            if (++busy > 64) {
                struct timespec ts = {0, 200000};
                nanosleep(&ts, NULL);
            } else {
                sched_yield();
            }
            lock(tl);
            continue;
        }
        busy = 0;
        struct epoll_event ev[4];
        /* A bounded sleep: deadlines are checked at least this often. */
        int n = epoll_wait(tl->epfd, ev, 4, IDLE_WAKE_MS);
        for (int i = 0; i < n; i++) {
            if (ev[i].data.fd == tl->wakefd) {
                uint64_t v;
                ssize_t r = read(tl->wakefd, &v, sizeof(v));
                (void)r;
            }
        }
        lock(tl);
    }
    unlock(tl);
    return NULL;
}

static kvs_status_t read_secret(tl_t *tl, const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        if (err != NULL)
            snprintf(err, errlen, "KVSHARE_AUTH_TOKEN_FILE='%s': %s", path, strerror(errno));
        return KVS_ERR_CONFIG;
    }
    size_t n = fread(tl->secret, 1, sizeof(tl->secret), f);
    bool too_long = n == sizeof(tl->secret) && fgetc(f) != EOF;
    fclose(f);
    while (n > 0 && (tl->secret[n - 1] == '\n' || tl->secret[n - 1] == '\r'))
        n--; /* a trailing newline from `echo` is not part of the secret */
    if (n == 0 || too_long) {
        if (err != NULL)
            snprintf(err, errlen, "KVSHARE_AUTH_TOKEN_FILE='%s': %s", path,
                     n == 0 ? "empty" : "longer than 4096 bytes");
        return KVS_ERR_CONFIG;
    }
    tl->secret_len = n;
    tl->have_secret = true;
    return KVS_OK;
}

static kvs_status_t start_listener(tl_t *tl, const char *addr, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    socklen_t sl;
    if (resolve(addr, &ss, &sl) != KVS_OK) {
        snprintf(err, errlen, "KVSHARE_LISTEN='%s': cannot resolve the host", addr);
        return KVS_ERR_CONFIG;
    }
    ucp_listener_params_t lp = {.field_mask = UCP_LISTENER_PARAM_FIELD_SOCK_ADDR |
                                              UCP_LISTENER_PARAM_FIELD_CONN_HANDLER,
                                .sockaddr = {.addr = (const struct sockaddr *)&ss, .addrlen = sl},
                                .conn_handler = {.cb = conn_request_cb, .arg = tl}};
    ucs_status_t s = ucp_listener_create(tl->worker, &lp, &tl->listener);
    /* A node restarted on its port finds it busy while the old connections
     * linger in TIME_WAIT (UCX 1.13 sets no SO_REUSEADDR): wait a little. */
    for (int i = 0; s == UCS_ERR_BUSY && i < 50; i++) {
        if (i == 0)
            kvs__info(tl->log, "KVSHARE_LISTEN='%s': port busy, retrying for up to 5 s", addr);
        struct timespec ts = {0, 100000000};
        nanosleep(&ts, NULL);
        s = ucp_listener_create(tl->worker, &lp, &tl->listener);
    }
    if (s != UCS_OK) {
        snprintf(err, errlen, "KVSHARE_LISTEN='%s': ucp_listener_create: %s", addr,
                 ucs_status_string(s));
        tl->listener = NULL;
        return KVS_ERR_IO;
    }
    ucp_listener_attr_t la = {.field_mask = UCP_LISTENER_ATTR_FIELD_SOCKADDR};
    int port = 0;
    if (ucp_listener_query(tl->listener, &la) == UCS_OK) {
        const struct sockaddr *sa = (const struct sockaddr *)&la.sockaddr;
        port = sa->sa_family == AF_INET6 ? ntohs(((const struct sockaddr_in6 *)sa)->sin6_port)
                                         : ntohs(((const struct sockaddr_in *)sa)->sin_port);
    }
    const char *colon = strrchr(addr, ':');
    snprintf(tl->listen_addr, sizeof(tl->listen_addr), "%.*s:%d", (int)(colon - addr), addr, port);
    kvs__info(tl->log, "listening on %s", tl->listen_addr);
    return KVS_OK;
}

static void tl_fini(void *arg);

static kvs_status_t tl_init(struct kvs_ctx *ctx, const kvs__config_t *cfg, void **tl_p, char *err,
                            size_t errlen)
{
    char dummy[2];
    if (err == NULL || errlen == 0) {
        err = dummy;
        errlen = sizeof(dummy);
    }
    tl_t *tl = kvs__calloc(1, sizeof(*tl));
    if (tl == NULL)
        return KVS_ERR_NO_MEMORY;
    tl->ctx = ctx;
    tl->log = kvs__ctx_log(ctx);
    tl->efd = tl->wakefd = tl->epfd = -1;
    tl->inbox_tail = &tl->inbox;
    tl->thread_mode = cfg->progress == KVS_PROGRESS_THREAD;
    /* Recursive: serving a PUT may create the arena, whose registration
     * comes back into the transport (tl_mem_reg) on the same thread. */
    pthread_mutexattr_t ma;
    pthread_mutexattr_init(&ma);
    pthread_mutexattr_settype(&ma, PTHREAD_MUTEX_RECURSIVE);
    pthread_mutex_init(&tl->lock, &ma);
    pthread_mutexattr_destroy(&ma);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_cond_init(&tl->cond, &ca);
    pthread_condattr_destroy(&ca);
    kvs_status_t st = KVS_ERR_NO_MEMORY;
    tl->scratch_locs = kvs__malloc(MAX_PIECES * sizeof(*tl->scratch_locs));
    tl->scratch_pieces = kvs__malloc(MAX_PIECES * sizeof(*tl->scratch_pieces));
    if (tl->scratch_locs == NULL || tl->scratch_pieces == NULL)
        goto fail;
    st = KVS_ERR_TRANSPORT;
    if (cfg->auth_token_file[0] != '\0' &&
        (st = read_secret(tl, cfg->auth_token_file, err, errlen)) != KVS_OK)
        goto fail;
    st = KVS_ERR_TRANSPORT;
    ucp_params_t up = {.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_MT_WORKERS_SHARED,
                       .features = UCP_FEATURE_AM | UCP_FEATURE_RMA |
                                   (tl->thread_mode ? UCP_FEATURE_WAKEUP : 0),
                       .mt_workers_shared = 0};
    /* A restarted node must get its port back at once, not after TIME_WAIT:
     * listeners set SO_REUSEADDR unless the user chose otherwise. UCX 1.13
     * reads this transport setting only from the environment (setting it
     * through ucp_config_modify is reported as invalid). */
    if (cfg->listen[0] != '\0')
        setenv("UCX_TCP_CM_REUSEADDR", "y", 0);
    ucs_status_t s = ucp_init(&up, NULL, &tl->ucp);
    if (s != UCS_OK) {
        snprintf(err, errlen, "ucp_init: %s", ucs_status_string(s));
        tl->ucp = NULL;
        goto fail;
    }
    ucp_worker_params_t wp = {.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE,
                              .thread_mode = UCS_THREAD_MODE_SINGLE};
    s = ucp_worker_create(tl->ucp, &wp, &tl->worker);
    if (s != UCS_OK) {
        snprintf(err, errlen, "ucp_worker_create: %s", ucs_status_string(s));
        tl->worker = NULL;
        goto fail;
    }
    s = ucp_worker_get_address(tl->worker, &tl->waddr, &tl->waddr_len);
    if (s != UCS_OK) {
        snprintf(err, errlen, "ucp_worker_get_address: %s", ucs_status_string(s));
        tl->waddr = NULL;
        goto fail;
    }
    ucp_am_handler_param_t ap = {.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID |
                                               UCP_AM_HANDLER_PARAM_FIELD_CB |
                                               UCP_AM_HANDLER_PARAM_FIELD_ARG,
                                 .id = AM_ID,
                                 .cb = am_cb,
                                 .arg = tl};
    s = ucp_worker_set_am_recv_handler(tl->worker, &ap);
    if (s != UCS_OK) {
        snprintf(err, errlen, "ucp_worker_set_am_recv_handler: %s", ucs_status_string(s));
        goto fail;
    }
    if (cfg->listen[0] != '\0' && (st = start_listener(tl, cfg->listen, err, errlen)) != KVS_OK)
        goto fail;
    st = KVS_ERR_TRANSPORT;
    if (tl->thread_mode) {
        if (ucp_worker_get_efd(tl->worker, &tl->efd) != UCS_OK) {
            snprintf(err, errlen, "ucp_worker_get_efd failed");
            goto fail;
        }
        tl->wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        tl->epfd = epoll_create1(EPOLL_CLOEXEC);
        struct epoll_event e1 = {.events = EPOLLIN, .data.fd = tl->efd};
        struct epoll_event e2 = {.events = EPOLLIN, .data.fd = tl->wakefd};
        if (tl->wakefd < 0 || tl->epfd < 0 || epoll_ctl(tl->epfd, EPOLL_CTL_ADD, tl->efd, &e1) ||
            epoll_ctl(tl->epfd, EPOLL_CTL_ADD, tl->wakefd, &e2)) {
            snprintf(err, errlen, "progress thread setup: %s", strerror(errno));
            goto fail;
        }
        if (pthread_create(&tl->thread, NULL, progress_thread, tl) != 0) {
            snprintf(err, errlen, "pthread_create: %s", strerror(errno));
            goto fail;
        }
        tl->thread_started = true;
    }
    *tl_p = tl;
    return KVS_OK;
fail:
    tl_fini(tl);
    return st;
}

static void tl_fini(void *arg)
{
    tl_t *tl = arg;
    if (tl == NULL)
        return;
    if (tl->thread_started) {
        lock(tl);
        tl->stopping = true;
        unlock(tl);
        kick(tl);
        pthread_join(tl->thread, NULL);
    }
    lock(tl);
    while (tl->conns != NULL)
        conn_fail(tl->conns, KVS_ERR_CANCELED, "context shutting down");
    while (tl->pushes != NULL) {
        push_t *p = tl->pushes;
        tl->pushes = p->next;
        kvs__free(p);
    }
    if (tl->worker != NULL) {
        /* Let cancelled operations call back before the worker goes. */
        for (int i = 0; i < 1000; i++)
            if (ucp_worker_progress(tl->worker) == 0)
                break;
    }
    while (tl->inbox != NULL) {
        inmsg_t *m = tl->inbox;
        tl->inbox = m->next;
        kvs__free(m->buf);
        kvs__free(m);
    }
    while (tl->pending != NULL) {
        pending_conn_t *p = tl->pending;
        tl->pending = p->next;
        ucp_listener_reject(tl->listener, p->req);
        kvs__free(p);
    }
    if (tl->listener != NULL)
        ucp_listener_destroy(tl->listener);
    while (tl->regions != NULL) {
        region_t *r = tl->regions;
        tl->regions = r->next;
        ucp_rkey_buffer_release(r->rkey_buf);
        ucp_mem_unmap(tl->ucp, r->memh);
        kvs__free(r);
    }
    if (tl->waddr != NULL)
        ucp_worker_release_address(tl->worker, tl->waddr);
    if (tl->worker != NULL)
        ucp_worker_destroy(tl->worker);
    if (tl->ucp != NULL)
        ucp_cleanup(tl->ucp);
    while (tl->sputs != NULL)
        sput_free(tl, tl->sputs);
    while (tl->zombies != NULL) {
        treq_t *r = tl->zombies;
        tl->zombies = r->next;
        kvs__free(r->dst_ids);
        kvs__free(r->gens_now);
        kvs__free(r->genwin);
        kvs__free(r);
    }
    unlock(tl);
    if (tl->epfd >= 0)
        close(tl->epfd);
    if (tl->wakefd >= 0)
        close(tl->wakefd);
    OPENSSL_cleanse(tl->secret, sizeof(tl->secret));
    kvs__free(tl->scratch_locs);
    kvs__free(tl->scratch_pieces);
    pthread_cond_destroy(&tl->cond);
    pthread_mutex_destroy(&tl->lock);
    kvs__free(tl);
}

const kvs__transport_ops_t kvs__ucx_transport = {
    .version = KVS_TRANSPORT_OPS_VERSION,
    .name = "ucx",
    .init = tl_init,
    .fini = tl_fini,
    .mem_reg = tl_mem_reg,
    .mem_dereg = tl_mem_dereg,
    .progress = tl_progress,
    .listen_addr = tl_listen_addr,
    .lookup = tl_lookup,
    .release = tl_release,
    .fetch = tl_fetch,
    .req_test = tl_req_test,
    .req_wait = tl_req_wait,
    .req_free = tl_req_free,
    .put = tl_put,
    .npeers = tl_npeers,
};
