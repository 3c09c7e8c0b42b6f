/* SPDX-License-Identifier: Apache-2.0 */
/* kvs_attack.c - the project's own adversary: hostile peers for tests/integration/adversary.
 *
 *   kvs_attack ports PID                     print every TCP port PID listens on
 *   kvs_attack garbage HOST:PORT             malformed bytes, each on its own connection
 *   kvs_attack flood HOST:PORT N             hold N silent connections until stdin closes
 *   kvs_attack client HOST:PORT ATTACK       authenticate (KVSHARE_AUTH_TOKEN_FILE), then:
 *       inject   DATA/LOOKUP/PUT from a second, never-authenticated UCX endpoint (zero,
 *                random and stolen sessions) and DATA with made-up request ids
 *       dup      a PUT with one piece sent twice: refused, nothing published
 *       missing  a PUT with one piece never sent: expires, nothing published
 *       hold     an honest PUT, then a lease on it never released (until stdin closes)
 *       amplify  FETCHes asking for empty or millions of pieces
 *       stall    a 2 MiB LOOKUP whose rendezvous this process never completes
 *       badsession  requests carrying another (random) session on our endpoint
 *       reads    READs of 65536 entries that are not there (random, the largest index,
 *                serial all ones), then a LOOKUP that must still be answered
 *   kvs_attack server --listen H:P           an authenticated but hostile holder: answers
 *                                            LOOKUPs with no hits and sprays DATA at every
 *                                            client's worker (its own, random and zero
 *                                            sessions; every request id) until stdin closes
 * Each prints one "result ..." line; the shell test checks the victims. */
#include "boot_int.h"
#include "proto_int.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <ucp/api/ucp.h>
#include <unistd.h>

#define AM_ID 0x4bu

static void die(const char *what)
{
    fprintf(stderr, "kvs_attack: %s\n", what);
    exit(2);
}

static uint64_t deadline_in(unsigned ms)
{
    return kvs__now_ns() + (uint64_t)ms * 1000000u;
}

/* --- ports --------------------------------------------------------------- */
static int ports(const char *pid)
{
    char path[256];
    snprintf(path, sizeof(path), "/proc/%s/fd", pid);
    DIR *d = opendir(path);
    if (d == NULL)
        die("cannot open /proc/PID/fd");
    unsigned long inodes[4096];
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL && n < 4096) {
        char link[512], target[256];
        snprintf(link, sizeof(link), "%s/%s", path, e->d_name);
        ssize_t k = readlink(link, target, sizeof(target) - 1);
        if (k <= 0)
            continue;
        target[k] = '\0';
        unsigned long ino;
        if (sscanf(target, "socket:[%lu]", &ino) == 1)
            inodes[n++] = ino;
    }
    closedir(d);
    const char *tables[2] = {"/proc/net/tcp", "/proc/net/tcp6"};
    int found = 0;
    for (int t = 0; t < 2; t++) {
        FILE *f = fopen(tables[t], "r");
        if (f == NULL)
            continue;
        char line[512];
        if (fgets(line, sizeof(line), f) == NULL) {
            fclose(f);
            continue;
        }
        while (fgets(line, sizeof(line), f) != NULL) {
            char local[128];
            unsigned st;
            unsigned long ino;
            if (sscanf(line, "%*d: %127s %*s %x %*s %*s %*s %*d %*d %lu", local, &st, &ino) != 3 ||
                st != 0x0A) /* LISTEN */
                continue;
            bool ours = false;
            for (size_t i = 0; i < n && !ours; i++)
                ours = inodes[i] == ino;
            if (!ours)
                continue;
            char *colon = strchr(local, ':');
            unsigned port = (unsigned)strtoul(colon + 1, NULL, 16);
            char host[64] = "127.0.0.1";
            if (t == 0) {
                unsigned a = (unsigned)strtoul(local, NULL, 16);
                snprintf(host, sizeof(host), "%u.%u.%u.%u", a & 255, (a >> 8) & 255,
                         (a >> 16) & 255, a >> 24);
                if (a == 0)
                    snprintf(host, sizeof(host), "127.0.0.1");
            } else {
                snprintf(host, sizeof(host), "[::1]");
            }
            printf("%s:%u\n", host, port);
            found++;
        }
        fclose(f);
    }
    return found > 0 ? 0 : 1;
}

