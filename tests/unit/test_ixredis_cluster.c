/* SPDX-License-Identifier: Apache-2.0 */
/* test_ixredis_cluster.c - `kvshare index --redis-cluster` against a real Redis Cluster of
 * three redis-server masters started here (free ports, --cluster-enabled, slots assigned with
 * CLUSTER ADDSLOTSRANGE, joined with CLUSTER MEET), plus a fourth, standalone server as the
 * reference; all in a temp dir removed at the end. Checks our slot function against CLUSTER
 * KEYSLOT; that models whose keys live on different masters score and snapshot exactly as on
 * one Redis; that a slot migrating (ASK) and migrated (MOVED) is followed, and that writes
 * pipelined to the old master are reported lost and resynced; and, against a fake server,
 * that hostile CLUSTER SLOTS answers and redirects fail with a clear error, never a crash.
 * Skips without redis-server. */
#include "ixredis_int.h"
#include "redis_test.h"

#include <criterion/criterion.h>
#include <hiredis/hiredis.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/wait.h>
#include <unistd.h>

#define NNODES 3
static char dir[64];
static pid_t pids[NNODES + 1] = {-1, -1, -1, -1};
static int ports[NNODES + 1]; /* [NNODES]: the standalone reference */
static int buses[NNODES + 1]; /* cluster bus ports */
static char ids[NNODES][48];
static const long ranges[NNODES][2] = {{0, 5460}, {5461, 10922}, {10923, 16383}};

static redisContext *admin(int i)
{
    redisContext *c = redisConnect("127.0.0.1", ports[i]);
    cr_assert(c != NULL && c->err == 0);
    return c;
}

/* One admin command on node i; the reply (caller frees), asserted not an error. */
static redisReply *cmd(int i, int argc, const char **argv)
{
    redisContext *c = admin(i);
    redisReply *r = redisCommandArgv(c, argc, argv, NULL);
    cr_assert(r != NULL && r->type != REDIS_REPLY_ERROR, "%s on node %d: %s", argv[0], i,
              r ? r->str : c->errstr);
    redisFree(c);
    return r;
}

static void cmd_ok(int i, int argc, const char **argv)
{
    freeReplyObject(cmd(i, argc, argv));
}

static void start_one(int i, bool cluster)
{
    char port[8], bus[8], conf[96];
    ports[i] = redis_test_free_port();
    snprintf(port, sizeof(port), "%d", ports[i]);
    /* the bus port given: the default (port + 10000) may be taken, or above 65535 */
    buses[i] = redis_test_free_port();
    snprintf(bus, sizeof(bus), "%d", buses[i]);
    snprintf(conf, sizeof(conf), "%s/nodes-%d.conf", dir, i);
    char *argv[] = {"/usr/bin/redis-server",
                    "--port",
                    port,
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    dir,
                    cluster ? "--cluster-enabled" : NULL,
                    "yes",
                    "--cluster-config-file",
                    conf,
                    "--cluster-node-timeout",
                    "5000",
                    "--cluster-port",
                    bus,
                    NULL};
    pids[i] = redis_test_start(argv);
}

/* The cluster is up when every node says cluster_state:ok and knows all three masters. */
static bool cluster_ok(void)
{
    for (int i = 0; i < NNODES; i++) {
        redisContext *c = admin(i);
        redisReply *info = redisCommand(c, "CLUSTER INFO");
        redisReply *slots = redisCommand(c, "CLUSTER SLOTS");
        bool ok = info && info->type == REDIS_REPLY_STRING &&
                  strstr(info->str, "cluster_state:ok") != NULL && slots &&
                  slots->type == REDIS_REPLY_ARRAY && slots->elements == NNODES;
        if (info)
            freeReplyObject(info);
        if (slots)
            freeReplyObject(slots);
        redisFree(c);
        if (!ok)
            return false;
    }
    return true;
}

