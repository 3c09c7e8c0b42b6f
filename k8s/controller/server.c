/* SPDX-License-Identifier: Apache-2.0 */
/* HTTPS front end of the webhook: libmicrohttpd routing, body limits, and hot certificate reload.
 */
#include "controller_int.h"
#include "util_int.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <microhttpd.h>
#include <openssl/bio.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#define KVSC_PEM_MAX ((size_t)1 << 20)

typedef struct {
    struct stat cert, key;
} kvsc_stamp_t;

struct kvsc_server {
    const kvsc_server_cfg_t *cfg;
    kvsc_metrics_t *metrics;
    struct MHD_Daemon *daemon;
    int listen_fd;
    char address[80];
    char *cert_pem, *key_pem; /* the pair the running daemon serves */
    kvsc_stamp_t stamp;       /* files as they were when that pair was read */
    kvsc_stamp_t bad_stamp;   /* last pair we refused, so we log it once */
    atomic_int ready;
    size_t body_budget;      /* bytes all request bodies may hold at once */
    atomic_size_t body_used; /* bytes they hold now (reserved before each allocation) */
};

enum { ROUTE_MUTATE, ROUTE_HEALTHZ, ROUTE_READYZ, ROUTE_METRICS };

typedef struct {
    int route;
    int responded;
    /* An answer decided on the first call but sent on the last: a response queued before
     * MHD has seen the end of the request makes it close the connection. */
    unsigned defer_code;
    kvsc_result_t defer_result;
    const char *defer_message;
    const char *defer_allow;
    int too_large;
    int busy;        /* the body budget was spent while reading a chunked body */
    size_t reserved; /* bytes of the server's body budget this request holds */
    char *buf;
    size_t len, cap;
    uint64_t t0_ns;
} kvsc_req_t;