/* --- garbage and flood ------------------------------------------------------ */
static int garbage(const char *addr)
{
    uint8_t buf[100000];
    for (size_t i = 0; i < sizeof(buf); i++)
        buf[i] = (uint8_t)(i * 2654435761u >> 13);
    uint8_t hdr[KVS_PROTO_HDR_LEN];
    kvs__buf_t b = {.data = hdr, .cap = sizeof(hdr)};
    kvs__proto_begin(&b, KVS_MSG_HELLO, 0, 1, NULL);
    uint32_t huge = 64u << 20;
    memcpy(hdr + 12, &huge, 4); /* a valid header claiming 64 MiB */
    struct {
        const uint8_t *p;
        size_t n;
        int hold_ms;
    } shots[] = {
        {(const uint8_t *)"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", 16,
         0},
        {buf, sizeof(buf), 0},
        {hdr, sizeof(hdr), 0},
        {hdr, 20, 300}, /* half a header, then silence */
        {(const uint8_t *)"GET / HTTP/1.0\r\n\r\n", 18, 0},
    };
    int sent = 0;
    for (size_t i = 0; i < sizeof(shots) / sizeof(shots[0]); i++) {
        kvs_status_t st;
        int fd = kvs__boot_connect(addr, deadline_in(2000), &st);
        if (fd < 0)
            continue;
        kvs__boot_send(fd, shots[i].p, shots[i].n, deadline_in(1000));
        if (shots[i].hold_ms > 0)
            poll(NULL, 0, shots[i].hold_ms);
        close(fd);
        sent++;
    }
    printf("result garbage sent=%d\n", sent);
    return 0;
}

static int flood(const char *addr, int n)
{
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    int *fds = calloc((size_t)n, sizeof(int));
    int held = 0;
    for (int i = 0; i < n; i++) {
        kvs_status_t st;
        fds[i] = kvs__boot_connect(addr, deadline_in(3000), &st);
        held += fds[i] >= 0;
    }
    printf("holding %d\n", held);
    fflush(stdout);
    char c;
    while (read(0, &c, 1) > 0) {
    }
    /* How many did the node close on us meanwhile (it drops the oldest
     * unauthenticated ones, and all of them at their handshake deadline)? */
    int closed = 0;
    for (int i = 0; i < n; i++) {
        if (fds[i] < 0)
            continue;
        char b;
        ssize_t r = recv(fds[i], &b, 1, MSG_DONTWAIT);
        closed += r == 0 || (r < 0 && errno != EAGAIN);
        close(fds[i]);
    }
    printf("result flood held=%d closed_by_node=%d\n", held, closed);
    free(fds);
    return 0;
}

/* --- UCX ------------------------------------------------------------------- */
typedef struct inmsg {
    uint8_t *buf;
    size_t len;
    struct inmsg *next;
} inmsg_t;

typedef struct ux {
    ucp_context_h ctx;
    ucp_worker_h w;
    ucp_address_t *addr;
    size_t addr_len;
    inmsg_t *inbox;
    bool progress_rndv; /* false: leave rendezvous data un-received */
} ux_t;

static ucs_status_t am_cb(void *arg, const void *header, size_t hlen, void *data, size_t len,
                          const ucp_am_recv_param_t *param)
{
    ux_t *u = arg;
    if (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV)
        return UCS_OK; /* we never need big replies */
    inmsg_t *m = calloc(1, sizeof(*m));
    m->buf = malloc(hlen + len);
    memcpy(m->buf, header, hlen);
    memcpy(m->buf + hlen, data, len);
    m->len = hlen + len;
    m->next = u->inbox;
    u->inbox = m;
    return UCS_OK;
}