static void setup(void)
{
    if (access("/usr/bin/redis-server", X_OK) != 0)
        cr_skip_test("redis-server not installed");
    snprintf(dir, sizeof(dir), "%s", "/tmp/kvs-ixcluster-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
    signal(SIGPIPE, SIG_IGN);
    for (int i = 0; i < NNODES; i++)
        start_one(i, true);
    start_one(NNODES, false);
    for (int i = 0; i < NNODES; i++) {
        char lo[8], hi[8];
        snprintf(lo, sizeof(lo), "%ld", ranges[i][0]);
        snprintf(hi, sizeof(hi), "%ld", ranges[i][1]);
        cmd_ok(i, 4, (const char *[]){"CLUSTER", "ADDSLOTSRANGE", lo, hi});
        redisReply *id = cmd(i, 2, (const char *[]){"CLUSTER", "MYID"});
        snprintf(ids[i], sizeof(ids[i]), "%s", id->str);
        freeReplyObject(id);
    }
    for (int i = 1; i < NNODES; i++) {
        char p[8], b[8];
        snprintf(p, sizeof(p), "%d", ports[i]);
        snprintf(b, sizeof(b), "%d", buses[i]);
        cmd_ok(0, 5, (const char *[]){"CLUSTER", "MEET", "127.0.0.1", p, b});
    }
    int64_t deadline = redis_test_now_ms() + 15000;
    while (!cluster_ok()) {
        cr_assert(redis_test_now_ms() < deadline, "the cluster did not form");
        nanosleep(&(struct timespec){0, 20 * 1000 * 1000}, NULL);
    }
}

static void teardown(void)
{
    for (int i = 0; i <= NNODES; i++)
        if (pids[i] > 0) {
            kill(pids[i], SIGKILL);
            waitpid(pids[i], NULL, 0);
            pids[i] = -1;
        }
    if (dir[0] != '\0') {
        char *argv[] = {"/bin/rm", "-rf", dir, NULL};
        redis_test_run_wait(argv);
        dir[0] = '\0';
    }
}

static kvs__ixr_t *open_r(int port, bool cluster, const char *id)
{
    char url[64], why[600];
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d", port);
    kvs__ixr_t *r = kvs__ixr_create(url, id, 5000, NULL, cluster, why, sizeof(why));
    cr_assert_not_null(r, "%s", why);
    return r;
}

/* The node whose range holds slot. */
static int node_of_slot(unsigned slot)
{
    for (int i = 0; i < NNODES; i++)
        if ((long)slot >= ranges[i][0] && (long)slot <= ranges[i][1])
            return i;
    return -1;
}

static unsigned model_slot(const char *model)
{
    char k[128];
    int n = snprintf(k, sizeof(k), "kvs:b:{%s}@0", model);
    return kvs__ixr_key_slot(k, (size_t)n);
}

/* models[i]: a model whose keys live on node i. */
static void models_per_node(char models[NNODES][16])
{
    int found = 0;
    for (int k = 0; found < NNODES && k < 1000; k++) {
        char m[16];
        snprintf(m, sizeof(m), "model-%d", k);
        int n = node_of_slot(model_slot(m));
        if (models[n][0] == '\0') {
            snprintf(models[n], 16, "%s", m);
            found++;
        }
    }
    cr_assert_eq(found, NNODES);
}

TestSuite(ixredis_cluster, .init = setup, .fini = teardown);

/* Our slot function is Redis's: CLUSTER KEYSLOT of keys with and without (empty, unclosed,
 * repeated) hash tags, and of random bytes. */
Test(ixredis_cluster, key_slot_is_cluster_keyslot)
{
    const char *keys[] = {"kvs:m",  "kvs:b:{qwen3}@00ff",
                          "foo",    "{user1000}.following",
                          "{}x",    "x{}y{z}",
                          "a{b",    "}{",
                          "{a}{b}", "",
                          "{{a}}b", "123456789"};
    redisContext *c = admin(0);
    char buf[64];
    unsigned seed = 12345;
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]) + 200; i++) {
        const char *k = buf;
        size_t len;
        if (i < sizeof(keys) / sizeof(keys[0])) {
            k = keys[i];
            len = strlen(k);
        } else { /* random bytes, with braces now and then */
            len = (size_t)(rand_r(&seed) % 40);
            for (size_t j = 0; j < len; j++) {
                int x = rand_r(&seed) % 10;
                buf[j] = (char)(x == 0 ? '{' : x == 1 ? '}' : rand_r(&seed) % 256);
            }
        }
        const char *argv[] = {"CLUSTER", "KEYSLOT", k};
        size_t lens[] = {7, 7, len};
        redisReply *r = redisCommandArgv(c, 3, argv, lens);
        cr_assert(r != NULL && r->type == REDIS_REPLY_INTEGER);
        cr_assert_eq(kvs__ixr_key_slot(k, len), (unsigned)r->integer, "key %zu ('%.*s')", i,
                     (int)len, k);
        freeReplyObject(r);
    }
    redisFree(c);
    cr_assert_eq(kvs__ixr_key_slot("123456789", 9), 0x31C3 & 16383, "CRC16-XMODEM check value");
}

