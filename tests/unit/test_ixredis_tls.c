/* SPDX-License-Identifier: Apache-2.0 */
/* test_ixredis_tls.c - `kvshare index --redis rediss://` against a real redis-server with TLS:
 * certificates made here with the openssl CLI (a CA, a server certificate for 127.0.0.1 and
 * localhost, a client certificate, and a second CA's), all in a temp dir removed at the end.
 * Skips without redis-server (built with TLS) or openssl. */
#include "ixredis_int.h"
#include "ixtls_int.h"
#include "redis_test.h"
#include "util_int.h"

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static char dir[64];
static pid_t server = -1;
static int tls_port, plain_port;

static const char certs_sh[] =
    "set -e; cd \"$1\"\n"
    "k() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out $1.key "
    "2>/dev/null; }\n"
    "ca() { k $1; openssl req -x509 -new -key $1.key -out $1.crt -days 2 -subj /CN=$1; }\n"
    "leaf() { k $1; openssl req -new -key $1.key -out $1.csr -subj /CN=$1;\n"
    "  printf '%s\\n' \"$3\" > $1.ext;\n"
    "  openssl x509 -req -in $1.csr -CA $2.crt -CAkey $2.key -CAcreateserial -days 2 "
    "-extfile $1.ext -out $1.crt 2>/dev/null; }\n"
    "ca ca; ca other\n"
    "leaf server ca 'subjectAltName=IP:127.0.0.1,DNS:localhost'\n"
    "leaf client ca 'extendedKeyUsage=clientAuth'\n"
    "leaf stranger other 'extendedKeyUsage=clientAuth'\n";

/* dir/name, in a ring of buffers large enough for every path one test holds at once. */
static char *path(const char *name)
{
    static char buf[64][128];
    static int i;
    cr_assert_lt(i, 64);
    char *p = buf[i++];
    snprintf(p, 128, "%s/%s", dir, name);
    return p;
}

#define free_port redis_test_free_port
#define now_ms    redis_test_now_ms

/* Starts redis-server with TLS on tls_port (and plain TCP on plain_port), extra args
 * appended; waits for its "Ready to accept connections" (10 s deadline). */
static void start_server(const char *const *extra)
{
    tls_port = free_port(), plain_port = free_port();
    char tp[8], pp[8];
    snprintf(tp, sizeof(tp), "%d", tls_port);
    snprintf(pp, sizeof(pp), "%d", plain_port);
    char *argv[40] = {"/usr/bin/redis-server",
                      "--port",
                      pp,
                      "--tls-port",
                      tp,
                      "--bind",
                      "127.0.0.1",
                      "127.0.0.2",
                      "--tls-cert-file",
                      path("server.crt"),
                      "--tls-key-file",
                      path("server.key"),
                      "--tls-ca-cert-file",
                      path("ca.crt"),
                      "--tls-auth-clients",
                      "no",
                      "--save",
                      "",
                      "--appendonly",
                      "no",
                      "--dir",
                      dir};
    size_t n = 22;
    for (size_t i = 0; extra != NULL && extra[i] != NULL; i++)
        argv[n++] = (char *)extra[i];
    argv[n] = NULL;
    server = redis_test_start(argv);
}

static void setup(void)
{
    if (access("/usr/bin/redis-server", X_OK) != 0 || access("/usr/bin/openssl", X_OK) != 0)
        cr_skip_test("redis-server or openssl not installed");
    char help[64];
    snprintf(help, sizeof(help), "%s", "/tmp/kvs-ixtls-XXXXXX");
    cr_assert_not_null(mkdtemp(help));
    snprintf(dir, sizeof(dir), "%s", help);
    char *argv[] = {"/bin/sh", "-c", (char *)certs_sh, "certs", dir, NULL};
    cr_assert_eq(redis_test_run_wait(argv), 0, "openssl could not make the certificates");
    unsetenv("KVSHARE_REDIS_CA_FILE");
    unsetenv("KVSHARE_REDIS_CERT_FILE");
    unsetenv("KVSHARE_REDIS_KEY_FILE");
    unsetenv("KVSHARE_REDIS_PASSWORD");
    signal(SIGPIPE, SIG_IGN); /* as kvshare-index: a dropped connection is an error, not death */
}

static void teardown(void)
{
    if (server > 0) {
        kill(server, SIGCONT);
        kill(server, SIGTERM);
        waitpid(server, NULL, 0);
        server = -1;
    }
    if (dir[0] != '\0') {
        char *argv[] = {"/bin/rm", "-rf", dir, NULL};
        redis_test_run_wait(argv);
        dir[0] = '\0';
    }
}