static void ux_init(ux_t *u)
{
    memset(u, 0, sizeof(*u));
    ucp_params_t up = {.field_mask = UCP_PARAM_FIELD_FEATURES,
                       .features = UCP_FEATURE_AM | UCP_FEATURE_RMA};
    if (ucp_init(&up, NULL, &u->ctx) != UCS_OK)
        die("ucp_init");
    ucp_worker_params_t wp = {.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE,
                              .thread_mode = UCS_THREAD_MODE_SINGLE};
    if (ucp_worker_create(u->ctx, &wp, &u->w) != UCS_OK)
        die("ucp_worker_create");
    ucp_worker_get_address(u->w, &u->addr, &u->addr_len);
    ucp_am_handler_param_t ap = {.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID |
                                               UCP_AM_HANDLER_PARAM_FIELD_CB |
                                               UCP_AM_HANDLER_PARAM_FIELD_ARG,
                                 .id = AM_ID,
                                 .cb = am_cb,
                                 .arg = u};
    ucp_worker_set_am_recv_handler(u->w, &ap);
}

static ucp_ep_h ux_connect(ux_t *u, const void *addr)
{
    ucp_ep_params_t ep = {.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS |
                                        UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE,
                          .address = addr,
                          .err_mode = UCP_ERR_HANDLING_MODE_PEER};
    ucp_ep_h e = NULL;
    if (ucp_ep_create(u->w, &ep, &e) != UCS_OK)
        die("ucp_ep_create");
    return e;
}

static void ux_wait(ux_t *u, ucs_status_ptr_t r, unsigned ms)
{
    uint64_t dl = deadline_in(ms);
    while (UCS_PTR_IS_PTR(r) && ucp_request_check_status(r) == UCS_INPROGRESS && kvs__now_ns() < dl)
        ucp_worker_progress(u->w);
    if (UCS_PTR_IS_PTR(r))
        ucp_request_free(r);
}

/* Sends a header (+ body) as one AM and waits for it to leave. */
static void ux_send(ux_t *u, ucp_ep_h ep, const uint8_t *hdr, size_t hlen, const void *body,
                    size_t len)
{
    ucp_request_param_t p = {.op_attr_mask = 0};
    ux_wait(u, ucp_am_send_nbx(ep, AM_ID, hdr, hlen, body, len, &p), 2000);
}

static void ux_send_msg(ux_t *u, ucp_ep_h ep, kvs__buf_t *b)
{
    ux_send(u, ep, b->data, KVS_PROTO_HDR_LEN, b->data + KVS_PROTO_HDR_LEN,
            b->len - KVS_PROTO_HDR_LEN);
}

/* Waits for a reply of @type (or ERROR) to request @rid; returns its buffer. */
static inmsg_t *ux_reply(ux_t *u, uint64_t rid, unsigned ms, kvs__msg_t *m)
{
    uint64_t dl = deadline_in(ms);
    while (kvs__now_ns() < dl) {
        ucp_worker_progress(u->w);
        for (inmsg_t **mp = &u->inbox; *mp != NULL; mp = &(*mp)->next) {
            if (kvs__proto_decode((*mp)->buf, (*mp)->len, m, NULL, 0) == KVS_OK &&
                m->hdr.req_id == rid) {
                inmsg_t *r = *mp;
                *mp = r->next;
                return r;
            }
        }
    }
    return NULL;
}

static void ux_fini(ux_t *u)
{
    while (u->inbox != NULL) {
        inmsg_t *m = u->inbox;
        u->inbox = m->next;
        free(m->buf);
        free(m);
    }
    ucp_worker_release_address(u->w, u->addr);
    ucp_worker_destroy(u->w);
    ucp_cleanup(u->ctx);
}

/* --- the bootstrap, from either side ----------------------------------------- */
static uint8_t secret[4096];
static size_t secret_len;

static void load_secret(void)
{
    const char *path = getenv("KVSHARE_AUTH_TOKEN_FILE");
    if (path == NULL || path[0] == '\0')
        die("KVSHARE_AUTH_TOKEN_FILE is not set");
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        die("cannot open the token file");
    secret_len = fread(secret, 1, sizeof(secret), f);
    fclose(f);
    if (secret_len > 0 && secret[secret_len - 1] == '\n')
        secret_len--;
}

