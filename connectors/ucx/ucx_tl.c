/* SPDX-License-Identifier: Apache-2.0 */
/* ucx_tl.c - the UCX transport: endpoints from worker addresses, AM send/receive, GET, rkeys.
 *
 * It only moves bytes. There is no UCX listener: peers are authenticated
 * by the core's own bootstrap (libkvshare/src/peer.c) and this transport
 * learns a peer's worker address only after that. One UCP context and
 * worker, in UCS_THREAD_MODE_SINGLE; the core serialises every call.
 *
 * Each peer gets two endpoints (UCX 1.13 drops shared memory from
 * PEER-error-mode endpoints): a control endpoint with
 * UCP_ERR_HANDLING_MODE_PEER for messages and failure detection, and, when
 * UCX gives it a native RMA lane (shm/CMA, RDMA), a GET endpoint with error
 * mode NONE. See docs/transport.md. */
#include "transport_int.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ucp/api/ucp.h>

#define AM_ID 0x4bu

typedef struct uop uop_t;

typedef struct utl {
    const kvs__logger_t *log;
    /* Operations UCX still owes a callback. On an endpoint force-closed
     * after its peer died (error mode NONE), UCX may never call back: what
     * is left here at fini is freed without calling into the core. */
    uop_t *live;
    kvs__tl_events_t ev;
    ucp_context_h ucp;
    ucp_worker_h worker;
    ucp_address_t *waddr;
    size_t waddr_len;
    bool wakeup;
    bool counted; /* in live_workers */
    int efd;
} utl_t;

/* UCX keeps process-wide state for its async thread (the thread, and who
 * it is), made with the first worker and kept while any lives. A child
 * forked while one lived inherits that state without the thread: its own
 * workers then have no async progress (the parent's connects to the
 * child's UCX TCP port were refused), and UCX takes the child's first
 * thread for the async one and aborts on an endpoint failure
 * (ucp_ep_set_failed: `!ucs_async_is_from_async`; a pool node forked from
 * a test process that held a context aborted when a client disconnected).
 * So a process forked while a worker of ours lived makes none: its context
 * fails with the reason (the shim steps aside), rather than running until
 * a peer goes away. A fork after the last context was destroyed is fine. */
static atomic_uint live_workers;
static atomic_bool forked_live;
static pthread_once_t fork_once = PTHREAD_ONCE_INIT;

static void fork_child(void)
{
    if (atomic_load(&live_workers) > 0)
        atomic_store(&forked_live, true);
}

static void fork_watch(void)
{
    (void)pthread_atfork(NULL, NULL, fork_child);
}

typedef struct uep {
    utl_t *tl;
    ucp_ep_h ctl;
    ucp_ep_h data; /* NULL: no native RMA */
    void *user;
} uep_t;

typedef struct umem {
    ucp_mem_h memh;
    void *rkey;
    size_t rkey_len;
} umem_t;

/* One operation's completion: what the core asked to be called back. */
struct uop {
    utl_t *tl;
    kvs__tl_cb_t cb; /* NULL once the transport is going away */
    void *arg;
    size_t len;
    uop_t *prev, *next;
    /* UCX 1.13 has no UCP_AM_SEND_FLAG_COPY_HEADER: a send that goes
     * pending (or rendezvous) packs the header later, so it must live
     * until completion. Callers' headers are often on their stack. */
    uint8_t hdr[];
};

static void op_unlink(uop_t *op)
{
    if (op->prev != NULL)
        op->prev->next = op->next;
    else
        op->tl->live = op->next;
    if (op->next != NULL)
        op->next->prev = op->prev;
}

static void op_finish(uop_t *op, kvs_status_t st, size_t len)
{
    op_unlink(op);
    if (op->cb != NULL)
        op->cb(op->arg, st, len);
    kvs__free(op);
}

static kvs_status_t op_result(ucs_status_ptr_t r, uop_t *op)
{
    if (r == NULL || UCS_PTR_IS_ERR(r)) {
        op_unlink(op);
        kvs__free(op);
        return r == NULL ? KVS_OK : KVS_ERR_PEER_FAILED;
    }
    return KVS_INPROGRESS;
}

