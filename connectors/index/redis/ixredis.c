/* SPDX-License-Identifier: Apache-2.0 */
/* ixredis.c - the index shared through Redis (hiredis): leases, pipelined writes, snapshot,
 * and scores walked server-side by one Lua script. */
#include "ixredis_int.h"
#include "ixtls_int.h"
#include "util_int.h"

#include <hiredis/hiredis.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define CONNECT_MS 500
#define REPLY_MS   1000
#define RETRY_MS   1000

/* Tiers as bits, fastest first; a block's best copy is its lowest bit. */
static const char *const tier_names[8] = {"GPU",   "CPU",   "DISK",  "KVSHARE_POOL",
                                          "OTHER", "OTHER", "OTHER", "OTHER"};

/* Scripts. Keys are built inside them from the model and pod (standalone Redis allows it;
 * a cluster would need every key under one {hash tag}). */
static const char store_lua[] = "local m, pod, b = ARGV[1], ARGV[2], tonumber(ARGV[3])\n"
                                "local ps = 'kvs:p:' .. m .. '@' .. pod\n"
                                "for i = 4, #ARGV do\n"
                                "  local k = 'kvs:b:' .. m .. '@' .. ARGV[i]\n"
                                "  local v = tonumber(redis.call('HGET', k, pod) or '0')\n"
                                "  redis.call('HSET', k, pod, bit.bor(v, b))\n"
                                "  redis.call('SADD', ps, ARGV[i])\n"
                                "end\n"
                                "redis.call('SADD', 'kvs:P:' .. m, pod)\n"
                                "redis.call('SADD', 'kvs:m', m)\n"
                                "return 0\n";

static const char remove_lua[] =
    "local m, pod, b = ARGV[1], ARGV[2], tonumber(ARGV[3])\n"
    "local ps = 'kvs:p:' .. m .. '@' .. pod\n"
    "for i = 4, #ARGV do\n"
    "  local k = 'kvs:b:' .. m .. '@' .. ARGV[i]\n"
    "  local v = bit.band(tonumber(redis.call('HGET', k, pod) or '0'), bit.bnot(b))\n"
    "  if v == 0 then\n"
    "    redis.call('HDEL', k, pod)\n"
    "    redis.call('SREM', ps, ARGV[i])\n"
    "  else\n"
    "    redis.call('HSET', k, pod, v)\n"
    "  end\n"
    "end\n"
    "return 0\n";

static const char clear_lua[] = "local m, pod = ARGV[1], ARGV[2]\n"
                                "local ps = 'kvs:p:' .. m .. '@' .. pod\n"
                                "for _, h in ipairs(redis.call('SMEMBERS', ps)) do\n"
                                "  redis.call('HDEL', 'kvs:b:' .. m .. '@' .. h, pod)\n"
                                "end\n"
                                "redis.call('DEL', ps)\n"
                                "return 0\n";

/* 2: taken, 1: renewed, 0: held by another replica. */
static const char lease_lua[] = "local cur = redis.call('GET', KEYS[1])\n"
                                "if cur == ARGV[1] then\n"
                                "  redis.call('PEXPIRE', KEYS[1], ARGV[2])\n"
                                "  return 1\n"
                                "elseif not cur then\n"
                                "  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])\n"
                                "  return 2\n"
                                "end\n"
                                "return 0\n";

/* [hash, bits, hash, bits, ...] of one pod. */
static const char snap_lua[] = "local m, pod = ARGV[1], ARGV[2]\n"
                               "local out = {}\n"
                               "for _, h in ipairs(redis.call('SMEMBERS', 'kvs:p:' .. m .. '@' .. "
                               "pod)) do\n"
                               "  local v = redis.call('HGET', 'kvs:b:' .. m .. '@' .. h, pod)\n"
                               "  if v then out[#out + 1] = h; out[#out + 1] = v end\n"
                               "end\n"
                               "return out\n";

/* KEYS: the prompt's block keys in order; ARGV[1]: the degraded set; ARGV[2..]: only these
 * pods. The candidates are key 0's holders; each next key keeps those holding it (one
 * HMGET), so the walk stops as soon as no pod is left. Returns [pod, depth, worst tier
 * rank, ...]. */