static void proof(const char *role, const uint8_t *nc, const uint8_t *ns, uint8_t *out)
{
    uint8_t msg[16 + 64];
    size_t rl = strlen(role);
    memcpy(msg, role, rl);
    memcpy(msg + rl, nc, 32);
    memcpy(msg + rl + 32, ns, 32);
    unsigned n = 0;
    HMAC(EVP_sha256(), secret, (int)secret_len, msg, rl + 64, out, &n);
}

typedef struct session {
    int fd;
    uint8_t id[KVS_PROTO_SESSION_LEN];
    uint8_t *ack;
    size_t ack_len;
    kvs__msg_t ackm;
} session_t;

/* The client's half, with our own worker address. */
static void boot_as_client(const char *addr, uint64_t layout, ux_t *u, session_t *s)
{
    kvs_status_t st;
    s->fd = kvs__boot_connect(addr, deadline_in(3000), &st);
    if (s->fd < 0)
        die("connect");
    uint8_t nc[32], ns[32], mac[32];
    RAND_bytes(nc, 32);
    kvs__buf_t b;
    kvs__buf_init(&b);
    kvs__enc_hello(&b, 1, layout, nc, "attacker");
    kvs__boot_send(s->fd, b.data, b.len, deadline_in(2000));
    uint8_t *in;
    size_t in_len;
    kvs__msg_t m;
    char why[128];
    if (kvs__boot_recv(s->fd, 8192, deadline_in(2000), &in, &in_len, why, sizeof(why)) != KVS_OK ||
        kvs__proto_decode(in, in_len, &m, why, sizeof(why)) != KVS_OK ||
        m.hdr.type != KVS_MSG_CHALLENGE) {
        fprintf(stderr, "kvs_attack: no CHALLENGE: %s\n", why);
        exit(2);
    }
    memcpy(ns, m.u.challenge.nonce, 32);
    kvs__free(in);
    proof("kvshare-client", nc, ns, mac);
    kvs__enc_auth(&b, 2, mac, u->addr, u->addr_len);
    kvs__boot_send(s->fd, b.data, b.len, deadline_in(2000));
    kvs__buf_free(&b);
    if (kvs__boot_recv(s->fd, 16u << 20, deadline_in(2000), &s->ack, &s->ack_len, why,
                       sizeof(why)) != KVS_OK ||
        kvs__proto_decode(s->ack, s->ack_len, &s->ackm, why, sizeof(why)) != KVS_OK ||
        s->ackm.hdr.type != KVS_MSG_HELLO_ACK) {
        fprintf(stderr, "kvs_attack: no HELLO_ACK (%s)\n", why);
        exit(2);
    }
    memcpy(s->id, s->ackm.hdr.session, sizeof(s->id));
}

/* --- client attacks ------------------------------------------------------------ */
static uint64_t layout_of(const char *model, uint32_t layers)
{
    kvs_layout_t l = {.model_id = model,
                      .dtype = KVS_DTYPE_BF16,
                      .block_tokens = 16,
                      .num_layers = layers,
                      .num_kv_heads = 8,
                      .head_dim = 128,
                      .tp_size = 1};
    uint64_t id = 0;
    kvs_layout_id(&l, &id);
    return id;
}

static void random_keys(kvs_key_t *k, size_t n)
{
    RAND_bytes((unsigned char *)k, (int)(n * sizeof(*k)));
}

/* A PUT of 4 blocks of 2 x 4096 bytes; @mode 0: one piece twice; 1: one
 * piece never. Then a LOOKUP of the same keys must find nothing. @mode 2:
 * an honest put, then a LOOKUP that leases the blocks for as long as the
 * node allows, never released: the connection stays until stdin closes. */
