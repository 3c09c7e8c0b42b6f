/* SPDX-License-Identifier: Apache-2.0 */
/* ixredis.c - the index shared through Redis (hiredis): leases, pipelined writes, snapshot,
 * and scores walked server-side by one Lua script; on one Redis or a Redis Cluster (our own
 * slot routing: hiredis 0.14 has no cluster client). */
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

#define CONNECT_MS    500
#define REPLY_MS      1000
#define RETRY_MS      1000
#define NSLOTS        16384
#define MAX_NODES     1024 /* cluster: masters a client keeps connections to */
#define MAX_REDIRECTS 5    /* cluster: MOVED/ASK hops one command may take */

/* Tiers as bits, fastest first; a block's best copy is its lowest bit. */
static const char *const tier_names[8] = {"GPU",   "CPU",   "DISK",  "KVSHARE_POOL",
                                          "OTHER", "OTHER", "OTHER", "OTHER"};

/* Scripts. Every key of a model carries the hash tag {model}, so one script touches one
 * slot (a cluster refuses anything else); KEYS[1] is one of them, for routing. The other keys
 * are built inside from the model and pod. */
static const char store_lua[] = "local m, pod, b = ARGV[1], ARGV[2], tonumber(ARGV[3])\n"
                                "local ps = KEYS[1]\n"
                                "for i = 4, #ARGV do\n"
                                "  local k = 'kvs:b:{' .. m .. '}@' .. ARGV[i]\n"
                                "  local v = tonumber(redis.call('HGET', k, pod) or '0')\n"
                                "  redis.call('HSET', k, pod, bit.bor(v, b))\n"
                                "  redis.call('SADD', ps, ARGV[i])\n"
                                "end\n"
                                "redis.call('SADD', 'kvs:P:{' .. m .. '}', pod)\n"
                                "return 0\n";

static const char remove_lua[] =
    "local m, pod, b = ARGV[1], ARGV[2], tonumber(ARGV[3])\n"
    "local ps = KEYS[1]\n"
    "for i = 4, #ARGV do\n"
    "  local k = 'kvs:b:{' .. m .. '}@' .. ARGV[i]\n"
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
                                "local ps = KEYS[1]\n"
                                "for _, h in ipairs(redis.call('SMEMBERS', ps)) do\n"
                                "  redis.call('HDEL', 'kvs:b:{' .. m .. '}@' .. h, pod)\n"
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
                               "for _, h in ipairs(redis.call('SMEMBERS', KEYS[1])) do\n"
                               "  local v = redis.call('HGET', 'kvs:b:{' .. m .. '}@' .. h, pod)\n"
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
    bool was_up;    /* connected before: a new connection is a reconnect */
    size_t pending; /* pipelined writes queued on c (a writer's) */
    /* SHA1 of each script as SCRIPT LOAD answered on this connection (EVALSHA); empty: send
     * the body (EVAL). */
    char sha[NSCRIPTS][41];
} conn_t;

/* A cluster master, as CLUSTER SLOTS or a redirect named it. */
typedef struct node {
    char host[256];
    int port;
    conn_t cn;
} node_t;

/* The connections of one thread (a writer, or the readers under the lock): the one Redis, or
 * with --redis-cluster one per master it has talked to and its own slot map. */
typedef struct client {
    conn_t one;     /* one Redis */
    node_t **nodes; /* cluster: nodes[0] is the URL's host (the seed) */
    size_t nnodes;
    int16_t *slots; /* cluster: slot -> node, -1 unknown */
    bool stale;     /* cluster: refresh the slot map before the next command */
    uint64_t next_map_ms;
    uint64_t epoch; /* bumped on a reconnect or lost writes: the lease holder resyncs */
} client_t;

struct kvs__ixr {
    char host[256];
    char path[256]; /* unix socket; host unused */
    int port, db;
    bool cluster;
    char user[128], pass[256]; /* AUTH [user] pass on connect, when pass[0] */
    kvs__ixtls_ctx_t *tls;     /* rediss:// */
    char id[128];
    char lease_ms[16];
    client_t rd; /* the readers (HTTP threads) and the snapshot, under lock */
    pthread_mutex_t lock;
    atomic_ullong errors, redirects;
};

/* One writer thread's connections (a shard's writer): hiredis contexts are not thread-safe. */
struct kvs__ixr_w {
    kvs__ixr_t *r;
    client_t cl;
};

/* CRC16-CCITT (XMODEM: polynomial 0x1021, initial 0, not reflected), as Redis Cluster's
 * keyHashSlot. Keys here are short; a bitwise loop is enough. */
static uint16_t crc16(const char *buf, size_t len)
{
    uint32_t crc = 0;
    for (size_t i = 0; i < len; i++) {
        crc ^= (uint32_t)(unsigned char)buf[i] << 8;
        for (int b = 0; b < 8; b++)
            crc = (crc & 0x8000u) ? ((crc << 1) ^ 0x1021u) & 0xffffu : (crc << 1) & 0xffffu;
    }
    return (uint16_t)crc;
}

unsigned kvs__ixr_key_slot(const char *key, size_t len)
{
    /* Redis's hash tag: the bytes between the first '{' and the first '}' after it, when
     * not empty; otherwise the whole key. */
    const char *o = memchr(key, '{', len);
    if (o != NULL) {
        size_t off = (size_t)(o - key) + 1;
        const char *c = memchr(o + 1, '}', len - off);
        if (c != NULL && c > o + 1)
            return crc16(o + 1, (size_t)(c - o - 1)) & (NSLOTS - 1);
    }
    return crc16(key, len) & (NSLOTS - 1);
}