static const char score_lua[] =
    "local first = redis.call('HGETALL', KEYS[1])\n"
    "local only = nil\n"
    "if #ARGV > 1 then\n"
    "  only = {}\n"
    "  for i = 2, #ARGV do only[ARGV[i]] = true end\n"
    "end\n"
    "local function rank(v)\n"
    "  v = tonumber(v)\n"
    "  for r = 0, 7 do if bit.band(v, bit.lshift(1, r)) ~= 0 then return r end end\n"
    "  return 7\n"
    "end\n"
    "local live, depth, worst = {}, {}, {}\n"
    "for i = 1, #first, 2 do\n"
    "  local p = first[i]\n"
    "  if (only == nil or only[p]) and redis.call('SISMEMBER', ARGV[1], p) == 0 then\n"
    "    live[#live + 1] = p\n"
    "    depth[p] = 1\n"
    "    worst[p] = rank(first[i + 1])\n"
    "  end\n"
    "end\n"
    "local k = 2\n"
    "while k <= #KEYS and #live > 0 do\n"
    "  local vals = redis.call('HMGET', KEYS[k], unpack(live))\n"
    "  local nl = {}\n"
    "  for i = 1, #live do\n"
    "    if vals[i] then\n"
    "      local p = live[i]\n"
    "      depth[p] = k\n"
    "      local r = rank(vals[i])\n"
    "      if r > worst[p] then worst[p] = r end\n"
    "      nl[#nl + 1] = p\n"
    "    end\n"
    "  end\n"
    "  live = nl\n"
    "  k = k + 1\n"
    "end\n"
    "local out = {}\n"
    "for p, d in pairs(depth) do\n"
    "  out[#out + 1] = p\n"
    "  out[#out + 1] = d\n"
    "  out[#out + 1] = worst[p]\n"
    "end\n"
    "return out\n";

enum { S_STORE, S_REMOVE, S_CLEAR, S_LEASE, S_SNAP, S_SCORE, NSCRIPTS };

static const char *const scripts[NSCRIPTS] = {store_lua, remove_lua, clear_lua,
                                              lease_lua, snap_lua,   score_lua};

typedef struct conn {
    redisContext *c;
    kvs__ixtls_conn_t *tls; /* rediss://: the relay under c */
    uint64_t next_try_ms;
    uint64_t epoch;
    /* SHA1 of each script as SCRIPT LOAD answered on this connection (EVALSHA); empty: send
     * the body (EVAL). */
    char sha[NSCRIPTS][41];
} conn_t;

struct kvs__ixr {
    char host[256];
    char path[256]; /* unix socket; host unused */
    int port, db;
    char user[128], pass[256]; /* AUTH [user] pass on connect, when pass[0] */
    kvs__ixtls_ctx_t *tls;     /* rediss:// */
    char id[128];
    char lease_ms[16];
    conn_t rd; /* the readers (HTTP threads) and the snapshot, under lock */
    pthread_mutex_t lock;
    atomic_ullong errors;
};

/* One writer thread's connection (a shard's writer): hiredis contexts are not thread-safe. */
struct kvs__ixr_w {
    kvs__ixr_t *r;
    conn_t c;
    size_t pending; /* writes queued on c */
};

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static int hexval(char c)
{
    return c >= '0' && c <= '9'   ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
}

/* URL userinfo: %XX decoded into out (NUL-terminated); false when malformed or too long. */
static bool pct_decode(const char *s, size_t n, char *out, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '%') {
            int hi = i + 2 < n ? hexval(s[i + 1]) : -1;
            int lo = hi >= 0 ? hexval(s[i + 2]) : -1;
            if (lo < 0 || (hi == 0 && lo == 0))
                return false;
            c = (char)(hi * 16 + lo);
            i += 2;
        }
        if (o + 1 >= cap)
            return false;
        out[o++] = c;
    }
    out[o] = '\0';
    return true;
}

/* An environment variable naming a file; NULL when unset or empty. */
static const char *env_file(const char *name)
{
    const char *v = getenv(name);
    return v != NULL && v[0] != '\0' ? v : NULL;
}

