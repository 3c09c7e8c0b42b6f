/* SPDX-License-Identifier: Apache-2.0 */
/* tl_loop.c - an in-process loopback transport, so the protocol is tested without UCX.
 *
 * Contexts of one process find each other by address in a global table.
 * Messages are copied into the receiver's queue and delivered from its
 * progress(); GETs copy from the registered region the rkey names, after
 * checking the range. Completions are always deferred to the next
 * progress(), as a real transport's are. "loop" offers GET; "loop-am" does
 * not, so the core takes its active-message push path. "loop-noget" (for
 * tests only) says it offers GET, but every GET it posts completes with an
 * error, as a native lane that turns out unusable would (CMA refused by
 * ptrace rules, a bad rkey): the pull put's fallback to push is tested with
 * it. */
#include "transport_int.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define LOOP_MAGIC 0x504f4f4cu /* "LOOP" */
#define RNDV_MIN   8192u       /* payloads from here on are "rendezvous" */

typedef struct lw lw_t;

typedef struct litem {
    enum { IT_MSG, IT_DONE, IT_EP_ERROR } kind;
    /* IT_MSG */
    uint8_t *hdr;
    size_t hlen;
    uint8_t *data;
    size_t len;
    /* IT_DONE */
    kvs__tl_cb_t cb;
    void *arg;
    kvs_status_t status;
    /* IT_EP_ERROR */
    void *ep_user;
    struct litem *next;
} litem_t;

typedef struct lregion {
    uint8_t *base;
    size_t len;
    uint8_t rkey[24];
    struct lregion *next;
} lregion_t;

typedef struct lep {
    lw_t *owner;
    uint64_t target;
    void *user;
    struct lep *next; /* g_eps */
} lep_t;

typedef struct lrkey {
    uint64_t target;
    uint64_t base, len;
} lrkey_t;

struct lw {
    uint64_t id;
    bool rma;
    bool get_fails; /* "loop-noget" */
    kvs__tl_events_t ev;
    int efd;
    litem_t *head, **tail;
    lregion_t *regions;
    uint8_t addr[16];
    lw_t *next;
};

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static lw_t *g_workers;
static lep_t *g_eps;
static uint64_t g_next_id;

static lw_t *find_locked(uint64_t id)
{
    for (lw_t *w = g_workers; w != NULL; w = w->next)
        if (w->id == id)
            return w;
    return NULL;
}

static void push_locked(lw_t *w, litem_t *it)
{
    it->next = NULL;
    *w->tail = it;
    w->tail = &it->next;
    uint64_t one = 1;
    ssize_t n = write(w->efd, &one, sizeof(one));
    (void)n;
}

static kvs_status_t complete_later(lw_t *w, kvs__tl_cb_t cb, void *arg, kvs_status_t st, size_t len)
{
    litem_t *it = kvs__calloc(1, sizeof(*it));
    if (it == NULL)
        return KVS_ERR_NO_MEMORY;
    it->kind = IT_DONE;
    it->cb = cb;
    it->arg = arg;
    it->status = st;
    it->len = len;
    pthread_mutex_lock(&g_lock);
    push_locked(w, it);
    pthread_mutex_unlock(&g_lock);
    return KVS_INPROGRESS;
}

static void item_free(litem_t *it)
{
    kvs__free(it->hdr);
    kvs__free(it->data);
    kvs__free(it);
}

static kvs_status_t l_connect(void *arg, const void *addr, size_t len, void *user, void **ep_p,
                              bool *rma_p)
{
    lw_t *w = arg;
    uint32_t magic;
    uint64_t id;
    if (len != 16)
        return KVS_ERR_PROTOCOL;
    memcpy(&magic, addr, 4);
    memcpy(&id, (const uint8_t *)addr + 8, 8);
    if (magic != LOOP_MAGIC)
        return KVS_ERR_PROTOCOL;
    lep_t *e = kvs__calloc(1, sizeof(*e));
    if (e == NULL)
        return KVS_ERR_NO_MEMORY;
    e->owner = w;
    e->target = id;
    e->user = user;
    pthread_mutex_lock(&g_lock);
    lw_t *t = find_locked(id);
    if (t != NULL) {
        e->next = g_eps;
        g_eps = e;
    }
    pthread_mutex_unlock(&g_lock);
    if (t == NULL) {
        kvs__free(e);
        return KVS_ERR_PEER_FAILED;
    }
    *rma_p = w->rma && t->rma;
    *ep_p = e;
    return KVS_OK;
}