__attribute__((format(printf, 1, 2))) static void log_err(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("kvshare-controller: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- TLS material ---- */

static kvsc_status_t read_pem(const char *path, char **pem_p)
{
    kvsc_status_t status = KVSC_ERR_IO;
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        log_err("open %s: %s", path, strerror(errno));
        return KVSC_ERR_IO;
    }
    char *buf = malloc(KVSC_PEM_MAX + 1);
    if (buf == NULL) {
        status = KVSC_ERR_NO_MEMORY;
        goto out_close;
    }
    size_t n = fread(buf, 1, KVSC_PEM_MAX + 1, f);
    if (ferror(f) || n == 0 || n > KVSC_PEM_MAX) {
        log_err("read %s: %s", path, ferror(f) ? strerror(errno) : "empty or over 1 MiB");
        free(buf);
        goto out_close;
    }
    buf[n] = '\0';
    *pem_p = buf;
    status = KVSC_OK;
out_close:
    fclose(f);
    return status;
}

/* Does key belong to cert? Catches the window where cert-manager has written one file. */
static int pair_matches(const char *cert_pem, const char *key_pem)
{
    int ok = 0;
    BIO *cb = BIO_new_mem_buf(cert_pem, -1);
    BIO *kb = BIO_new_mem_buf(key_pem, -1);
    X509 *x = cb != NULL ? PEM_read_bio_X509(cb, NULL, NULL, NULL) : NULL;
    EVP_PKEY *k = kb != NULL ? PEM_read_bio_PrivateKey(kb, NULL, NULL, NULL) : NULL;
    if (x != NULL && k != NULL) {
        ok = X509_check_private_key(x, k) == 1;
    }
    EVP_PKEY_free(k);
    X509_free(x);
    BIO_free(kb);
    BIO_free(cb);
    return ok;
}

static int stat_pair(const kvsc_server_cfg_t *cfg, kvsc_stamp_t *st)
{
    memset(st, 0, sizeof(*st));
    return stat(cfg->cert_file, &st->cert) == 0 && stat(cfg->key_file, &st->key) == 0;
}

static int same_file(const struct stat *a, const struct stat *b)
{
    return a->st_dev == b->st_dev && a->st_ino == b->st_ino && a->st_size == b->st_size &&
           a->st_mtim.tv_sec == b->st_mtim.tv_sec && a->st_mtim.tv_nsec == b->st_mtim.tv_nsec &&
           a->st_ctim.tv_sec == b->st_ctim.tv_sec && a->st_ctim.tv_nsec == b->st_ctim.tv_nsec;
}

static int same_stamp(const kvsc_stamp_t *a, const kvsc_stamp_t *b)
{
    return same_file(&a->cert, &b->cert) && same_file(&a->key, &b->key);
}

/* Read both files; on success the caller owns *cert_p and *key_p. */
static kvsc_status_t load_pair(const kvsc_server_cfg_t *cfg, char **cert_p, char **key_p)
{
    char *cert = NULL, *key = NULL;
    kvsc_status_t status = read_pem(cfg->cert_file, &cert);
    if (status != KVSC_OK) {
        return status;
    }
    status = read_pem(cfg->key_file, &key);
    if (status != KVSC_OK) {
        free(cert);
        return status;
    }
    if (!pair_matches(cert, key)) {
        log_err("%s and %s are not a matching PEM certificate and private key", cfg->cert_file,
                cfg->key_file);
        free(key);
        free(cert);
        return KVSC_ERR_IO;
    }
    *cert_p = cert;
    *key_p = key;
    return KVSC_OK;
}

/* ---- HTTP ---- */

static void free_body(void *p)
{
    cJSON_free(p);
}

static enum MHD_Result send_body(struct MHD_Connection *conn, unsigned code, char *body, size_t len,
                                 const char *content_type, const char *allow)
{
    struct MHD_Response *resp =
        MHD_create_response_from_buffer_with_free_callback(len, body, free_body);
    if (resp == NULL) {
        cJSON_free(body);
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
    if (allow != NULL) {
        MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, allow);
    }
    enum MHD_Result ret = MHD_queue_response(conn, code, resp);
    MHD_destroy_response(resp);
    return ret;
}

static enum MHD_Result send_text(struct MHD_Connection *conn, unsigned code, const char *text)
{
    struct MHD_Response *resp = MHD_create_response_from_buffer(
        strlen(text), (void *)(uintptr_t)text, MHD_RESPMEM_PERSISTENT);
    if (resp == NULL) {
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/plain; charset=utf-8");
    enum MHD_Result ret = MHD_queue_response(conn, code, resp);
    MHD_destroy_response(resp);
    return ret;
}

/* Take n more bytes of the body budget for r; 0 when that would pass the budget. */
static int budget_take(kvsc_server_t *s, kvsc_req_t *r, size_t n)
{
    size_t used = atomic_load(&s->body_used);
    do {
        if (n > s->body_budget || used > s->body_budget - n) {
            return 0;
        }
    } while (!atomic_compare_exchange_weak(&s->body_used, &used, used + n));
    r->reserved += n;
    return 1;
}

static void budget_release(kvsc_server_t *s, kvsc_req_t *r)
{
    if (r->reserved > 0) {
        atomic_fetch_sub(&s->body_used, r->reserved);
        r->reserved = 0;
    }
}

#define KVSC_BUSY_MESSAGE                                                                          \
    "server busy: request bodies in flight hold the whole --max-body-memory budget; retry after "  \
    "1 s"

/* 429 with Retry-After: the budget for request bodies is spent. The API server retries the
 * call or applies the webhook's failurePolicy; the server keeps serving. */
static enum MHD_Result send_busy(kvsc_server_t *s, struct MHD_Connection *conn, kvsc_req_t *r)
{
    char *body;
    size_t len;
    r->responded = 1;
    kvsc_metrics_observe(s->metrics, KVSC_RESULT_BUSY, now_ns() - r->t0_ns, 0);
    if (s->cfg->verbose) {
        fprintf(stderr, "kvshare-controller: /mutate 429 busy (%zu of %zu body bytes held)\n",
                atomic_load(&s->body_used), s->body_budget);
    }
    if (kvsc_error_body(MHD_HTTP_TOO_MANY_REQUESTS, KVSC_BUSY_MESSAGE, &body, &len) != KVSC_OK) {
        return MHD_NO;
    }
    struct MHD_Response *resp =
        MHD_create_response_from_buffer_with_free_callback(len, body, free_body);
    if (resp == NULL) {
        cJSON_free(body);
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
    MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, "1");
    enum MHD_Result ret = MHD_queue_response(conn, MHD_HTTP_TOO_MANY_REQUESTS, resp);
    MHD_destroy_response(resp);
    return ret;
}

/* Reply with {"error":message,"code":code} and count it. */
static enum MHD_Result send_error(kvsc_server_t *s, struct MHD_Connection *conn, kvsc_req_t *r,
                                  unsigned code, kvsc_result_t result, const char *message,
                                  const char *allow)
{
    char *body;
    size_t len;
    r->responded = 1;
    kvsc_metrics_observe(s->metrics, result, now_ns() - r->t0_ns, 0);
    if (kvsc_error_body(code, message, &body, &len) != KVSC_OK) {
        return MHD_NO;
    }
    return send_body(conn, code, body, len, "application/json", allow);
}

static int is_json_media(const char *ct)
{
    if (ct == NULL) {
        return 0;
    }
    while (*ct == ' ' || *ct == '\t') {
        ct++;
    }
    size_t n = strcspn(ct, "; \t");
    return n == strlen("application/json") && strncasecmp(ct, "application/json", n) == 0;
}

static enum MHD_Result defer(kvsc_req_t *r, unsigned code, kvsc_result_t result,
                             const char *message, const char *allow)
{
    r->defer_code = code;
    r->defer_result = result;
    r->defer_message = message;
    r->defer_allow = allow;
    return MHD_YES;
}

static enum MHD_Result serve_plain(kvsc_server_t *s, struct MHD_Connection *conn, kvsc_req_t *r)
{
    r->responded = 1;
    if (r->route == ROUTE_HEALTHZ) {
        return send_text(conn, MHD_HTTP_OK, "ok\n");
    }
    if (r->route == ROUTE_READYZ) {
        return atomic_load(&s->ready)
                   ? send_text(conn, MHD_HTTP_OK, "ok\n")
                   : send_text(conn, MHD_HTTP_SERVICE_UNAVAILABLE, "shutting down\n");
    }
    size_t len;
    char *text = kvsc_metrics_render(s->metrics, s->cfg->inject.version, &len);
    if (text == NULL) {
        return MHD_NO;
    }
    struct MHD_Response *resp = MHD_create_response_from_buffer_with_free_callback(len, text, free);
    if (resp == NULL) {
        free(text);
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8");
    enum MHD_Result ret = MHD_queue_response(conn, MHD_HTTP_OK, resp);
    MHD_destroy_response(resp);
    return ret;
}

/* First call for a request: route, check method and headers, maybe answer at once. */
static enum MHD_Result begin(kvsc_server_t *s, struct MHD_Connection *conn, kvsc_req_t *r,
                             const char *url, const char *method)
{
    static const char *const paths[] = {"/mutate", "/healthz", "/readyz", "/metrics"};
    r->route = -1;
    for (int i = 0; i < 4; i++) {
        if (strcmp(url, paths[i]) == 0) {
            r->route = i;
        }
    }
    if (r->route < 0) {
        return defer(r, MHD_HTTP_NOT_FOUND, KVSC_RESULT_NOT_FOUND,
                     "no such path: the webhook serves POST /mutate, GET /healthz, "
                     "/readyz and /metrics",
                     NULL);
    }
    if (r->route != ROUTE_MUTATE) {
        if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0) {
            return defer(r, MHD_HTTP_METHOD_NOT_ALLOWED, KVSC_RESULT_BAD_METHOD,
                         "method not allowed: use GET", "GET, HEAD");
        }
        return MHD_YES;
    }
    if (strcmp(method, MHD_HTTP_METHOD_POST) != 0) {
        return defer(r, MHD_HTTP_METHOD_NOT_ALLOWED, KVSC_RESULT_BAD_METHOD,
                     "method not allowed: /mutate takes POST", "POST");
    }
    const char *ct = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Type");
    if (!is_json_media(ct)) {
        return defer(r, MHD_HTTP_UNSUPPORTED_MEDIA_TYPE, KVSC_RESULT_BAD_MEDIA,
                     "unsupported content type: /mutate takes application/json", NULL);
    }
    const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Length");
    if (cl != NULL) {
        char *end;
        errno = 0;
        unsigned long long n = strtoull(cl, &end, 10);
        if (errno != 0 || end == cl || n > KVSC_MAX_BODY) {
            /* Refuse before the body is sent: curl and the API server wait for
             * "100 Continue" on big bodies and get this instead. */
            return send_error(s, conn, r, MHD_HTTP_CONTENT_TOO_LARGE, KVSC_RESULT_TOO_LARGE,
                              "body too large: an AdmissionReview is at most 3 MiB", NULL);
        }
        /* The whole body is reserved up front, so a refusal comes before it is sent. */
        if (!budget_take(s, r, (size_t)n + 1)) {
            /* Answer now only to a client that waits for "100 Continue"
             * before sending. Any other client is already sending: answering
             * and closing with its body unread makes the kernel reset the
             * connection, and the client sees a send failure instead of the
             * 429. Its body is read and dropped, and the 429 goes at the end. */
            const char *expect = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Expect");
            if (expect != NULL && strcasecmp(expect, "100-continue") == 0) {
                return send_busy(s, conn, r);
            }
            r->busy = 1;
            return MHD_YES;
        }
        r->cap = (size_t)n + 1;
        r->buf = cJSON_malloc(r->cap);
        if (r->buf == NULL) {
            return MHD_NO;
        }
    }
    return MHD_YES;
}

/* Drop the body read so far and what still comes: the answer (413 or 429) goes at the end. */
static enum MHD_Result drop_body(kvsc_server_t *s, kvsc_req_t *r, int *flag)
{
    *flag = 1;
    cJSON_free(r->buf);
    r->buf = NULL;
    r->len = r->cap = 0;
    budget_release(s, r);
    return MHD_YES;
}

static enum MHD_Result append(kvsc_server_t *s, kvsc_req_t *r, const char *data, size_t n)
{
    if (r->too_large || r->busy) {
        return MHD_YES;
    }
    if (r->len + n > KVSC_MAX_BODY) {
        /* Keep reading and dropping, so the client gets a 413 rather than a reset. */
        return drop_body(s, r, &r->too_large);
    }
    if (r->len + n + 1 > r->cap) {
        size_t cap = r->cap ? r->cap : 16384;
        while (cap < r->len + n + 1) {
            cap *= 2;
        }
        /* A body sent without Content-Length (chunked) is reserved as it grows. */
        if (cap > r->reserved && !budget_take(s, r, cap - r->reserved)) {
            return drop_body(s, r, &r->busy);
        }
        char *b = cJSON_malloc(cap);
        if (b == NULL) {
            return MHD_NO;
        }
        if (r->len > 0) {
            memcpy(b, r->buf, r->len);
        }
        cJSON_free(r->buf);
        r->buf = b;
        r->cap = cap;
    }
    memcpy(r->buf + r->len, data, n);
    r->len += n;
    return MHD_YES;
}

static enum MHD_Result finish_review(kvsc_server_t *s, struct MHD_Connection *conn, kvsc_req_t *r)
{
    if (r->too_large) {
        return send_error(s, conn, r, MHD_HTTP_CONTENT_TOO_LARGE, KVSC_RESULT_TOO_LARGE,
                          "body too large: an AdmissionReview is at most 3 MiB", NULL);
    }
    if (r->busy) {
        return send_busy(s, conn, r);
    }
    kvsc_review_out_t out;
    kvsc_status_t status = kvsc_review(&s->cfg->inject, r->buf, r->len, &out);
    if (status != KVSC_OK) {
        return send_error(s, conn, r, MHD_HTTP_INTERNAL_SERVER_ERROR, KVSC_RESULT_ERROR,
                          kvsc_status_string(status), NULL);
    }
    r->responded = 1;
    kvsc_metrics_observe(s->metrics, out.result, now_ns() - r->t0_ns, out.patch_ops);
    if (s->cfg->verbose) {
        fprintf(stderr, "kvshare-controller: /mutate %u %s (%zu ops)\n", out.http_status,
                kvsc_result_name(out.result), out.patch_ops);
    }
    return send_body(conn, out.http_status, out.body, out.body_len, "application/json", NULL);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **req_cls)
{
    kvsc_server_t *s = cls;
    kvsc_req_t *r = *req_cls;
    (void)version;
    if (r == NULL) {
        r = calloc(1, sizeof(*r));
        if (r == NULL) {
            return MHD_NO;
        }
        r->t0_ns = now_ns();
        *req_cls = r;
        return begin(s, conn, r, url, method);
    }
    if (r->responded) {
        *upload_data_size = 0; /* answered early: drop whatever body still arrives */
        return MHD_YES;
    }
    if (*upload_data_size > 0) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        return r->defer_code != 0 || r->route != ROUTE_MUTATE ? MHD_YES
                                                              : append(s, r, upload_data, n);
    }
    if (r->defer_code != 0) {
        return send_error(s, conn, r, r->defer_code, r->defer_result, r->defer_message,
                          r->defer_allow);
    }
    if (r->route != ROUTE_MUTATE) {
        return serve_plain(s, conn, r);
    }
    return finish_review(s, conn, r);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **req_cls,
                         enum MHD_RequestTerminationCode toe)
{
    kvsc_server_t *s = cls;
    (void)conn;
    (void)toe;
    kvsc_req_t *r = *req_cls;
    if (r != NULL) {
        budget_release(s, r);
        cJSON_free(r->buf);
        free(r);
        *req_cls = NULL;
    }
}

/* Small responses go out as a TLS record for the header and one for the body; with Nagle
 * on, the second waits for the client's delayed ACK (~40 ms), which capped /healthz at a few
 * hundred requests a second on one connection. */
static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_ctx,
                          enum MHD_ConnectionNotificationCode toe)
{
    (void)cls;
    (void)socket_ctx;
    if (toe != MHD_CONNECTION_NOTIFY_STARTED) {
        return;
    }
    const union MHD_ConnectionInfo *info =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (info != NULL) {
        int one = 1;
        (void)setsockopt(info->connect_fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
}

static struct MHD_Daemon *start_daemon(kvsc_server_t *s, const char *cert, const char *key)
{
    unsigned threads = s->cfg->threads;
    if (threads == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        threads = n > 0 ? (unsigned)n : 1;
    }
    /* ITC is what lets MHD_quiesce_daemon hand the listening socket to the next daemon.
     * poll(), not epoll: with epoll and threads of its own, MHD_quiesce_daemon races the
     * worker threads' own removal of the listening socket from their epoll sets, and the
     * loser's epoll_ctl (ENOENT) is an MHD_PANIC ("Failed to remove listen FD from epoll
     * set"): the controller aborted at SIGTERM once in the suite, and a certificate reload
     * could do the same. On poll the quiesce only signals each worker through its ITC. */
    unsigned flags = MHD_USE_TLS | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL | MHD_USE_ITC |
                     MHD_USE_ERROR_LOG;
    return MHD_start_daemon(
        flags, 0, NULL, NULL, on_request, s, MHD_OPTION_LISTEN_SOCKET, (MHD_socket)s->listen_fd,
        MHD_OPTION_HTTPS_MEM_CERT, cert, MHD_OPTION_HTTPS_MEM_KEY, key, MHD_OPTION_HTTPS_PRIORITIES,
        "NORMAL:-VERS-SSL3.0:-VERS-TLS1.0:-VERS-TLS1.1", MHD_OPTION_THREAD_POOL_SIZE, threads,
        MHD_OPTION_CONNECTION_TIMEOUT, 30u, MHD_OPTION_CONNECTION_LIMIT, 4096u,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, s, MHD_OPTION_NOTIFY_CONNECTION, on_connection,
        NULL, MHD_OPTION_END);
}

/* ---- listening socket ---- */

static kvsc_status_t open_listener(kvsc_server_t *s, const char *spec)
{
    kvs__endpoint_t ep;
    char why[128];
    if (kvs__endpoint_parse(spec, KVS__EP_HOST_OPTIONAL, &ep, why, sizeof(why)) != 0) {
        log_err("--listen %s: %s", spec, why);
        return KVSC_ERR_INVALID;
    }
    const char *host = ep.host;

    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *ai = NULL;
    int rc = getaddrinfo(host[0] && strcmp(host, "*") ? host : NULL, ep.port, &hints, &ai);
    if (rc != 0) {
        log_err("--listen %s: %s", spec, gai_strerror(rc));
        return KVSC_ERR_INVALID;
    }
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    int one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
        bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, 1024) != 0) {
        log_err("listen on %s: %s", spec, strerror(errno));
        if (fd >= 0) {
            close(fd);
        }
        freeaddrinfo(ai);
        return KVSC_ERR_IO;
    }
    freeaddrinfo(ai);
    struct sockaddr_storage sa;
    socklen_t salen = sizeof(sa);
    char nhost[NI_MAXHOST], nport[NI_MAXSERV];
    if (getsockname(fd, (struct sockaddr *)&sa, &salen) != 0 ||
        getnameinfo((struct sockaddr *)&sa, salen, nhost, sizeof(nhost), nport, sizeof(nport),
                    NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
        log_err("getsockname on %s: %s", spec, strerror(errno));
        close(fd);
        return KVSC_ERR_IO;
    }
    kvs__endpoint_format(s->address, sizeof(s->address), nhost, nport);
    s->listen_fd = fd;
    return KVSC_OK;
}

/* ---- lifecycle ---- */

kvsc_status_t kvsc_server_start(const kvsc_server_cfg_t *cfg, kvsc_metrics_t *metrics,
                                kvsc_server_t **server_p)
{
    kvsc_status_t status = KVSC_ERR_NO_MEMORY;
    kvsc_server_t *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        return status;
    }
    s->cfg = cfg;
    s->metrics = metrics;
    s->listen_fd = -1;
    atomic_init(&s->ready, 0);
    s->body_budget = cfg->body_budget != 0 ? cfg->body_budget : KVSC_DEFAULT_BODY_BUDGET;
    atomic_init(&s->body_used, 0);
    if (!stat_pair(cfg, &s->stamp)) {
        log_err("stat %s / %s: %s", cfg->cert_file, cfg->key_file, strerror(errno));
        status = KVSC_ERR_IO;
        goto err_free;
    }
    status = load_pair(cfg, &s->cert_pem, &s->key_pem);
    if (status != KVSC_OK) {
        goto err_free;
    }
    status = open_listener(s, cfg->listen);
    if (status != KVSC_OK) {
        goto err_free_pem;
    }
    s->daemon = start_daemon(s, s->cert_pem, s->key_pem);
    if (s->daemon == NULL) {
        log_err("cannot start the HTTPS server on %s (bad certificate or key?)", s->address);
        status = KVSC_ERR_IO;
        goto err_close;
    }
    atomic_store(&s->ready, 1);
    *server_p = s;
    return KVSC_OK;

err_close:
    close(s->listen_fd);
err_free_pem:
    free(s->key_pem);
    free(s->cert_pem);
err_free:
    free(s);
    return status;
}

