/* SPDX-License-Identifier: Apache-2.0 */
/* kvs_peer.c - a real kvshare process for the transport integration tests: serve or fetch.
 *
 *   kvs_peer serve --listen H:P [common]       publish blocks, print "ready ADDR", serve
 *                                              until stdin closes or SIGTERM
 *   kvs_peer fetch --peer H:P [common]         look up and fetch every block, check every
 *                                              byte, print "ok hits=N bytes=B status=..."
 *   kvs_peer soak --peer H:P [--peer2 H:P]     fetch in a loop until a fetch fails; print
 *                                              how it failed and how long it took; then
 *                                              fetch from --peer2, then wait for a line on
 *                                              stdin and fetch from --peer once more
 *   kvs_peer put [--inflight K]                offload every block to KVSHARE_POOL, in K
 *                                              requests all in flight at once (default 1)
 *   kvs_peer fetch --from-pool                 fetch from the pool instead of a peer
 *   kvs_peer garbage --peer H:P                connect to the bootstrap port and send malformed
 *                                              messages (the server must stay up)
 * common: --blocks N --block-bytes B --segments S --seed X --model M --zero-copy
 *         --batch K --expect STATUS --timeout-ms T
 *         --mem-alloc (the pool's memory from kvs_mem_alloc: a memfd a same-host
 *         node maps to copy our puts from)
 * fetch:  --repeat R (passes), --inflight K (K fetches of --batch blocks in flight at
 *         once under one lease), --touch H:P (connect to a second peer first)
 *         --token-keys: block keys are vLLM's (sha256_cbor, PYTHONHASHSEED "0", 16 tokens
 *         a block) over the prompt token j = (seed * 1000003 + j) % 100000, so an index
 *         can score them from the tokens
 * Block i's bytes and key derive from (seed, i), so a wrong block is caught. */
#include "kvshare.h"

#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <arpa/inet.h>
#include <sys/socket.h>
#include <unistd.h>

typedef struct opts {
    const char *mode, *listen, *peer, *peer2, *model, *expect, *touch;
    bool from_pool;
    uint32_t blocks, segments, batch, timeout_ms, inflight, repeat;
    size_t block_bytes;
    uint64_t seed;
    bool zero_copy;
    bool token_keys;
    bool mem_alloc; /* --mem-alloc: the pool's memory from kvs_mem_alloc (a memfd) */
} opts_t;