static int put_attack(ux_t *u, ucp_ep_h ep, session_t *s, uint64_t layout, int mode)
{
    kvs_key_t keys[4];
    random_keys(keys, 4);
    uint32_t chunks[2] = {4096, 4096};
    kvs__buf_t b;
    kvs__buf_init(&b);
    kvs__enc_put(&b, 10, s->id, layout, chunks, 2, keys, 4);
    ux_send_msg(u, ep, &b);
    kvs__msg_t m;
    inmsg_t *r = ux_reply(u, 10, 3000, &m);
    if (r == NULL || m.hdr.type != KVS_MSG_PUT_ACK) {
        printf("result put no PUT_ACK (type %u)\n", r != NULL ? m.hdr.type : 0);
        return 1;
    }
    uint32_t want = m.u.put_ack.count;
    static uint8_t block[4096];
    memset(block, 0xEE, sizeof(block));
    for (uint32_t k = 0; k < want; k++) {
        for (uint32_t c = 0; c < 2; c++) {
            if (mode == 1 && k == want - 1 && c == 1)
                continue; /* never sent */
            uint8_t hdr[KVS_PROTO_DATA_LEN];
            kvs__enc_data(hdr, 10, 0, s->id, k, c * 4096);
            ux_send(u, ep, hdr, sizeof(hdr), block, sizeof(block));
            if (mode == 0 && k == 0 && c == 0)
                ux_send(u, ep, hdr, sizeof(hdr), block, sizeof(block)); /* twice */
        }
    }
    inmsg_t *done = ux_reply(u, 10, 15000, &m);
    const char *outcome = done == NULL                     ? "no-answer"
                          : m.hdr.type == KVS_MSG_PUT_DONE ? "stored"
                          : m.hdr.type == KVS_MSG_ERROR    ? "refused"
                                                           : "other";
    if (mode == 2) {
        kvs__enc_lookup(&b, 11, s->id, layout, 600000, keys, 4);
        ux_send_msg(u, ep, &b);
        kvs__buf_free(&b);
        inmsg_t *lr = ux_reply(u, 11, 3000, &m);
        int hits =
            lr != NULL && m.hdr.type == KVS_MSG_LOOKUP_REPLY ? (int)m.u.lookup_reply.hits : -1;
        printf("holding leases=%d outcome=%s\n", hits, outcome);
        char c;
        while (read(0, &c, 1) > 0) {
        }
        return hits == 4 ? 0 : 1;
    }
    /* Whatever it said, the keys must not be there. */
    kvs__enc_lookup(&b, 11, s->id, layout, 1000, keys, 4);
    ux_send_msg(u, ep, &b);
    kvs__buf_free(&b);
    inmsg_t *lr = ux_reply(u, 11, 3000, &m);
    int hits = lr != NULL && m.hdr.type == KVS_MSG_LOOKUP_REPLY ? (int)m.u.lookup_reply.hits : -1;
    printf("result put-%s offered=%u outcome=%s hits_after=%d\n", mode == 0 ? "dup" : "missing",
           want, outcome, hits);
    return hits == 0 ? 0 : 1;
}