/* Whether model's keys share one slot: the tag {model} is cut at its first '}' and must not
 * be empty. */
static bool model_taggable(const char *model)
{
    return model[0] != '\0' && model[0] != '}';
}

static bool client_init(kvs__ixr_t *r, client_t *cl);

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
                            const kvs__ixr_tls_t *tls, bool cluster, char *why, size_t wl)
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
    if (cluster && (r->path[0] != '\0' || r->db != 0)) { /* a cluster has TCP and db 0 only */
        snprintf(why, wl, "'%s': --redis-cluster needs redis[s]://HOST:PORT without a /DB", url);
        explicit_bzero(r->pass, sizeof(r->pass));
        free(r);
        return NULL;
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
    r->cluster = cluster;
    if (!client_init(r, &r->rd)) {
        snprintf(why, wl, "out of memory");
        kvs__ixtls_ctx_free(r->tls);
        explicit_bzero(r->pass, sizeof(r->pass));
        free(r);
        return NULL;
    }
    pthread_mutex_init(&r->lock, NULL);
    return r;
bad:
    snprintf(why, wl, "'%s': expected redis[s]://[[USER]:PASSWORD@]HOST[:PORT][/DB] or unix:/PATH",
             url);
    explicit_bzero(r->pass, sizeof(r->pass));
    free(r);
    return NULL;
}

/* hiredis 0.14 allocates an array reply's element table as soon as it reads the "*N" header:
 * 12 bytes from a hostile or broken server would reserve gigabytes. Our readers refuse arrays
 * over MAX_ARRAY elements (hiredis then fails the reply as out of memory and we drop the
 * connection); a snapshot answer holds 2 per block of one pod. */
#define MAX_ARRAY (1 << 24)
static redisReplyObjectFunctions capped_fns;
static void *(*hiredis_create_array)(const redisReadTask *, int);
static pthread_once_t capped_once = PTHREAD_ONCE_INIT;

static void *create_array_capped(const redisReadTask *t, int n)
{
    return n > MAX_ARRAY ? NULL : hiredis_create_array(t, n);
}

static void capped_init(void)
{
    redisReader *rd = redisReaderCreate(); /* hiredis's own functions, to wrap */
    if (rd == NULL)
        return;
    capped_fns = *rd->fn;
    hiredis_create_array = capped_fns.createArray;
    capped_fns.createArray = create_array_capped;
    redisReaderFree(rd);
}

static void reader_cap(redisReader *rd)
{
    pthread_once(&capped_once, capped_init);
    if (hiredis_create_array != NULL)
        rd->fn = &capped_fns;
}

redisReader *kvs__ixr_reader_create(void)
{
    redisReader *rd = redisReaderCreate();
    if (rd != NULL)
        reader_cap(rd);
    return rd;
}

static void conn_drop(conn_t *c)
{
    if (c->c != NULL)
        redisFree(c->c); /* closes hiredis's end: the relay, if any, stops */
    c->c = NULL;
    c->pending = 0;
    kvs__ixtls_close(c->tls);
    c->tls = NULL;
}

static void client_free(client_t *cl)
{
    conn_drop(&cl->one);
    for (size_t i = 0; i < cl->nnodes; i++) {
        conn_drop(&cl->nodes[i]->cn);
        free(cl->nodes[i]);
    }
    free(cl->nodes);
    free(cl->slots);
    memset(cl, 0, sizeof(*cl));
}

/* The node host:port of cl, added when new (at most MAX_NODES); -1 when full or out of
 * memory. */
static int node_find(kvs__ixr_t *r, client_t *cl, const char *host, int port)
{
    (void)r;
    for (size_t i = 0; i < cl->nnodes; i++)
        if (cl->nodes[i]->port == port && strcmp(cl->nodes[i]->host, host) == 0)
            return (int)i;
    if (cl->nnodes >= MAX_NODES || strlen(host) >= sizeof(cl->nodes[0]->host))
        return -1;
    if ((cl->nnodes & (cl->nnodes - 1)) == 0) { /* 0, 1, 2, 4...: grow by doubling */
        node_t **n = realloc(cl->nodes, (cl->nnodes ? 2 * cl->nnodes : 1) * sizeof(*n));
        if (n == NULL)
            return -1;
        cl->nodes = n;
    }
    node_t *nd = calloc(1, sizeof(*nd));
    if (nd == NULL)
        return -1;
    snprintf(nd->host, sizeof(nd->host), "%s", host);
    nd->port = port;
    cl->nodes[cl->nnodes] = nd;
    return (int)cl->nnodes++;
}

/* A cluster client starts knowing only the seed (the URL's host) and no slot. */
static bool client_init(kvs__ixr_t *r, client_t *cl)
{
    memset(cl, 0, sizeof(*cl));
    if (!r->cluster)
        return true;
    cl->slots = malloc(NSLOTS * sizeof(*cl->slots));
    if (cl->slots == NULL || node_find(r, cl, r->host, r->port) != 0) {
        client_free(cl);
        return false;
    }
    for (size_t i = 0; i < NSLOTS; i++)
        cl->slots[i] = -1;
    cl->stale = true;
    return true;
}

void kvs__ixr_destroy(kvs__ixr_t *r)
{
    if (r == NULL)
        return;
    client_free(&r->rd);
    kvs__ixtls_ctx_free(r->tls);
    pthread_mutex_destroy(&r->lock);
    explicit_bzero(r->pass, sizeof(r->pass));
    free(r);
}

