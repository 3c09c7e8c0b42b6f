/* SPDX-License-Identifier: Apache-2.0 */
/* ixtls.c - rediss://: a verified TLS client (OpenSSL) relayed to hiredis over a socketpair. */
#include "ixtls_int.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define RELAY_BUF 16384
/* The relay's poll also wakes this often to look at its stop flag (hiredis closing its end
 * wakes it anyway, by POLLHUP). */
#define RELAY_TICK_MS 200

struct kvs__ixtls_ctx {
    SSL_CTX *ctx;
};

struct kvs__ixtls_conn {
    SSL *ssl;
    int tcp;  /* the TLS socket (non-blocking) */
    int pair; /* the relay's end of the socketpair (non-blocking) */
    pthread_t thread;
    atomic_bool stop;
    atomic_bool failed;
    char err[256];                       /* written before failed is set */
    char up[RELAY_BUF], down[RELAY_BUF]; /* hiredis -> server, server -> hiredis */
};

/* The first queued OpenSSL error as text (or fallback), the queue emptied. */
static void ssl_errstr(char *out, size_t n, const char *fallback)
{
    unsigned long e = ERR_get_error();
    if (e == 0) {
        snprintf(out, n, "%s", fallback);
        return;
    }
    char buf[200];
    ERR_error_string_n(e, buf, sizeof(buf));
    /* "error:0A000086:SSL routines::certificate verify failed": keep the reason. */
    const char *reason = strstr(buf, "::");
    snprintf(out, n, "%s", reason != NULL ? reason + 2 : buf);
    ERR_clear_error();
}