static int client(const char *addr, const char *attack, const char *model, uint32_t layers)
{
    load_secret();
    ux_t u;
    ux_init(&u);
    uint64_t layout = layout_of(model, layers);
    session_t s;
    boot_as_client(addr, layout, &u, &s);
    ucp_ep_h ep = ux_connect(&u, s.ackm.u.hello_ack.addr);
    int rc = 0;
    kvs__buf_t b;
    kvs__buf_init(&b);
    if (strcmp(attack, "inject") == 0) {
        /* A second worker that never authenticated, straight at the node's
         * worker address: zero, random and stolen sessions. */
        ux_t v;
        ux_init(&v);
        ucp_ep_h vep = ux_connect(&v, s.ackm.u.hello_ack.addr);
        uint8_t sessions[3][KVS_PROTO_SESSION_LEN] = {{0}};
        RAND_bytes(sessions[1], KVS_PROTO_SESSION_LEN);
        memcpy(sessions[2], s.id, KVS_PROTO_SESSION_LEN);
        static uint8_t junk[65536];
        memset(junk, 0xEE, sizeof(junk));
        kvs_key_t keys[8];
        random_keys(keys, 8);
        int sent = 0;
        for (int k = 0; k < 2; k++) { /* zero and random; stolen is documented */
            for (uint64_t rid = 0; rid < 64; rid++) {
                uint8_t hdr[KVS_PROTO_DATA_LEN];
                kvs__enc_data(hdr, rid, (uint32_t)(rid & 1) * KVS_PROTO_FLAG_FROM_SERVER,
                              sessions[k], (uint32_t)rid % 4, 0);
                ux_send(&v, vep, hdr, sizeof(hdr), junk, rid % 2 ? sizeof(junk) : 4096);
                kvs__enc_lookup(&b, rid, sessions[k], layout, 1000, keys, 8);
                ux_send_msg(&v, vep, &b);
                sent += 2;
            }
        }
        /* From our authenticated endpoint: DATA for requests we never made. */
        for (uint64_t rid = 1; rid < 64; rid++) {
            uint8_t hdr[KVS_PROTO_DATA_LEN];
            kvs__enc_data(hdr, rid, 0, s.id, 0, 0);
            ux_send(&u, ep, hdr, sizeof(hdr), junk, 4096);
            sent++;
        }
        printf("result inject sent=%d\n", sent);
        ux_fini(&v);
    } else if (strcmp(attack, "badsession") == 0) {
        uint8_t other[KVS_PROTO_SESSION_LEN];
        RAND_bytes(other, sizeof(other));
        kvs_key_t keys[4];
        random_keys(keys, 4);
        kvs__enc_lookup(&b, 5, other, layout, 1000, keys, 4);
        ux_send_msg(&u, ep, &b);
        kvs__msg_t m;
        inmsg_t *r = ux_reply(&u, 5, 1500, &m);
        printf("result badsession answered=%d\n", r != NULL);
        rc = r != NULL; /* nothing may answer a session that is not ours */
    } else if (strcmp(attack, "reads") == 0) {
        /* READs (what a same-host reader read through the holder's index)
         * naming entries that are not there: random ones, the largest
         * index, a serial of all ones, as many as a message holds. */
        uint32_t n = KVS_PROTO_MAX_KEYS;
        uint32_t *idx = malloc(n * sizeof(*idx));
        uint64_t *ser = malloc(n * sizeof(*ser));
        if (idx == NULL || ser == NULL)
            die("out of memory");
        RAND_bytes((unsigned char *)idx, (int)(n * sizeof(*idx)));
        RAND_bytes((unsigned char *)ser, (int)(n * sizeof(*ser)));
        idx[0] = UINT32_MAX;
        ser[1] = UINT64_MAX;
        idx[2] = 0;
        for (uint32_t k = 0; k < 4; k++) {
            kvs__enc_read(&b, 20 + k, s.id, k, idx, ser, n);
            ux_send_msg(&u, ep, &b);
        }
        free(idx);
        free(ser);
        /* The connection still serves: a LOOKUP after them is answered. */
        kvs_key_t keys[4];
        random_keys(keys, 4);
        kvs__enc_lookup(&b, 30, s.id, layout, 1000, keys, 4);
        ux_send_msg(&u, ep, &b);
        kvs__msg_t m;
        inmsg_t *r = ux_reply(&u, 30, 5000, &m);
        printf("result reads answered=%d\n", r != NULL);
        rc = r == NULL;
    } else if (strcmp(attack, "dup") == 0) {
        rc = put_attack(&u, ep, &s, layout, 0);
    } else if (strcmp(attack, "missing") == 0) {
        rc = put_attack(&u, ep, &s, layout, 1);
    } else if (strcmp(attack, "hold") == 0) {
        rc = put_attack(&u, ep, &s, layout, 2);
    } else if (strcmp(attack, "amplify") == 0) {
        uint32_t zero[1024] = {0};
        kvs__enc_fetch(&b, 7, s.id, 1, 0, 65535, zero, 1024);
        uint64_t t0 = kvs__now_ns();
        ux_send_msg(&u, ep, &b);
        /* The node drops us: our bootstrap socket closes. */
        struct pollfd pf = {.fd = s.fd, .events = POLLIN};
        char c;
        int dropped = 0;
        while (kvs__now_ns() - t0 < 5000000000ull && !dropped) {
            ucp_worker_progress(u.w);
            if (poll(&pf, 1, 10) > 0 && recv(s.fd, &c, 1, MSG_DONTWAIT) <= 0)
                dropped = 1;
        }
        printf("result amplify dropped=%d after_ms=%llu\n", dropped,
               (unsigned long long)((kvs__now_ns() - t0) / 1000000u));
        rc = dropped ? 0 : 1;
    } else if (strcmp(attack, "stall") == 0) {
        /* A 2 MiB LOOKUP goes by rendezvous; we never progress again, so the
         * node's receive of it can never complete. */
        /* First finish wiring the endpoint up (a harmless RELEASE), so the
         * next send goes out at once. */
        kvs__enc_release(&b, 8, s.id, 12345, 0);
        ux_send_msg(&u, ep, &b);
        size_t n = 65536;
        kvs_key_t *keys = malloc(n * sizeof(*keys));
        random_keys(keys, n);
        kvs__enc_lookup(&b, 9, s.id, layout, 1000, keys, n);
        ucp_request_param_t p = {.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS,
                                 .flags = UCP_AM_SEND_FLAG_RNDV};
        ucs_status_ptr_t r =
            ucp_am_send_nbx(ep, AM_ID, b.data, KVS_PROTO_HDR_LEN, b.data + KVS_PROTO_HDR_LEN,
                            b.len - KVS_PROTO_HDR_LEN, &p);
        /* The call itself sends the rendezvous request; the data would only
         * move when we progress, which we never do again. */
        printf("stalling\n");
        fflush(stdout);
        char c;
        while (read(0, &c, 1) > 0) {
        }
        (void)r; /* deliberately never completed */
        printf("result stall released\n");
        free(keys);
        _exit(0); /* leave as a crashed peer would */
    } else {
        die("unknown attack");
    }
    kvs__buf_free(&b);
    close(s.fd);
    kvs__free(s.ack);
    ux_fini(&u);
    return rc;
}