unsigned long long kvs__ixr_errors(const kvs__ixr_t *r)
{
    return atomic_load(&((kvs__ixr_t *)r)->errors);
}

unsigned long long kvs__ixr_redirects(const kvs__ixr_t *r)
{
    return atomic_load(&((kvs__ixr_t *)r)->redirects);
}

/* Counts a failure and logs it (the first 10, then one in 1000) with its cause. where: the
 * node (NULL: the URL's). */
static void log_failure(kvs__ixr_t *r, const node_t *where, const char *what, const char *detail,
                        const char *hint)
{
    unsigned long long n = atomic_fetch_add(&r->errors, 1) + 1;
    if (n <= 10 || n % 1000 == 0) {
        const char *h = where ? where->host : r->path[0] ? r->path : r->host;
        int port = where ? where->port : r->path[0] ? 0 : r->port;
        fprintf(stderr, "kvshare index: redis %s%s%.0d: %s failed (%llu so far): %s%s\n", h,
                port ? ":" : "", port, what, n, detail, hint);
    }
}

/* Counts a failure, logs it with its cause, drops the connection. detail: the cause (a
 * server's error reply), or NULL for the connection's. */
static void failed_why(kvs__ixr_t *r, conn_t *c, const node_t *where, const char *what,
                       const char *detail)
{
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
    else if (!r->cluster && (strncmp(detail, "MOVED ", 6) == 0 || strncmp(detail, "ASK ", 4) == 0))
        hint = " (this Redis is a cluster node: add --redis-cluster)";
    else if (r->cluster && strstr(detail, "cluster support disabled") != NULL)
        hint = " (--redis-cluster, but this Redis is not a cluster)";
    else if (strcmp(detail, "Out of memory") == 0) /* hiredis's word for a refused array too */
        hint = " (or an array reply of more than 2^24 elements, refused)";
    log_failure(r, where, what, detail, hint);
    conn_drop(c);
    c->next_try_ms = mono_ms() + RETRY_MS;
}

static void failed(kvs__ixr_t *r, conn_t *c, const node_t *where, const char *what)
{
    failed_why(r, c, where, what, NULL);
}

/* One command at connect time; false (counted, logged, dropped) unless the reply has type
 * want. */
static bool setup_cmd(kvs__ixr_t *r, conn_t *c, const node_t *where, int argc, const char **argv,
                      int want, const char *what)
{
    redisReply *rep = redisCommandArgv(c->c, argc, argv, NULL);
    bool ok = rep != NULL && rep->type == want;
    if (!ok) {
        char msg[300];
        snprintf(msg, sizeof(msg), "%s", rep && rep->type == REDIS_REPLY_ERROR ? rep->str : "");
        failed_why(r, c, where, what, msg[0] ? msg : NULL);
    }
    if (rep != NULL)
        freeReplyObject(rep);
    return ok;
}

/* Loads the scripts (one pipelined round trip): EVALSHA from now on. A script the server
 * refuses to load (an ACL without scripting...) stays EVAL, which then fails visibly. */