kvs__ixr_t *kvs__ixr_create(const char *url, const char *replica_id, uint32_t lease_ms,
                            const kvs__ixr_tls_t *tls, char *why, size_t wl)
{
    kvs__ixr_t *r = calloc(1, sizeof(*r));
    if (r == NULL) {
        snprintf(why, wl, "out of memory");
        return NULL;
    }
    r->port = 6379;
    bool use_tls = false;
    if (strncmp(url, "unix:", 5) == 0) {
        const char *p = url + 5;
        if (strncmp(p, "//", 2) == 0)
            p += 2;
        if (p[0] != '/' || strlen(p) >= sizeof(r->path))
            goto bad;
        snprintf(r->path, sizeof(r->path), "%s", p);
    } else if (strncmp(url, "redis://", 8) == 0 || strncmp(url, "rediss://", 9) == 0) {
        use_tls = strncmp(url, "rediss://", 9) == 0;
        const char *h = url + (use_tls ? 9 : 8), *end = h + strcspn(h, "/");
        const char *at = NULL;
        for (const char *q = h; q < end; q++)
            if (*q == '@')
                at = q; /* the last one: a password may hold '@' only %-encoded, but be kind */
        char auth[300];
        kvs__endpoint_t ep;
        if (at != NULL) { /* [user]:password@ */
            const char *colon = memchr(h, ':', (size_t)(at - h));
            if (colon == NULL || !pct_decode(h, (size_t)(colon - h), r->user, sizeof(r->user)) ||
                !pct_decode(colon + 1, (size_t)(at - colon - 1), r->pass, sizeof(r->pass)) ||
                r->pass[0] == '\0')
                goto bad;
            h = at + 1;
        }
        if ((size_t)(end - h) >= sizeof(auth))
            goto bad;
        memcpy(auth, h, (size_t)(end - h));
        auth[end - h] = '\0';
        if (kvs__endpoint_parse(auth, KVS__EP_PORT_OPTIONAL | KVS__EP_PORT_NONZERO, &ep, NULL, 0) !=
                0 ||
            strlen(ep.host) >= sizeof(r->host))
            goto bad;
        snprintf(r->host, sizeof(r->host), "%s", ep.host);
        if (ep.has_port)
            r->port = ep.port_num;
        if (*end == '/' && end[1] != '\0') {
            char *e;
            long db = strtol(end + 1, &e, 10);
            if (*e != '\0' || db < 0 || db > 1000000)
                goto bad;
            r->db = (int)db;
        }
    } else {
        goto bad;
    }
    /* Not in the URL (which a process list shows): from the environment. */
    const char *ep_pass = getenv("KVSHARE_REDIS_PASSWORD"), *ep_user = getenv("KVSHARE_REDIS_USER");
    if (r->pass[0] == '\0' && ep_pass != NULL && ep_pass[0] != '\0') {
        if (strlen(ep_pass) >= sizeof(r->pass) ||
            (ep_user != NULL && strlen(ep_user) >= sizeof(r->user)))
            goto bad;
        snprintf(r->pass, sizeof(r->pass), "%s", ep_pass);
        snprintf(r->user, sizeof(r->user), "%s", ep_user != NULL ? ep_user : "");
    }
    if (use_tls) { /* the files now, so that a wrong path fails at start */
        const char *ca = tls && tls->ca_file ? tls->ca_file : env_file("KVSHARE_REDIS_CA_FILE");
        const char *cert =
            tls && tls->cert_file ? tls->cert_file : env_file("KVSHARE_REDIS_CERT_FILE");
        const char *key = tls && tls->key_file ? tls->key_file : env_file("KVSHARE_REDIS_KEY_FILE");
        char e[400];
        r->tls = kvs__ixtls_ctx_create(ca, cert, key, e, sizeof(e));
        if (r->tls == NULL) {
            snprintf(why, wl, "'%s': %s", url, e);
            explicit_bzero(r->pass, sizeof(r->pass));
            free(r);
            return NULL;
        }
    }
    snprintf(r->id, sizeof(r->id), "%s", replica_id);
    snprintf(r->lease_ms, sizeof(r->lease_ms), "%u", lease_ms);
    pthread_mutex_init(&r->lock, NULL);
    return r;
bad:
    snprintf(why, wl, "'%s': expected redis[s]://[[USER]:PASSWORD@]HOST[:PORT][/DB] or unix:/PATH",
             url);
    explicit_bzero(r->pass, sizeof(r->pass));
    free(r);
    return NULL;
}