static void l_disconnect(void *arg, void *ep)
{
    (void)arg;
    lep_t *e = ep;
    if (e == NULL)
        return;
    pthread_mutex_lock(&g_lock);
    for (lep_t **ep_p = &g_eps; *ep_p != NULL; ep_p = &(*ep_p)->next) {
        if (*ep_p == e) {
            *ep_p = e->next;
            break;
        }
    }
    /* An endpoint error already queued for it must not reach the core. */
    for (litem_t *it = e->owner->head; it != NULL; it = it->next)
        if (it->kind == IT_EP_ERROR && it->ep_user == e->user)
            it->ep_user = NULL;
    pthread_mutex_unlock(&g_lock);
    kvs__free(e);
}

static kvs_status_t l_am_send(void *arg, void *ep, const void *hdr, size_t hlen, const void *data,
                              size_t len, kvs__tl_cb_t cb, void *cb_arg)
{
    lw_t *w = arg;
    lep_t *e = ep;
    litem_t *it = kvs__calloc(1, sizeof(*it));
    uint8_t *h = kvs__malloc(hlen ? hlen : 1);
    uint8_t *d = kvs__malloc(len ? len : 1);
    if (it == NULL || h == NULL || d == NULL) {
        kvs__free(it);
        kvs__free(h);
        kvs__free(d);
        return KVS_ERR_NO_MEMORY;
    }
    memcpy(h, hdr, hlen);
    if (len > 0)
        memcpy(d, data, len);
    it->kind = IT_MSG;
    it->hdr = h;
    it->hlen = hlen;
    it->data = d;
    it->len = len;
    pthread_mutex_lock(&g_lock);
    lw_t *t = find_locked(e->target);
    if (t != NULL)
        push_locked(t, it);
    pthread_mutex_unlock(&g_lock);
    if (t == NULL) {
        item_free(it);
        return KVS_ERR_PEER_FAILED;
    }
    return complete_later(w, cb, cb_arg, KVS_OK, len);
}

static kvs_status_t l_am_recv(void *arg, void *data, void *dst, size_t len, kvs__tl_cb_t cb,
                              void *cb_arg)
{
    lw_t *w = arg;
    litem_t *it = data;
    if (len != it->len)
        return KVS_ERR_INVALID_PARAM;
    memcpy(dst, it->data, len);
    return complete_later(w, cb, cb_arg, KVS_OK, len);
}

static kvs_status_t l_get(void *arg, void *ep, void *local, size_t len, uint64_t raddr, void *rkey,
                          kvs__tl_cb_t cb, void *cb_arg)
{
    lw_t *w = arg;
    lep_t *e = ep;
    lrkey_t *rk = rkey;
    if (!w->rma)
        return KVS_ERR_UNSUPPORTED;
    if (w->get_fails)
        return complete_later(w, cb, cb_arg, KVS_ERR_TRANSPORT, 0);
    if (rk->target != e->target || raddr < rk->base || len > rk->len ||
        raddr - rk->base > rk->len - len)
        return KVS_ERR_PROTOCOL;
    pthread_mutex_lock(&g_lock);
    lw_t *t = find_locked(e->target);
    bool ok = false;
    /* The region must still be registered: a deregistered one is gone. */
    for (lregion_t *r = t != NULL ? t->regions : NULL; r != NULL && !ok; r = r->next)
        ok = (uint64_t)(uintptr_t)r->base <= raddr &&
             raddr + len <= (uint64_t)(uintptr_t)r->base + r->len;
    if (ok)
        memcpy(local, (const void *)(uintptr_t)raddr, len);
    pthread_mutex_unlock(&g_lock);
    return complete_later(w, cb, cb_arg, ok ? KVS_OK : KVS_ERR_PEER_FAILED, ok ? len : 0);
}

static kvs_status_t l_flush(void *arg, void *ep, kvs__tl_cb_t cb, void *cb_arg)
{
    (void)ep;
    return complete_later(arg, cb, cb_arg, KVS_OK, 0);
}