static uint64_t mix(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

/* --token-keys: the chain over the whole prompt, made once. */
static kvs_key_t token_key(const opts_t *o, uint32_t i)
{
    static kvs_key_t *chain;
    if (chain == NULL) {
        size_t ntok = (size_t)o->blocks * 16, n = 0;
        uint32_t *tok = malloc(ntok * sizeof(*tok));
        chain = malloc((size_t)o->blocks * sizeof(*chain));
        kvs_hasher_params_t hp = {.field_mask = KVS_HASHER_FIELD_ALGO | KVS_HASHER_FIELD_SEED |
                                                KVS_HASHER_FIELD_BLOCK_TOKENS,
                                  .algo = KVS_HASH_SHA256_CBOR,
                                  .seed = "0",
                                  .block_tokens = 16};
        kvs_hasher_h h = NULL;
        if (tok == NULL || chain == NULL || kvs_hasher_create(&hp, &h) != KVS_OK) {
            fprintf(stderr, "kvs_peer: --token-keys: out of memory\n");
            exit(1);
        }
        for (size_t j = 0; j < ntok; j++)
            tok[j] = (uint32_t)((o->seed * 1000003u + j) % 100000u);
        if (kvs_hasher_chain(h, NULL, tok, ntok, chain, o->blocks, &n) != KVS_OK) {
            fprintf(stderr, "kvs_peer: --token-keys: hashing failed\n");
            exit(1);
        }
        kvs_hasher_destroy(h);
        free(tok);
    }
    return chain[i];
}

static kvs_key_t key_of(const opts_t *o, uint32_t i)
{
    if (o->token_keys)
        return token_key(o, i);
    kvs_key_t k;
    for (int w = 0; w < 4; w++) {
        uint64_t v = mix(o->seed * 1000003u + i * 4u + (uint64_t)w);
        memcpy(&k.bytes[8 * w], &v, 8);
    }
    return k;
}

static void fill(const opts_t *o, uint8_t *p, uint32_t block, uint32_t seg, size_t len)
{
    uint64_t x = mix(o->seed ^ ((uint64_t)block << 20) ^ seg);
    for (size_t j = 0; j < len; j += 8) {
        x = mix(x);
        memcpy(p + j, &x, len - j < 8 ? len - j : 8);
    }
}

static double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

typedef struct pool {
    kvs_pool_h h;
    uint8_t *mem;
    bool memfd;
} pool_t;

static void pool_mem_free(pool_t *p)
{
    if (p->memfd)
        kvs_mem_free(NULL, p->mem);
    else
        free(p->mem);
    p->mem = NULL;
}

static kvs_status_t make_pool(kvs_ctx_h ctx, const opts_t *o, pool_t *p)
{
    kvs_layout_t l = {.model_id = o->model,
                      .dtype = KVS_DTYPE_BF16,
                      .block_tokens = 16,
                      .num_layers = o->segments,
                      .num_kv_heads = 8,
                      .head_dim = 128,
                      .tp_size = 1};
    kvs_segment_t segs[128];
    size_t seg_bytes = o->block_bytes / o->segments;
    size_t bytes = ((size_t)o->blocks * o->block_bytes + 4095) / 4096 * 4096;
    p->memfd = o->mem_alloc;
    if (o->mem_alloc && kvs_mem_alloc(ctx, bytes, KVS_MEM_HOST, (void **)&p->mem) != KVS_OK)
        p->mem = NULL;
    else if (!o->mem_alloc)
        p->mem = aligned_alloc(4096, bytes);
    if (p->mem == NULL)
        return KVS_ERR_NO_MEMORY;
    memset(p->mem, 0, (size_t)o->blocks * o->block_bytes);
    for (uint32_t s = 0; s < o->segments; s++) {
        segs[s].base = p->mem + (size_t)s * o->blocks * seg_bytes;
        segs[s].block_stride = seg_bytes;
        segs[s].block_bytes = seg_bytes;
        segs[s].mem_type = KVS_MEM_HOST;
    }
    kvs_pool_params_t pp = {
        .layout = &l, .segments = segs, .num_segments = o->segments, .num_blocks = o->blocks};
    return kvs_pool_create(ctx, &pp, &p->h);
}

static uint8_t *seg_block(const opts_t *o, pool_t *p, uint32_t seg, uint32_t block)
{
    size_t seg_bytes = o->block_bytes / o->segments;
    return p->mem + ((size_t)seg * o->blocks + block) * seg_bytes;
}

static kvs_ctx_h make_ctx(const char *listen)
{
    char err[512];
    kvs_ctx_params_t cp = {.field_mask = KVS_CTX_FIELD_ERRBUF | KVS_CTX_FIELD_CAPACITY,
                           .errbuf = err,
                           .errbuf_len = sizeof(err),
                           .capacity_bytes = 1ull << 30};
    if (listen != NULL) {
        cp.field_mask |= KVS_CTX_FIELD_LISTEN;
        cp.listen = listen;
    }
    kvs_ctx_h ctx = NULL;
    kvs_status_t st = kvs_ctx_create(&cp, &ctx);
    if (st != KVS_OK) {
        fprintf(stderr, "kvs_peer: kvs_ctx_create: %s: %s\n", kvs_status_string(st), err);
        return NULL;
    }
    return ctx;
}

static volatile sig_atomic_t stop;
static void on_term(int sig)
{
    (void)sig;
    stop = 1;
}

static int serve(const opts_t *o)
{
    kvs_ctx_h ctx = make_ctx(o->listen);
    if (ctx == NULL)
        return 1;
    pool_t p;
    kvs_status_t st = make_pool(ctx, o, &p);
    if (st != KVS_OK) {
        fprintf(stderr, "kvs_peer: pool: %s\n", kvs_status_string(st));
        return 1;
    }
    kvs_key_t *keys = malloc(o->blocks * sizeof(*keys));
    uint32_t *ids = malloc(o->blocks * sizeof(*ids));
    /* Blocks sit at shuffled ids, as an engine's would. */
    for (uint32_t i = 0; i < o->blocks; i++)
        ids[i] = i;
    uint64_t r = o->seed + 7;
    for (uint32_t i = o->blocks; i > 1; i--) {
        r = mix(r);
        uint32_t j = (uint32_t)(r % i), t = ids[i - 1];
        ids[i - 1] = ids[j];
        ids[j] = t;
    }
    for (uint32_t i = 0; i < o->blocks; i++) {
        keys[i] = key_of(o, i);
        for (uint32_t s = 0; s < o->segments; s++)
            fill(o, seg_block(o, &p, s, ids[i]), i, s, o->block_bytes / o->segments);
    }
    size_t n = 0;
    st = kvs_publish(p.h, keys, ids, o->blocks, o->zero_copy ? KVS_PUBLISH_ZERO_COPY : 0, &n);
    if (st != KVS_OK || n != o->blocks) {
        fprintf(stderr, "kvs_peer: publish: %s (%zu of %u)\n", kvs_status_string(st), n, o->blocks);
        return 1;
    }
    char addr[300];
    kvs_ctx_listen_addr(ctx, addr, sizeof(addr));
    printf("ready %s\n", addr);
    fflush(stdout);
    signal(SIGTERM, on_term);
    char buf[64];
    while (!stop && read(0, buf, sizeof(buf)) > 0)
        ;
    kvs_pool_destroy(p.h);
    kvs_ctx_destroy(ctx);
    pool_mem_free(&p);
    free(keys);
    free(ids);
    return 0;
}

/* One full pass: look up every block in batches, fetch into shuffled ids,
 * check every byte. Returns the first failing status. */
static kvs_status_t fetch_all(kvs_ctx_h ctx, const opts_t *o, pool_t *p, const char *peer,
                              size_t *hits_p, size_t *bytes_p, double *fail_ms)
{
    uint32_t *dst = malloc(o->blocks * sizeof(*dst));
    kvs_key_t *keys = malloc(o->blocks * sizeof(*keys));
    kvs_status_t st = KVS_OK;
    size_t hits_total = 0, bytes = 0;
    for (uint32_t i = 0; i < o->blocks; i++) {
        keys[i] = key_of(o, i);
        dst[i] = o->blocks - 1 - i;
    }
    for (uint32_t first = 0; first < o->blocks && st == KVS_OK; first += o->batch) {
        uint32_t n = o->blocks - first < o->batch ? o->blocks - first : o->batch;
        kvs_lookup_params_t lp = {.field_mask = KVS_LOOKUP_FIELD_SOURCES | KVS_LOOKUP_FIELD_PEER |
                                                KVS_LOOKUP_FIELD_TIMEOUT_MS,
                                  .sources = KVS_SOURCE_PEER,
                                  .peer = peer,
                                  .timeout_ms = o->timeout_ms};
        if (o->from_pool) { /* KVSHARE_POOL names the nodes; no peer */
            lp.field_mask = KVS_LOOKUP_FIELD_TIMEOUT_MS;
        }
        double t0 = now_ms();
        kvs_lease_h lease = NULL;
        st = kvs_lookup(ctx, kvs_pool_layout_id(p->h), keys + first, n, &lp, &lease);
        if (st != KVS_OK) {
            *fail_ms = now_ms() - t0;
            break;
        }
        size_t hits = kvs_lease_hits(lease);
        hits_total += hits;
        kvs_fetch_params_t fp = {.field_mask = KVS_FETCH_FIELD_TIMEOUT_MS,
                                 .timeout_ms = o->timeout_ms};
        kvs_request_h req = NULL;
        t0 = now_ms();
        st = kvs_fetch(lease, p->h, dst + first, hits, &fp, &req);
        if (st == KVS_OK) {
            st = kvs_request_wait(req, -1);
            kvs_request_free(req);
        }
        if (st != KVS_OK)
            *fail_ms = now_ms() - t0;
        kvs_lease_release(lease);
        for (uint32_t i = 0; st == KVS_OK && i < hits; i++) {
            size_t sb = o->block_bytes / o->segments;
            uint8_t *want = malloc(sb);
            for (uint32_t s = 0; s < o->segments; s++) {
                fill(o, want, first + i, s, sb);
                if (memcmp(want, seg_block(o, p, s, dst[first + i]), sb) != 0) {
                    fprintf(stderr, "kvs_peer: block %u segment %u: wrong bytes\n", first + i, s);
                    st = KVS_ERR_PROTOCOL;
                    break;
                }
            }
            free(want);
            bytes += o->block_bytes;
        }
        /* Clear what we checked, so the next pass proves itself again. */
        for (uint32_t i = 0; i < hits; i++)
            for (uint32_t s = 0; s < o->segments; s++)
                memset(seg_block(o, p, s, dst[first + i]), 0, o->block_bytes / o->segments);
        if (hits < n)
            break;
    }
    free(dst);
    free(keys);
    *hits_p = hits_total;
    *bytes_p = bytes;
    return st;
}

static const char *status_name(kvs_status_t st)
{
    static const char *const names[] = {"OK",
                                        "INVALID_PARAM",
                                        "NO_MEMORY",
                                        "NOT_FOUND",
                                        "NO_SPACE",
                                        "BUSY",
                                        "TIMED_OUT",
                                        "PEER_FAILED",
                                        "LAYOUT_MISMATCH",
                                        "PROTOCOL",
                                        "AUTH",
                                        "UNSUPPORTED",
                                        "CONFIG",
                                        "IO",
                                        "STALE",
                                        "CANCELED",
                                        "TRANSPORT"};
    if (st <= 0 && -st < (int)(sizeof(names) / sizeof(names[0])))
        return names[-st];
    return st == KVS_INPROGRESS ? "INPROGRESS" : "?";
}

/* Offload every block to the pool (KVSHARE_POOL) with kvs_put_ex. */
static int put_mode(const opts_t *o)
{
    kvs_ctx_h ctx = make_ctx(NULL);
    if (ctx == NULL)
        return 1;
    pool_t p;
    if (make_pool(ctx, o, &p) != KVS_OK)
        return 1;
    kvs_key_t *keys = malloc(o->blocks * sizeof(*keys));
    uint32_t *ids = malloc(o->blocks * sizeof(*ids));
    for (uint32_t i = 0; i < o->blocks; i++) {
        keys[i] = key_of(o, i);
        ids[i] = o->blocks - 1 - i; /* not in key order, as an engine's are not */
        for (uint32_t s = 0; s < o->segments; s++)
            fill(o, seg_block(o, &p, s, ids[i]), i, s, o->block_bytes / o->segments);
    }
    /* --inflight K: K requests of consecutive blocks, none waited for until
     * all are out (more than a node takes at once from one connection
     * must wait for room, not fail). */
    uint32_t nreq = o->inflight > 1 ? o->inflight : 1;
    uint32_t per = (o->blocks + nreq - 1) / nreq;
    kvs_request_h *reqs = calloc(nreq, sizeof(*reqs));
    kvs_status_t st = reqs != NULL ? KVS_OK : KVS_ERR_NO_MEMORY;
    uint32_t sent = 0;
    for (uint32_t first = 0; st == KVS_OK && first < o->blocks; first += per, sent++) {
        uint32_t cnt = o->blocks - first < per ? o->blocks - first : per;
        st = kvs_put_ex(p.h, keys + first, ids + first, cnt, NULL, &reqs[sent]);
        if (st != KVS_OK)
            break;
    }
    for (uint32_t r = 0; reqs != NULL && r < sent; r++) {
        kvs_status_t w = kvs_request_wait(reqs[r], -1);
        if (st == KVS_OK && w != KVS_OK)
            fprintf(stderr, "kvs_peer put: request %u of %u: %s\n", r, sent, kvs_status_string(w));
        if (st == KVS_OK)
            st = w;
        kvs_request_free(reqs[r]);
    }
    free(reqs);
    /* ctl: messages sent on same-host control channels (pull PUTs go there) */
    kvs_stats_t ks = {.field_mask = KVS_STATS_FIELD_CTL};
    if (kvs_stats_query(ctx, &ks) != KVS_OK)
        ks.ctl_messages = 0;
    printf("put blocks=%u requests=%u status=%s ctl=%llu\n", o->blocks, sent,
           st == KVS_OK ? "OK" : kvs_status_string(st), (unsigned long long)ks.ctl_messages);
    kvs_pool_destroy(p.h);
    kvs_ctx_destroy(ctx);
    pool_mem_free(&p);
    free(keys);
    free(ids);
    return st == KVS_OK ? 0 : 1;
}

/* Every block under one lease, then fetches of --batch blocks, --inflight
 * of them in flight at once, every byte checked: many requests on one
 * connection at the same time, as an engine's layers would be. */
static kvs_status_t fetch_burst(kvs_ctx_h ctx, const opts_t *o, pool_t *p, size_t *hits_p,
                                size_t *bytes_p)
{
    uint32_t *dst = malloc(o->blocks * sizeof(*dst));
    kvs_key_t *keys = malloc(o->blocks * sizeof(*keys));
    kvs_request_h *reqs = calloc(o->inflight, sizeof(*reqs));
    for (uint32_t i = 0; i < o->blocks; i++) {
        keys[i] = key_of(o, i);
        dst[i] = o->blocks - 1 - i;
    }
    kvs_lookup_params_t lp = {.field_mask = KVS_LOOKUP_FIELD_SOURCES | KVS_LOOKUP_FIELD_PEER |
                                            KVS_LOOKUP_FIELD_TIMEOUT_MS,
                              .sources = KVS_SOURCE_PEER,
                              .peer = o->peer,
                              .timeout_ms = o->timeout_ms};
    kvs_lease_h lease = NULL;
    kvs_status_t st = kvs_lookup(ctx, kvs_pool_layout_id(p->h), keys, o->blocks, &lp, &lease);
    size_t hits = st == KVS_OK ? kvs_lease_hits(lease) : 0;
    for (uint32_t first = 0; st == KVS_OK && first < hits;) {
        uint32_t k = 0;
        for (; k < o->inflight && first < hits; k++) {
            uint32_t n = (uint32_t)(hits - first < o->batch ? hits - first : o->batch);
            kvs_fetch_params_t fp = {.field_mask =
                                         KVS_FETCH_FIELD_TIMEOUT_MS | KVS_FETCH_FIELD_FIRST,
                                     .timeout_ms = o->timeout_ms,
                                     .first = first};
            kvs_status_t s = kvs_fetch(lease, p->h, dst + first, n, &fp, &reqs[k]);
            if (s != KVS_OK && st == KVS_OK)
                st = s;
            first += n;
        }
        for (uint32_t j = 0; j < k; j++) {
            if (reqs[j] == NULL)
                continue;
            kvs_status_t s = kvs_request_wait(reqs[j], -1);
            if (s != KVS_OK && st == KVS_OK)
                st = s;
            kvs_request_free(reqs[j]);
            reqs[j] = NULL;
        }
    }
    kvs_lease_release(lease);
    size_t bytes = 0, sb = o->block_bytes / o->segments;
    uint8_t *want = malloc(sb);
    for (uint32_t i = 0; st == KVS_OK && i < hits; i++) {
        for (uint32_t s = 0; s < o->segments; s++) {
            fill(o, want, i, s, sb);
            if (memcmp(want, seg_block(o, p, s, dst[i]), sb) != 0) {
                fprintf(stderr, "kvs_peer: block %u segment %u: wrong bytes\n", i, s);
                st = KVS_ERR_PROTOCOL;
                break;
            }
            memset(seg_block(o, p, s, dst[i]), 0, sb);
        }
        bytes += o->block_bytes;
    }
    free(want);
    free(dst);
    free(keys);
    free(reqs);
    *hits_p = hits;
    *bytes_p = bytes;
    return st;
}

static int fetch_mode(const opts_t *o)
{
    kvs_ctx_h ctx = make_ctx(NULL);
    if (ctx == NULL)
        return 1;
    pool_t p;
    if (make_pool(ctx, o, &p) != KVS_OK)
        return 1;
    size_t hits = 0, bytes = 0;
    double fail_ms = 0;
    kvs_status_t st = KVS_OK;
    if (o->touch != NULL) {
        /* Open a connection to a second peer first (a hostile one, in the
         * adversary tests) and keep it while the real fetches run. */
        kvs_key_t k = key_of(o, 0);
        kvs_lookup_params_t lp = {.field_mask = KVS_LOOKUP_FIELD_SOURCES | KVS_LOOKUP_FIELD_PEER,
                                  .sources = KVS_SOURCE_PEER,
                                  .peer = o->touch};
        kvs_lease_h l = NULL;
        kvs_status_t ts = kvs_lookup(ctx, kvs_pool_layout_id(p.h), &k, 1, &lp, &l);
        fprintf(stderr, "kvs_peer: touched %s: %s\n", o->touch, status_name(ts));
        kvs_lease_release(l);
    }
    uint32_t repeat = o->repeat ? o->repeat : 1;
    for (uint32_t r = 0; r < repeat && st == KVS_OK; r++) {
        if (o->inflight > 0)
            st = fetch_burst(ctx, o, &p, &hits, &bytes);
        else
            st = fetch_all(ctx, o, &p, o->peer, &hits, &bytes, &fail_ms);
        if (st == KVS_OK && hits != o->blocks)
            break;
    }
    printf("%s hits=%zu bytes=%zu status=%s\n", st == KVS_OK && hits == o->blocks ? "ok" : "done",
           hits, bytes, status_name(st));
    kvs_pool_destroy(p.h);
    kvs_ctx_destroy(ctx);
    pool_mem_free(&p);
    if (o->expect != NULL)
        return strcmp(o->expect, status_name(st)) == 0 ? 0 : 1;
    return st == KVS_OK && hits == o->blocks ? 0 : 1;
}

static int soak(const opts_t *o)
{
    kvs_ctx_h ctx = make_ctx(NULL);
    if (ctx == NULL)
        return 1;
    pool_t p;
    if (make_pool(ctx, o, &p) != KVS_OK)
        return 1;
    size_t hits, bytes;
    double fail_ms = 0;
    kvs_status_t st;
    unsigned passes = 0;
    while ((st = fetch_all(ctx, o, &p, o->peer, &hits, &bytes, &fail_ms)) == KVS_OK &&
           hits == o->blocks) {
        if (++passes == 3) {
            printf("passing\n"); /* the script kills the server after this */
            fflush(stdout);
        }
    }
    printf("failed status=%s after_ms=%.0f passes=%u\n", status_name(st), fail_ms, passes);
    fflush(stdout);
    int rc = 0;
    if (o->peer2 != NULL) {
        st = fetch_all(ctx, o, &p, o->peer2, &hits, &bytes, &fail_ms);
        printf("other peer: status=%s hits=%zu\n", status_name(st), hits);
        fflush(stdout);
        rc |= st != KVS_OK || hits != o->blocks;
    }
    char line[64];
    if (fgets(line, sizeof(line), stdin) != NULL) { /* "again": the server is back */
        st = fetch_all(ctx, o, &p, o->peer, &hits, &bytes, &fail_ms);
        printf("reconnect: status=%s hits=%zu\n", status_name(st), hits);
        fflush(stdout);
        rc |= st != KVS_OK || hits != o->blocks;
    }
    kvs_pool_destroy(p.h);
    kvs_ctx_destroy(ctx);
    pool_mem_free(&p);
    return rc;
}

/* Raw TCP to the bootstrap port, as a hostile or broken peer would: each
 * malformed message on its own connection. */
static int garbage(const opts_t *o)
{
    char host[256];
    const char *colon = strrchr(o->peer, ':');
    snprintf(host, sizeof(host), "%.*s", (int)(colon - o->peer), o->peer);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(colon + 1))};
    inet_pton(AF_INET, host, &sa.sin_addr);
    /* 1: too short; 2: bad magic; 3: a header whose length lies; 4: a HELLO
     * with an oversized name count; 5: a LOOKUP before any handshake;
     * 6: random bytes; 7: a body far over the pre-auth bound. */
    enum { H = 40 };
    uint8_t msgs[7][128];
    size_t lens[7] = {3, H, H + 8, H + 42, H + 16, 64, H};
    memset(msgs, 0, sizeof(msgs));
    uint64_t r = 12345;
    for (int i = 0; i < 7; i++) {
        uint8_t *m = msgs[i];
        uint32_t magic = 0x4853564Bu, blen = (uint32_t)lens[i] - H;
        uint16_t ver = 2, type = i == 4 ? 5 : 1;
        memcpy(m, &magic, 4);
        memcpy(m + 4, &ver, 2);
        memcpy(m + 6, &type, 2);
        memcpy(m + 12, &blen, 4);
    }
    msgs[1][0] = 'X';
    uint32_t lie = 9999;
    memcpy(msgs[2] + 12, &lie, 4);
    msgs[3][H + 40] = 0xff; /* name length 0xffff */
    msgs[3][H + 41] = 0xff;
    for (int j = 0; j < 64; j++) {
        r = mix(r);
        msgs[5][j] = (uint8_t)r;
    }
    uint32_t huge = 64u << 20;
    memcpy(msgs[6] + 12, &huge, 4);
    for (int i = 0; i < 7; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0)
            return 1;
        ssize_t n = send(fd, msgs[i], lens[i], MSG_NOSIGNAL);
        (void)n;
        /* Wait until the node hangs up (or gives up on us at its deadline). */
        char buf[256];
        struct timeval tv = {.tv_sec = 5};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        while (recv(fd, buf, sizeof(buf), 0) > 0) {
        }
        close(fd);
    }
    printf("sent 7 malformed messages\n");
    return 0;
}