static void conn_drop(conn_t *c)
{
    if (c->c != NULL)
        redisFree(c->c); /* closes hiredis's end: the relay, if any, stops */
    c->c = NULL;
    kvs__ixtls_close(c->tls);
    c->tls = NULL;
}

void kvs__ixr_destroy(kvs__ixr_t *r)
{
    if (r == NULL)
        return;
    conn_drop(&r->rd);
    kvs__ixtls_ctx_free(r->tls);
    pthread_mutex_destroy(&r->lock);
    explicit_bzero(r->pass, sizeof(r->pass));
    free(r);
}

unsigned long long kvs__ixr_errors(const kvs__ixr_t *r)
{
    return atomic_load(&((kvs__ixr_t *)r)->errors);
}

/* Counts a failure, logs it (the first 10, then one in 1000) with its cause, drops the
 * connection. detail: the cause (a server's error reply), or NULL for the connection's. */
static void failed_why(kvs__ixr_t *r, conn_t *c, const char *what, const char *detail)
{
    unsigned long long n = atomic_fetch_add(&r->errors, 1) + 1;
    /* Over TLS, hiredis only sees the relay's end close: the relay knows why. */
    if (detail == NULL)
        detail = kvs__ixtls_error(c->tls);
    if (detail == NULL)
        detail = c->c && c->c->err ? c->c->errstr : "no reply (unreachable?)";
    const char *hint = "";
    if (strstr(detail, "certificate required") != NULL)
        hint = " (this Redis has tls-auth-clients: KVSHARE_REDIS_CERT_FILE and "
               "KVSHARE_REDIS_KEY_FILE, or --redis-cert and --redis-key)";
    if (strncmp(detail, "NOAUTH", 6) == 0)
        hint = " (this Redis wants a password: redis://:PASSWORD@HOST or KVSHARE_REDIS_PASSWORD)";
    else if (strncmp(detail, "WRONGPASS", 9) == 0 || strstr(detail, "invalid password") != NULL)
        hint = " (check the password or user in --redis / KVSHARE_REDIS_PASSWORD)";
    if (n <= 10 || n % 1000 == 0)
        fprintf(stderr, "kvshare index: redis %s%s%.0d: %s failed (%llu so far): %s%s\n",
                r->path[0] ? r->path : r->host, r->path[0] ? "" : ":", r->path[0] ? 0 : r->port,
                what, n, detail, hint);
    conn_drop(c);
    c->next_try_ms = mono_ms() + RETRY_MS;
}

static void failed(kvs__ixr_t *r, conn_t *c, const char *what)
{
    failed_why(r, c, what, NULL);
}

/* One command at connect time; false (counted, logged, dropped) unless the reply has type
 * want. */
static bool setup_cmd(kvs__ixr_t *r, conn_t *c, int argc, const char **argv, int want,
                      const char *what)
{
    redisReply *rep = redisCommandArgv(c->c, argc, argv, NULL);
    bool ok = rep != NULL && rep->type == want;
    if (!ok) {
        char msg[300];
        snprintf(msg, sizeof(msg), "%s", rep && rep->type == REDIS_REPLY_ERROR ? rep->str : "");
        failed_why(r, c, what, msg[0] ? msg : NULL);
    }
    if (rep != NULL)
        freeReplyObject(rep);
    return ok;
}

/* Loads the scripts (one pipelined round trip): EVALSHA from now on. A script the server
 * refuses to load (an ACL without scripting...) stays EVAL, which then fails visibly. */
static bool load_scripts(kvs__ixr_t *r, conn_t *c)
{
    char *fatal = NULL;
    for (int i = 0; i < NSCRIPTS; i++) {
        const char *argv[] = {"SCRIPT", "LOAD", scripts[i]};
        c->sha[i][0] = '\0';
        if (redisAppendCommandArgv(c->c, 3, argv, NULL) != REDIS_OK) {
            failed(r, c, "SCRIPT LOAD");
            return false;
        }
    }
    for (int i = 0; i < NSCRIPTS; i++) {
        void *v = NULL;
        if (redisGetReply(c->c, &v) != REDIS_OK) {
            free(fatal);
            failed(r, c, "SCRIPT LOAD");
            return false;
        }
        redisReply *rep = v;
        if (rep->type == REDIS_REPLY_STRING && rep->len == 40)
            memcpy(c->sha[i], rep->str, 41);
        else if (rep->type == REDIS_REPLY_ERROR && strncmp(rep->str, "NOAUTH", 6) == 0)
            fatal = fatal ? fatal : strdup(rep->str);
        freeReplyObject(rep);
    }
    if (fatal != NULL) { /* no password given, and this Redis wants one */
        failed_why(r, c, "SCRIPT LOAD", fatal);
        free(fatal);
        return false;
    }
    return true;
}

