/* SPDX-License-Identifier: Apache-2.0 */
/* boot.c - TCP sockets for the bootstrap handshake, every wait bounded by a deadline. */
#include "boot_int.h"
#include "proto_int.h"
#include "util_int.h"

#include <arpa/inet.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

kvs_status_t kvs__resolve(const char *peer, struct sockaddr_storage *ss, socklen_t *len)
{
    kvs__endpoint_t ep;
    if (kvs__endpoint_parse(peer, 0, &ep, NULL, 0) != 0)
        return KVS_ERR_INVALID_PARAM;
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV}, *ai = NULL;
    if (getaddrinfo(ep.host, ep.port, &hints, &ai) != 0 || ai == NULL)
        return KVS_ERR_NOT_FOUND;
    memcpy(ss, ai->ai_addr, ai->ai_addrlen);
    *len = ai->ai_addrlen;
    freeaddrinfo(ai);
    return KVS_OK;
}

static void name_addr(const struct sockaddr *sa, char *out, size_t len)
{
    char host[INET6_ADDRSTRLEN] = "?", port[8];
    if (sa->sa_family == AF_INET) {
        inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, host, sizeof(host));
        snprintf(port, sizeof(port), "%u", ntohs(((const struct sockaddr_in *)sa)->sin_port));
    } else if (sa->sa_family == AF_INET6) {
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, host, sizeof(host));
        snprintf(port, sizeof(port), "%u", ntohs(((const struct sockaddr_in6 *)sa)->sin6_port));
    } else {
        snprintf(out, len, "?");
        return;
    }
    kvs__endpoint_format(out, len, host, port);
}

int kvs__boot_listen(const char *addr, char *bound, size_t bound_len, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    socklen_t sl;
    if (kvs__resolve(addr, &ss, &sl) != KVS_OK) {
        snprintf(err, errlen, "KVSHARE_LISTEN='%s': expected HOST:PORT with a resolvable host",
                 addr);
        return -1;
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "KVSHARE_LISTEN='%s': socket: %s", addr, strerror(errno));
        return -1;
    }
    /* A restarted node gets its port back at once, not after TIME_WAIT. */
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, (const struct sockaddr *)&ss, sl) != 0 || listen(fd, 1024) != 0) {
        snprintf(err, errlen, "KVSHARE_LISTEN='%s': %s", addr, strerror(errno));
        close(fd);
        return -1;
    }
    struct sockaddr_storage got;
    socklen_t gl = sizeof(got);
    if (getsockname(fd, (struct sockaddr *)&got, &gl) == 0)
        name_addr((const struct sockaddr *)&got, bound, bound_len);
    else
        snprintf(bound, bound_len, "%s", addr);
    return fd;
}

int kvs__boot_accept(int lfd, char *peer, size_t peer_len)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    int fd = accept4(lfd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0)
        return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    name_addr((const struct sockaddr *)&ss, peer, peer_len);
    return fd;
}

static int ms_left(uint64_t deadline_ns)
{
    uint64_t t = kvs__now_ns();
    if (t >= deadline_ns)
        return 0;
    uint64_t ms = (deadline_ns - t + 999999u) / 1000000u;
    return ms > 60000 ? 60000 : (int)ms;
}

int kvs__boot_connect(const char *peer, uint64_t deadline_ns, kvs_status_t *st)
{
    struct sockaddr_storage ss;
    socklen_t sl;
    kvs_status_t s = kvs__resolve(peer, &ss, &sl);
    if (s != KVS_OK) {
        *st = s;
        return -1;
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        *st = KVS_ERR_IO;
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(fd, (const struct sockaddr *)&ss, sl) != 0) {
        if (errno != EINPROGRESS) {
            close(fd);
            *st = KVS_ERR_PEER_FAILED;
            return -1;
        }
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        int n;
        do {
            n = poll(&p, 1, ms_left(deadline_ns));
        } while (n < 0 && errno == EINTR);
        int soerr = 0;
        socklen_t el = sizeof(soerr);
        if (n <= 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &el) != 0 || soerr != 0) {
            close(fd);
            *st = n == 0 ? KVS_ERR_TIMED_OUT : KVS_ERR_PEER_FAILED;
            return -1;
        }
    }
    *st = KVS_OK;
    return fd;
}

kvs_status_t kvs__boot_send(int fd, const void *buf, size_t len, uint64_t deadline_ns)
{
    const uint8_t *p = buf;
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            p += n;
            len -= (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            struct pollfd pf = {.fd = fd, .events = POLLOUT};
            int left = ms_left(deadline_ns);
            if (left == 0 || poll(&pf, 1, left) == 0)
                return KVS_ERR_TIMED_OUT;
            continue;
        }
        return KVS_ERR_PEER_FAILED;
    }
    return KVS_OK;
}

static kvs_status_t recv_exact(int fd, uint8_t *p, size_t len, uint64_t deadline_ns)
{
    while (len > 0) {
        ssize_t n = recv(fd, p, len, MSG_DONTWAIT);
        if (n > 0) {
            p += n;
            len -= (size_t)n;
            continue;
        }
        if (n == 0)
            return KVS_ERR_PEER_FAILED;
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            return KVS_ERR_PEER_FAILED;
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        int left = ms_left(deadline_ns);
        if (left == 0 || poll(&pf, 1, left) == 0)
            return KVS_ERR_TIMED_OUT;
    }
    return KVS_OK;
}