/* The writer of r (one per kvs__ixr_t here, made on first use, freed by close_url). */
static struct {
    kvs__ixr_t *r;
    kvs__ixr_w_t *w;
} writers[8];

static kvs__ixr_w_t *wr(kvs__ixr_t *r)
{
    for (size_t i = 0; i < 8; i++)
        if (writers[i].r == r)
            return writers[i].w;
    for (size_t i = 0; i < 8; i++)
        if (writers[i].r == NULL) {
            writers[i].r = r;
            writers[i].w = kvs__ixr_writer_create(r);
            cr_assert_not_null(writers[i].w);
            return writers[i].w;
        }
    cr_assert_fail("too many writers");
    return NULL;
}

static void close_url(kvs__ixr_t *r)
{
    for (size_t i = 0; i < 8; i++)
        if (writers[i].r == r) {
            kvs__ixr_writer_destroy(writers[i].w);
            writers[i].r = NULL;
            writers[i].w = NULL;
        }
    kvs__ixr_destroy(r);
}

static kvs__ixr_t *open_url(const char *scheme, const char *userinfo, const char *host, int port,
                            const kvs__ixr_tls_t *tls, const char *id)
{
    char url[256], why[600];
    snprintf(url, sizeof(url), "%s://%s%s:%d", scheme, userinfo, host, port);
    kvs__ixr_t *r = kvs__ixr_create(url, id, 5000, tls, false, why, sizeof(why));
    cr_assert_not_null(r, "%s: %s", url, why);
    return r;
}

/* stderr into a file while fn-like code runs: what kvshare-index would log. */
static int saved_stderr = -1;
static void capture_begin(void)
{
    fflush(stderr);
    saved_stderr = dup(2);
    int fd = open(path("stderr.txt"), O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0600);
    cr_assert(fd >= 0);
    dup2(fd, 2);
    close(fd);
}