/* A usable connection, (re)connecting at most once per RETRY_MS: AUTH, SELECT, scripts. */
static redisContext *conn_get(kvs__ixr_t *r, conn_t *c)
{
    if (c->c != NULL)
        return c->c;
    if (mono_ms() < c->next_try_ms)
        return NULL;
    struct timeval ct = {.tv_sec = 0, .tv_usec = CONNECT_MS * 1000};
    struct timeval rt = {.tv_sec = REPLY_MS / 1000, .tv_usec = (REPLY_MS % 1000) * 1000};
    if (r->tls != NULL) {
        char why[400];
        int fd = -1;
        c->tls = kvs__ixtls_connect(r->tls, r->host, r->port, CONNECT_MS, REPLY_MS, &fd, why,
                                    sizeof(why));
        if (c->tls == NULL) {
            failed_why(r, c, "connect", why);
            return NULL;
        }
        c->c = redisConnectFd(fd);
        if (c->c == NULL) /* out of memory: the fd stays ours */
            close(fd);
    } else {
        c->c = r->path[0] ? redisConnectUnixWithTimeout(r->path, ct)
                          : redisConnectWithTimeout(r->host, r->port, ct);
    }
    if (c->c == NULL || c->c->err || redisSetTimeout(c->c, rt) != REDIS_OK) {
        failed(r, c, "connect");
        return NULL;
    }
    if (r->pass[0] != '\0') {
        const char *argv[] = {"AUTH", r->user, r->pass};
        bool ok = r->user[0] ? setup_cmd(r, c, 3, argv, REDIS_REPLY_STATUS, "AUTH")
                             : setup_cmd(r, c, 2, (const char *[]){"AUTH", r->pass},
                                         REDIS_REPLY_STATUS, "AUTH");
        if (!ok)
            return NULL;
    }
    if (r->db != 0) {
        char db[16];
        snprintf(db, sizeof(db), "%d", r->db);
        const char *argv[] = {"SELECT", db};
        if (!setup_cmd(r, c, 2, argv, REDIS_REPLY_STATUS, "SELECT"))
            return NULL;
    }
    if (!load_scripts(r, c))
        return NULL;
    c->epoch++;
    return c->c;
}

/* argv[0..1] for script id on c: EVALSHA sha, or EVAL body. */
static void script_head(const conn_t *c, int id, const char **argv)
{
    if (c->sha[id][0] != '\0') {
        argv[0] = "EVALSHA";
        argv[1] = c->sha[id];
    } else {
        argv[0] = "EVAL";
        argv[1] = scripts[id];
    }
}

static bool is_noscript(const redisReply *rep)
{
    return rep != NULL && rep->type == REDIS_REPLY_ERROR && strncmp(rep->str, "NOSCRIPT", 8) == 0;
}

/* Runs one command; NULL (counted, connection dropped) on failure or an error reply. For a
 * script (script >= 0; argv[0..1] are filled here), EVALSHA first, and on NOSCRIPT (the
 * server's script cache was flushed) EVAL with the body, reloading it for the next call. */
static redisReply *run_s(kvs__ixr_t *r, conn_t *c, int script, int argc, const char **argv,
                         const size_t *lens, const char *what)
{
    redisContext *ctx = conn_get(r, c);
    if (ctx == NULL)
        return NULL;
    if (script >= 0)
        script_head(c, script, argv);
    redisReply *rep = redisCommandArgv(ctx, argc, argv, lens);
    if (script >= 0 && is_noscript(rep)) {
        freeReplyObject(rep);
        c->sha[script][0] = '\0';
        script_head(c, script, argv);
        rep = redisCommandArgv(ctx, argc, argv, lens);
        const char *la[] = {"SCRIPT", "LOAD", scripts[script]};
        redisReply *l = rep != NULL ? redisCommandArgv(ctx, 3, la, NULL) : NULL;
        if (l != NULL && l->type == REDIS_REPLY_STRING && l->len == 40)
            memcpy(c->sha[script], l->str, 41);
        if (l != NULL)
            freeReplyObject(l);
    }
    if (rep == NULL || rep->type == REDIS_REPLY_ERROR) {
        char msg[300] = "";
        if (rep != NULL) {
            snprintf(msg, sizeof(msg), "%.*s", (int)rep->len, rep->str);
            freeReplyObject(rep);
        }
        failed_why(r, c, what, msg[0] ? msg : NULL);
        return NULL;
    }
    return rep;
}