#define NB 40

/* The same writes to the cluster and to one Redis: for three models, one per master, four
 * pods each holding prefixes of one document in two tiers, a removal and a degraded pod. */
static void write_both(kvs__ixr_w_t *wc, kvs__ixr_w_t *ws, char models[NNODES][16],
                       const uint64_t *h)
{
    uint64_t epoch;
    for (int m = 0; m < NNODES; m++) {
        for (int p = 0; p < 4; p++) {
            char pod[16];
            snprintf(pod, sizeof(pod), "pod-%d", p);
            for (int k = 0; k < 2; k++) {
                kvs__ixr_w_t *w = k ? ws : wc;
                cr_assert_eq(kvs__ixr_lease(w, models[m], pod, &epoch), 2);
                size_t n = (size_t)(NB - 7 * p - 3 * m);
                kvs__ixr_clear(w, models[m], pod);
                kvs__ixr_store(w, models[m], pod, h, n, "GPU");
                kvs__ixr_store(w, models[m], pod, h + n / 2, n - n / 2, "CPU");
                if (p == 1)
                    kvs__ixr_remove(w, models[m], pod, h + 5, 1, "GPU");
                kvs__ixr_set_degraded(w, models[m], pod, p == 3);
                cr_assert_eq(kvs__ixr_flush(w), 0);
            }
        }
    }
}

static void scores_equal(kvs__ixr_t *rc, kvs__ixr_t *rs, const char *model, const uint64_t *h,
                         uint32_t want_top)
{
    size_t lens[] = {1, 4, 6, 20, NB};
    for (size_t l = 0; l < sizeof(lens) / sizeof(lens[0]); l++) {
        kvs__ixr_score_t sc[8], ss[8];
        long nc = kvs__ixr_score(rc, model, h, lens[l], NULL, 0, sc, 8);
        long ns = kvs__ixr_score(rs, model, h, lens[l], NULL, 0, ss, 8);
        cr_assert_eq(nc, ns, "%s, %zu keys: %ld pods on the cluster, %ld on one Redis", model,
                     lens[l], nc, ns);
        cr_assert_eq(nc, 3, "three pods score (pod-3 is degraded)");
        for (long i = 0; i < nc; i++) {
            cr_assert_str_eq(sc[i].pod, ss[i].pod);
            cr_assert_eq(sc[i].blocks, ss[i].blocks);
            cr_assert_str_eq(sc[i].medium, ss[i].medium);
        }
        if (lens[l] == NB)
            cr_assert_eq(sc[0].blocks, want_top, "%s: %u", model, sc[0].blocks);
    }
}

static void copy_sum(void *arg, const char *model, const char *pod, uint64_t hash,
                     const char *medium)
{
    unsigned long long *s = arg;
    s[0]++;
    s[1] +=
        hash * ((unsigned char)model[6] + 1u) + (unsigned char)pod[4] + (unsigned char)medium[0];
}

static void pod_seen(void *arg, const char *model, const char *pod, bool degraded)
{
    (void)model, (void)pod;
    unsigned long long *s = arg;
    s[2] += 1 + degraded;
}

static redisReply *node_dbsize(int i)
{
    return cmd(i, 1, (const char *[]){"DBSIZE"});
}

/* What both cluster tests start from: a cluster client through master @node and a
 * standalone one, a writer each, and write_both() of the three models (one per master) with
 * block hashes base + i * step. */
typedef struct pair {
    char models[NNODES][16];
    kvs__ixr_t *rc, *rs; /* cluster, standalone */
    kvs__ixr_w_t *wc, *ws;
    uint64_t h[NB];
} pair_t;