static kvs_status_t l_mem_reg(void *arg, void *base, size_t length, kvs_mem_type_t type,
                              void **memh_p, const void **rkey_p, size_t *rkey_len_p)
{
    lw_t *w = arg;
    if (type != KVS_MEM_HOST)
        return KVS_ERR_UNSUPPORTED;
    lregion_t *r = kvs__calloc(1, sizeof(*r));
    if (r == NULL)
        return KVS_ERR_NO_MEMORY;
    r->base = base;
    r->len = length;
    uint32_t magic = LOOP_MAGIC;
    uint64_t b = (uint64_t)(uintptr_t)base, l = length;
    memcpy(r->rkey, &magic, 4);
    memcpy(r->rkey + 4, &w->id, 4); /* low half: a sanity check only */
    memcpy(r->rkey + 8, &b, 8);
    memcpy(r->rkey + 16, &l, 8);
    pthread_mutex_lock(&g_lock);
    r->next = w->regions;
    w->regions = r;
    pthread_mutex_unlock(&g_lock);
    *memh_p = r;
    *rkey_p = r->rkey;
    *rkey_len_p = sizeof(r->rkey);
    return KVS_OK;
}

static void l_mem_dereg(void *arg, void *memh)
{
    lw_t *w = arg;
    pthread_mutex_lock(&g_lock);
    for (lregion_t **rp = &w->regions; *rp != NULL; rp = &(*rp)->next) {
        if (*rp == memh) {
            *rp = ((lregion_t *)memh)->next;
            break;
        }
    }
    pthread_mutex_unlock(&g_lock);
    kvs__free(memh);
}

static kvs_status_t l_rkey_unpack(void *arg, void *ep, const void *buf, size_t len, void **rkey_p)
{
    (void)arg;
    lep_t *e = ep;
    uint32_t magic;
    if (e == NULL || len != 24)
        return KVS_ERR_PROTOCOL;
    memcpy(&magic, buf, 4);
    if (magic != LOOP_MAGIC)
        return KVS_ERR_PROTOCOL;
    lrkey_t *rk = kvs__malloc(sizeof(*rk));
    if (rk == NULL)
        return KVS_ERR_NO_MEMORY;
    rk->target = e->target;
    memcpy(&rk->base, (const uint8_t *)buf + 8, 8);
    memcpy(&rk->len, (const uint8_t *)buf + 16, 8);
    *rkey_p = rk;
    return KVS_OK;
}

static void l_rkey_destroy(void *arg, void *rkey)
{
    (void)arg;
    kvs__free(rkey);
}

static int l_progress(void *arg)
{
    lw_t *w = arg;
    int n = 0;
    for (;;) {
        pthread_mutex_lock(&g_lock);
        litem_t *it = w->head;
        if (it != NULL) {
            w->head = it->next;
            if (w->head == NULL)
                w->tail = &w->head;
        }
        pthread_mutex_unlock(&g_lock);
        if (it == NULL)
            break;
        n++;
        if (it->kind == IT_DONE)
            it->cb(it->arg, it->status, it->len);
        else if (it->kind == IT_EP_ERROR && it->ep_user != NULL)
            w->ev.on_ep_error(w->ev.arg, it->ep_user, KVS_ERR_PEER_FAILED);
        else if (it->kind == IT_MSG)
            /* Large payloads are "rendezvous": the core gets a descriptor
             * to am_recv(), as UCX gives it; small ones, the bytes. */
            w->ev.on_am(w->ev.arg, it->hdr, it->hlen, it->len >= RNDV_MIN ? (void *)it : it->data,
                        it->len, it->len >= RNDV_MIN);
        item_free(it);
    }
    return n;
}

static int l_event_fd(void *arg)
{
    return ((lw_t *)arg)->efd;
}

static bool l_arm(void *arg)
{
    lw_t *w = arg;
    uint64_t v;
    ssize_t n = read(w->efd, &v, sizeof(v));
    (void)n;
    pthread_mutex_lock(&g_lock);
    bool idle = w->head == NULL;
    pthread_mutex_unlock(&g_lock);
    return idle;
}

static kvs_status_t l_address(void *arg, const void **addr_p, size_t *len_p)
{
    lw_t *w = arg;
    *addr_p = w->addr;
    *len_p = sizeof(w->addr);
    return KVS_OK;
}