kvs__ixtls_ctx_t *kvs__ixtls_ctx_create(const char *ca_file, const char *cert_file,
                                        const char *key_file, char *why, size_t wl)
{
    char e[200];
    if ((cert_file == NULL) != (key_file == NULL)) {
        snprintf(why, wl,
                 "TLS: a client certificate needs both a certificate and its key "
                 "(KVSHARE_REDIS_CERT_FILE and KVSHARE_REDIS_KEY_FILE)");
        return NULL;
    }
    kvs__ixtls_ctx_t *t = calloc(1, sizeof(*t));
    if (t == NULL) {
        snprintf(why, wl, "out of memory");
        return NULL;
    }
    ERR_clear_error();
    t->ctx = SSL_CTX_new(TLS_client_method());
    if (t->ctx == NULL) {
        ssl_errstr(e, sizeof(e), "out of memory");
        snprintf(why, wl, "TLS: SSL_CTX_new: %s", e);
        goto err_free;
    }
    SSL_CTX_set_min_proto_version(t->ctx, TLS1_2_VERSION);
    SSL_CTX_set_verify(t->ctx, SSL_VERIFY_PEER, NULL);
    SSL_CTX_set_mode(t->ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    if (ca_file != NULL ? SSL_CTX_load_verify_locations(t->ctx, ca_file, NULL) != 1
                        : SSL_CTX_set_default_verify_paths(t->ctx) != 1) {
        ssl_errstr(e, sizeof(e), "unreadable");
        snprintf(why, wl, "TLS: CA file '%s': %s", ca_file ? ca_file : "(system store)", e);
        goto err_ctx;
    }
    if (cert_file != NULL) {
        if (SSL_CTX_use_certificate_chain_file(t->ctx, cert_file) != 1) {
            ssl_errstr(e, sizeof(e), "unreadable");
            snprintf(why, wl, "TLS: client certificate '%s': %s", cert_file, e);
            goto err_ctx;
        }
        if (SSL_CTX_use_PrivateKey_file(t->ctx, key_file, SSL_FILETYPE_PEM) != 1 ||
            SSL_CTX_check_private_key(t->ctx) != 1) {
            ssl_errstr(e, sizeof(e), "unreadable");
            snprintf(why, wl, "TLS: client key '%s': %s", key_file, e);
            goto err_ctx;
        }
    }
    return t;
err_ctx:
    SSL_CTX_free(t->ctx);
err_free:
    free(t);
    return NULL;
}

void kvs__ixtls_ctx_free(kvs__ixtls_ctx_t *t)
{
    if (t == NULL)
        return;
    SSL_CTX_free(t->ctx);
    free(t);
}

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* poll on one fd until deadline: >0 ready, 0 timed out, <0 error. */
static int wait_fd(int fd, short events, int64_t deadline)
{
    for (;;) {
        int64_t left = deadline - mono_ms();
        if (left <= 0)
            return 0;
        struct pollfd p = {.fd = fd, .events = events};
        int rc = poll(&p, 1, (int)left);
        if (rc >= 0 || errno != EINTR)
            return rc;
    }
}

/* A non-blocking TCP connection to host:port within connect_ms; -1 with why. */
static int tcp_connect(const char *host, int port, int connect_ms, char *why, size_t wl)
{
    char ps[8];
    snprintf(ps, sizeof(ps), "%d", port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *ai = NULL;
    int rc = getaddrinfo(host, ps, &hints, &ai);
    if (rc != 0) {
        snprintf(why, wl, "%s: %s", host, gai_strerror(rc));
        return -1;
    }
    int64_t deadline = mono_ms() + connect_ms;
    int fd = -1, err = ECONNREFUSED;
    for (struct addrinfo *a = ai; a != NULL && fd < 0; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) {
            err = errno;
            continue;
        }
        if (connect(fd, a->ai_addr, a->ai_addrlen) == 0)
            break;
        err = errno;
        if (err == EINPROGRESS) {
            socklen_t len = sizeof(err);
            int w = wait_fd(fd, POLLOUT, deadline);
            if (w == 0)
                err = ETIMEDOUT;
            else if (w < 0)
                err = errno;
            else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
                err = errno;
            if (err == 0)
                break;
        }
        close(fd);
        fd = -1;
    }
    freeaddrinfo(ai);
    /* As hiredis does for its own TCP connections: a request larger than one TLS record
     * goes as two writes, and Nagle would hold the second for the server's delayed ACK
     * (40 ms a score of 512 blocks). */
    int one = 1;
    if (fd >= 0)
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (fd < 0)
        snprintf(why, wl, "connect %s:%d: %s", host, port,
                 err == ETIMEDOUT ? "timed out" : strerror(err));
    return fd;
}

/* Why the handshake failed: the verification result when there is one (hostname mismatch
 * included), else the alert or the socket's error. */
static void handshake_why(SSL *ssl, int ret, char *why, size_t wl)
{
    char e[200];
    long v = SSL_get_verify_result(ssl);
    int se = SSL_get_error(ssl, ret);
    if (v != X509_V_OK) {
        snprintf(why, wl,
                 "TLS: certificate verify failed: %s (--redis-ca / "
                 "KVSHARE_REDIS_CA_FILE names the CA that signed the server's)",
                 X509_verify_cert_error_string(v));
        ERR_clear_error();
    } else if (se == SSL_ERROR_SYSCALL && ERR_peek_error() == 0) {
        snprintf(why, wl, "TLS handshake: %s",
                 errno != 0 ? strerror(errno) : "the server closed the connection (not TLS?)");
    } else {
        ssl_errstr(e, sizeof(e), "failed");
        snprintf(why, wl, "TLS handshake: %s", e);
    }
}

/* SIGPIPE blocked in this thread while it writes to a socket the server may have closed
 * (curl's sigpipe_ignore): a pending one raised here is consumed before unblocking. */
typedef struct {
    sigset_t old;
    bool was_pending;
} sigpipe_guard_t;

static void sigpipe_block(sigpipe_guard_t *g)
{
    sigset_t s, pend;
    sigemptyset(&s);
    sigaddset(&s, SIGPIPE);
    sigpending(&pend);
    g->was_pending = sigismember(&pend, SIGPIPE) == 1;
    pthread_sigmask(SIG_BLOCK, &s, &g->old);
}

static void sigpipe_restore(sigpipe_guard_t *g)
{
    sigset_t s, pend;
    sigemptyset(&s);
    sigaddset(&s, SIGPIPE);
    sigpending(&pend);
    if (!g->was_pending && sigismember(&pend, SIGPIPE) == 1) {
        struct timespec zero = {0, 0};
        sigtimedwait(&s, NULL, &zero);
    }
    pthread_sigmask(SIG_SETMASK, &g->old, NULL);
}

/* The cause of a failed SSL_read/SSL_write into c->err (the failed flag not yet set). */
static void relay_why(kvs__ixtls_conn_t *c, const char *what, int ret, int se)
{
    char e[200];
    if (se == SSL_ERROR_ZERO_RETURN)
        snprintf(e, sizeof(e), "the server closed the TLS session");
    else if (se == SSL_ERROR_SYSCALL && ERR_peek_error() == 0)
        snprintf(e, sizeof(e), "%s",
                 ret == 0 || errno == 0 ? "the server closed the connection" : strerror(errno));
    else
        ssl_errstr(e, sizeof(e), "failed");
    snprintf(c->err, sizeof(c->err), "TLS %s: %s", what, e);
}

static void relay_fail(kvs__ixtls_conn_t *c, const char *what, int ret, int se)
{
    relay_why(c, what, ret, se);
    atomic_store_explicit(&c->failed, true, memory_order_release);
}

/* A write failed (often "connection reset"): the server may have said why before it closed
 * (TLS 1.3's "certificate required" comes after the handshake, as an alert): read it. */
static void relay_write_failed(kvs__ixtls_conn_t *c, int ret, int se)
{
    relay_why(c, "write", ret, se);
    ERR_clear_error();
    char scratch[512];
    int n = SSL_read(c->ssl, scratch, sizeof(scratch));
    if (n <= 0 && SSL_get_error(c->ssl, n) == SSL_ERROR_SSL)
        relay_why(c, "session", n, SSL_ERROR_SSL);
    atomic_store_explicit(&c->failed, true, memory_order_release);
}

/* pair <-> TLS until either side ends. Each pass does what it can without blocking, then
 * polls for what the stalled directions wait on. */
static void *relay(void *arg)
{
    kvs__ixtls_conn_t *c = arg;
    char *up = c->up, *down = c->down;
    size_t ulen = 0, uoff = 0, dlen = 0, doff = 0;
    while (!atomic_load(&c->stop)) {
        bool progress = false;
        short tcp_ev = 0, pair_ev = 0;
        if (ulen == 0) { /* hiredis -> up */
            ssize_t n = recv(c->pair, up, RELAY_BUF, 0);
            if (n > 0) {
                ulen = (size_t)n, uoff = 0, progress = true;
            } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
                break; /* hiredis closed its end */
            } else {
                pair_ev |= POLLIN;
            }
        }
        if (uoff < ulen) { /* up -> TLS */
            ERR_clear_error();
            int n = SSL_write(c->ssl, up + uoff, (int)(ulen - uoff));
            if (n > 0) {
                uoff += (size_t)n, progress = true;
                if (uoff == ulen)
                    ulen = uoff = 0;
            } else {
                int se = SSL_get_error(c->ssl, n);
                if (se == SSL_ERROR_WANT_READ)
                    tcp_ev |= POLLIN;
                else if (se == SSL_ERROR_WANT_WRITE)
                    tcp_ev |= POLLOUT;
                else {
                    relay_write_failed(c, n, se);
                    break;
                }
            }
        }
        if (dlen == 0) { /* TLS -> down */
            ERR_clear_error();
            int n = SSL_read(c->ssl, down, RELAY_BUF);
            if (n > 0) {
                dlen = (size_t)n, doff = 0, progress = true;
            } else {
                int se = SSL_get_error(c->ssl, n);
                if (se == SSL_ERROR_WANT_READ)
                    tcp_ev |= POLLIN;
                else if (se == SSL_ERROR_WANT_WRITE)
                    tcp_ev |= POLLOUT;
                else {
                    relay_fail(c, "read", n, se);
                    break;
                }
            }
        }
        if (doff < dlen) { /* down -> hiredis */
            ssize_t n = send(c->pair, down + doff, dlen - doff, MSG_NOSIGNAL);
            if (n > 0) {
                doff += (size_t)n, progress = true;
                if (doff == dlen)
                    dlen = doff = 0;
            } else if (errno == EAGAIN || errno == EINTR) {
                pair_ev |= POLLOUT;
            } else {
                break;
            }
        }
        if (progress)
            continue;
        /* The pair is always polled: hiredis closing its end (POLLHUP) ends the relay even
         * while the TLS side stalls. */
        struct pollfd p[2] = {{.fd = c->pair, .events = pair_ev}, {.fd = c->tcp, .events = tcp_ev}};
        int rc = poll(p, 2, RELAY_TICK_MS);
        if (rc < 0 && errno != EINTR)
            break;
        if (rc > 0 && (p[0].revents & (POLLHUP | POLLERR | POLLNVAL)))
            break; /* hiredis closed its end (it never does mid-reply but on a drop) */
    }
    /* hiredis sees the end now (EOF), not at its reply timeout. */
    shutdown(c->pair, SHUT_RDWR);
    return NULL;
}