kvs_status_t kvs__boot_recv(int fd, uint32_t max_body, uint64_t deadline_ns, uint8_t **buf_p,
                            size_t *len_p, char *why, size_t wl)
{
    uint8_t hdr[KVS_PROTO_HDR_LEN];
    kvs_status_t st = recv_exact(fd, hdr, sizeof(hdr), deadline_ns);
    if (st != KVS_OK) {
        snprintf(why, wl, "%s",
                 st == KVS_ERR_TIMED_OUT ? "no reply before the deadline"
                                         : "connection closed by the peer");
        return st;
    }
    kvs__hdr_t h;
    st = kvs__proto_decode_hdr(hdr, sizeof(hdr), max_body, &h, why, wl);
    if (st != KVS_OK)
        return st;
    uint8_t *buf = kvs__malloc(KVS_PROTO_HDR_LEN + (size_t)h.body_len);
    if (buf == NULL)
        return KVS_ERR_NO_MEMORY;
    memcpy(buf, hdr, sizeof(hdr));
    st = recv_exact(fd, buf + KVS_PROTO_HDR_LEN, h.body_len, deadline_ns);
    if (st != KVS_OK) {
        kvs__free(buf);
        snprintf(why, wl, "%s",
                 st == KVS_ERR_TIMED_OUT ? "message body not received in time"
                                         : "connection closed mid-message");
        return st;
    }
    *buf_p = buf;
    *len_p = KVS_PROTO_HDR_LEN + (size_t)h.body_len;
    return KVS_OK;
}

/* --- the server's half of the handshake ----------------------------------- */
_Static_assert(sizeof(((kvs__boot_srv_t *)0)->rx) == KVS_PROTO_HDR_LEN + KVS_PROTO_MAX_PREAUTH,
               "rx holds one pre-auth message");

void kvs__boot_proof(const uint8_t *secret, size_t secret_len, bool open, const char *role,
                     const uint8_t *nc, const uint8_t *ns, uint8_t *out)
{
    uint8_t msg[16 + 2 * KVS_PROTO_NONCE_LEN];
    size_t rl = strlen(role);
    memcpy(msg, role, rl);
    memcpy(msg + rl, nc, KVS_PROTO_NONCE_LEN);
    memcpy(msg + rl + KVS_PROTO_NONCE_LEN, ns, KVS_PROTO_NONCE_LEN);
    unsigned int n = 0;
    memset(out, 0, KVS_PROTO_MAC_LEN);
    if (!open)
        HMAC(EVP_sha256(), secret, (int)secret_len, msg, rl + 2 * KVS_PROTO_NONCE_LEN, out, &n);
}

long kvs__boot_srv_want(const kvs__boot_srv_t *s, char *why, size_t wl)
{
    if (s->rx_len < KVS_PROTO_HDR_LEN)
        return (long)(KVS_PROTO_HDR_LEN - s->rx_len);
    kvs__hdr_t h;
    if (kvs__proto_decode_hdr(s->rx, s->rx_len, KVS_PROTO_MAX_PREAUTH, &h, why, wl) != KVS_OK)
        return -1;
    return (long)(KVS_PROTO_HDR_LEN + h.body_len - s->rx_len);
}

kvs_status_t kvs__boot_srv_take(kvs__boot_srv_t *s, const uint8_t *secret, size_t secret_len,
                                bool open, char *why, size_t wl)
{
    kvs__msg_t m;
    kvs_status_t st = kvs__proto_decode(s->rx, s->rx_len, &m, why, wl);
    if (st != KVS_OK)
        return st;
    if (m.hdr.type == KVS_MSG_HELLO && s->state == KVS_BOOT_WAIT_HELLO) {
        s->layout_id = m.u.hello.layout_id;
        s->has_model = (m.hdr.flags & KVS_PROTO_FLAG_VIEW) != 0;
        s->model = m.u.hello.model;
        s->req_id = m.hdr.req_id;
        memcpy(s->nonce_c, m.u.hello.nonce, KVS_PROTO_NONCE_LEN);
        size_t ml = sizeof(KVS_BOOT_SHM_MARK) - 1;
        s->shm = m.u.hello.name_len >= ml &&
                 memcmp(m.u.hello.name + m.u.hello.name_len - ml, KVS_BOOT_SHM_MARK, ml) == 0;
        s->state = KVS_BOOT_WAIT_AUTH;
        s->rx_len = 0;
        return KVS_INPROGRESS;
    }
    if (m.hdr.type == KVS_MSG_AUTH && s->state == KVS_BOOT_WAIT_AUTH) {
        if (!open) {
            uint8_t want[KVS_PROTO_MAC_LEN];
            kvs__boot_proof(secret, secret_len, false, "kvshare-client", s->nonce_c, s->nonce_s,
                            want);
            bool ok = CRYPTO_memcmp(want, m.u.auth.mac, sizeof(want)) == 0;
            OPENSSL_cleanse(want, sizeof(want));
            if (!ok) {
                snprintf(why, wl,
                         "authentication failed: the peer does not hold this node's "
                         "KVSHARE_AUTH_TOKEN_FILE secret");
                return KVS_ERR_AUTH;
            }
        }
        if (m.u.auth.addr_len == 0) {
            snprintf(why, wl, "AUTH carries no transport address");
            return KVS_ERR_PROTOCOL;
        }
        s->req_id = m.hdr.req_id;
        s->addr = m.u.auth.addr;
        s->addr_len = m.u.auth.addr_len;
        s->state = KVS_BOOT_DONE;
        return KVS_OK;
    }
    snprintf(why, wl, "unexpected message type %u during the handshake", m.hdr.type);
    return KVS_ERR_PROTOCOL;
}