const char *kvsc_server_address(const kvsc_server_t *s)
{
    return s->address;
}

void kvsc_server_check_reload(kvsc_server_t *s)
{
    kvsc_stamp_t now;
    if (!stat_pair(s->cfg, &now) || same_stamp(&now, &s->stamp) ||
        same_stamp(&now, &s->bad_stamp)) {
        return; /* missing mid-rotation, unchanged, or already refused: try again later */
    }
    char *cert = NULL, *key = NULL;
    if (load_pair(s->cfg, &cert, &key) != KVSC_OK) {
        s->bad_stamp = now;
        kvsc_metrics_cert_reload(s->metrics, 0);
        return;
    }
    /* Quiesce hands over the listening socket: connections that arrive meanwhile wait in
     * the kernel's backlog, and requests in flight finish on the old daemon. */
    MHD_socket fd = MHD_quiesce_daemon(s->daemon);
    if (fd == MHD_INVALID_SOCKET) {
        log_err("certificate reload: cannot quiesce the running server; keeping the old pair");
        free(key);
        free(cert);
        kvsc_metrics_cert_reload(s->metrics, 0);
        return;
    }
    struct MHD_Daemon *next = start_daemon(s, cert, key);
    int ok = next != NULL;
    if (next == NULL) {
        log_err("certificate reload: the new pair was refused; serving the old one");
        s->bad_stamp = now;
        next = start_daemon(s, s->cert_pem, s->key_pem);
        free(key);
        free(cert);
    } else {
        free(s->key_pem);
        free(s->cert_pem);
        s->cert_pem = cert;
        s->key_pem = key;
        s->stamp = now;
        fprintf(stderr, "kvshare-controller: reloaded TLS certificate from %s\n",
                s->cfg->cert_file);
    }
    MHD_stop_daemon(s->daemon);
    s->daemon = next;
    kvsc_metrics_cert_reload(s->metrics, ok);
    if (next == NULL) {
        atomic_store(&s->ready, 0);
        log_err("certificate reload: cannot restart the server; not serving");
    }
}

void kvsc_server_stop(kvsc_server_t *s)
{
    if (s == NULL) {
        return;
    }
    atomic_store(&s->ready, 0);
    if (s->daemon != NULL) {
        /* Take the socket back first: MHD closes a listening socket it still owns, and we
         * close it below either way. */
        MHD_quiesce_daemon(s->daemon);
        MHD_stop_daemon(s->daemon);
    }
    close(s->listen_fd);
    free(s->key_pem);
    free(s->cert_pem);
    free(s);
}