static void pair_open(pair_t *p, int node, uint64_t base, uint64_t step)
{
    memset(p->models, 0, sizeof(p->models));
    models_per_node(p->models);
    p->rc = open_r(ports[node], true, "A");
    p->rs = open_r(ports[NNODES], false, "A");
    p->wc = kvs__ixr_writer_create(p->rc);
    p->ws = kvs__ixr_writer_create(p->rs);
    for (size_t i = 0; i < NB; i++)
        p->h[i] = base + i * step;
    write_both(p->wc, p->ws, p->models, p->h);
}

static void pair_close(pair_t *p)
{
    kvs__ixr_writer_destroy(p->wc);
    kvs__ixr_writer_destroy(p->ws);
    kvs__ixr_destroy(p->rc);
    kvs__ixr_destroy(p->rs);
}

/* Models on three masters score, and snapshot, exactly as on one Redis. */
Test(ixredis_cluster, scores_match_one_redis)
{
    static pair_t p;
    pair_open(&p, 0, 0xabc000, 104729);
    for (int i = 0; i < NNODES; i++) {
        redisReply *n = node_dbsize(i);
        cr_assert_gt(n->integer, 0, "node %d holds keys (model %s)", i, p.models[i]);
        freeReplyObject(n);
    }
    for (int m = 0; m < NNODES; m++)
        scores_equal(p.rc, p.rs, p.models[m], p.h, (uint32_t)(NB - 3 * m));
    unsigned long long sc[3] = {0}, ss[3] = {0};
    cr_assert_eq(kvs__ixr_snapshot(p.rc, pod_seen, copy_sum, sc), 0);
    cr_assert_eq(kvs__ixr_snapshot(p.rs, pod_seen, copy_sum, ss), 0);
    cr_assert_gt(sc[0], 0);
    cr_assert(sc[0] == ss[0] && sc[1] == ss[1] && sc[2] == ss[2],
              "snapshot: %llu copies / %llu pods on the cluster, %llu / %llu on one Redis", sc[0],
              sc[2], ss[0], ss[2]);
    /* A lease while writes are queued (a gap's degraded flag, then the next batch) reads
     * its own reply, not the first queued write's. */
    for (int k = 0; k < 2; k++) {
        kvs__ixr_w_t *w = k ? p.ws : p.wc;
        uint64_t e, x = 0x999;
        kvs__ixr_store(w, p.models[0], "pod-0", &x, 1, "GPU");
        kvs__ixr_set_degraded(w, p.models[0], "pod-0", false);
        cr_assert_eq(kvs__ixr_lease(w, p.models[0], "pod-0", &e), 1, "%s: renewed",
                     k ? "one Redis" : "cluster");
        cr_assert_eq(kvs__ixr_flush(w), 0);
    }
    cr_assert_eq(kvs__ixr_errors(p.rc), 0);
    cr_assert_eq(kvs__ixr_errors(p.rs), 0);
    pair_close(&p);
}

/* Moves slot from node a to node b as redis-cli --cluster reshard does: IMPORTING on b,
 * MIGRATING on a, MIGRATE its keys; then (finish) SETSLOT NODE b on every node. */
static void migrate_keys(unsigned slot, int a, int b)
{
    char s[8], pb[8];
    snprintf(s, sizeof(s), "%u", slot);
    snprintf(pb, sizeof(pb), "%d", ports[b]);
    cmd_ok(b, 5, (const char *[]){"CLUSTER", "SETSLOT", s, "IMPORTING", ids[a]});
    cmd_ok(a, 5, (const char *[]){"CLUSTER", "SETSLOT", s, "MIGRATING", ids[b]});
    redisReply *keys = cmd(a, 4, (const char *[]){"CLUSTER", "GETKEYSINSLOT", s, "1000"});
    cr_assert_gt(keys->elements, 0);
    const char **argv = calloc(7 + keys->elements, sizeof(*argv));
    const char *head[] = {"MIGRATE", "127.0.0.1", pb, "", "0", "5000", "KEYS"};
    memcpy(argv, head, sizeof(head));
    for (size_t i = 0; i < keys->elements; i++)
        argv[7 + i] = keys->element[i]->str;
    cmd_ok(a, (int)(7 + keys->elements), argv);
    free(argv);
    freeReplyObject(keys);
}