static void op_send_done(void *request, ucs_status_t status, void *user_data)
{
    uop_t *op = user_data;
    op_finish(op, status == UCS_OK ? KVS_OK : KVS_ERR_PEER_FAILED, op->len);
    ucp_request_free(request);
}

static void op_recv_done(void *request, ucs_status_t status, size_t length, void *user_data)
{
    op_finish(user_data, status == UCS_OK ? KVS_OK : KVS_ERR_PEER_FAILED,
              status == UCS_OK ? length : 0);
    ucp_request_free(request);
}

static uop_t *op_new(utl_t *tl, kvs__tl_cb_t cb, void *arg, size_t len, size_t hlen)
{
    uop_t *op = kvs__malloc(sizeof(*op) + hlen);
    if (op != NULL) {
        op->tl = tl;
        op->cb = cb;
        op->arg = arg;
        op->len = len;
        op->prev = NULL;
        op->next = tl->live;
        if (tl->live != NULL)
            tl->live->prev = op;
        tl->live = op;
    }
    return op;
}

/* Completion by op_send_done for sends, GETs and flushes. */
static ucp_request_param_t send_param(uop_t *op)
{
    ucp_request_param_t p = {.op_attr_mask =
                                 UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA,
                             .cb.send = op_send_done,
                             .user_data = op};
    return p;
}

static ucs_status_t am_cb(void *arg, const void *header, size_t header_length, void *data,
                          size_t length, const ucp_am_recv_param_t *param)
{
    utl_t *tl = arg;
    bool rndv = (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0;
    /* The core copies or receives what it accepts during this call; what
     * it ignores is dropped by UCX when we return UCS_OK. */
    tl->ev.on_am(tl->ev.arg, header, header_length, data, length, rndv);
    return UCS_OK;
}

static void ep_error(void *arg, ucp_ep_h ep, ucs_status_t status)
{
    uep_t *e = arg;
    (void)ep;
    e->tl->ev.on_ep_error(e->tl->ev.arg, e->user,
                          status == UCS_ERR_CONNECTION_RESET ? KVS_ERR_PEER_FAILED
                                                             : KVS_ERR_TRANSPORT);
}

/* The GET endpoint's error callback (u_connect): handled, nothing to do. */
static void data_ep_error(void *arg, ucp_ep_h ep, ucs_status_t status)
{
    (void)arg;
    (void)ep;
    (void)status;
}

static void ep_close(utl_t *tl, ucp_ep_h ep)
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

/* True when UCX gave the endpoint a native RMA lane (not TCP's emulation).
 * ucp_ep_query cannot report transports in 1.13; ucp_ep_print_info can. */
static bool has_native_rma(utl_t *tl, ucp_ep_h ep)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (f == NULL)
        return false;
    ucp_ep_print_info(ep, f);
    fclose(f);
    bool native = false;
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line != NULL;
         line = strtok_r(NULL, "\n", &save)) {
        if (strstr(line, "lane[") != NULL && strstr(line, "rma_bw") != NULL) {
            kvs__debug(tl->log, "GET endpoint %s", line);
            if (strstr(line, "tcp/") == NULL)
                native = true;
        }
    }
    free(text);
    return native;
}