int main(int argc, char **argv)
{
    opts_t o = {.model = "kvs-peer-model",
                .blocks = 64,
                .segments = 2,
                .batch = 64,
                .timeout_ms = 5000,
                .block_bytes = 8192,
                .seed = 1};
    if (argc < 2) {
        fprintf(stderr, "usage: kvs_peer serve|fetch|soak [options]\n");
        return 2;
    }
    o.mode = argv[1];
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : "";
        if (strcmp(a, "--zero-copy") == 0) {
            o.zero_copy = true;
            continue;
        }
        if (strcmp(a, "--token-keys") == 0) {
            o.token_keys = true;
            continue;
        }
        if (strcmp(a, "--from-pool") == 0) {
            o.from_pool = true;
            continue;
        }
        if (strcmp(a, "--mem-alloc") == 0) {
            o.mem_alloc = true;
            continue;
        }
        i++;
        if (strcmp(a, "--listen") == 0)
            o.listen = v;
        else if (strcmp(a, "--peer") == 0)
            o.peer = v;
        else if (strcmp(a, "--touch") == 0)
            o.touch = v;
        else if (strcmp(a, "--inflight") == 0)
            o.inflight = (uint32_t)strtoul(v, NULL, 10);
        else if (strcmp(a, "--repeat") == 0)
            o.repeat = (uint32_t)strtoul(v, NULL, 10);
        else if (strcmp(a, "--peer2") == 0)
            o.peer2 = v;
        else if (strcmp(a, "--model") == 0)
            o.model = v;
        else if (strcmp(a, "--expect") == 0)
            o.expect = v;
        else if (strcmp(a, "--blocks") == 0)
            o.blocks = (uint32_t)strtoul(v, NULL, 10);
        else if (strcmp(a, "--segments") == 0)
            o.segments = (uint32_t)strtoul(v, NULL, 10);
        else if (strcmp(a, "--batch") == 0)
            o.batch = (uint32_t)strtoul(v, NULL, 10);
        else if (strcmp(a, "--timeout-ms") == 0)
            o.timeout_ms = (uint32_t)strtoul(v, NULL, 10);
        else if (strcmp(a, "--block-bytes") == 0)
            o.block_bytes = strtoul(v, NULL, 10);
        else if (strcmp(a, "--seed") == 0)
            o.seed = strtoull(v, NULL, 10);
        else {
            fprintf(stderr, "kvs_peer: unknown option %s\n", a);
            return 2;
        }
    }
    if (o.blocks == 0 || o.segments == 0 || o.segments > 128 || o.batch == 0 ||
        o.block_bytes % o.segments != 0) {
        fprintf(stderr, "kvs_peer: bad geometry\n");
        return 2;
    }
    if (strcmp(o.mode, "serve") == 0 && o.listen != NULL)
        return serve(&o);
    if (strcmp(o.mode, "fetch") == 0 && (o.peer != NULL || o.from_pool))
        return fetch_mode(&o);
    if (strcmp(o.mode, "put") == 0)
        return put_mode(&o);
    if (strcmp(o.mode, "soak") == 0 && o.peer != NULL)
        return soak(&o);
    if (strcmp(o.mode, "garbage") == 0 && o.peer != NULL)
        return garbage(&o);
    fprintf(stderr, "kvs_peer: bad mode or missing --listen/--peer\n");
    return 2;
}