static void finish_migration(unsigned slot, int b)
{
    char s[8];
    snprintf(s, sizeof(s), "%u", slot);
    for (int i = 0; i < NNODES; i++)
        cmd_ok(i, 5, (const char *[]){"CLUSTER", "SETSLOT", s, "NODE", ids[b]});
}

/* A slot being migrated (its keys already on the new master: the old one answers ASK) and
 * then migrated (MOVED): scores follow both and stay equal to one Redis's; a write pipelined
 * to the old master is reported lost, the writer's epoch changes (the lease holder resyncs)
 * and the rewrite lands on the new master. */
Test(ixredis_cluster, ask_and_moved_are_followed)
{
    static pair_t p;
    pair_open(&p, 1, 0x5eed00, 7919);
    const char *m = p.models[0];
    unsigned slot = model_slot(m);
    scores_equal(p.rc, p.rs, m, p.h, NB);
    uint64_t e0 = 0, e1 = 0;
    cr_assert_eq(kvs__ixr_lease(p.wc, m, "pod-0", &e0), 1, "the writer maps the slot to node 0");
    unsigned long long red0 = kvs__ixr_redirects(p.rc);

    migrate_keys(slot, 0, 2);
    scores_equal(p.rc, p.rs, m, p.h, NB);
    unsigned long long red1 = kvs__ixr_redirects(p.rc);
    cr_assert_gt(red1, red0, "the old master answered ASK, and it was followed");

    finish_migration(slot, 2);
    scores_equal(p.rc, p.rs, m, p.h, NB);
    cr_assert_gt(kvs__ixr_redirects(p.rc), red1,
                 "the old master answered MOVED, and it was followed");

    /* The writer still maps the slot to node 0: its pipelined writes there come back MOVED,
     * are reported lost, and a new epoch makes the lease holder resync on the new master. */
    uint64_t extra[2] = {0x77770001, 0x77770002};
    kvs__ixr_store(p.wc, m, "pod-0", extra, 2, "GPU");
    cr_assert_eq(kvs__ixr_flush(p.wc), -1, "a write pipelined to the old master is lost");
    cr_assert_eq(kvs__ixr_lease(p.wc, m, "pod-0", &e1), 1, "the lease renews on the new master");
    cr_assert_neq(e1, e0, "a new epoch: the lease holder resyncs");
    kvs__ixr_store(p.wc, m, "pod-0", extra, 2, "GPU");
    cr_assert_eq(kvs__ixr_flush(p.wc), 0, "the rewrite lands on the new master");
    kvs__ixr_store(p.ws, m, "pod-0", extra, 2, "GPU");
    cr_assert_eq(kvs__ixr_flush(p.ws), 0);
    kvs__ixr_score_t out[8];
    cr_assert_eq(kvs__ixr_score(p.rc, m, extra, 2, NULL, 0, out, 8), 1);
    cr_assert_str_eq(out[0].pod, "pod-0");
    cr_assert_eq(out[0].blocks, 2);
    scores_equal(p.rc, p.rs, m, p.h, NB);
    /* The other p.models never moved. */
    scores_equal(p.rc, p.rs, p.models[1], p.h, NB - 3);
    scores_equal(p.rc, p.rs, p.models[2], p.h, NB - 6);
    pair_close(&p);
}

/* ---- a fake node answering nonsense ---- */

static int fake_ls = -1, fake_port;
static pthread_t fake_thread;
static pthread_mutex_t fake_mu = PTHREAD_MUTEX_INITIALIZER;
static char fake_slots[1024], fake_eval[256]; /* the answers to CLUSTER ... and EVAL(SHA) */

/* Reads one RESP command (an array of bulk strings) and answers it by its name: SCRIPT LOAD
 * a SHA, CLUSTER fake_slots, EVAL/EVALSHA fake_eval, anything else +OK. false at EOF. */