static redisReply *run(kvs__ixr_t *r, conn_t *c, int argc, const char **argv, const size_t *lens,
                       const char *what)
{
    return run_s(r, c, -1, argc, argv, lens, what);
}

kvs__ixr_w_t *kvs__ixr_writer_create(kvs__ixr_t *r)
{
    kvs__ixr_w_t *w = calloc(1, sizeof(*w));
    if (w != NULL)
        w->r = r;
    return w;
}

void kvs__ixr_writer_destroy(kvs__ixr_w_t *w)
{
    if (w == NULL)
        return;
    conn_drop(&w->c);
    free(w);
}

int kvs__ixr_lease(kvs__ixr_w_t *w, const char *model, const char *pod, uint64_t *epoch_p)
{
    kvs__ixr_t *r = w->r;
    char key[600];
    snprintf(key, sizeof(key), "kvs:l:%s@%s", model, pod);
    const char *argv[] = {NULL, NULL, "1", key, r->id, r->lease_ms};
    redisReply *rep = run_s(r, &w->c, S_LEASE, 6, argv, NULL, "lease");
    if (rep == NULL)
        return -1;
    int rc = rep->type == REDIS_REPLY_INTEGER ? (int)rep->integer : -1;
    freeReplyObject(rep);
    *epoch_p = w->c.epoch;
    return rc;
}

static uint8_t tier_bit(const char *medium)
{
    if (medium == NULL)
        return 1;
    for (int i = 0; i < 4; i++)
        if (strcasecmp(medium, tier_names[i]) == 0)
            return (uint8_t)(1u << i);
    return 128;
}

/* Queues EVAL script model pod bits hash... on the writer. */
static void queue_blocks(kvs__ixr_w_t *w, int script, const char *model, const char *pod,
                         const uint64_t *hashes, size_t n, const char *medium)
{
    kvs__ixr_t *r = w->r;
    redisContext *ctx = conn_get(r, &w->c);
    if (ctx == NULL || n == 0)
        return;
    size_t argc = 6 + n;
    const char **argv = malloc(argc * sizeof(*argv));
    size_t *lens = malloc(argc * sizeof(*lens));
    char *hex = malloc(n * 17);
    if (argv == NULL || lens == NULL || hex == NULL) {
        free(argv);
        free(lens);
        free(hex);
        atomic_fetch_add(&r->errors, 1);
        return;
    }
    char bits[4];
    snprintf(bits, sizeof(bits), "%u", tier_bit(medium));
    script_head(&w->c, script, argv);
    argv[2] = "0", argv[3] = model, argv[4] = pod;
    argv[5] = bits;
    for (size_t i = 0; i < n; i++) {
        snprintf(hex + 17 * i, 17, "%016llx", (unsigned long long)hashes[i]);
        argv[6 + i] = hex + 17 * i;
    }
    for (size_t i = 0; i < argc; i++)
        lens[i] = strlen(argv[i]);
    if (redisAppendCommandArgv(ctx, (int)argc, argv, lens) == REDIS_OK)
        w->pending++;
    else
        failed(r, &w->c, "queue");
    free(argv);
    free(lens);
    free(hex);
}

void kvs__ixr_store(kvs__ixr_w_t *w, const char *model, const char *pod, const uint64_t *hashes,
                    size_t n, const char *medium)
{
    queue_blocks(w, S_STORE, model, pod, hashes, n, medium);
}

void kvs__ixr_remove(kvs__ixr_w_t *w, const char *model, const char *pod, const uint64_t *hashes,
                     size_t n, const char *medium)
{
    queue_blocks(w, S_REMOVE, model, pod, hashes, n, medium);
}