static kvs_status_t u_connect(void *arg, const void *addr, size_t len, void *user, void **ep_p,
                              bool *rma_p)
{
    utl_t *tl = arg;
    (void)len;
    uep_t *e = kvs__calloc(1, sizeof(*e));
    if (e == NULL)
        return KVS_ERR_NO_MEMORY;
    e->tl = tl;
    e->user = user;
    ucp_ep_params_t cp = {.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS |
                                        UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                                        UCP_EP_PARAM_FIELD_ERR_HANDLER,
                          .address = addr,
                          .err_mode = UCP_ERR_HANDLING_MODE_PEER,
                          .err_handler = {.cb = ep_error, .arg = e}};
    ucs_status_t s = ucp_ep_create(tl->worker, &cp, &e->ctl);
    if (s != UCS_OK) {
        kvs__error(tl->log, "ucp_ep_create (control): %s", ucs_status_string(s));
        kvs__free(e);
        return KVS_ERR_TRANSPORT;
    }
    /* The GET endpoint: error mode NONE, so UCX may pick shared memory or
     * CMA (which PEER error mode would exclude). With an error callback all
     * the same: UCX 1.13 turns a transport error on an endpoint without one
     * into a fatal error of the process. Its wire-up runs over TCP, so a
     * peer that went away while it was being wired up (a short-lived client
     * of a pool node) aborted the node (seen once in transport_pool, in
     * ucp_wireup_msg_progress -> uct_tcp_ep_am_bcopy -> ucp_ep_set_failed).
     * The callback does nothing: the control endpoint (error mode PEER)
     * reports the peer's failure, and a GET on a failed endpoint fails its
     * request. It takes no argument: UCX 1.13 may call it after the
     * endpoint was force-closed (seen at every disconnect over TCP), when
     * our state for the connection is gone. */
    ucp_ep_params_t dp = {.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS |
                                        UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                                        UCP_EP_PARAM_FIELD_ERR_HANDLER,
                          .address = addr,
                          .err_mode = UCP_ERR_HANDLING_MODE_NONE,
                          .err_handler = {.cb = data_ep_error, .arg = NULL}};
    ucp_ep_h dep = NULL;
    if (ucp_ep_create(tl->worker, &dp, &dep) == UCS_OK) {
        if (has_native_rma(tl, dep))
            e->data = dep;
        else
            ep_close(tl, dep);
    }
    *rma_p = e->data != NULL;
    *ep_p = e;
    return KVS_OK;
}

static void u_disconnect(void *arg, void *ep)
{
    utl_t *tl = arg;
    uep_t *e = ep;
    if (e == NULL)
        return;
    ep_close(tl, e->data);
    ep_close(tl, e->ctl);
    kvs__free(e);
}

static kvs_status_t u_am_send(void *arg, void *ep, const void *hdr, size_t hlen, const void *data,
                              size_t len, kvs__tl_cb_t cb, void *cb_arg)
{
    uep_t *e = ep;
    (void)arg;
    uop_t *op = op_new(arg, cb, cb_arg, len, hlen);
    if (op == NULL)
        return KVS_ERR_NO_MEMORY;
    memcpy(op->hdr, hdr, hlen);
    ucp_request_param_t p = send_param(op);
    return op_result(ucp_am_send_nbx(e->ctl, AM_ID, op->hdr, hlen, data, len, &p), op);
}

static kvs_status_t u_am_recv(void *arg, void *data, void *dst, size_t len, kvs__tl_cb_t cb,
                              void *cb_arg)
{
    utl_t *tl = arg;
    uop_t *op = op_new(arg, cb, cb_arg, len, 0);
    if (op == NULL)
        return KVS_ERR_NO_MEMORY;
    ucp_request_param_t p = {.op_attr_mask =
                                 UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA,
                             .cb.recv_am = op_recv_done,
                             .user_data = op};
    return op_result(ucp_am_recv_data_nbx(tl->worker, data, dst, len, &p), op);
}

static kvs_status_t u_get(void *arg, void *ep, void *local, size_t len, uint64_t raddr, void *rkey,
                          kvs__tl_cb_t cb, void *cb_arg)
{
    uep_t *e = ep;
    (void)arg;
    if (e->data == NULL)
        return KVS_ERR_UNSUPPORTED;
    uop_t *op = op_new(arg, cb, cb_arg, len, 0);
    if (op == NULL)
        return KVS_ERR_NO_MEMORY;
    ucp_request_param_t p = send_param(op);
    return op_result(ucp_get_nbx(e->data, local, len, raddr, rkey, &p), op);
}