static bool fake_one(FILE *in, int fd)
{
    char line[64], name[16] = "";
    if (fgets(line, sizeof(line), in) == NULL || line[0] != '*')
        return false;
    long n = strtol(line + 1, NULL, 10);
    for (long i = 0; i < n; i++) {
        if (fgets(line, sizeof(line), in) == NULL || line[0] != '$')
            return false;
        long len = strtol(line + 1, NULL, 10);
        char *arg = malloc((size_t)len + 2);
        if (arg == NULL || fread(arg, 1, (size_t)len + 2, in) != (size_t)len + 2) {
            free(arg);
            return false;
        }
        if (i == 0)
            snprintf(name, sizeof(name), "%.*s", (int)(len < 15 ? len : 15), arg);
        free(arg);
    }
    char out[1100];
    pthread_mutex_lock(&fake_mu);
    if (strcasecmp(name, "SCRIPT") == 0)
        snprintf(out, sizeof(out), "$40\r\n%040d\r\n", 7);
    else if (strcasecmp(name, "CLUSTER") == 0)
        snprintf(out, sizeof(out), "%s", fake_slots);
    else if (strncasecmp(name, "EVAL", 4) == 0)
        snprintf(out, sizeof(out), "%s", fake_eval);
    else
        snprintf(out, sizeof(out), "+OK\r\n");
    pthread_mutex_unlock(&fake_mu);
    return write(fd, out, strlen(out)) == (ssize_t)strlen(out);
}

static void *fake_main(void *arg)
{
    (void)arg;
    for (;;) {
        int fd = accept(fake_ls, NULL, NULL);
        if (fd < 0)
            return NULL; /* the listener closed: the test is over */
        FILE *in = fdopen(dup(fd), "r");
        while (in != NULL && fake_one(in, fd))
            ;
        if (in != NULL)
            fclose(in);
        close(fd);
    }
}

static void fake_setup(void)
{
    signal(SIGPIPE, SIG_IGN);
    fake_ls = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    cr_assert(bind(fake_ls, (struct sockaddr *)&a, sizeof(a)) == 0 && listen(fake_ls, 8) == 0);
    cr_assert(getsockname(fake_ls, (struct sockaddr *)&a, &len) == 0);
    fake_port = ntohs(a.sin_port);
    cr_assert(pthread_create(&fake_thread, NULL, fake_main, NULL) == 0);
}

static void fake_teardown(void)
{
    shutdown(fake_ls, SHUT_RDWR);
    close(fake_ls);
    pthread_join(fake_thread, NULL);
}

static void fake_answers(const char *slots, const char *eval)
{
    size_t ls = strlen(slots), le = strlen(eval);
    cr_assert(ls < sizeof(fake_slots) && le < sizeof(fake_eval));
    pthread_mutex_lock(&fake_mu);
    memcpy(fake_slots, slots, ls + 1);
    memcpy(fake_eval, eval, le + 1);
    pthread_mutex_unlock(&fake_mu);
}

/* stderr into a file while a call runs: what kvshare-index would log. */
static const char *captured(kvs__ixr_t *r, long *rc)
{
    static char buf[4096];
    char tmpl[] = "/tmp/kvs-ixcluster-log-XXXXXX";
    int fd = mkstemp(tmpl);
    cr_assert(fd >= 0);
    unlink(tmpl);
    fflush(stderr);
    int saved = dup(2);
    dup2(fd, 2);
    uint64_t h = 1;
    kvs__ixr_score_t out[2];
    *rc = kvs__ixr_score(r, "m", &h, 1, NULL, 0, out, 2);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
    buf[n > 0 ? n : 0] = '\0';
    close(fd);
    return buf;
}

/* A client of the fake node (@cluster: as with --redis-cluster). */
static kvs__ixr_t *fake_client(bool cluster)
{
    char url[64], why[300];
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d", fake_port);
    kvs__ixr_t *r = kvs__ixr_create(url, "me", 5000, NULL, cluster, why, sizeof(why));
    cr_assert_not_null(r, "%s", why);
    return r;
}

TestSuite(ixredis_cluster_hostile, .init = fake_setup, .fini = fake_teardown);

/* CLUSTER SLOTS answers that are not a slot map: each fails the call with an error naming
 * the cause; nothing is routed, nothing crashes (ASan runs this too). */