void kvs__ixr_clear(kvs__ixr_w_t *w, const char *model, const char *pod)
{
    kvs__ixr_t *r = w->r;
    redisContext *ctx = conn_get(r, &w->c);
    if (ctx == NULL)
        return;
    const char *argv[] = {NULL, NULL, "0", model, pod};
    script_head(&w->c, S_CLEAR, argv);
    if (redisAppendCommandArgv(ctx, 5, argv, NULL) == REDIS_OK)
        w->pending++;
    else
        failed(r, &w->c, "queue");
}

void kvs__ixr_set_degraded(kvs__ixr_w_t *w, const char *model, const char *pod, bool degraded)
{
    kvs__ixr_t *r = w->r;
    redisContext *ctx = conn_get(r, &w->c);
    if (ctx == NULL)
        return;
    char key[300];
    snprintf(key, sizeof(key), "kvs:d:%s", model);
    const char *argv[] = {degraded ? "SADD" : "SREM", key, pod};
    if (redisAppendCommandArgv(ctx, 3, argv, NULL) == REDIS_OK)
        w->pending++;
    else
        failed(r, &w->c, "queue");
}

int kvs__ixr_flush(kvs__ixr_w_t *w)
{
    kvs__ixr_t *r = w->r;
    int rc = 0;
    bool noscript = false;
    while (w->pending > 0 && w->c.c != NULL) {
        void *rep = NULL;
        if (redisGetReply(w->c.c, &rep) != REDIS_OK) {
            failed(r, &w->c, "write");
            rc = -1;
            break;
        }
        w->pending--;
        redisReply *x = rep;
        if (is_noscript(x)) {
            noscript = true;
            rc = -1;
        } else if (x->type == REDIS_REPLY_ERROR) {
            unsigned long long n = atomic_fetch_add(&r->errors, 1) + 1;
            if (n <= 10)
                fprintf(stderr, "kvshare index: redis: write refused: %.*s\n", (int)x->len, x->str);
            rc = -1;
        }
        freeReplyObject(rep);
    }
    w->pending = 0;
    /* The server lost its scripts (SCRIPT FLUSH, a failover to a replica that never loaded
     * them): those writes are gone. Reconnecting reloads the scripts, and the new connection
     * number makes the lease holder resync each pod it writes. */
    if (noscript && w->c.c != NULL)
        failed_why(r, &w->c, "write",
                   "NOSCRIPT: the server's script cache was flushed; "
                   "reconnecting, then resyncing the pods written here");
    return rc;
}

int kvs__ixr_snapshot(kvs__ixr_t *r,
                      void (*pod_cb)(void *arg, const char *model, const char *pod, bool degraded),
                      void (*copy_cb)(void *arg, const char *model, const char *pod, uint64_t hash,
                                      const char *medium),
                      void *arg)
{
    pthread_mutex_lock(&r->lock); /* the readers' connection: no writer thread runs yet */
    const char *am[] = {"SMEMBERS", "kvs:m"};
    redisReply *models = run(r, &r->rd, 2, am, NULL, "snapshot");
    if (models == NULL) {
        pthread_mutex_unlock(&r->lock);
        return -1;
    }
    int rc = models->type == REDIS_REPLY_ARRAY ? 0 : -1;
    for (size_t i = 0; rc == 0 && i < models->elements; i++) {
        const char *m = models->element[i]->str;
        if (models->element[i]->type != REDIS_REPLY_STRING || strchr(m, '@'))
            continue;
        char pk[300], dk[300];
        snprintf(pk, sizeof(pk), "kvs:P:%s", m);
        snprintf(dk, sizeof(dk), "kvs:d:%s", m);
        const char *ap[] = {"SMEMBERS", pk}, *ad[] = {"SMEMBERS", dk};
        redisReply *pods = run(r, &r->rd, 2, ap, NULL, "snapshot");
        redisReply *deg = pods ? run(r, &r->rd, 2, ad, NULL, "snapshot") : NULL;
        if (pods == NULL || deg == NULL || pods->type != REDIS_REPLY_ARRAY ||
            deg->type != REDIS_REPLY_ARRAY) {
            rc = -1;
        }
        for (size_t j = 0; rc == 0 && j < pods->elements; j++) {
            const char *p = pods->element[j]->str;
            if (pods->element[j]->type != REDIS_REPLY_STRING || strchr(p, '@'))
                continue;
            bool d = false;
            for (size_t k = 0; k < deg->elements; k++)
                d |= deg->element[k]->type == REDIS_REPLY_STRING &&
                     strcmp(deg->element[k]->str, p) == 0;
            pod_cb(arg, m, p, d);
            const char *as[] = {NULL, NULL, "0", m, p};
            redisReply *cp = run_s(r, &r->rd, S_SNAP, 5, as, NULL, "snapshot");
            if (cp == NULL || cp->type != REDIS_REPLY_ARRAY) {
                rc = -1;
            } else {
                for (size_t k = 0; k + 1 < cp->elements; k += 2) {
                    const redisReply *h = cp->element[k], *v = cp->element[k + 1];
                    if (h->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING)
                        continue;
                    uint64_t hash = strtoull(h->str, NULL, 16);
                    unsigned bits = (unsigned)strtoul(v->str, NULL, 10);
                    for (int t = 0; t < 8; t++) /* one copy per tier held */
                        if (bits & (1u << t) && (t < 4 || t == 7))
                            copy_cb(arg, m, p, hash, tier_names[t]);
                }
            }
            if (cp)
                freeReplyObject(cp);
        }
        if (pods)
            freeReplyObject(pods);
        if (deg)
            freeReplyObject(deg);
    }
    freeReplyObject(models);
    pthread_mutex_unlock(&r->lock);
    return rc;
}