static kvs_status_t l_init_common(const kvs__tl_events_t *ev, bool rma, bool get_fails, void **tl_p,
                                  char *err, size_t errlen)
{
    lw_t *w = kvs__calloc(1, sizeof(*w));
    if (w == NULL)
        return KVS_ERR_NO_MEMORY;
    w->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (w->efd < 0) {
        snprintf(err, errlen, "loop transport: eventfd: %s", strerror(errno));
        kvs__free(w);
        return KVS_ERR_IO;
    }
    w->ev = *ev;
    w->rma = rma;
    w->get_fails = get_fails;
    w->tail = &w->head;
    pthread_mutex_lock(&g_lock);
    w->id = ++g_next_id;
    w->next = g_workers;
    g_workers = w;
    pthread_mutex_unlock(&g_lock);
    uint32_t magic = LOOP_MAGIC;
    memcpy(w->addr, &magic, 4);
    memcpy(w->addr + 8, &w->id, 8);
    *tl_p = w;
    return KVS_OK;
}

static kvs_status_t l_init(const kvs__config_t *cfg, const kvs__logger_t *log,
                           const kvs__tl_events_t *ev, void **tl_p, char *err, size_t errlen)
{
    (void)cfg;
    (void)log;
    return l_init_common(ev, true, false, tl_p, err, errlen);
}

static kvs_status_t l_init_am(const kvs__config_t *cfg, const kvs__logger_t *log,
                              const kvs__tl_events_t *ev, void **tl_p, char *err, size_t errlen)
{
    (void)cfg;
    (void)log;
    return l_init_common(ev, false, false, tl_p, err, errlen);
}

static kvs_status_t l_init_noget(const kvs__config_t *cfg, const kvs__logger_t *log,
                                 const kvs__tl_events_t *ev, void **tl_p, char *err, size_t errlen)
{
    (void)cfg;
    (void)log;
    return l_init_common(ev, true, true, tl_p, err, errlen);
}

static void l_fini(void *arg)
{
    lw_t *w = arg;
    if (w == NULL)
        return;
    pthread_mutex_lock(&g_lock);
    for (lw_t **wp = &g_workers; *wp != NULL; wp = &(*wp)->next) {
        if (*wp == w) {
            *wp = w->next;
            break;
        }
    }
    /* Peers with endpoints to us learn that we are gone, as a dead
     * process's peers would. */
    for (lep_t *e = g_eps; e != NULL; e = e->next) {
        if (e->target == w->id && e->owner != w) {
            litem_t *it = kvs__calloc(1, sizeof(*it));
            if (it != NULL) {
                it->kind = IT_EP_ERROR;
                it->ep_user = e->user;
                push_locked(e->owner, it);
            }
        }
    }
    pthread_mutex_unlock(&g_lock);
    while (w->head != NULL) {
        litem_t *it = w->head;
        w->head = it->next;
        item_free(it);
    }
    while (w->regions != NULL) {
        lregion_t *r = w->regions;
        w->regions = r->next;
        kvs__free(r);
    }
    close(w->efd);
    kvs__free(w);
}

#define LOOP_OPS(var, nm, initfn)                                                                  \
    const kvs__transport_ops_t var = {                                                             \
        .version = KVS_TRANSPORT_OPS_VERSION,                                                      \
        .name = nm,                                                                                \
        .init = initfn,                                                                            \
        .fini = l_fini,                                                                            \
        .address = l_address,                                                                      \
        .connect = l_connect,                                                                      \
        .disconnect = l_disconnect,                                                                \
        .am_send = l_am_send,                                                                      \
        .am_recv = l_am_recv,                                                                      \
        .get = l_get,                                                                              \
        .flush = l_flush,                                                                          \
        .mem_reg = l_mem_reg,                                                                      \
        .mem_dereg = l_mem_dereg,                                                                  \
        .rkey_unpack = l_rkey_unpack,                                                              \
        .rkey_destroy = l_rkey_destroy,                                                            \
        .progress = l_progress,                                                                    \
        .event_fd = l_event_fd,                                                                    \
        .arm = l_arm,                                                                              \
    }

LOOP_OPS(kvs__loop_transport, "loop", l_init);
LOOP_OPS(kvs__loop_am_transport, "loop-am", l_init_am);
LOOP_OPS(kvs__loop_noget_transport, "loop-noget", l_init_noget);