Test(ixredis_cluster_hostile, malformed_cluster_slots)
{
    char node[64], big[600];
    snprintf(node, sizeof(node), "*2\r\n$9\r\n127.0.0.1\r\n:%d\r\n", fake_port);
    memset(big, 'h', 300);
    big[300] = '\0';
    struct {
        char reply[1024];
        const char *want;
    } cases[20];
    size_t n = 0;
#define CASE(want_, ...)                                                                           \
    do {                                                                                           \
        snprintf(cases[n].reply, sizeof(cases[n].reply), __VA_ARGS__);                             \
        cases[n++].want = want_;                                                                   \
    } while (0)
    CASE("not an array", "+OK\r\n");
    CASE("not an array", ":42\r\n");
    CASE("cluster support disabled", "-ERR This instance has cluster support disabled\r\n");
    CASE("entry 0 is not", "*1\r\n:5\r\n");
    CASE("entry 0 is not", "*1\r\n*2\r\n:0\r\n:1\r\n");
    CASE("entry 0 is not", "*1\r\n*3\r\n$1\r\na\r\n:1\r\n%s", node);
    CASE("slots 0-99999", "*1\r\n*3\r\n:0\r\n:99999\r\n%s", node);
    CASE("slots -1-5", "*1\r\n*3\r\n:-1\r\n:5\r\n%s", node);
    CASE("slots 10-5", "*1\r\n*3\r\n:10\r\n:5\r\n%s", node);
    CASE("port 0", "*1\r\n*3\r\n:0\r\n:16383\r\n*2\r\n$9\r\n127.0.0.1\r\n:0\r\n");
    CASE("port 70000", "*1\r\n*3\r\n:0\r\n:16383\r\n*2\r\n$9\r\n127.0.0.1\r\n:70000\r\n");
    CASE("entry 0 is not", "*1\r\n*3\r\n:0\r\n:16383\r\n*1\r\n$9\r\n127.0.0.1\r\n");
    CASE("host of 300 bytes", "*1\r\n*3\r\n:0\r\n:16383\r\n*2\r\n$300\r\n%s\r\n:1\r\n", big);
    CASE("host 'a b'", "*1\r\n*3\r\n:0\r\n:16383\r\n*2\r\n$3\r\na b\r\n:1\r\n");
    CASE("no slot served", "*0\r\n");
    /* hiredis 0.14 would allocate 160 MB for the header alone and wait for the rest */
    CASE("more than 2^24 elements", "*20000000\r\n");
    CASE("entry 1 is not", "*2\r\n*3\r\n:0\r\n:1\r\n%s*3\r\n:2\r\n:3\r\n*0\r\n", node);
#undef CASE
    for (size_t i = 0; i < n; i++) {
        fake_answers(cases[i].reply, ":0\r\n");
        kvs__ixr_t *r = fake_client(true);
        long rc;
        const char *log = captured(r, &rc);
        cr_assert_eq(rc, -1, "case %zu", i);
        cr_assert(strstr(log, "CLUSTER SLOTS") != NULL && strstr(log, cases[i].want) != NULL,
                  "case %zu: want '%s' in: %s", i, cases[i].want, log);
        cr_assert_geq(kvs__ixr_errors(r), 1);
        kvs__ixr_destroy(r);
    }
}