static int cmp_score(const void *a, const void *b)
{
    const kvs__ixr_score_t *x = a, *y = b;
    if (x->blocks != y->blocks)
        return x->blocks > y->blocks ? -1 : 1;
    return strcmp(x->pod, y->pod);
}

long kvs__ixr_score(kvs__ixr_t *r, const char *model, const uint64_t *keys, size_t n,
                    const char *const *only, size_t nonly, kvs__ixr_score_t *out, size_t max_out)
{
    if (n == 0)
        return 0;
    size_t klen = strlen("kvs:b:") + strlen(model) + 1 + 16 + 1;
    size_t argc = 3 + n + 1 + nonly;
    const char **argv = malloc(argc * sizeof(*argv));
    char *kb = malloc(n * klen);
    kvs__ixr_score_t *all = NULL;
    long matched = -1;
    char nk[24], dk[300];
    if (argv == NULL || kb == NULL)
        goto out;
    snprintf(nk, sizeof(nk), "%zu", n);
    snprintf(dk, sizeof(dk), "kvs:d:%s", model);
    argv[2] = nk;
    for (size_t i = 0; i < n; i++) {
        snprintf(kb + i * klen, klen, "kvs:b:%s@%016llx", model, (unsigned long long)keys[i]);
        argv[3 + i] = kb + i * klen;
    }
    argv[3 + n] = dk;
    for (size_t i = 0; i < nonly; i++)
        argv[4 + n + i] = only[i];
    pthread_mutex_lock(&r->lock);
    redisReply *rep = run_s(r, &r->rd, S_SCORE, (int)argc, argv, NULL, "score");
    pthread_mutex_unlock(&r->lock);
    if (rep == NULL)
        goto out;
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements % 3 != 0) {
        atomic_fetch_add(&r->errors, 1);
        freeReplyObject(rep);
        goto out;
    }
    size_t m = rep->elements / 3;
    all = calloc(m ? m : 1, sizeof(*all));
    if (all == NULL) {
        freeReplyObject(rep);
        goto out;
    }
    size_t k = 0;
    for (size_t i = 0; i < m; i++) {
        const redisReply *p = rep->element[3 * i], *d = rep->element[3 * i + 1],
                         *t = rep->element[3 * i + 2];
        if (p->type != REDIS_REPLY_STRING || d->type != REDIS_REPLY_INTEGER ||
            t->type != REDIS_REPLY_INTEGER || d->integer < 1 || t->integer < 0 || t->integer > 7)
            continue;
        snprintf(all[k].pod, sizeof(all[k].pod), "%s", p->str);
        all[k].blocks = (uint32_t)d->integer;
        all[k].medium = tier_names[t->integer];
        k++;
    }
    freeReplyObject(rep);
    qsort(all, k, sizeof(*all), cmp_score);
    memcpy(out, all, (k < max_out ? k : max_out) * sizeof(*all));
    matched = (long)k;
out:
    free(all);
    free(argv);
    free(kb);
    return matched;
}