static bool load_scripts(kvs__ixr_t *r, conn_t *c, const node_t *where)
{
    char *fatal = NULL;
    for (int i = 0; i < NSCRIPTS; i++) {
        const char *argv[] = {"SCRIPT", "LOAD", scripts[i]};
        c->sha[i][0] = '\0';
        if (redisAppendCommandArgv(c->c, 3, argv, NULL) != REDIS_OK) {
            failed(r, c, where, "SCRIPT LOAD");
            return false;
        }
    }
    for (int i = 0; i < NSCRIPTS; i++) {
        void *v = NULL;
        if (redisGetReply(c->c, &v) != REDIS_OK) {
            free(fatal);
            failed(r, c, where, "SCRIPT LOAD");
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
        failed_why(r, c, where, "SCRIPT LOAD", fatal);
        free(fatal);
        return false;
    }
    return true;
}

/* A usable connection to host:port (where: the node, NULL for the URL's own), (re)connecting
 * at most once per RETRY_MS: AUTH, SELECT, scripts. A reconnect bumps cl's epoch. */
static redisContext *conn_get(kvs__ixr_t *r, client_t *cl, conn_t *c, const node_t *where)
{
    if (c->c != NULL)
        return c->c;
    if (mono_ms() < c->next_try_ms)
        return NULL;
    const char *host = where ? where->host : r->host;
    int port = where ? where->port : r->port;
    struct timeval ct = {.tv_sec = 0, .tv_usec = CONNECT_MS * 1000};
    struct timeval rt = {.tv_sec = REPLY_MS / 1000, .tv_usec = (REPLY_MS % 1000) * 1000};
    if (r->tls != NULL) {
        char why[400];
        int fd = -1;
        c->tls =
            kvs__ixtls_connect(r->tls, host, port, CONNECT_MS, REPLY_MS, &fd, why, sizeof(why));
        if (c->tls == NULL) {
            failed_why(r, c, where, "connect", why);
            return NULL;
        }
        c->c = redisConnectFd(fd);
        if (c->c == NULL) /* out of memory: the fd stays ours */
            close(fd);
    } else {
        c->c = r->path[0] ? redisConnectUnixWithTimeout(r->path, ct)
                          : redisConnectWithTimeout(host, port, ct);
    }
    if (c->c == NULL || c->c->err || redisSetTimeout(c->c, rt) != REDIS_OK) {
        failed(r, c, where, "connect");
        return NULL;
    }
    reader_cap(c->c->reader);
    if (r->pass[0] != '\0') {
        const char *argv[] = {"AUTH", r->user, r->pass};
        bool ok = r->user[0] ? setup_cmd(r, c, where, 3, argv, REDIS_REPLY_STATUS, "AUTH")
                             : setup_cmd(r, c, where, 2, (const char *[]){"AUTH", r->pass},
                                         REDIS_REPLY_STATUS, "AUTH");
        if (!ok)
            return NULL;
    }
    if (r->db != 0) {
        char db[16];
        snprintf(db, sizeof(db), "%d", r->db);
        const char *argv[] = {"SELECT", db};
        if (!setup_cmd(r, c, where, 2, argv, REDIS_REPLY_STATUS, "SELECT"))
            return NULL;
    }
    if (!load_scripts(r, c, where))
        return NULL;
    if (c->was_up)
        cl->epoch++;
    c->was_up = true;
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

static bool is_err(const redisReply *rep, const char *prefix)
{
    return rep != NULL && rep->type == REDIS_REPLY_ERROR &&
           strncmp(rep->str, prefix, strlen(prefix)) == 0;
}

static bool is_noscript(const redisReply *rep)
{
    return is_err(rep, "NOSCRIPT");
}

/* ---- cluster: the slot map and redirects ---- */

/* Parses "HOST:PORT" (the last ':' splits; IPv6 hosts as Redis writes them) into a node of
 * cl; an empty host is the node that answered (from). -1 with why when malformed. */
static int node_of_addr(kvs__ixr_t *r, client_t *cl, const char *s, size_t len, const node_t *from,
                        char *why, size_t wl)
{
    char a[300];
    if (len == 0 || len >= sizeof(a)) {
        snprintf(why, wl, "address of %zu bytes", len);
        return -1;
    }
    if (memchr(s, '\0', len) != NULL) { /* would cut the text short: "h:1\0:2" is not h:1 */
        snprintf(why, wl, "address with a NUL byte");
        return -1;
    }
    memcpy(a, s, len);
    a[len] = '\0';
    char *colon = strrchr(a, ':'), *e;
    long port = colon ? strtol(colon + 1, &e, 10) : 0;
    if (colon == NULL || colon[1] == '\0' || *e != '\0' || port < 1 || port > 65535) {
        snprintf(why, wl, "'%.80s': not HOST:PORT", a);
        return -1;
    }
    *colon = '\0';
    const char *host = a[0] ? a : from ? from->host : r->host;
    if (strcspn(host, " \r\n\t") != strlen(host)) {
        snprintf(why, wl, "host '%.80s'", host);
        return -1;
    }
    int n = node_find(r, cl, host, (int)port);
    if (n < 0)
        snprintf(why, wl, "more than %d nodes, or out of memory", MAX_NODES);
    return n;
}

/* Reads a CLUSTER SLOTS answer into map (slot -> node of cl). false with why when it is not
 * the shape Redis documents: [[start, end, [host, port, ...], replicas...], ...]. */
static bool parse_slots(kvs__ixr_t *r, client_t *cl, const redisReply *rep, const node_t *from,
                        int16_t *map, char *why, size_t wl)
{
    if (rep->type != REDIS_REPLY_ARRAY) {
        snprintf(why, wl, "not an array (type %d)", rep->type);
        return false;
    }
    for (size_t i = 0; i < NSLOTS; i++)
        map[i] = -1;
    size_t covered = 0;
    for (size_t i = 0; i < rep->elements; i++) {
        const redisReply *e = rep->element[i];
        if (e == NULL || e->type != REDIS_REPLY_ARRAY || e->elements < 3 ||
            e->element[0]->type != REDIS_REPLY_INTEGER ||
            e->element[1]->type != REDIS_REPLY_INTEGER ||
            e->element[2]->type != REDIS_REPLY_ARRAY || e->element[2]->elements < 2 ||
            e->element[2]->element[0]->type != REDIS_REPLY_STRING ||
            e->element[2]->element[1]->type != REDIS_REPLY_INTEGER) {
            snprintf(why, wl, "entry %zu is not [start, end, [host, port, ...], ...]", i);
            return false;
        }
        long long lo = e->element[0]->integer, hi = e->element[1]->integer;
        long long port = e->element[2]->element[1]->integer;
        if (lo < 0 || hi >= NSLOTS || lo > hi) {
            snprintf(why, wl, "entry %zu: slots %lld-%lld", i, lo, hi);
            return false;
        }
        if (port < 1 || port > 65535) {
            snprintf(why, wl, "entry %zu: port %lld", i, port);
            return false;
        }
        const redisReply *h = e->element[2]->element[0];
        char addr[300];
        if (h->len >= 256) {
            snprintf(why, wl, "entry %zu: a host of %zu bytes", i, (size_t)h->len);
            return false;
        }
        if (memchr(h->str, '\0', h->len) != NULL) {
            snprintf(why, wl, "entry %zu: a host with a NUL byte", i);
            return false;
        }
        /* "?" or "": the endpoint is unknown / the node asked */
        int alen = snprintf(addr, sizeof(addr), "%s:%lld",
                            h->len == 1 && h->str[0] == '?' ? "" : h->str, port);
        char nwhy[200];
        int n = node_of_addr(r, cl, addr, (size_t)alen, from, nwhy, sizeof(nwhy));
        if (n < 0) {
            snprintf(why, wl, "entry %zu: %s", i, nwhy);
            return false;
        }
        for (long long s = lo; s <= hi; s++) {
            covered += map[s] < 0;
            map[s] = (int16_t)n;
        }
    }
    if (covered == 0) {
        snprintf(why, wl, "no slot served (is the cluster set up?)");
        return false;
    }
    return true;
}

/* Learns the slot map (CLUSTER SLOTS) from the first node that answers: the seed, then the
 * others known. At most once per 100 ms. false (counted, logged) when none gives a good one. */
static bool refresh_slots(kvs__ixr_t *r, client_t *cl)
{
    uint64_t t = mono_ms();
    if (t < cl->next_map_ms)
        return false;
    cl->next_map_ms = t + 100;
    int16_t *map = malloc(NSLOTS * sizeof(*map));
    if (map == NULL)
        return false;
    bool ok = false;
    for (size_t i = 0; !ok && i < cl->nnodes; i++) {
        node_t *nd = cl->nodes[i];
        if (conn_get(r, cl, &nd->cn, nd) == NULL || nd->cn.pending > 0)
            continue;
        const char *argv[] = {"CLUSTER", "SLOTS"};
        redisReply *rep = redisCommandArgv(nd->cn.c, 2, argv, NULL);
        char why[300];
        if (rep == NULL) {
            failed(r, &nd->cn, nd, "CLUSTER SLOTS");
            continue;
        }
        if (rep->type == REDIS_REPLY_ERROR) {
            snprintf(why, sizeof(why), "%.*s", (int)rep->len, rep->str);
            freeReplyObject(rep);
            failed_why(r, &nd->cn, nd, "CLUSTER SLOTS", why);
            continue;
        }
        ok = parse_slots(r, cl, rep, nd, map, why, sizeof(why));
        freeReplyObject(rep);
        if (!ok) {
            char msg[400];
            snprintf(msg, sizeof(msg), "malformed answer: %s", why);
            failed_why(r, &nd->cn, nd, "CLUSTER SLOTS", msg);
        }
    }
    if (ok) {
        memcpy(cl->slots, map, NSLOTS * sizeof(*map));
        cl->stale = false;
    }
    free(map);
    return ok;
}

/* The connection for slot: the one Redis, or the slot's master (the map refreshed first when
 * stale). NULL (counted) when unreachable or no node serves the slot. *where_p: the node. */
static conn_t *route(kvs__ixr_t *r, client_t *cl, unsigned slot, const node_t **where_p)
{
    *where_p = NULL;
    if (!r->cluster)
        return conn_get(r, cl, &cl->one, NULL) ? &cl->one : NULL;
    if ((cl->stale || cl->slots[slot] < 0) && !refresh_slots(r, cl) && cl->slots[slot] < 0)
        return NULL;
    if (cl->slots[slot] < 0) {
        char why[100];
        snprintf(why, sizeof(why), "slot %u: no node serves it (CLUSTER SLOTS)", slot);
        log_failure(r, NULL, "route", why, "");
        cl->stale = true;
        return NULL;
    }
    node_t *nd = cl->nodes[cl->slots[slot]];
    *where_p = nd;
    return conn_get(r, cl, &nd->cn, nd) ? &nd->cn : NULL;
}

/* A MOVED or ASK reply ("MOVED SLOT HOST:PORT"): the node it names, -1 (why filled) when it
 * is malformed or about another slot. */
static int redirect_node(kvs__ixr_t *r, client_t *cl, const redisReply *rep, unsigned slot,
                         const node_t *from, char *why, size_t wl)
{
    const char *p = rep->str + (rep->str[0] == 'M' ? 6 : 4), *end = rep->str + rep->len;
    char *e;
    long s = strtol(p, &e, 10);
    if (e == p || *e != ' ' || s != (long)slot) {
        snprintf(why, wl, "malformed redirect for slot %u: '%.100s'", slot, rep->str);
        return -1;
    }
    char nwhy[200];
    int n = node_of_addr(r, cl, e + 1, (size_t)(end - e - 1), from, nwhy, sizeof(nwhy));
    if (n < 0)
        snprintf(why, wl, "malformed redirect '%.100s': %.150s", rep->str, nwhy);
    return n;
}

bool kvs__ixr_parse_slots_reply(kvs__ixr_t *r, const redisReply *rep, int16_t *map, char *why,
                                size_t wl)
{
    return parse_slots(r, &r->rd, rep, NULL, map, why, wl);
}

int kvs__ixr_parse_redirect(kvs__ixr_t *r, const redisReply *rep, unsigned slot, char *why,
                            size_t wl)
{
    if (!is_err(rep, "MOVED ") && !is_err(rep, "ASK "))
        return -2;
    if (slot >= NSLOTS) {
        snprintf(why, wl, "slot %u out of range", slot);
        return -1;
    }
    return redirect_node(r, &r->rd, rep, slot, NULL, why, wl);
}

bool kvs__ixr_node_addr(const kvs__ixr_t *r, int i, const char **host, int *port)
{
    if (i < 0 || (size_t)i >= r->rd.nnodes)
        return false;
    *host = r->rd.nodes[i]->host;
    *port = r->rd.nodes[i]->port;
    return true;
}

/* Runs one command for slot; NULL (counted, connection dropped) on failure or an error reply.
 * For a script (script >= 0; argv[0..1] are filled here), EVALSHA first, and on NOSCRIPT (the
 * server's script cache was flushed) EVAL with the body, reloading it for the next call. In a
 * cluster, MOVED updates the slot map (and marks it for a refresh) and ASK retries once on the
 * named node after ASKING; at most MAX_REDIRECTS hops. */
static redisReply *run_s(kvs__ixr_t *r, client_t *cl, unsigned slot, int script, int argc,
                         const char **argv, const size_t *lens, const char *what)
{
    int ask = -1;
    for (int hop = 0;; hop++) {
        const node_t *where = NULL;
        conn_t *c;
        if (ask >= 0) {
            node_t *nd = cl->nodes[ask];
            where = nd;
            c = conn_get(r, cl, &nd->cn, nd) ? &nd->cn : NULL;
        } else {
            c = route(r, cl, slot, &where);
        }
        if (c == NULL)
            return NULL;
        if (ask >= 0 &&
            !setup_cmd(r, c, where, 1, (const char *[]){"ASKING"}, REDIS_REPLY_STATUS, "ASKING"))
            return NULL;
        if (script >= 0)
            script_head(c, script, argv);
        redisReply *rep = redisCommandArgv(c->c, argc, argv, lens);
        if (script >= 0 && is_noscript(rep)) {
            freeReplyObject(rep);
            c->sha[script][0] = '\0';
            script_head(c, script, argv);
            if (ask >= 0)
                redisAppendCommandArgv(c->c, 1, (const char *[]){"ASKING"}, NULL);
            rep = redisCommandArgv(c->c, argc, argv, lens);
            if (ask >= 0 && rep != NULL && rep->type == REDIS_REPLY_STATUS) { /* ASKING's OK */
                freeReplyObject(rep);
                void *v = NULL;
                rep = redisGetReply(c->c, &v) == REDIS_OK ? v : NULL;
            }
            const char *la[] = {"SCRIPT", "LOAD", scripts[script]};
            redisReply *l = rep != NULL ? redisCommandArgv(c->c, 3, la, NULL) : NULL;
            if (l != NULL && l->type == REDIS_REPLY_STRING && l->len == 40)
                memcpy(c->sha[script], l->str, 41);
            if (l != NULL)
                freeReplyObject(l);
        }
        bool moved = r->cluster && is_err(rep, "MOVED "), asked = r->cluster && is_err(rep, "ASK ");
        if (moved || asked) {
            char why[300];
            int n = redirect_node(r, cl, rep, slot, where, why, sizeof(why));
            if (n < 0 || hop >= MAX_REDIRECTS) {
                if (n >= 0)
                    snprintf(why, sizeof(why), "more than %d redirects (last: %.100s)",
                             MAX_REDIRECTS, rep->str);
                freeReplyObject(rep);
                cl->stale = true;
                failed_why(r, c, where, what, why);
                return NULL;
            }
            freeReplyObject(rep);
            atomic_fetch_add(&r->redirects, 1);
            if (moved) {
                /* The rest of the map may have moved too; but the redirect is the freshest
                 * word on this slot (a node's CLUSTER SLOTS can lag behind). */
                cl->next_map_ms = 0;
                refresh_slots(r, cl);
                cl->slots[slot] = (int16_t)n;
                ask = -1;
            } else {
                ask = n;
            }
            continue;
        }
        if (rep == NULL || rep->type == REDIS_REPLY_ERROR) {
            char msg[300] = "";
            if (rep != NULL) {
                snprintf(msg, sizeof(msg), "%.*s", (int)rep->len, rep->str);
                freeReplyObject(rep);
            }
            failed_why(r, c, where, what, msg[0] ? msg : NULL);
            return NULL;
        }
        return rep;
    }
}

static redisReply *run(kvs__ixr_t *r, client_t *cl, unsigned slot, int argc, const char **argv,
                       const char *what)
{
    return run_s(r, cl, slot, -1, argc, argv, NULL, what);
}

static unsigned slot_of(const char *key)
{
    return kvs__ixr_key_slot(key, strlen(key));
}

kvs__ixr_w_t *kvs__ixr_writer_create(kvs__ixr_t *r)
{
    kvs__ixr_w_t *w = calloc(1, sizeof(*w));
    if (w == NULL)
        return NULL;
    w->r = r;
    if (!client_init(r, &w->cl)) {
        free(w);
        return NULL;
    }
    return w;
}

void kvs__ixr_writer_destroy(kvs__ixr_w_t *w)
{
    if (w == NULL)
        return;
    client_free(&w->cl);
    free(w);
}

/* A model whose keys cannot share one slot is refused on a cluster (counted, logged). */
static bool model_ok(kvs__ixr_t *r, const char *model)
{
    if (!r->cluster || model_taggable(model))
        return true;
    char why[400];
    snprintf(why, sizeof(why),
             "model '%.200s': a name that is empty or starts with '}' cannot be a hash tag, "
             "so its keys would span slots",
             model);
    log_failure(r, NULL, "route", why, "");
    return false;
}

static bool writes_pending(const client_t *cl)
{
    bool any = cl->one.pending > 0;
    for (size_t i = 0; i < cl->nnodes; i++)
        any |= cl->nodes[i]->cn.pending > 0;
    return any;
}

int kvs__ixr_lease(kvs__ixr_w_t *w, const char *model, const char *pod, uint64_t *epoch_p)
{
    kvs__ixr_t *r = w->r;
    /* A command's reply is read right after it: writes still queued would answer first. */
    if (writes_pending(&w->cl))
        kvs__ixr_flush(w);
    char key[600];
    snprintf(key, sizeof(key), "kvs:l:{%s}@%s", model, pod);
    if (!model_ok(r, model))
        return -1;
    const char *argv[] = {NULL, NULL, "1", key, r->id, r->lease_ms};
    redisReply *rep = run_s(r, &w->cl, slot_of(key), S_LEASE, 6, argv, NULL, "lease");
    if (rep == NULL)
        return -1;
    int rc = rep->type == REDIS_REPLY_INTEGER ? (int)rep->integer : -1;
    freeReplyObject(rep);
    if (rc == 2) {
        /* The model list (the snapshot's root) has a slot of its own, so a command of its
         * own: whoever takes a pod's lease, before writing any of it, lists its model. */
        const char *am[] = {"SADD", "kvs:m", model};
        rep = run(r, &w->cl, slot_of("kvs:m"), 3, am, "lease");
        if (rep == NULL)
            return -1;
        freeReplyObject(rep);
    }
    *epoch_p = w->cl.epoch;
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

/* Queues a write (pipelined) on the connection of key's slot. */
static void queue_cmd(kvs__ixr_w_t *w, const char *key, int script, int argc, const char **argv,
                      const size_t *lens)
{
    kvs__ixr_t *r = w->r;
    const node_t *where;
    conn_t *c = route(r, &w->cl, slot_of(key), &where);
    if (c == NULL) { /* this write is lost: the lease holder resyncs */
        w->cl.epoch++;
        return;
    }
    if (script >= 0)
        script_head(c, script, argv);
    if (redisAppendCommandArgv(c->c, argc, argv, lens) == REDIS_OK)
        c->pending++;
    else
        failed(r, c, where, "queue");
}

/* Queues EVAL script 1 kvs:p:{model}@pod model pod bits hash... on the writer. */
static void queue_blocks(kvs__ixr_w_t *w, int script, const char *model, const char *pod,
                         const uint64_t *hashes, size_t n, const char *medium)
{
    kvs__ixr_t *r = w->r;
    if (n == 0 || !model_ok(r, model))
        return;
    size_t argc = 7 + n;
    const char **argv = malloc(argc * sizeof(*argv));
    size_t *lens = malloc(argc * sizeof(*lens));
    char *hex = malloc(n * 17);
    char ps[600];
    if (argv == NULL || lens == NULL || hex == NULL) {
        free(argv);
        free(lens);
        free(hex);
        atomic_fetch_add(&r->errors, 1);
        return;
    }
    char bits[4];
    snprintf(bits, sizeof(bits), "%u", tier_bit(medium));
    snprintf(ps, sizeof(ps), "kvs:p:{%s}@%s", model, pod);
    argv[0] = argv[1] = ""; /* the script's head, per connection */
    argv[2] = "1", argv[3] = ps, argv[4] = model, argv[5] = pod;
    argv[6] = bits;
    for (size_t i = 0; i < n; i++) {
        snprintf(hex + 17 * i, 17, "%016llx", (unsigned long long)hashes[i]);
        argv[7 + i] = hex + 17 * i;
    }
    for (size_t i = 2; i < argc; i++)
        lens[i] = strlen(argv[i]);
    const node_t *where; /* the head (EVALSHA sha) depends on the connection */
    conn_t *c = route(r, &w->cl, slot_of(ps), &where);
    if (c == NULL)
        w->cl.epoch++; /* this write is lost: the lease holder resyncs */
    else {
        script_head(c, script, argv);
        lens[0] = strlen(argv[0]);
        lens[1] = strlen(argv[1]);
        if (redisAppendCommandArgv(c->c, (int)argc, argv, lens) == REDIS_OK)
            c->pending++;
        else
            failed(r, c, where, "queue");
    }
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
    if (!model_ok(w->r, model))
        return;
    char ps[600];
    snprintf(ps, sizeof(ps), "kvs:p:{%s}@%s", model, pod);
    const char *argv[] = {NULL, NULL, "1", ps, model, pod};
    queue_cmd(w, ps, S_CLEAR, 6, argv, NULL);
    /* A resync starts with a clear: list the model again (the lease's SADD may have been
     * lost with a connection). */
    const char *am[] = {"SADD", "kvs:m", model};
    queue_cmd(w, "kvs:m", -1, 3, am, NULL);
}

void kvs__ixr_set_degraded(kvs__ixr_w_t *w, const char *model, const char *pod, bool degraded)
{
    if (!model_ok(w->r, model))
        return;
    char key[300];
    snprintf(key, sizeof(key), "kvs:d:{%s}", model);
    const char *argv[] = {degraded ? "SADD" : "SREM", key, pod};
    queue_cmd(w, key, -1, 3, argv, NULL);
}

/* Reads the replies of the writes queued on c. */
static int flush_conn(kvs__ixr_w_t *w, conn_t *c, const node_t *where, bool *noscript, bool *moved)
{
    kvs__ixr_t *r = w->r;
    int rc = 0;
    while (c->pending > 0 && c->c != NULL) {
        void *rep = NULL;
        if (redisGetReply(c->c, &rep) != REDIS_OK) {
            failed(r, c, where, "write");
            return -1;
        }
        c->pending--;
        redisReply *x = rep;
        if (is_noscript(x)) {
            *noscript = true;
            rc = -1;
        } else if (r->cluster && (is_err(x, "MOVED ") || is_err(x, "ASK "))) {
            *moved = true;
            rc = -1;
        } else if (x->type == REDIS_REPLY_ERROR) {
            char why[300];
            snprintf(why, sizeof(why), "write refused: %.*s", (int)x->len, x->str);
            log_failure(r, where, "write", why, "");
            rc = -1;
        }
        freeReplyObject(rep);
    }
    c->pending = 0;
    /* The server lost its scripts (SCRIPT FLUSH, a failover to a replica that never loaded
     * them): those writes are gone. Reconnecting reloads the scripts, and the new connection
     * number makes the lease holder resync each pod it writes. */
    if (*noscript && c->c != NULL)
        failed_why(r, c, where, "write",
                   "NOSCRIPT: the server's script cache was flushed; "
                   "reconnecting, then resyncing the pods written here");
    return rc;
}

int kvs__ixr_flush(kvs__ixr_w_t *w)
{
    kvs__ixr_t *r = w->r;
    client_t *cl = &w->cl;
    int rc = 0;
    bool noscript = false, moved = false;
    if (!r->cluster) {
        rc = flush_conn(w, &cl->one, NULL, &noscript, &moved);
    } else {
        for (size_t i = 0; i < cl->nnodes; i++) {
            noscript = false;
            if (flush_conn(w, &cl->nodes[i]->cn, cl->nodes[i], &noscript, &moved) != 0)
                rc = -1;
        }
    }
    /* A slot moved under pipelined writes (a resharding): they are lost, as on NOSCRIPT. The
     * map is refreshed before the next command, and a new epoch makes the lease holder resync
     * each pod it writes (on its next renewal), now on the slot's new master. */
    if (moved) {
        cl->stale = true;
        cl->next_map_ms = 0;
        cl->epoch++;
        atomic_fetch_add(&r->redirects, 1);
        log_failure(r, NULL, "write",
                    "MOVED/ASK: a slot moved under pipelined writes; refreshing the slot map, "
                    "then resyncing the pods written here",
                    "");
    }
    return rc;
}

int kvs__ixr_snapshot(kvs__ixr_t *r,
                      void (*pod_cb)(void *arg, const char *model, const char *pod, bool degraded),
                      void (*copy_cb)(void *arg, const char *model, const char *pod, uint64_t hash,
                                      const char *medium),
                      void *arg)
{
    pthread_mutex_lock(&r->lock); /* the readers' connections: no writer thread runs yet */
    client_t *cl = &r->rd;
    const char *am[] = {"SMEMBERS", "kvs:m"};
    redisReply *models = run(r, cl, slot_of("kvs:m"), 2, am, "snapshot");
    if (models == NULL) {
        pthread_mutex_unlock(&r->lock);
        return -1;
    }
    int rc = models->type == REDIS_REPLY_ARRAY ? 0 : -1;
    for (size_t i = 0; rc == 0 && i < models->elements; i++) {
        const char *m = models->element[i]->str;
        if (models->element[i]->type != REDIS_REPLY_STRING || strchr(m, '@') || strlen(m) > 200 ||
            (r->cluster && !model_taggable(m)))
            continue;
        char pk[300], dk[300];
        snprintf(pk, sizeof(pk), "kvs:P:{%s}", m);
        snprintf(dk, sizeof(dk), "kvs:d:{%s}", m);
        const char *ap[] = {"SMEMBERS", pk}, *ad[] = {"SMEMBERS", dk};
        redisReply *pods = run(r, cl, slot_of(pk), 2, ap, "snapshot");
        redisReply *deg = pods ? run(r, cl, slot_of(dk), 2, ad, "snapshot") : NULL;
        if (pods == NULL || deg == NULL || pods->type != REDIS_REPLY_ARRAY ||
            deg->type != REDIS_REPLY_ARRAY) {
            rc = -1;
        }
        for (size_t j = 0; rc == 0 && j < pods->elements; j++) {
            const char *p = pods->element[j]->str;
            if (pods->element[j]->type != REDIS_REPLY_STRING || strchr(p, '@') || strlen(p) > 255)
                continue;
            bool d = false;
            for (size_t k = 0; k < deg->elements; k++)
                d |= deg->element[k]->type == REDIS_REPLY_STRING &&
                     strcmp(deg->element[k]->str, p) == 0;
            pod_cb(arg, m, p, d);
            char ps[600];
            snprintf(ps, sizeof(ps), "kvs:p:{%s}@%s", m, p);
            const char *as[] = {NULL, NULL, "1", ps, m, p};
            redisReply *cp = run_s(r, cl, slot_of(ps), S_SNAP, 6, as, NULL, "snapshot");
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
    if (!model_ok(r, model))
        return -1;
    size_t klen = strlen("kvs:b:{}@") + strlen(model) + 16 + 1;
    size_t argc = 3 + n + 1 + nonly;
    const char **argv = malloc(argc * sizeof(*argv));
    char *kb = malloc(n * klen);
    kvs__ixr_score_t *all = NULL;
    long matched = -1;
    char nk[24], dk[300];
    if (argv == NULL || kb == NULL)
        goto out;
    snprintf(nk, sizeof(nk), "%zu", n);
    snprintf(dk, sizeof(dk), "kvs:d:{%s}", model);
    argv[2] = nk;
    for (size_t i = 0; i < n; i++) {
        snprintf(kb + i * klen, klen, "kvs:b:{%s}@%016llx", model, (unsigned long long)keys[i]);
        argv[3 + i] = kb + i * klen;
    }
    argv[3 + n] = dk;
    for (size_t i = 0; i < nonly; i++)
        argv[4 + n + i] = only[i];
    pthread_mutex_lock(&r->lock);
    redisReply *rep = run_s(r, &r->rd, slot_of(argv[3]), S_SCORE, (int)argc, argv, NULL, "score");
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