/* Redirects that are garbage, about another slot, or endless: a clear error, bounded hops. */
Test(ixredis_cluster_hostile, bad_redirects)
{
    char slots[128];
    snprintf(slots, sizeof(slots), "*1\r\n*3\r\n:0\r\n:16383\r\n*2\r\n$9\r\n127.0.0.1\r\n:%d\r\n",
             fake_port);
    char k[64];
    int kl = snprintf(k, sizeof(k), "kvs:b:{m}@%016x", 1);
    unsigned slot = kvs__ixr_key_slot(k, (size_t)kl);
    struct {
        char reply[256];
        const char *want;
    } cases[8];
    size_t n = 0;
    snprintf(cases[n].reply, 256, "-MOVED %u nohostport\r\n", slot);
    cases[n++].want = "not HOST:PORT";
    snprintf(cases[n].reply, 256, "-MOVED %u 127.0.0.1:0\r\n", slot);
    cases[n++].want = "not HOST:PORT";
    snprintf(cases[n].reply, 256, "-MOVED %u 127.0.0.1:99999999999999999999\r\n", slot);
    cases[n++].want = "not HOST:PORT";
    snprintf(cases[n].reply, 256, "-MOVED %u\r\n", slot);
    cases[n++].want = "malformed redirect";
    snprintf(cases[n].reply, 256, "-MOVED %u 127.0.0.1:%d\r\n", (slot + 1) % 16384, fake_port);
    cases[n++].want = "malformed redirect for slot";
    snprintf(cases[n].reply, 256, "-ASK x 127.0.0.1:%d\r\n", fake_port);
    cases[n++].want = "malformed redirect for slot";
    snprintf(cases[n].reply, 256, "-MOVED %u 127.0.0.1:%d\r\n", slot, fake_port);
    cases[n++].want = "more than 5 redirects";
    snprintf(cases[n].reply, 256, "-ASK %u :%d\r\n", slot, fake_port);
    cases[n++].want = "more than 5 redirects";
    for (size_t i = 0; i < n; i++) {
        fake_answers(slots, cases[i].reply);
        kvs__ixr_t *r = fake_client(true);
        long rc;
        const char *log = captured(r, &rc);
        cr_assert_eq(rc, -1, "case %zu", i);
        cr_assert(strstr(log, cases[i].want) != NULL, "case %zu: want '%s' in: %s", i,
                  cases[i].want, log);
        kvs__ixr_destroy(r);
    }
    /* Without --redis-cluster, a MOVED names the likely cause. */
    fake_answers(slots, cases[0].reply);
    char why[300];
    kvs__ixr_t *r = fake_client(false);
    long rc;
    const char *log = captured(r, &rc);
    cr_assert_eq(rc, -1);
    cr_assert(strstr(log, "--redis-cluster") != NULL, "%s", log);
    kvs__ixr_destroy(r);
    /* a cluster URL with a /DB or a unix socket is refused at create */
    cr_assert_null(kvs__ixr_create("redis://h:1/2", "me", 5000, NULL, true, why, sizeof(why)));
    cr_assert(strstr(why, "--redis-cluster") != NULL, "%s", why);
    cr_assert_null(kvs__ixr_create("unix:/x.sock", "me", 5000, NULL, true, why, sizeof(why)));
}

/* ---- the reply parsers on their own (found by tests/fuzz/fuzz_redis.c) ---- */

static redisReply *read_reply(const char *resp, size_t len)
{
    redisReader *rd = redisReaderCreate();
    cr_assert(rd != NULL && redisReaderFeed(rd, resp, len) == REDIS_OK);
    void *v = NULL;
    cr_assert(redisReaderGetReply(rd, &v) == REDIS_OK && v != NULL);
    redisReaderFree(rd);
    return v;
}

/* A NUL byte inside an address cut it short: "MOVED 5 h:1\0:7002" was taken for h:1. */
Test(ixredis_cluster_parse, nul_in_an_address_is_refused)
{
    char why[300];
    kvs__ixr_t *r =
        kvs__ixr_create("redis://seed.example:7000", "p", 3000, NULL, true, why, sizeof(why));
    cr_assert(r != NULL, "%s", why);
    static const char moved[] = "-MOVED 5 h:1\0:7002\r\n", moved_ok[] = "-MOVED 5 h:7002\r\n";
    redisReply *rep = read_reply(moved_ok, sizeof(moved_ok) - 1);
    cr_assert_geq(kvs__ixr_parse_redirect(r, rep, 5, why, sizeof(why)), 0, "%s", why);
    freeReplyObject(rep);
    rep = read_reply(moved, sizeof(moved) - 1);
    why[0] = '\0';
    cr_assert_eq(kvs__ixr_parse_redirect(r, rep, 5, why, sizeof(why)), -1);
    cr_assert(strstr(why, "NUL") != NULL, "%s", why);
    freeReplyObject(rep);

    static int16_t map[16384];
    static const char slots[] = "*1\r\n*3\r\n:0\r\n:9\r\n*2\r\n$3\r\nab\0\r\n:7001\r\n",
                      slots_ok[] = "*1\r\n*3\r\n:0\r\n:9\r\n*2\r\n$3\r\nabc\r\n:7001\r\n";
    rep = read_reply(slots_ok, sizeof(slots_ok) - 1);
    cr_assert(kvs__ixr_parse_slots_reply(r, rep, map, why, sizeof(why)), "%s", why);
    freeReplyObject(rep);
    rep = read_reply(slots, sizeof(slots) - 1);
    why[0] = '\0';
    cr_assert(!kvs__ixr_parse_slots_reply(r, rep, map, why, sizeof(why)));
    cr_assert(strstr(why, "NUL") != NULL, "%s", why);
    freeReplyObject(rep);
    kvs__ixr_destroy(r);
}