static kvs_status_t u_flush(void *arg, void *ep, kvs__tl_cb_t cb, void *cb_arg)
{
    uep_t *e = ep;
    (void)arg;
    uop_t *op = op_new(arg, cb, cb_arg, 0, 0);
    if (op == NULL)
        return KVS_ERR_NO_MEMORY;
    ucp_request_param_t p = send_param(op);
    return op_result(ucp_ep_flush_nbx(e->data != NULL ? e->data : e->ctl, &p), op);
}

static kvs_status_t u_mem_reg(void *arg, void *base, size_t length, kvs_mem_type_t type,
                              void **memh_p, const void **rkey_p, size_t *rkey_len_p)
{
    utl_t *tl = arg;
    umem_t *m = kvs__calloc(1, sizeof(*m));
    if (m == NULL)
        return KVS_ERR_NO_MEMORY;
    ucp_mem_map_params_t mp = {
        .field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH |
                      UCP_MEM_MAP_PARAM_FIELD_MEMORY_TYPE,
        .address = base,
        .length = length,
        .memory_type = type == KVS_MEM_CUDA ? UCS_MEMORY_TYPE_CUDA : UCS_MEMORY_TYPE_HOST};
    ucs_status_t s = ucp_mem_map(tl->ucp, &mp, &m->memh);
    if (s != UCS_OK) {
        kvs__error(tl->log, "ucp_mem_map(%p, %zu): %s", base, length, ucs_status_string(s));
        kvs__free(m);
        return KVS_ERR_TRANSPORT;
    }
    s = ucp_rkey_pack(tl->ucp, m->memh, &m->rkey, &m->rkey_len);
    if (s != UCS_OK) {
        kvs__error(tl->log, "ucp_rkey_pack(%p, %zu): %s", base, length, ucs_status_string(s));
        ucp_mem_unmap(tl->ucp, m->memh);
        kvs__free(m);
        return KVS_ERR_TRANSPORT;
    }
    *memh_p = m;
    *rkey_p = m->rkey;
    *rkey_len_p = m->rkey_len;
    return KVS_OK;
}

static void u_mem_dereg(void *arg, void *memh)
{
    utl_t *tl = arg;
    umem_t *m = memh;
    if (m == NULL)
        return;
    ucp_rkey_buffer_release(m->rkey);
    ucp_mem_unmap(tl->ucp, m->memh);
    kvs__free(m);
}

static kvs_status_t u_rkey_unpack(void *arg, void *ep, const void *buf, size_t len, void **rkey_p)
{
    uep_t *e = ep;
    (void)arg;
    (void)len;
    if (e == NULL)
        return KVS_ERR_PEER_FAILED;
    ucp_rkey_h rk = NULL;
    if (ucp_ep_rkey_unpack(e->data != NULL ? e->data : e->ctl, buf, &rk) != UCS_OK)
        return KVS_ERR_PROTOCOL;
    *rkey_p = rk;
    return KVS_OK;
}

static void u_rkey_destroy(void *arg, void *rkey)
{
    (void)arg;
    ucp_rkey_destroy(rkey);
}

static int u_progress(void *arg)
{
    utl_t *tl = arg;
    return (int)ucp_worker_progress(tl->worker);
}

static int u_event_fd(void *arg)
{
    utl_t *tl = arg;
    return tl->efd;
}

static bool u_arm(void *arg)
{
    utl_t *tl = arg;
    return !tl->wakeup || ucp_worker_arm(tl->worker) != UCS_ERR_BUSY;
}

static kvs_status_t u_address(void *arg, const void **addr_p, size_t *len_p)
{
    utl_t *tl = arg;
    *addr_p = tl->waddr;
    *len_p = tl->waddr_len;
    return KVS_OK;
}

static void u_fini(void *arg);