kvs__ixtls_conn_t *kvs__ixtls_connect(kvs__ixtls_ctx_t *t, const char *host, int port,
                                      int connect_ms, int handshake_ms, int *fd_p, char *why,
                                      size_t wl)
{
    int sv[2];
    kvs__ixtls_conn_t *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        snprintf(why, wl, "out of memory");
        return NULL;
    }
    c->tcp = tcp_connect(host, port, connect_ms, why, wl);
    if (c->tcp < 0)
        goto err_free;
    ERR_clear_error();
    c->ssl = SSL_new(t->ctx);
    if (c->ssl == NULL || SSL_set_fd(c->ssl, c->tcp) != 1) {
        snprintf(why, wl, "TLS: SSL_new: out of memory");
        goto err_ssl;
    }
    /* The name checked against the certificate: an IP address by its SAN IP entry (no SNI,
     * which takes only DNS names), else the DNS name, sent as SNI. */
    unsigned char ip[16];
    bool is_ip = inet_pton(AF_INET, host, ip) == 1 || inet_pton(AF_INET6, host, ip) == 1;
    X509_VERIFY_PARAM *vp = SSL_get0_param(c->ssl);
    X509_VERIFY_PARAM_set_hostflags(vp, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    if (is_ip ? X509_VERIFY_PARAM_set1_ip_asc(vp, host) != 1
              : SSL_set1_host(c->ssl, host) != 1 ||
                    SSL_set_tlsext_host_name(c->ssl, (char *)(uintptr_t)host) != 1) {
        snprintf(why, wl, "TLS: cannot check the name '%s'", host);
        goto err_ssl;
    }
    int64_t deadline = mono_ms() + handshake_ms;
    sigpipe_guard_t g;
    sigpipe_block(&g);
    for (;;) {
        ERR_clear_error();
        errno = 0;
        int ret = SSL_connect(c->ssl);
        if (ret == 1)
            break;
        int se = SSL_get_error(c->ssl, ret);
        short ev = se == SSL_ERROR_WANT_READ ? POLLIN : se == SSL_ERROR_WANT_WRITE ? POLLOUT : 0;
        int w = ev ? wait_fd(c->tcp, ev, deadline) : -1;
        if (w > 0)
            continue;
        if (w == 0)
            snprintf(why, wl, "TLS handshake with %s:%d: timed out after %d ms", host, port,
                     handshake_ms);
        else
            handshake_why(c->ssl, ret, why, wl);
        sigpipe_restore(&g);
        goto err_ssl;
    }
    sigpipe_restore(&g);
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
        snprintf(why, wl, "socketpair: %s", strerror(errno));
        goto err_ssl;
    }
    c->pair = sv[0];
    fcntl(c->pair, F_SETFL, fcntl(c->pair, F_GETFL) | O_NONBLOCK);
    /* The relay starts with every signal blocked (SIGPIPE from SSL_write included). */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(&c->thread, NULL, relay, c);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        snprintf(why, wl, "TLS relay thread: %s", strerror(rc));
        goto err_pair;
    }
    *fd_p = sv[1];
    return c;
err_pair:
    close(sv[0]);
    close(sv[1]);
err_ssl:
    SSL_free(c->ssl);
    close(c->tcp);
err_free:
    free(c);
    return NULL;
}

const char *kvs__ixtls_error(kvs__ixtls_conn_t *c)
{
    return c != NULL && atomic_load_explicit(&c->failed, memory_order_acquire) ? c->err : NULL;
}

void kvs__ixtls_close(kvs__ixtls_conn_t *c)
{
    if (c == NULL)
        return;
    atomic_store(&c->stop, true);
    pthread_join(c->thread, NULL);
    close(c->pair);
    SSL_free(c->ssl);
    close(c->tcp);
    free(c);
}