static const char *capture_end(void)
{
    static char buf[4096];
    fflush(stderr);
    dup2(saved_stderr, 2);
    close(saved_stderr);
    FILE *f = fopen(path("stderr.txt"), "r");
    cr_assert_not_null(f);
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

static void copy_count(void *arg, const char *model, const char *pod, uint64_t hash,
                       const char *medium)
{
    (void)model, (void)pod, (void)medium;
    unsigned long long *s = arg;
    s[0]++;
    s[1] += hash;
}

static void pod_count(void *arg, const char *model, const char *pod, bool degraded)
{
    (void)arg, (void)model, (void)pod, (void)degraded;
}

#define NB 3000 /* blocks per pod: writes and scores larger than the relay's 16 KiB buffer */

TestSuite(ixredis_tls, .init = setup, .fini = teardown);

/* The same writes and scores over TLS and plain TCP, on one server, agree. */
Test(ixredis_tls, round_trips_equal_plain_tcp)
{
    start_server(NULL);
    kvs__ixr_tls_t tls = {.ca_file = path("ca.crt")};
    kvs__ixr_t *t = open_url("rediss", "", "127.0.0.1", tls_port, &tls, "tls");
    kvs__ixr_t *p = open_url("redis", "", "127.0.0.1", plain_port, NULL, "plain");
    static uint64_t h[NB];
    for (size_t i = 0; i < NB; i++)
        h[i] = 0x1000 + i * 7919;
    uint64_t epoch = 0;
    /* pod a written over TLS, pod b over plain TCP, to one model */
    cr_assert_eq(kvs__ixr_lease(wr(t), "m", "a", &epoch), 2);
    cr_assert_eq(kvs__ixr_lease(wr(p), "m", "b", &epoch), 2);
    cr_assert_eq(kvs__ixr_lease(wr(p), "m", "a", &epoch), 0, "the TLS writer holds a's lease");
    kvs__ixr_store(wr(t), "m", "a", h, NB, "GPU");
    kvs__ixr_store(wr(t), "m", "a", h + NB / 2, NB / 2, "CPU");
    kvs__ixr_store(wr(p), "m", "b", h, NB / 3, "CPU");
    cr_assert_eq(kvs__ixr_flush(wr(t)), 0);
    cr_assert_eq(kvs__ixr_flush(wr(p)), 0);
    size_t lens[] = {1, 2, NB / 3, NB / 3 + 1, NB / 2 + 5, NB};
    for (size_t l = 0; l < sizeof(lens) / sizeof(lens[0]); l++) {
        kvs__ixr_score_t st[4], sp[4];
        long nt = kvs__ixr_score(t, "m", h, lens[l], NULL, 0, st, 4);
        long np = kvs__ixr_score(p, "m", h, lens[l], NULL, 0, sp, 4);
        cr_assert_eq(nt, np, "%zu keys: %ld over TLS, %ld plain", lens[l], nt, np);
        cr_assert_gt(nt, 0);
        for (long i = 0; i < nt; i++) {
            cr_assert_str_eq(st[i].pod, sp[i].pod);
            cr_assert_eq(st[i].blocks, sp[i].blocks);
            cr_assert_str_eq(st[i].medium, sp[i].medium);
        }
        cr_assert_str_eq(st[0].pod, "a", "a holds every block");
        cr_assert_eq(st[0].blocks, lens[l]);
    }
    /* The snapshot over TLS is the plain one. */
    unsigned long long ct[2] = {0}, cp[2] = {0};
    cr_assert_eq(kvs__ixr_snapshot(t, pod_count, copy_count, ct), 0);
    cr_assert_eq(kvs__ixr_snapshot(p, pod_count, copy_count, cp), 0);
    cr_assert_eq(ct[0], NB + NB / 2 + NB / 3);
    cr_assert(ct[0] == cp[0] && ct[1] == cp[1]);
    /* By name (SNI, DNS SAN). */
    kvs__ixr_t *byname = open_url("rediss", "", "localhost", tls_port, &tls, "byname");
    kvs__ixr_score_t s1[1];
    cr_assert_eq(kvs__ixr_score(byname, "m", h, 2, NULL, 0, s1, 1), 2);
    cr_assert_eq(kvs__ixr_errors(t) + kvs__ixr_errors(p) + kvs__ixr_errors(byname), 0);
    close_url(byname);
    close_url(t);
    close_url(p);
}

/* A server signed by a CA not given: refused with the reason, as is a name not in its
 * certificate; and the system store (no CA file) does not trust a private CA. */
Test(ixredis_tls, verification)
{
    start_server(NULL);
    char why[600];
    int fd = -1;
    kvs__ixtls_ctx_t *other = kvs__ixtls_ctx_create(path("other.crt"), NULL, NULL, why, 600);
    cr_assert_not_null(other, "%s", why);
    cr_assert_null(kvs__ixtls_connect(other, "127.0.0.1", tls_port, 500, 1000, &fd, why, 600));
    cr_assert(strstr(why, "certificate verify failed") != NULL, "%s", why);
    kvs__ixtls_ctx_free(other);
    kvs__ixtls_ctx_t *sys = kvs__ixtls_ctx_create(NULL, NULL, NULL, why, 600);
    cr_assert_not_null(sys, "%s", why);
    cr_assert_null(kvs__ixtls_connect(sys, "127.0.0.1", tls_port, 500, 1000, &fd, why, 600));
    cr_assert(strstr(why, "certificate verify failed") != NULL, "%s", why);
    kvs__ixtls_ctx_free(sys);
    kvs__ixtls_ctx_t *ca = kvs__ixtls_ctx_create(path("ca.crt"), NULL, NULL, why, 600);
    cr_assert_not_null(ca, "%s", why);
    /* 127.0.0.2 reaches the same server; its certificate names 127.0.0.1 and localhost. */
    cr_assert_null(kvs__ixtls_connect(ca, "127.0.0.2", tls_port, 500, 1000, &fd, why, 600));
    cr_assert(strstr(why, "mismatch") != NULL, "%s", why);
    kvs__ixtls_conn_t *ok = kvs__ixtls_connect(ca, "127.0.0.1", tls_port, 500, 1000, &fd, why, 600);
    cr_assert_not_null(ok, "%s", why);
    close(fd);
    kvs__ixtls_close(ok);
    /* plain TCP on the TLS port's neighbour: the handshake fails, naming it */
    cr_assert_null(kvs__ixtls_connect(ca, "127.0.0.1", plain_port, 500, 1000, &fd, why, 600));
    cr_assert(strstr(why, "TLS handshake") != NULL, "%s", why);
    kvs__ixtls_ctx_free(ca);

    /* Through the index: the failure is counted and logged with its cause. */
    kvs__ixr_tls_t wrong = {.ca_file = path("other.crt")};
    kvs__ixr_t *r = open_url("rediss", "", "127.0.0.1", tls_port, &wrong, "w");
    uint64_t epoch;
    capture_begin();
    int rc = kvs__ixr_lease(wr(r), "m", "a", &epoch);
    const char *log = capture_end();
    cr_assert_eq(rc, -1);
    cr_assert(strstr(log, "certificate verify failed") != NULL, "%s", log);
    cr_assert_eq(kvs__ixr_errors(r), 1);
    close_url(r);
    /* The CA from the environment. */
    setenv("KVSHARE_REDIS_CA_FILE", path("ca.crt"), 1);
    r = open_url("rediss", "", "127.0.0.1", tls_port, NULL, "env");
    cr_assert_eq(kvs__ixr_lease(wr(r), "m", "a", &epoch), 2);
    close_url(r);
    unsetenv("KVSHARE_REDIS_CA_FILE");
}

/* Files that cannot be used fail at create, naming the file. */
Test(ixredis_tls, bad_files)
{
    char why[600];
    kvs__ixr_tls_t t1 = {.ca_file = path("nonexistent.crt")};
    cr_assert_null(kvs__ixr_create("rediss://127.0.0.1", "me", 5000, &t1, false, why, sizeof(why)));
    cr_assert(strstr(why, "nonexistent.crt") != NULL, "%s", why);
    kvs__ixr_tls_t t2 = {.ca_file = path("ca.crt"), .cert_file = path("client.crt")};
    cr_assert_null(kvs__ixr_create("rediss://127.0.0.1", "me", 5000, &t2, false, why, sizeof(why)));
    cr_assert(strstr(why, "both") != NULL, "%s", why);
    kvs__ixr_tls_t t3 = {.ca_file = path("ca.crt"),
                         .cert_file = path("client.crt"),
                         .key_file = path("stranger.key")};
    cr_assert_null(kvs__ixr_create("rediss://127.0.0.1", "me", 5000, &t3, false, why, sizeof(why)));
    cr_assert(strstr(why, "stranger.key") != NULL, "%s", why);
    /* a redis:// URL never reads the TLS files */
    kvs__ixr_t *r = kvs__ixr_create("redis://127.0.0.1", "me", 5000, &t1, false, why, sizeof(why));
    cr_assert_not_null(r, "%s", why);
    close_url(r);
}

/* tls-auth-clients yes: without a client certificate the server ends the session and the
 * cause is named; with one from the server's CA it works; from another CA it does not. */
Test(ixredis_tls, client_certificates)
{
    const char *extra[] = {"--tls-auth-clients", "yes", NULL};
    start_server(extra);
    uint64_t epoch;
    kvs__ixr_tls_t none = {.ca_file = path("ca.crt")};
    kvs__ixr_t *r = open_url("rediss", "", "127.0.0.1", tls_port, &none, "none");
    capture_begin();
    int rc = kvs__ixr_lease(wr(r), "m", "a", &epoch);
    const char *log = capture_end();
    cr_assert_eq(rc, -1);
    cr_assert(strstr(log, "certificate required") != NULL, "%s", log);
    close_url(r);

    kvs__ixr_tls_t stranger = {.ca_file = path("ca.crt"),
                               .cert_file = path("stranger.crt"),
                               .key_file = path("stranger.key")};
    r = open_url("rediss", "", "127.0.0.1", tls_port, &stranger, "stranger");
    capture_begin();
    rc = kvs__ixr_lease(wr(r), "m", "a", &epoch);
    log = capture_end();
    cr_assert_eq(rc, -1);
    cr_assert(strstr(log, "TLS") != NULL && strstr(log, "unknown ca") != NULL, "%s", log);
    close_url(r);

    setenv("KVSHARE_REDIS_CERT_FILE", path("client.crt"), 1);
    setenv("KVSHARE_REDIS_KEY_FILE", path("client.key"), 1);
    r = open_url("rediss", "", "127.0.0.1", tls_port, &none, "client");
    cr_assert_eq(kvs__ixr_lease(wr(r), "m", "a", &epoch), 2);
    kvs__ixr_score_t s[1];
    uint64_t h = 42;
    kvs__ixr_store(wr(r), "m", "a", &h, 1, "GPU");
    cr_assert_eq(kvs__ixr_flush(wr(r)), 0);
    cr_assert_eq(kvs__ixr_score(r, "m", &h, 1, NULL, 0, s, 1), 1);
    cr_assert_eq(kvs__ixr_errors(r), 0);
    close_url(r);
}

/* AUTH and ACL users over TLS. */
Test(ixredis_tls, auth_and_acl)
{
    const char *extra[] = {"--requirepass", "s3cret", "--user", "alice", "on",
                           ">apw",          "~*",     "&*",     "+@all", NULL};
    start_server(extra);
    kvs__ixr_tls_t tls = {.ca_file = path("ca.crt")};
    uint64_t epoch;
    kvs__ixr_t *r = open_url("rediss", ":s3cret@", "127.0.0.1", tls_port, &tls, "pw");
    cr_assert_eq(kvs__ixr_lease(wr(r), "m", "a", &epoch), 2);
    close_url(r);
    r = open_url("rediss", "alice:apw@", "127.0.0.1", tls_port, &tls, "alice");
    cr_assert_eq(kvs__ixr_lease(wr(r), "m", "b", &epoch), 2);
    close_url(r);
    r = open_url("rediss", "alice:nope@", "127.0.0.1", tls_port, &tls, "nope");
    capture_begin();
    int rc = kvs__ixr_lease(wr(r), "m", "c", &epoch);
    const char *log = capture_end();
    cr_assert_eq(rc, -1);
    cr_assert(strstr(log, "WRONGPASS") != NULL, "%s", log);
    close_url(r);
    r = open_url("rediss", "", "127.0.0.1", tls_port, &tls, "nopass");
    capture_begin();
    rc = kvs__ixr_lease(wr(r), "m", "c", &epoch);
    log = capture_end();
    cr_assert_eq(rc, -1);
    cr_assert(strstr(log, "NOAUTH") != NULL, "%s", log);
    close_url(r);
}

/* A server that stops answering mid-session: the call fails at its reply timeout (the relay
 * does not hold it), and once the server is back the connection is remade. A listener that
 * never speaks TLS: the handshake times out. */
Test(ixredis_tls, stall_and_reconnect)
{
    start_server(NULL);
    kvs__ixr_tls_t tls = {.ca_file = path("ca.crt")};
    kvs__ixr_t *r = open_url("rediss", "", "127.0.0.1", tls_port, &tls, "st");
    uint64_t epoch = 0, e1, h = 7;
    cr_assert_eq(kvs__ixr_lease(wr(r), "m", "a", &epoch), 2);
    e1 = epoch;
    kvs__ixr_score_t s[1];
    cr_assert(kill(server, SIGSTOP) == 0);
    capture_begin();
    long n = kvs__ixr_score(r, "m", &h, 1, NULL, 0, s, 1);
    capture_end();
    cr_assert_eq(n, -1);
    cr_assert(kill(server, SIGCONT) == 0);
    /* The retry gate (once a second) opens: wait for the reconnect, 10 s deadline. */
    int64_t deadline = now_ms() + 10000;
    capture_begin();
    while ((n = kvs__ixr_score(r, "m", &h, 1, NULL, 0, s, 1)) < 0 && now_ms() < deadline)
        nanosleep(&(struct timespec){0, 20 * 1000 * 1000}, NULL);
    capture_end();
    cr_assert_eq(n, 0, "scores again after the server is back");
    cr_assert_eq(kvs__ixr_lease(wr(r), "m", "a", &epoch), 1);
    cr_assert_eq(epoch, e1, "the writer connection was not the one that stalled");

    /* a TCP listener that accepts (backlog) and never answers */
    int ls = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    cr_assert(bind(ls, (struct sockaddr *)&a, sizeof(a)) == 0 && listen(ls, 4) == 0);
    cr_assert(getsockname(ls, (struct sockaddr *)&a, &len) == 0);
    char why[600];
    int fd;
    kvs__ixtls_ctx_t *ca = kvs__ixtls_ctx_create(path("ca.crt"), NULL, NULL, why, 600);
    cr_assert_null(kvs__ixtls_connect(ca, "127.0.0.1", ntohs(a.sin_port), 500, 300, &fd, why, 600));
    cr_assert(strstr(why, "timed out") != NULL, "%s", why);
    close(ls);
    /* refused */
    cr_assert_null(kvs__ixtls_connect(ca, "127.0.0.1", free_port(), 500, 300, &fd, why, 600));
    cr_assert(strstr(why, "refused") != NULL, "%s", why);
    kvs__ixtls_ctx_free(ca);
    close_url(r);
}

/* The server drops every client (CLIENT KILL, as on a restart or its idle timeout): the
 * next call over TLS fails naming the closed session, and the connection is remade (a new
 * writer epoch, after which the lease holder resyncs). */
Test(ixredis_tls, server_closes_then_reconnect)
{
    start_server(NULL);
    kvs__ixr_tls_t tls = {.ca_file = path("ca.crt")};
    kvs__ixr_t *r = open_url("rediss", "", "127.0.0.1", tls_port, &tls, "k");
    uint64_t epoch = 0, e1, h = 9;
    cr_assert_eq(kvs__ixr_lease(wr(r), "m", "a", &epoch), 2);
    e1 = epoch;
    redisContext *admin = redisConnect("127.0.0.1", plain_port);
    cr_assert(admin != NULL && admin->err == 0);
    redisReply *rep = redisCommand(admin, "CLIENT KILL TYPE normal SKIPME yes");
    cr_assert(rep != NULL && rep->type == REDIS_REPLY_INTEGER && rep->integer >= 1);
    freeReplyObject(rep);
    redisFree(admin);
    capture_begin();
    int rc = kvs__ixr_lease(wr(r), "m", "a", &epoch);
    const char *log = capture_end();
    cr_assert_eq(rc, -1);
    cr_assert(strstr(log, "TLS") != NULL && strstr(log, "closed") != NULL, "%s", log);
    int64_t deadline = now_ms() + 10000;
    capture_begin();
    while ((rc = kvs__ixr_lease(wr(r), "m", "a", &epoch)) < 0 && now_ms() < deadline)
        nanosleep(&(struct timespec){0, 20 * 1000 * 1000}, NULL);
    capture_end();
    cr_assert_eq(rc, 1, "the lease renewed over a new connection");
    cr_assert_neq(epoch, e1, "a new writer connection: the holder resyncs");
    kvs__ixr_score_t s[1];
    cr_assert_eq(kvs__ixr_score(r, "m", &h, 1, NULL, 0, s, 1), 0);
    close_url(r);
}

/* --redis-cluster over TLS: a one-master cluster (tls-cluster yes, every slot its own) that
 * reports its TLS port in CLUSTER SLOTS; the node connection is made through ixtls, verified
 * against the IP the slot map names. */
Test(ixredis_tls, cluster_over_tls)
{
    char bus[8], conf[128];
    snprintf(bus, sizeof(bus), "%d", free_port());
    snprintf(conf, sizeof(conf), "%s", path("nodes.conf"));
    const char *extra[] = {"--cluster-enabled",
                           "yes",
                           "--tls-cluster",
                           "yes",
                           "--cluster-config-file",
                           conf,
                           "--cluster-port",
                           bus,
                           NULL};
    start_server(extra);
    redisContext *admin = redisConnect("127.0.0.1", plain_port);
    cr_assert(admin != NULL && admin->err == 0);
    redisReply *rep = redisCommand(admin, "CLUSTER ADDSLOTSRANGE 0 16383");
    cr_assert(rep != NULL && rep->type == REDIS_REPLY_STATUS, "%s", rep ? rep->str : "");
    freeReplyObject(rep);
    int64_t deadline = now_ms() + 10000;
    for (;;) {
        rep = redisCommand(admin, "CLUSTER INFO");
        bool ok = rep != NULL && rep->type == REDIS_REPLY_STRING &&
                  strstr(rep->str, "cluster_state:ok") != NULL;
        if (rep)
            freeReplyObject(rep);
        if (ok)
            break;
        cr_assert(now_ms() < deadline, "the cluster did not come up");
        nanosleep(&(struct timespec){0, 20 * 1000 * 1000}, NULL);
    }
    redisFree(admin);
    kvs__ixr_tls_t tls = {.ca_file = path("ca.crt")};
    char url[64], why[600];
    snprintf(url, sizeof(url), "rediss://127.0.0.1:%d", tls_port);
    kvs__ixr_t *r = kvs__ixr_create(url, "c", 5000, &tls, true, why, sizeof(why));
    cr_assert_not_null(r, "%s", why);
    uint64_t epoch, h[3] = {11, 12, 13};
    cr_assert_eq(kvs__ixr_lease(wr(r), "m", "a", &epoch), 2);
    kvs__ixr_store(wr(r), "m", "a", h, 3, "GPU");
    cr_assert_eq(kvs__ixr_flush(wr(r)), 0);
    kvs__ixr_score_t s[2];
    cr_assert_eq(kvs__ixr_score(r, "m", h, 3, NULL, 0, s, 2), 1);
    cr_assert_eq(s[0].blocks, 3);
    cr_assert_eq(kvs__ixr_errors(r), 0);
    close_url(r);
}