/* --- a hostile holder --------------------------------------------------------- */
static int server(const char *listen_addr)
{
    load_secret();
    ux_t u;
    ux_init(&u);
    char bound[300], err[256];
    int lfd = kvs__boot_listen(listen_addr, bound, sizeof(bound), err, sizeof(err));
    if (lfd < 0)
        die(err);
    printf("ready %s\n", bound);
    fflush(stdout);
    ucp_ep_h victims[64];
    uint8_t sess[64][KVS_PROTO_SESSION_LEN];
    int nv = 0;
    uint64_t sprayed = 0;
    static uint8_t junk[65536];
    memset(junk, 0xEE, sizeof(junk));
    fcntl(0, F_SETFL, O_NONBLOCK);
    for (;;) {
        char c;
        ssize_t r = read(0, &c, 1);
        if (r == 0)
            break;
        char peer[256];
        int fd = kvs__boot_accept(lfd, peer, sizeof(peer));
        if (fd >= 0 && nv < 64) {
            uint8_t *in;
            size_t in_len;
            kvs__msg_t m;
            char why[128];
            if (kvs__boot_recv(fd, 8192, deadline_in(2000), &in, &in_len, why, sizeof(why)) ==
                    KVS_OK &&
                kvs__proto_decode(in, in_len, &m, why, sizeof(why)) == KVS_OK &&
                m.hdr.type == KVS_MSG_HELLO) {
                uint8_t nc[32], ns[32], mac[32];
                memcpy(nc, m.u.hello.nonce, 32);
                RAND_bytes(ns, 32);
                proof("kvshare-server", nc, ns, mac);
                kvs__buf_t b;
                kvs__buf_init(&b);
                kvs__enc_challenge(&b, m.hdr.req_id, ns, mac, true);
                kvs__boot_send(fd, b.data, b.len, deadline_in(2000));
                kvs__free(in);
                if (kvs__boot_recv(fd, 8192, deadline_in(2000), &in, &in_len, why, sizeof(why)) ==
                        KVS_OK &&
                    kvs__proto_decode(in, in_len, &m, why, sizeof(why)) == KVS_OK &&
                    m.hdr.type == KVS_MSG_AUTH) {
                    RAND_bytes(sess[nv], KVS_PROTO_SESSION_LEN);
                    victims[nv] = ux_connect(&u, m.u.auth.addr);
                    kvs__proto_begin(&b, KVS_MSG_HELLO_ACK,
                                     KVS_PROTO_FLAG_FROM_SERVER | KVS_PROTO_FLAG_REGIONS,
                                     m.hdr.req_id, sess[nv]);
                    kvs__buf_u32(&b, (uint32_t)u.addr_len);
                    kvs__buf_put(&b, u.addr, u.addr_len);
                    kvs__buf_u32(&b, 0);
                    kvs__proto_finish(&b);
                    kvs__boot_send(fd, b.data, b.len, deadline_in(2000));
                    nv++;
                }
                kvs__buf_free(&b);
            }
            kvs__free(in);
            /* fd stays open: the victim treats its closing as our death */
        }
        ucp_worker_progress(u.w);
        /* Answer LOOKUPs with no hits, so the victim's lookup returns. */
        while (u.inbox != NULL) {
            inmsg_t *m = u.inbox;
            u.inbox = m->next;
            kvs__msg_t d;
            if (kvs__proto_decode(m->buf, m->len, &d, NULL, 0) == KVS_OK &&
                d.hdr.type == KVS_MSG_LOOKUP) {
                for (int i = 0; i < nv; i++) {
                    kvs__buf_t b;
                    kvs__buf_init(&b);
                    kvs__proto_begin(&b, KVS_MSG_LOOKUP_REPLY, KVS_PROTO_FLAG_FROM_SERVER,
                                     d.hdr.req_id, d.hdr.session);
                    kvs__buf_u32(&b, 0);
                    kvs__buf_u64(&b, 1);
                    kvs__buf_u32(&b, 0);
                    kvs__proto_finish(&b);
                    if (memcmp(sess[i], d.hdr.session, KVS_PROTO_SESSION_LEN) == 0)
                        ux_send_msg(&u, victims[i], &b);
                    kvs__buf_free(&b);
                }
            }
            free(m->buf);
            free(m);
        }
        /* Spray: our own session, a random one and zeros; every request id
         * a victim is likely to be using on its other connections. */
        for (int i = 0; i < nv; i++) {
            for (uint64_t rid = 1; rid <= 16; rid++) {
                uint8_t s3[3][KVS_PROTO_SESSION_LEN] = {{0}};
                memcpy(s3[0], sess[i], KVS_PROTO_SESSION_LEN);
                RAND_bytes(s3[1], KVS_PROTO_SESSION_LEN);
                for (int k = 0; k < 3; k++) {
                    uint8_t hdr[KVS_PROTO_DATA_LEN];
                    kvs__enc_data(hdr, rid + (sprayed % 64), KVS_PROTO_FLAG_FROM_SERVER, s3[k],
                                  (uint32_t)(sprayed % 8), 0);
                    ucp_request_param_t p = {.op_attr_mask = 0};
                    ucs_status_ptr_t sr =
                        ucp_am_send_nbx(victims[i], AM_ID, hdr, sizeof(hdr), junk, 4096, &p);
                    ux_wait(&u, sr, 100);
                    sprayed++;
                }
            }
        }
        if (nv == 0)
            poll(NULL, 0, 5);
    }
    printf("result server victims=%d sprayed=%llu\n", nv, (unsigned long long)sprayed);
    return 0;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc >= 3 && strcmp(argv[1], "ports") == 0)
        return ports(argv[2]);
    if (argc >= 3 && strcmp(argv[1], "garbage") == 0)
        return garbage(argv[2]);
    if (argc >= 4 && strcmp(argv[1], "flood") == 0)
        return flood(argv[2], atoi(argv[3]));
    if (argc >= 4 && strcmp(argv[1], "client") == 0) {
        const char *model = getenv("ATTACK_MODEL") ? getenv("ATTACK_MODEL") : "kvs-peer-model";
        uint32_t layers = getenv("ATTACK_LAYERS") ? (uint32_t)atoi(getenv("ATTACK_LAYERS")) : 2;
        return client(argv[2], argv[3], model, layers);
    }
    if (argc >= 4 && strcmp(argv[1], "server") == 0 && strcmp(argv[2], "--listen") == 0)
        return server(argv[3]);
    fprintf(stderr, "usage: kvs_attack ports PID | garbage H:P | flood H:P N | "
                    "client H:P inject|dup|missing|hold|amplify|stall|badsession|reads | "
                    "server --listen H:P\n");
    return 2;
}