static kvs_status_t u_init(const kvs__config_t *cfg, const kvs__logger_t *log,
                           const kvs__tl_events_t *ev, void **tl_p, char *err, size_t errlen)
{
    pthread_once(&fork_once, fork_watch);
    if (atomic_load(&forked_live)) {
        snprintf(err, errlen,
                 "UCX cannot run in this process: it was forked from one whose kvshare context "
                 "was running, and UCX's process-wide state came across without its thread; "
                 "make contexts after the fork (or start workers with spawn)");
        return KVS_ERR_UNSUPPORTED;
    }
    utl_t *tl = kvs__calloc(1, sizeof(*tl));
    if (tl == NULL)
        return KVS_ERR_NO_MEMORY;
    tl->log = log;
    tl->ev = *ev;
    tl->efd = -1;
    tl->wakeup = cfg->progress == KVS_PROGRESS_THREAD;
    ucp_params_t up = {.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_MT_WORKERS_SHARED,
                       .features =
                           UCP_FEATURE_AM | UCP_FEATURE_RMA | (tl->wakeup ? UCP_FEATURE_WAKEUP : 0),
                       .mt_workers_shared = 0};
    /* Unless UCX_TLS says otherwise: no shared-memory FIFO transports (mm:
     * posix, sysv, xpmem). A sender claims a slot of the receiver's FIFO,
     * writes it, then marks it written, and the receiver reads the slots in
     * order: a peer killed in between leaves a slot that is never marked, and
     * every later message to this process through that FIFO, from any peer
     * on the host, waits behind it for good (transport_failures saw the next
     * peer's GETs stall: 0 bytes, every operation outstanding, while its
     * lookups over TCP were answered). Same-host GETs still take CMA (mm
     * cannot register memory it did not allocate, so it never read ours);
     * messages take TCP. */
    ucp_config_t *ucfg = NULL;
    if (getenv("UCX_TLS") == NULL && ucp_config_read(NULL, NULL, &ucfg) == UCS_OK &&
        ucp_config_modify(ucfg, "TLS", "^mm") != UCS_OK) {
        ucp_config_release(ucfg);
        ucfg = NULL;
    }
    ucs_status_t s = ucp_init(&up, ucfg, &tl->ucp);
    if (ucfg != NULL)
        ucp_config_release(ucfg);
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
    atomic_fetch_add(&live_workers, 1);
    tl->counted = true;
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
    if (tl->wakeup && ucp_worker_get_efd(tl->worker, &tl->efd) != UCS_OK) {
        snprintf(err, errlen, "ucp_worker_get_efd failed");
        goto fail;
    }
    *tl_p = tl;
    return KVS_OK;
fail:
    u_fini(tl);
    return KVS_ERR_TRANSPORT;
}

static void u_fini(void *arg)
{
    utl_t *tl = arg;
    if (tl == NULL)
        return;
    /* What UCX still owes must not reach the core, which is going away
     * (and has freed what those callbacks would touch). */
    for (uop_t *op = tl->live; op != NULL; op = op->next)
        op->cb = NULL;
    if (tl->worker != NULL) {
        for (int i = 0; i < 1000; i++)
            if (ucp_worker_progress(tl->worker) == 0)
                break;
    }
    if (tl->waddr != NULL)
        ucp_worker_release_address(tl->worker, tl->waddr);
    if (tl->worker != NULL)
        ucp_worker_destroy(tl->worker);
    if (tl->ucp != NULL)
        ucp_cleanup(tl->ucp);
    if (tl->counted)
        atomic_fetch_sub(&live_workers, 1);
    while (tl->live != NULL) {
        uop_t *op = tl->live;
        op_unlink(op);
        kvs__free(op);
    }
    kvs__free(tl);
}

const kvs__transport_ops_t kvs__ucx_transport = {
    .version = KVS_TRANSPORT_OPS_VERSION,
    .name = "ucx",
    .init = u_init,
    .fini = u_fini,
    .address = u_address,
    .connect = u_connect,
    .disconnect = u_disconnect,
    .am_send = u_am_send,
    .am_recv = u_am_recv,
    .get = u_get,
    .flush = u_flush,
    .mem_reg = u_mem_reg,
    .mem_dereg = u_mem_dereg,
    .rkey_unpack = u_rkey_unpack,
    .rkey_destroy = u_rkey_destroy,
    .progress = u_progress,
    .event_fd = u_event_fd,
    .arm = u_arm,
};
