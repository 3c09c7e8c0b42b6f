/* SPDX-License-Identifier: Apache-2.0 */
/* bench_transfer.c - `kvshare bench transfer`: fetch speed between two processes, beside
 * one core's memcpy of the same blocks and UCX's own ucx_perftest at the same size. */
#include "cli.h"
#include "util_int.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

typedef struct xopts {
    const char *tls, *path;
    uint64_t block_bytes, blocks, batch, repeats, seed, inflight;
    bool json, contiguous, serve, no_perftest, lookup_thread;
    int rtt_fd; /* --serve: the round-trip anchor's socket (-1: none) */
    /* --prefill-tp P --decode-tp D: the server publishes TP rank 0 of P's
     * share of the 8 KV heads, we fetch rank 0 of D's; block_bytes is a
     * whole block (all heads), side_bytes this process's share of it. */
    uint64_t prefill_tp, decode_tp, side_bytes;
    /* --kv-layout: both sides' NHD/HND (with TP). With TP the server also
     * publishes the same blocks again whole, as blocks of exactly the bytes
     * a sliced fetch moves (another model, the layout both sides share), so
     * one run times sliced and whole fetches of the same bytes. */
    kvs_kv_layout_t kv_layout;
} xopts_t;

static uint64_t shm_fetched(kvs_ctx_h ctx)
{
    kvs_stats_t ks = {.field_mask = KVS_STATS_FIELD_SHM};
    kvs_stats_query(ctx, &ks);
    return ks.shm_fetched_bytes;
}

/* Of the bytes this context copied from mapped memory, the share its copy
 * helper threads copied (KVSHARE_COPY_THREADS); 0 when none was mapped. */
static double helper_share(kvs_ctx_h ctx)
{
    kvs_stats_t ks = {.field_mask = KVS_STATS_FIELD_SHM | KVS_STATS_FIELD_COPY};
    kvs_stats_query(ctx, &ks);
    return ks.shm_fetched_bytes > 0 ? (double)ks.shm_helper_bytes / (double)ks.shm_fetched_bytes
                                    : 0;
}

/* Messages this context sent on same-host control channels (lookups and
 * releases over the holder's Unix socket instead of the transport). */
static uint64_t ctl_messages(kvs_ctx_h ctx)
{
    kvs_stats_t ks = {.field_mask = KVS_STATS_FIELD_CTL};
    kvs_stats_query(ctx, &ks);
    return ks.ctl_messages;
}

/* Lookups the holder's mapped block index answered, and those that asked
 * the holder though it has one (KVSHARE_SHM_INDEX). */
static void index_counts(kvs_ctx_h ctx, uint64_t *answered, uint64_t *asked)
{
    kvs_stats_t ks = {.field_mask = KVS_STATS_FIELD_INDEX};
    kvs_stats_query(ctx, &ks);
    *answered = ks.index_lookups;
    *asked = ks.index_asked;
}

/* The path that moved @all bytes, @shm of them from mapped memory. */
static const char *path_of(uint64_t shm, uint64_t all)
{
    return shm == 0 ? "ucx" : shm == all ? "memfd" : "mixed";
}

static void usage(FILE *f)
{
    fprintf(
        f,
        "usage: kvshare bench transfer [--tls posix,cma,self|tcp] [--block-bytes B]\n"
        "                              [--blocks N] [--batch K] [--repeats R]\n"
        "                              [--inflight 1|2] [--contiguous] [--no-perftest] [--seed S]\n"
        "                              [--prefill-tp P --decode-tp D [--kv-layout nhd|hnd]]\n"
        "                              [--path auto|memfd|ucx] [--lookup-thread] [--json]\n"
        "\n"
        "A server process publishes N distinct blocks (zero-copy, at shuffled block ids);\n"
        "this process looks them up and fetches them all in batches of K, R times, into\n"
        "shuffled ids of its own, with --inflight batches moving at once (default 1; with 2\n"
        "the next batch is looked up while the last one lands; on the mapped path the last\n"
        "batch's copy runs on this thread while the lookup's reply is on its way, so the\n"
        "copy then counts in the lookup's time; --lookup-thread looks each next batch up on\n"
        "a second thread instead, two leases at most). Where a batch's time went (lookup,\n"
        "kvs_fetch, wait, release: means; and the median lookup) is printed too, and the\n"
        "share of the mapped bytes the copy helper threads copied (KVSHARE_COPY_THREADS;\n"
        "helper_share in the JSON). Printed beside it, from the same run: one core's memcpy\n"
        "of the same blocks (the limit of a shared-memory path), one core's copy of them\n"
        "with stores that go around the caches, as a same-host fetch of 256 KiB or more a\n"
        "batch copies (stream_gbps, ratio_stream) and, on shared memory, the kernel's\n"
        "cross-process copy of them (CMA), one pass of each in every round of ours,\n"
        "so that a machine whose speed drifts moves both sides of a ratio alike; and\n"
        "ucx_perftest at the same size and UCX_TLS (ucp_get on shared memory, ucp_am_bw on\n"
        "tcp). On shared memory also a round trip with nothing of kvshare in it: a bare Unix\n"
        "socket between the same two processes, the server's end asleep in poll() as the\n"
        "holder's is, carrying a batch's lookup and its reply (rtt_bare_p50_us), then, after\n"
        "a batch of the memcpy anchor's time, its release (release_bare_us); and\n"
        "ratio_memcpy_bound, that batch of memcpy over itself plus both: the most any fetch\n"
        "with one round trip and one release a batch and a copy at memcpy's speed gets\n"
        "against memcpy on this host (a copy with streaming stores can pass it). Lookups on\n"
        "the same host read the holder's mapped block index and send it nothing (lookup:\n"
        "index, index_lookups; KVSHARE_SHM_INDEX=off asks the holder each batch, and then\n"
        "that bound applies); the first lookup of a connection, and any after the holder's\n"
        "memory changed, ask the holder (index_asked).\n"
        "--path memfd needs the same-host path (this process maps the server's memfds and\n"
        "copies them itself), ucx turns it off (KVSHARE_SHM=off); auto takes what works.\n"
        "Defaults: --tls posix,cma,self --block-bytes 262144 --blocks 4096 --batch 64\n"
        "          --repeats 5 --inflight 1 --seed 42 (the keys and the shuffle)\n"
        "--prefill-tp P --decode-tp D: the server holds TP rank 0 of P's share of the 8 KV\n"
        "heads of each block (--kv-layout, default nhd, on both sides), this process rank 0\n"
        "of D's; the figures count the heads both hold (--block-bytes is a whole block, a\n"
        "multiple of 2048). Where the shares differ the library fetches head slices. The\n"
        "same run also fetches the same bytes as whole blocks (a pool whose blocks are\n"
        "exactly the heads both hold), interleaved pass by pass: whole_gbps and\n"
        "ratio_sliced_whole (sliced / whole); path and sliced_path name the path the sliced\n"
        "passes took, whole_path the whole passes'.\n");
}

static kvs_key_t key_of(uint64_t seed, uint64_t i)
{
    kvs_key_t k;
    for (int w = 0; w < 4; w++) {
        uint64_t v = kvs_cli_mix(seed * 1000003u + i * 4u + (uint64_t)w);
        memcpy(&k.bytes[8 * w], &v, 8);
    }
    return k;
}

/* Block ids for keys 0..n-1: a shuffle, or the identity with --contiguous. */
static uint32_t *block_ids(uint64_t n, uint64_t seed, bool contiguous)
{
    uint32_t *ids = malloc(n * sizeof(*ids));
    if (ids == NULL)
        return NULL;
    for (uint64_t i = 0; i < n; i++)
        ids[i] = (uint32_t)i;
    if (!contiguous) {
        uint64_t r = seed;
        for (uint64_t i = n; i > 1; i--) {
            r = kvs_cli_mix(r);
            uint64_t j = r % i;
            uint32_t t = ids[i - 1];
            ids[i - 1] = ids[j];
            ids[j] = t;
        }
    }
    return ids;
}

/* KV heads TP rank 0 of @tp holds of the bench's 8 (vLLM's rule). */
static uint64_t tp_share(uint64_t tp)
{
    return tp <= 8 ? 8 / tp : 1;
}

/* The view of TP rank 0 of @tp (with TP: tp_share(tp) of the 8 heads, in
 * --kv-layout) under @model. */
static kvs_layout_t bench_layout(const xopts_t *o, const char *model, uint64_t tp)
{
    const bool tp_on = o->prefill_tp > 1 || o->decode_tp > 1;
    kvs_layout_t l = {.field_mask = KVS_LAYOUT_FIELD_TOTAL_KV_HEADS,
                      .model_id = model,
                      .dtype = KVS_DTYPE_BF16,
                      .block_tokens = 16,
                      .num_layers = 1,
                      .num_kv_heads = (uint32_t)tp_share(tp), /* this rank's */
                      .total_kv_heads = 8,
                      /* with TP, the geometry that makes block_bytes */
                      .head_dim = tp_on ? (uint32_t)(o->block_bytes / (2 * 16 * 8 * 2)) : 128,
                      .tp_size = (uint32_t)tp,
                      .kv_layout = o->kv_layout};
    return l;
}

static kvs_status_t make_pool(kvs_ctx_h ctx, const xopts_t *o, const kvs_layout_t *l,
                              uint64_t block_bytes, uint8_t **mem_p, kvs_pool_h *p)
{
    size_t bytes = (size_t)(o->blocks * block_bytes);
    uint8_t *mem = NULL; /* kvshare's memory: a same-host reader may map it */
    kvs_status_t st = kvs_mem_alloc(ctx, bytes, KVS_MEM_HOST, (void **)&mem);
    if (st != KVS_OK)
        return st;
    memset(mem, 0, bytes); /* touch every page before timing */
    kvs_segment_t seg = {.base = mem,
                         .block_stride = block_bytes,
                         .block_bytes = block_bytes,
                         .mem_type = KVS_MEM_HOST};
    kvs_pool_params_t pp = {
        .layout = l, .segments = &seg, .num_segments = 1, .num_blocks = (uint32_t)o->blocks};
    st = kvs_pool_create(ctx, &pp, p);
    if (st != KVS_OK) {
        kvs_mem_free(ctx, mem);
        return st;
    }
    *mem_p = mem;
    return KVS_OK;
}

/* The whole-block twin (with TP): the heads both rank 0s hold, as the view
 * of the larger TP size, under another model id, its keys another seed's. */
#define WHOLE_MODEL "kvshare-bench-whole"
static uint64_t whole_tp(const xopts_t *o)
{
    return o->prefill_tp > o->decode_tp ? o->prefill_tp : o->decode_tp;
}

static uint64_t whole_seed(const xopts_t *o)
{
    return o->seed ^ 0x5a5a5a5a5a5a5a5aull;
}

/* Publishes @o->blocks keys of @seed at shuffled ids of @pool (@block_bytes
 * each, at @mem), each block's bytes derived from its index. */
static kvs_status_t publish_all(const xopts_t *o, kvs_pool_h pool, uint8_t *mem,
                                uint64_t block_bytes, uint64_t seed)
{
    uint32_t *ids = block_ids(o->blocks, o->seed + 1, o->contiguous);
    kvs_key_t *keys = malloc(o->blocks * sizeof(*keys));
    kvs_status_t st = ids != NULL && keys != NULL ? KVS_OK : KVS_ERR_NO_MEMORY;
    for (uint64_t i = 0; st == KVS_OK && i < o->blocks; i++) {
        keys[i] = key_of(seed, i);
        uint64_t x = kvs_cli_mix(i);
        uint8_t *b = mem + (size_t)ids[i] * block_bytes;
        for (size_t j = 0; j + 8 <= block_bytes; j += 8, x = kvs_cli_mix(x))
            memcpy(b + j, &x, 8);
    }
    if (st == KVS_OK)
        st = kvs_publish(pool, keys, ids, o->blocks, KVS_PUBLISH_ZERO_COPY, NULL);
    free(ids);
    free(keys);
    return st;
}

static kvs_ctx_h make_ctx(const char *listen)
{
    char err[512];
    kvs_ctx_params_t cp = {.field_mask = KVS_CTX_FIELD_ERRBUF | KVS_CTX_FIELD_TRANSPORT |
                                         (listen != NULL ? KVS_CTX_FIELD_PROGRESS : 0),
                           .progress = KVS_PROGRESS_THREAD, /* the server must serve */
                           .errbuf = err,
                           .errbuf_len = sizeof(err),
                           .transport = "ucx"};
    if (listen != NULL) {
        cp.field_mask |= KVS_CTX_FIELD_LISTEN;
        cp.listen = listen;
    }
    kvs_ctx_h ctx = NULL;
    kvs_status_t st = kvs_ctx_create(&cp, &ctx);
    if (st != KVS_OK) {
        fprintf(stderr, "kvshare bench transfer: %s: %s\n", kvs_status_string(st), err);
        return NULL;
    }
    return ctx;
}

/* The round-trip anchor (same host): a bare Unix SOCK_SEQPACKET socket
 * between the two processes, carrying what a batch's lookup, its reply and
 * its release carry, with none of kvshare in it. Sizes as our encoder
 * writes them (proto.c: a 40-byte header, then the body): a LOOKUP is 56
 * bytes and 32 a key, its reply 56 and 38 a block of one piece, a RELEASE
 * 48. */
#define RTT_MAX 65536u
static size_t rtt_req_len(uint64_t n)
{
    size_t l = 56 + 32 * (size_t)n;
    return l < RTT_MAX ? l : RTT_MAX;
}
static size_t rtt_rep_len(uint64_t n)
{
    size_t l = 56 + 38 * (size_t)n;
    return l < RTT_MAX ? l : RTT_MAX;
}

/* The server's end: a thread asleep in poll() between messages, as the
 * holder's progress thread is; a request ('Q', then the reply's length) is
 * answered with that many bytes, a release ('R') with nothing. */
static void *rtt_echo(void *arg)
{
    int fd = (int)(intptr_t)arg;
    uint8_t *buf = malloc(RTT_MAX);
    while (buf != NULL) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, -1) < 0 && errno != EINTR)
            break;
        ssize_t n = recv(fd, buf, RTT_MAX, MSG_DONTWAIT);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            continue;
        if (n <= 0)
            break; /* the client closed its end */
        uint32_t want = 0;
        if (n >= 8 && buf[0] == 'Q')
            memcpy(&want, buf + 4, 4);
        if (want > 0 && send(fd, buf, want < RTT_MAX ? want : RTT_MAX, MSG_NOSIGNAL) < 0)
            break;
    }
    free(buf);
    return NULL;
}

/* The server half: publish, say where, serve until stdin closes. */
static int serve(const xopts_t *o)
{
    kvs_ctx_h ctx = make_ctx("127.0.0.1:0");
    if (ctx == NULL)
        return 1;
    const bool tp = o->prefill_tp > 1 || o->decode_tp > 1;
    uint8_t *mem = NULL, *wmem = NULL;
    kvs_pool_h pool = NULL, wpool = NULL;
    const kvs_layout_t l = bench_layout(o, "kvshare-bench", o->prefill_tp);
    kvs_status_t st = make_pool(ctx, o, &l, o->side_bytes, &mem, &pool);
    if (st == KVS_OK)
        st = publish_all(o, pool, mem, o->side_bytes, o->seed);
    if (st == KVS_OK && tp) {
        const kvs_layout_t wl = bench_layout(o, WHOLE_MODEL, whole_tp(o));
        const uint64_t wbytes = o->block_bytes * tp_share(whole_tp(o)) / 8;
        st = make_pool(ctx, o, &wl, wbytes, &wmem, &wpool);
        if (st == KVS_OK)
            st = publish_all(o, wpool, wmem, wbytes, whole_seed(o));
    }
    if (st != KVS_OK) {
        fprintf(stderr, "kvshare bench transfer: server setup: %s\n", kvs_status_string(st));
        return 1;
    }
    char addr[300];
    kvs_ctx_listen_addr(ctx, addr, sizeof(addr));
    pthread_t echo;
    bool echoing =
        o->rtt_fd >= 0 && pthread_create(&echo, NULL, rtt_echo, (void *)(intptr_t)o->rtt_fd) == 0;
    /* The pool's address lets the client time raw CMA on the same blocks. */
    printf("ready %s %p\n", addr, (void *)mem);
    fflush(stdout);
    char buf[16];
    while (read(0, buf, sizeof(buf)) > 0)
        ;
    if (echoing) {
        shutdown(o->rtt_fd, SHUT_RDWR); /* its recv ends */
        pthread_join(echo, NULL);
    }
    kvs_pool_destroy(wpool);
    kvs_pool_destroy(pool);
    kvs_mem_free(ctx, mem);
    kvs_mem_free(ctx, wmem);
    kvs_ctx_destroy(ctx);
    return 0;
}

/* Where a pass's time went, summed over its batches (microseconds): the
 * lookup (a round trip to the holder), kvs_fetch(), the wait for its end
 * (on the mapped path the copy itself, unless the next batch's lookup ran
 * it while waiting for its reply: --inflight 2) and the release. */
typedef struct phases {
    double lookup, fetch, wait, release;
    uint64_t batches;
    double *lookups; /* each measured lookup, for lookup_p50_us: a mean is its tail */
    size_t nlookups;
} phases_t;

/* Batch @b's lookup (keys b * batch ...); *n_p gets its key count. */
static kvs_status_t lookup_batch(kvs_ctx_h ctx, const xopts_t *o, const char *addr, kvs_pool_h pool,
                                 const kvs_key_t *keys, uint64_t b, kvs_lease_h *lease_p)
{
    uint64_t first = b * o->batch;
    size_t n = (size_t)(o->blocks - first < o->batch ? o->blocks - first : o->batch);
    kvs_lookup_params_t lp = {.field_mask = KVS_LOOKUP_FIELD_SOURCES | KVS_LOOKUP_FIELD_PEER,
                              .sources = KVS_SOURCE_PEER,
                              .peer = addr};
    kvs_lease_h lease = NULL;
    kvs_status_t st = kvs_lookup(ctx, kvs_pool_layout_id(pool), keys + first, n, &lp, &lease);
    if (st == KVS_OK && kvs_lease_hits(lease) != n) {
        fprintf(stderr, "kvshare bench transfer: %zu of %zu hits\n", kvs_lease_hits(lease), n);
        kvs_lease_release(lease);
        return KVS_ERR_NOT_FOUND;
    }
    if (st == KVS_OK)
        *lease_p = lease;
    return st;
}

/* Waits for a batch's fetch, frees it and its lease, and appends its latency
 * (from @b0) to @lat when not NULL. Returns @st, or the fetch's error if @st
 * was KVS_OK. */
static kvs_status_t finish_batch(kvs_status_t st, kvs_request_h req, kvs_lease_h lease, double b0,
                                 double *lat, size_t *nlat, phases_t *ph)
{
    double t0 = kvs_cli_now();
    kvs_status_t wst = kvs_request_wait(req, -1);
    kvs_request_free(req);
    double t1 = kvs_cli_now();
    kvs_lease_release(lease);
    double t2 = kvs_cli_now();
    ph->wait += (t1 - t0) * 1e6;
    ph->release += (t2 - t1) * 1e6;
    ph->batches++;
    if (lat != NULL)
        lat[(*nlat)++] = (t2 - b0) * 1e6;
    return st == KVS_OK ? wst : st;
}

/* Fetches batch @b from @lease into @dst, waits, releases the lease. */
static kvs_status_t fetch_batch(const xopts_t *o, kvs_pool_h pool, const uint32_t *dst, uint64_t b,
                                kvs_lease_h lease, phases_t *ph)
{
    uint64_t first = b * o->batch;
    size_t n = kvs_lease_hits(lease);
    kvs_request_h req = NULL;
    double t0 = kvs_cli_now();
    kvs_status_t st = kvs_fetch(lease, pool, dst + first, n, NULL, &req);
    double t1 = kvs_cli_now();
    if (st == KVS_OK) {
        st = kvs_request_wait(req, -1);
        kvs_request_free(req);
    }
    double t2 = kvs_cli_now();
    kvs_lease_release(lease);
    double t3 = kvs_cli_now();
    ph->fetch += (t1 - t0) * 1e6;
    ph->wait += (t2 - t1) * 1e6;
    ph->release += (t3 - t2) * 1e6;
    return st;
}

/* --lookup-thread: a thread looks up batch b + 1 while this one fetches batch
 * b (kvs_lookup() may run on any thread; a lease passes between threads
 * under this lock). At most two leases are held at once. */
typedef struct ahead {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    kvs_ctx_h ctx;
    const xopts_t *o;
    const char *addr;
    kvs_pool_h pool;
    const kvs_key_t *keys;
    uint64_t nbatches;
    uint64_t done;  /* batches looked up */
    uint64_t taken; /* batches the fetcher took */
    bool stop;
    kvs_lease_h lease[2];
    kvs_status_t st[2];
    double b0[2], secs[2];
} ahead_t;

static void *ahead_thread(void *arg)
{
    ahead_t *a = arg;
    for (uint64_t b = 0; b < a->nbatches; b++) {
        pthread_mutex_lock(&a->mu);
        while (!a->stop && b > a->taken) /* its slot's last batch not taken yet */
            pthread_cond_wait(&a->cv, &a->mu);
        bool stop = a->stop;
        pthread_mutex_unlock(&a->mu);
        if (stop)
            break;
        kvs_lease_h lease = NULL;
        double t0 = kvs_cli_now();
        kvs_status_t st = lookup_batch(a->ctx, a->o, a->addr, a->pool, a->keys, b, &lease);
        double t1 = kvs_cli_now();
        pthread_mutex_lock(&a->mu);
        a->lease[b % 2] = lease;
        a->st[b % 2] = st;
        a->b0[b % 2] = t0;
        a->secs[b % 2] = t1 - t0;
        a->done = b + 1;
        pthread_cond_broadcast(&a->cv);
        pthread_mutex_unlock(&a->mu);
        if (st != KVS_OK)
            break;
    }
    return NULL;
}

/* The anchors' passes: one core copying the same blocks (same shuffled ids
 * both sides) with memcpy, or (@stream) with the stores around the caches
 * that a same-host fetch of a large batch uses (kvs__copy_stream), and the
 * kernel's cross-process copy (CMA, process_vm_readv) of them from the
 * server process: the ceiling of a shared-memory path when the holder's
 * memory cannot be mapped (no xpmem/knem). Each returns its seconds (CMA:
 * -1 when a read failed). */
static double memcpy_pass(const xopts_t *o, uint8_t *mem, const uint8_t *src, const uint32_t *sids,
                          const uint32_t *dst, uint64_t moved, bool stream)
{
    double t0 = kvs_cli_now();
    for (uint64_t i = 0; i < o->blocks; i++) {
        uint8_t *to = mem + (size_t)dst[i] * o->side_bytes;
        const uint8_t *from = src + (size_t)sids[i] * moved;
        if (stream)
            kvs__copy_stream(to, from, moved);
        else
            memcpy(to, from, moved);
    }
    return kvs_cli_now() - t0;
}

static double cma_pass(const xopts_t *o, uint8_t *mem, pid_t srv, void *srv_base,
                       uint64_t srv_bytes, const uint32_t *sids, const uint32_t *dst,
                       uint64_t moved)
{
    double t0 = kvs_cli_now();
    for (uint64_t i = 0; i < o->blocks; i++) {
        struct iovec l = {mem + (size_t)dst[i] * o->side_bytes, moved};
        struct iovec rm = {(uint8_t *)srv_base + (size_t)sids[i] * srv_bytes, moved};
        if (process_vm_readv(srv, &l, 1, &rm, 1, 0) != (ssize_t)moved)
            return -1;
    }
    return kvs_cli_now() - t0;
}

/* The round-trip anchor's pass (client end): per batch, a request of the
 * batch's LOOKUP size and its reply (timed: @rtt gets each), then
 * @copy_s of busy waiting (one batch of the memcpy anchor: the copy a
 * fetch would do meanwhile, so the server's thread falls asleep as the
 * holder's does), then a release (timed into *release_s). False when the
 * socket failed. */
static bool rtt_pass(const xopts_t *o, int fd, double copy_s, double *rtt, size_t *nrtt,
                     double *release_s)
{
    static uint8_t buf[RTT_MAX];
    const uint64_t nbatches = (o->blocks + o->batch - 1) / o->batch;
    for (uint64_t b = 0; b < nbatches; b++) {
        uint64_t n = o->blocks - b * o->batch < o->batch ? o->blocks - b * o->batch : o->batch;
        size_t q = rtt_req_len(n);
        uint32_t want = (uint32_t)rtt_rep_len(n);
        memset(buf, 0, 8);
        buf[0] = 'Q';
        memcpy(buf + 4, &want, 4);
        double t0 = kvs_cli_now();
        if (send(fd, buf, q, MSG_NOSIGNAL) != (ssize_t)q || recv(fd, buf, RTT_MAX, 0) != want)
            return false;
        double t1 = kvs_cli_now();
        rtt[(*nrtt)++] = (t1 - t0) * 1e6;
        while (kvs_cli_now() < t1 + copy_s)
            ;
        buf[0] = 'R';
        double t2 = kvs_cli_now();
        if (send(fd, buf, 48, MSG_NOSIGNAL) != 48)
            return false;
        *release_s += kvs_cli_now() - t2;
    }
    return true;
}

/* One pass over all the blocks: looked up at @addr and fetched into @dst of
 * @pool in batches, o->inflight at once. A batch's latency (from its lookup
 * to its end) is appended to @lat and where its time went added to @ph when
 * @lat is not NULL; *secs_p gets the pass's time. */
static kvs_status_t fetch_pass(kvs_ctx_h ctx, const xopts_t *o, const char *addr, kvs_pool_h pool,
                               const kvs_key_t *keys, const uint32_t *dst, double *lat,
                               size_t *nlat, phases_t *ph, double *secs_p)
{
    const uint64_t nbatches = (o->blocks + o->batch - 1) / o->batch;
    kvs_status_t st = KVS_OK;
    phases_t scratch = {0};
    if (lat == NULL)
        ph = &scratch;
    double t0 = kvs_cli_now();
    if (!o->lookup_thread) {
        /* One thread: with --inflight 2 batch b + 1 is looked up before
         * batch b is waited for. */
        kvs_lease_h prev_lease = NULL;
        kvs_request_h prev_req = NULL;
        double prev_b0 = 0;
        for (uint64_t b = 0; b <= nbatches && st == KVS_OK; b++) {
            kvs_lease_h lease = NULL;
            kvs_request_h req = NULL;
            double b0 = kvs_cli_now();
            if (b < nbatches) {
                st = lookup_batch(ctx, o, addr, pool, keys, b, &lease);
                double t1 = kvs_cli_now();
                ph->lookup += (t1 - b0) * 1e6;
                if (ph->lookups != NULL)
                    ph->lookups[ph->nlookups++] = (t1 - b0) * 1e6;
                if (st == KVS_OK)
                    st = kvs_fetch(lease, pool, dst + b * o->batch, kvs_lease_hits(lease), NULL,
                                   &req);
                ph->fetch += (kvs_cli_now() - t1) * 1e6;
            }
            if (prev_req != NULL)
                st = finish_batch(st, prev_req, prev_lease, prev_b0, lat, nlat, ph);
            prev_req = req;
            prev_lease = lease;
            prev_b0 = b0;
            if (o->inflight == 1 && prev_req != NULL) { /* no overlap: finish it now */
                st = finish_batch(st, prev_req, prev_lease, prev_b0, lat, nlat, ph);
                prev_req = NULL;
                prev_lease = NULL;
            }
            if (st != KVS_OK) {
                kvs_request_free(prev_req);
                kvs_lease_release(prev_lease);
                prev_req = NULL;
                prev_lease = NULL;
            }
        }
        *secs_p = kvs_cli_now() - t0;
        return st;
    }
    ahead_t a = {
        .ctx = ctx, .o = o, .addr = addr, .pool = pool, .keys = keys, .nbatches = nbatches};
    pthread_mutex_init(&a.mu, NULL);
    pthread_cond_init(&a.cv, NULL);
    pthread_t th;
    if (pthread_create(&th, NULL, ahead_thread, &a) != 0) {
        st = KVS_ERR_NO_MEMORY;
        goto out;
    }
    for (uint64_t b = 0; b < nbatches && st == KVS_OK; b++) {
        pthread_mutex_lock(&a.mu);
        while (a.done <= b)
            pthread_cond_wait(&a.cv, &a.mu);
        kvs_lease_h lease = a.lease[b % 2];
        a.lease[b % 2] = NULL;
        st = a.st[b % 2];
        double b0 = a.b0[b % 2];
        ph->lookup += a.secs[b % 2] * 1e6;
        if (ph->lookups != NULL)
            ph->lookups[ph->nlookups++] = a.secs[b % 2] * 1e6;
        a.taken = b + 1;
        pthread_cond_broadcast(&a.cv);
        pthread_mutex_unlock(&a.mu);
        if (st == KVS_OK)
            st = fetch_batch(o, pool, dst, b, lease, ph);
        ph->batches++;
        if (lat != NULL)
            lat[(*nlat)++] = (kvs_cli_now() - b0) * 1e6;
    }
    pthread_mutex_lock(&a.mu);
    a.stop = true;
    pthread_cond_broadcast(&a.cv);
    pthread_mutex_unlock(&a.mu);
    pthread_join(th, NULL);
    for (int i = 0; i < 2; i++) /* looked up ahead of a failed batch */
        kvs_lease_release(a.lease[i]);
out:
    pthread_cond_destroy(&a.cv);
    pthread_mutex_destroy(&a.mu);
    *secs_p = kvs_cli_now() - t0;
    return st;
}

/* Spot-checks @mem's blocks at @dst against what the server wrote. */
static bool content_ok(const xopts_t *o, const uint8_t *mem, uint64_t block_bytes,
                       const uint32_t *dst, const char *what)
{
    for (uint64_t i = 0; i < o->blocks; i += 97) {
        uint64_t x = kvs_cli_mix(i), got;
        memcpy(&got, mem + (size_t)dst[i] * block_bytes, 8);
        if (got != x) {
            fprintf(stderr, "kvshare bench transfer: %s block %llu has wrong content\n", what,
                    (unsigned long long)i);
            return false;
        }
    }
    return true;
}

/* ucx_perftest at the same size and transports, server and client on loopback.
 * Returns GB/s (1e9 bytes), or a negative number when it could not run. */
static double perftest(const char *tls, const char *test, uint64_t size, char *note, size_t nlen)
{
    char port[16], sz[32], cmd[512];
    snprintf(port, sizeof(port), "%d", 20000 + (int)(kvs_cli_mix((uint64_t)getpid()) % 20000));
    snprintf(sz, sizeof(sz), "%llu", (unsigned long long)size);
    setenv("UCX_TLS", tls, 1);
    char *sargv[] = {"/usr/bin/ucx_perftest", "-p", port, NULL};
    if (access(sargv[0], X_OK) != 0) {
        snprintf(note, nlen, "ucx_perftest not installed (Debian package ucx-utils)");
        return -1;
    }
    int to;
    FILE *from;
    pid_t srv = kvs_cli_spawn(sargv, &to, &from);
    if (srv < 0)
        return -1;
    /* The client retries until the server listens: no fixed sleep. */
    double gbps = -1;
    for (int attempt = 0; attempt < 50 && gbps < 0; attempt++) {
        snprintf(cmd, sizeof(cmd),
                 "UCX_TLS=%s /usr/bin/ucx_perftest 127.0.0.1 -p %s -t %s -s %s -n 2000 -w 200 "
                 "2>/dev/null",
                 tls, port, test, sz);
        FILE *p = popen(cmd, "r");
        char line[512];
        while (p != NULL && fgets(line, sizeof(line), p) != NULL) {
            double it, l50, lavg, lall, bw;
            if (sscanf(line, "Final: %lf %lf %lf %lf %lf", &it, &l50, &lavg, &lall, &bw) == 5)
                gbps = bw * 1048576.0 / 1e9; /* perftest's MB is 2^20 bytes */
        }
        if (p != NULL)
            pclose(p);
        if (gbps < 0) {
            struct timespec ts = {0, 100000000};
            nanosleep(&ts, NULL);
        }
    }
    kill(srv, SIGKILL);
    waitpid(srv, NULL, 0);
    close(to);
    fclose(from);
    if (gbps < 0)
        snprintf(note, nlen, "ucx_perftest did not report");
    return gbps;
}

enum {
    O_JSON = 256,
    O_CONTIGUOUS,
    O_SERVE,
    O_NO_PERFTEST,
    O_TLS,
    O_BLOCK_BYTES,
    O_BLOCKS,
    O_BATCH,
    O_REPEATS,
    O_INFLIGHT,
    O_SEED,
    O_PREFILL_TP,
    O_DECODE_TP,
    O_KV_LAYOUT,
    O_PATH,
    O_LOOKUP_THREAD,
    O_RTT_FD
};

static const struct option xfer_options[] = {
    {"json", no_argument, NULL, O_JSON},
    {"contiguous", no_argument, NULL, O_CONTIGUOUS},
    {"serve", no_argument, NULL, O_SERVE}, /* internal: the server half */
    {"no-perftest", no_argument, NULL, O_NO_PERFTEST},
    {"tls", required_argument, NULL, O_TLS},
    {"block-bytes", required_argument, NULL, O_BLOCK_BYTES},
    {"blocks", required_argument, NULL, O_BLOCKS},
    {"batch", required_argument, NULL, O_BATCH},
    {"repeats", required_argument, NULL, O_REPEATS},
    {"inflight", required_argument, NULL, O_INFLIGHT},
    {"seed", required_argument, NULL, O_SEED},
    {"prefill-tp", required_argument, NULL, O_PREFILL_TP},
    {"decode-tp", required_argument, NULL, O_DECODE_TP},
    {"kv-layout", required_argument, NULL, O_KV_LAYOUT},
    {"path", required_argument, NULL, O_PATH},
    {"lookup-thread", no_argument, NULL, O_LOOKUP_THREAD},
    {"rtt-fd", required_argument, NULL, O_RTT_FD}, /* internal: the anchor's socket */
    KVS_CLI_OPT_HELP_ENTRY,
    KVS_CLI_OPT_END};
static const kvs_cli_cmd_t xfer_cmd = {"bench transfer", usage, xfer_options};

/* Returns -1 to go on, else the exit code: 0 after --help, 2 for a usage error. */
static int parse_opts(int argc, char **argv, xopts_t *o)
{
    int c;
    while ((c = kvs_cli_getopt(&xfer_cmd, argc, argv)) != -1) {
        switch (c) {
        case O_JSON:
            o->json = true;
            break;
        case O_CONTIGUOUS:
            o->contiguous = true;
            break;
        case O_SERVE:
            o->serve = true;
            break;
        case O_NO_PERFTEST:
            o->no_perftest = true;
            break;
        case O_LOOKUP_THREAD:
            o->lookup_thread = true;
            break;
        case O_RTT_FD: {
            uint64_t fd;
            if (!kvs_cli_parse_u64("--rtt-fd", optarg, 3, 65535, &fd))
                return 2;
            o->rtt_fd = (int)fd;
            break;
        }
        case O_TLS:
            if (optarg[0] == '\0')
                return kvs_cli_usage_error(&xfer_cmd, "--tls '': name UCX transports");
            o->tls = optarg;
            break;
        case O_BLOCK_BYTES:
            if (!kvs_cli_parse_size("--block-bytes", optarg, 8, 1ull << 30, &o->block_bytes))
                return 2;
            if (o->block_bytes % 8 != 0)
                return kvs_cli_usage_error(&xfer_cmd, "--block-bytes '%s': not a multiple of 8",
                                           optarg);
            break;
        case O_BLOCKS:
            if (!kvs_cli_parse_u64("--blocks", optarg, 1, 1u << 24, &o->blocks))
                return 2;
            break;
        case O_BATCH:
            if (!kvs_cli_parse_u64("--batch", optarg, 1, 65536, &o->batch))
                return 2;
            break;
        case O_REPEATS:
            if (!kvs_cli_parse_u64("--repeats", optarg, 1, 1000, &o->repeats))
                return 2;
            break;
        case O_INFLIGHT:
            if (!kvs_cli_parse_u64("--inflight", optarg, 1, 2, &o->inflight))
                return 2;
            break;
        case O_SEED:
            if (!kvs_cli_parse_u64("--seed", optarg, 0, UINT64_MAX, &o->seed))
                return 2;
            break;
        case O_PREFILL_TP:
        case O_DECODE_TP: {
            const char *name = c == O_PREFILL_TP ? "--prefill-tp" : "--decode-tp";
            uint64_t *tp = c == O_PREFILL_TP ? &o->prefill_tp : &o->decode_tp;
            if (!kvs_cli_parse_u64(name, optarg, 1, 64, tp))
                return 2;
            if (8 % *tp != 0 && *tp % 8 != 0)
                return kvs_cli_usage_error(&xfer_cmd,
                                           "%s %llu: the bench's 8 KV heads do not split over "
                                           "%llu ranks",
                                           name, (unsigned long long)*tp, (unsigned long long)*tp);
            break;
        }
        case O_KV_LAYOUT:
            if (strcmp(optarg, "nhd") != 0 && strcmp(optarg, "hnd") != 0)
                return kvs_cli_usage_error(&xfer_cmd, "--kv-layout '%s': expected nhd or hnd",
                                           optarg);
            o->kv_layout = strcmp(optarg, "hnd") == 0 ? KVS_KV_HND : KVS_KV_NHD;
            break;
        case O_PATH:
            if (strcmp(optarg, "auto") != 0 && strcmp(optarg, "memfd") != 0 &&
                strcmp(optarg, "ucx") != 0)
                return kvs_cli_usage_error(&xfer_cmd, "--path '%s': auto, memfd or ucx", optarg);
            o->path = optarg;
            break;
        default:
            return c == KVS_CLI_OPT_HELP ? 0 : 2;
        }
    }
    return kvs_cli_no_operands(&xfer_cmd, argc, argv) != 0 ? 2 : -1;
}

int kvs_cli_bench_transfer(int argc, char **argv)
{
    xopts_t o = {.tls = "posix,cma,self",
                 .path = "auto",
                 .block_bytes = 262144,
                 .blocks = 4096,
                 .batch = 64,
                 .repeats = 5,
                 .seed = 42,
                 .inflight = 1,
                 .prefill_tp = 1,
                 .decode_tp = 1,
                 .rtt_fd = -1};
    int prc = parse_opts(argc, argv, &o);
    if (prc >= 0)
        return prc;
    const bool tp = o.prefill_tp > 1 || o.decode_tp > 1;
    if (tp && o.block_bytes % 2048 != 0) {
        fprintf(stderr,
                "kvshare bench transfer: --block-bytes %llu: with --prefill-tp/--decode-tp "
                "a multiple of 2048 (16 tokens x 8 heads x K/V x bf16, head_dim >= 4)\n",
                (unsigned long long)o.block_bytes);
        return 2;
    }
    /* This side's share of a block, and what a fetch moves: the heads both
     * rank 0s hold (each starts at head 0). All of it without TP. */
    const uint64_t sp = tp_share(o.prefill_tp), sd = tp_share(o.decode_tp);
    o.side_bytes = o.block_bytes * (o.serve ? sp : sd) / 8;
    const uint64_t moved = o.block_bytes * (sp < sd ? sp : sd) / 8,
                   srv_bytes = o.block_bytes * sp / 8;
    /* Connection setup goes through UCX's TCP connection manager, so our
     * processes need tcp listed; the data path still takes the fastest
     * transport UCX finds in the list (see docs/transport.md). */
    char ours[256];
    bool has_tcp = strstr(o.tls, "tcp") != NULL || strcmp(o.tls, "all") == 0;
    snprintf(ours, sizeof(ours), "%s%s", o.tls, has_tcp ? "" : ",tcp");
    setenv("UCX_TLS", ours, 1);
    if (strcmp(o.path, "ucx") == 0)
        setenv("KVSHARE_SHM", "off", 1); /* both processes: no offer, no mapping */
    /* The --serve child inherits the parent's token; alone it needs one too. */
    if (!kvs_cli_run_token("bench transfer"))
        return 1;
    if (o.serve)
        return serve(&o);

    bool shm = strcmp(o.tls, "tcp") != 0;
    const char *pt_test = shm ? "ucp_get" : "ucp_am_bw";
    double bytes_total = (double)o.blocks * (double)moved;
    if (!o.json)
        fprintf(stderr,
                "bench transfer: %llu blocks x %llu bytes (%.0f MiB), batches of %llu, "
                "UCX_TLS=%s, %s ids\n",
                (unsigned long long)o.blocks, (unsigned long long)moved, bytes_total / 1048576.0,
                (unsigned long long)o.batch, ours, o.contiguous ? "contiguous" : "shuffled");
    if (!o.json && tp)
        fprintf(stderr,
                "bench transfer: prefill TP %llu -> decode TP %llu: rank 0s' shares of %llu-byte "
                "blocks, %llu and %llu bytes, %llu in common\n",
                (unsigned long long)o.prefill_tp, (unsigned long long)o.decode_tp,
                (unsigned long long)o.block_bytes, (unsigned long long)srv_bytes,
                (unsigned long long)(o.block_bytes * sd / 8), (unsigned long long)moved);

    /* 1. The server process. */
    char bb[32], nb[32], sb[32], pb[32], db[32];
    snprintf(pb, sizeof(pb), "%llu", (unsigned long long)o.prefill_tp);
    snprintf(db, sizeof(db), "%llu", (unsigned long long)o.decode_tp);
    snprintf(bb, sizeof(bb), "%llu", (unsigned long long)o.block_bytes);
    snprintf(nb, sizeof(nb), "%llu", (unsigned long long)o.blocks);
    snprintf(sb, sizeof(sb), "%llu", (unsigned long long)o.seed);
    char self[4096];
    ssize_t sl = readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (sl <= 0)
        return 1;
    self[sl] = '\0';
    /* The round-trip anchor's socket, on shared memory (where lookups take
     * the holder's Unix socket): the server's end crosses exec, ours not. */
    int rtt_sv[2] = {-1, -1};
    char rf[32] = "";
    if (shm && socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, rtt_sv) == 0) {
        /* A server that does not answer (its thread did not start) costs
         * the anchor, not a hang: rtt_pass fails after 2 s. */
        struct timeval tv = {.tv_sec = 2};
        setsockopt(rtt_sv[0], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        setsockopt(rtt_sv[0], SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
        int theirs = dup(rtt_sv[1]); /* a duplicate is not close-on-exec */
        close(rtt_sv[1]);
        rtt_sv[1] = theirs;
        if (theirs >= 0)
            snprintf(rf, sizeof(rf), "--rtt-fd=%d", theirs);
    }
    char *sargv[] = {self,
                     "bench",
                     "transfer",
                     "--serve",
                     "--tls",
                     (char *)o.tls,
                     "--block-bytes",
                     bb,
                     "--blocks",
                     nb,
                     "--seed",
                     sb,
                     o.contiguous ? "--contiguous" : "--json",
                     "--prefill-tp",
                     pb,
                     "--decode-tp",
                     db,
                     "--kv-layout",
                     o.kv_layout == KVS_KV_HND ? "hnd" : "nhd",
                     rf[0] != '\0' ? rf : NULL,
                     NULL};
    int to;
    FILE *from;
    pid_t srv = kvs_cli_spawn(sargv, &to, &from);
    if (rtt_sv[1] >= 0)
        close(rtt_sv[1]); /* the server has it; later children must not */
    char line[512] = "", addr[300] = "";
    void *srv_base = NULL;
    if (srv < 0 || fgets(line, sizeof(line), from) == NULL ||
        sscanf(line, "ready %299s %p", addr, &srv_base) != 2) {
        fprintf(stderr, "kvshare bench transfer: the server process did not start\n");
        return 1;
    }

    /* 2. Our side: fetch everything, R times after a warm-up pass; with TP
     * each pass is followed by one over the whole-block twin (the same
     * bytes), so both see the same machine. */
    int rc = 1;
    kvs_ctx_h ctx = make_ctx(NULL);
    uint8_t *mem = NULL, *wmem = NULL;
    kvs_pool_h pool = NULL, wpool = NULL;
    uint8_t *src = NULL;   /* the memcpy anchor's source */
    uint32_t *sids = NULL; /* its (and CMA's) shuffled source ids */
    double *mt = NULL, *st_t = NULL, *ct = NULL;
    kvs_key_t *keys = malloc(o.blocks * sizeof(*keys));
    kvs_key_t *wkeys = tp ? malloc(o.blocks * sizeof(*wkeys)) : NULL;
    uint32_t *dst = block_ids(o.blocks, o.seed + 2, o.contiguous);
    uint64_t nbatches = (o.blocks + o.batch - 1) / o.batch;
    double *lat = calloc(nbatches * o.repeats, sizeof(double));
    double *lookups = calloc(nbatches * o.repeats, sizeof(double));
    double *rtts = calloc(nbatches * o.repeats, sizeof(double));
    size_t nrtts = 0;
    double rtt_release_s = 0;
    double *rep = calloc(o.repeats, sizeof(double));
    double *wrep = calloc(o.repeats, sizeof(double));
    const kvs_layout_t lay = bench_layout(&o, "kvshare-bench", o.decode_tp),
                       wlay = bench_layout(&o, WHOLE_MODEL, whole_tp(&o));
    if (ctx == NULL || keys == NULL || (tp && wkeys == NULL) || dst == NULL || lat == NULL ||
        lookups == NULL || rtts == NULL || rep == NULL || wrep == NULL ||
        make_pool(ctx, &o, &lay, o.side_bytes, &mem, &pool) != KVS_OK ||
        (tp && make_pool(ctx, &o, &wlay, moved, &wmem, &wpool) != KVS_OK))
        goto out;
    for (uint64_t i = 0; i < o.blocks; i++) {
        keys[i] = key_of(o.seed, i);
        if (tp)
            wkeys[i] = key_of(whole_seed(&o), i);
    }
    size_t nlat = 0;
    phases_t ph = {.lookups = lookups};
    kvs_status_t st = KVS_OK;
    /* Bytes each kind of pass read from mapped memory (with TP the sliced
     * and the whole passes can take different paths). */
    uint64_t shm_sliced = 0, shm_whole = 0;
    /* The anchors run in the same rounds as our passes, each round one of
     * each, so that a machine whose speed drifts (a VM's neighbours) moves
     * both sides of a ratio alike; our pass goes last, so the pool holds
     * what it fetched when checked. */
    src = aligned_alloc(4096, (size_t)bytes_total);
    sids = block_ids(o.blocks, o.seed + 1, o.contiguous);
    mt = calloc(o.repeats, sizeof(double));
    st_t = calloc(o.repeats, sizeof(double));
    ct = calloc(o.repeats, sizeof(double));
    bool mc_ok = src != NULL && sids != NULL && mt != NULL && st_t != NULL,
         cma_ok = shm && sids != NULL && ct != NULL;
    if (src != NULL)
        memset(src, 1, (size_t)bytes_total);
    bool rtt_ok = rtt_sv[0] >= 0;
    for (uint64_t r = 0; r <= o.repeats && st == KVS_OK; r++) {
        double mpass = 0;
        if (mc_ok) {
            double t = memcpy_pass(&o, mem, src, sids, dst, moved, false);
            mpass = t;
            if (r > 0)
                mt[r - 1] = t;
            t = memcpy_pass(&o, mem, src, sids, dst, moved, true);
            if (r > 0)
                st_t[r - 1] = t;
        }
        if (rtt_ok) { /* the warm-up pass's samples are dropped */
            size_t n0 = nrtts;
            double rel0 = rtt_release_s;
            rtt_ok =
                rtt_pass(&o, rtt_sv[0], mpass / (double)nbatches, rtts, &nrtts, &rtt_release_s);
            if (r == 0) {
                nrtts = n0;
                rtt_release_s = rel0;
            }
        }
        if (cma_ok) {
            double t = cma_pass(&o, mem, srv, srv_base, srv_bytes, sids, dst, moved);
            cma_ok = t >= 0;
            if (r > 0)
                ct[r - 1] = t;
        }
        double secs = 0;
        uint64_t s0 = shm_fetched(ctx);
        st = fetch_pass(ctx, &o, addr, pool, keys, dst, r > 0 ? lat : NULL, &nlat, &ph, &secs);
        uint64_t s1 = shm_fetched(ctx);
        shm_sliced += s1 - s0;
        if (r > 0)
            rep[r - 1] = secs;
        if (st == KVS_OK && tp) {
            st = fetch_pass(ctx, &o, addr, wpool, wkeys, dst, NULL, NULL, NULL, &secs);
            shm_whole += shm_fetched(ctx) - s1;
            if (r > 0)
                wrep[r - 1] = secs;
        }
    }
    if (st != KVS_OK) {
        fprintf(stderr, "kvshare bench transfer: %s\n", kvs_status_string(st));
        goto out;
    }
    /* Which path moved each kind of pass's bytes: all through mapped
     * memory, or none. `ran` is the measured fetch's (with TP the sliced one). */
    const uint64_t all = o.blocks * moved * (o.repeats + 1);
    const char *ran = path_of(shm_sliced, all), *wran = tp ? path_of(shm_whole, all) : ran;
    if (strcmp(o.path, "auto") != 0 && (strcmp(o.path, ran) != 0 || strcmp(o.path, wran) != 0)) {
        fprintf(stderr,
                "kvshare bench transfer: --path %s asked, but the %s path ran (whole blocks: %s)\n",
                o.path, ran, wran);
        goto out;
    }
    if (!content_ok(&o, mem, o.side_bytes, dst, "fetched") ||
        (tp && !content_ok(&o, wmem, moved, dst, "whole")))
        goto out;
    double gbps = bytes_total / kvs_cli_median(rep, (int)o.repeats) / 1e9;
    double wgbps = tp ? bytes_total / kvs_cli_median(wrep, (int)o.repeats) / 1e9 : 0;
    kvs_cli_sort(lat, nlat);
    kvs_cli_sort(ph.lookups, ph.nlookups);
    double lookup_p50 = ph.nlookups > 0 ? ph.lookups[ph.nlookups / 2] : 0;
    /* The round-trip anchor: its median, its mean release, and the most a
     * fetch that makes one round trip and one release a batch, and copies at
     * memcpy's speed, could reach against memcpy with them (ratio_memcpy_bound: a batch of memcpy
     * over that plus both; a guide, from the same run's anchors). */
    rtt_ok = rtt_ok && nrtts > 0 && mc_ok;
    double rtt_p50 = 0, rtt_rel = 0, bound = 0;
    if (rtt_ok) {
        kvs_cli_sort(rtts, nrtts);
        rtt_p50 = rtts[nrtts / 2];
        rtt_rel = rtt_release_s * 1e6 / (double)nrtts;
        double mb = kvs_cli_median(mt, (int)o.repeats) / (double)nbatches * 1e6;
        bound = mb / (mb + rtt_p50 + rtt_rel);
    }
    double p50 = lat[(size_t)((double)(nlat - 1) * 0.5)],
           p99 = lat[(size_t)((double)(nlat - 1) * 0.99)]; /* the same rank rule: p50 <= p99 */

    /* 3. The anchors' medians (their passes ran beside ours, above). */
    double mc = mc_ok ? bytes_total / kvs_cli_median(mt, (int)o.repeats) / 1e9 : 0;
    double sc = mc_ok ? bytes_total / kvs_cli_median(st_t, (int)o.repeats) / 1e9 : 0;
    double cma = cma_ok ? bytes_total / kvs_cli_median(ct, (int)o.repeats) / 1e9 : 0;

    /* 4. ucx_perftest at the same size and transports. */
    char note[128] = "";
    double pt = o.no_perftest ? -1 : perftest(o.tls, pt_test, moved, note, sizeof(note));
    if (o.no_perftest)
        snprintf(note, sizeof(note), "skipped (--no-perftest)");

    if (o.json) {
        cJSON *j = cJSON_CreateObject();
        cJSON_AddStringToObject(j, "bench", "transfer");
        cJSON_AddStringToObject(j, "path", ran);
        cJSON_AddStringToObject(j, "tls", o.tls);
        char thp[32];
        cJSON_AddStringToObject(j, "shmem_thp", kvs__shmem_thp(thp, sizeof(thp)));
        cJSON_AddNumberToObject(j, "block_bytes", (double)moved);
        cJSON_AddNumberToObject(j, "blocks", (double)o.blocks);
        cJSON_AddNumberToObject(j, "batch", (double)o.batch);
        cJSON_AddNumberToObject(j, "inflight", (double)o.inflight);
        cJSON_AddBoolToObject(j, "lookup_thread", o.lookup_thread);
        cJSON_AddNumberToObject(j, "repeats", (double)o.repeats);
        cJSON_AddStringToObject(j, "ids", o.contiguous ? "contiguous" : "shuffled");
        kvs_cli_json_num(j, "gbps", gbps, 3);
        kvs_cli_json_num(j, "memcpy_gbps", mc, 3);
        kvs_cli_json_num(j, "ratio_memcpy", mc > 0 ? gbps / mc : 0, 3);
        kvs_cli_json_num(j, "stream_gbps", sc, 3);
        kvs_cli_json_num(j, "ratio_stream", sc > 0 ? gbps / sc : 0, 3);
        cJSON_AddStringToObject(j, "perftest_test", pt_test);
        kvs_cli_json_num(j, "perftest_gbps", pt > 0 ? pt : 0, 3);
        kvs_cli_json_num(j, "ratio_perftest", pt > 0 ? gbps / pt : 0, 3);
        kvs_cli_json_num(j, "cma_gbps", cma, 3);
        kvs_cli_json_num(j, "ratio_cma", cma > 0 ? gbps / cma : 0, 3);
        kvs_cli_json_num(j, "p50_us", p50, 1);
        kvs_cli_json_num(j, "p99_us", p99, 1);
        /* Where a batch's time went, the mean over the timed passes: with
         * --inflight 2 or --lookup-thread lookup_us overlaps the others. */
        double per_b = ph.batches > 0 ? (double)ph.batches : 1;
        kvs_cli_json_num(j, "lookup_us", ph.lookup / per_b, 1);
        kvs_cli_json_num(j, "lookup_p50_us", lookup_p50, 1);
        kvs_cli_json_num(j, "fetch_us", ph.fetch / per_b, 1);
        kvs_cli_json_num(j, "wait_us", ph.wait / per_b, 1);
        kvs_cli_json_num(j, "release_us", ph.release / per_b, 1);
        kvs_cli_json_num(j, "helper_share", helper_share(ctx), 3);
        /* Where lookups and releases went: the holder's Unix socket
         * ("unix", same host) or the transport. */
        uint64_t cm = ctl_messages(ctx);
        cJSON_AddStringToObject(j, "control", cm > 0 ? "unix" : "transport");
        cJSON_AddNumberToObject(j, "ctl_messages", (double)cm);
        /* Where lookups were answered: the holder's mapped index ("index":
         * no message, no lease) or the holder itself. */
        uint64_t ixa, ixq;
        index_counts(ctx, &ixa, &ixq);
        cJSON_AddStringToObject(j, "lookup", ixa > 0 ? "index" : "holder");
        cJSON_AddNumberToObject(j, "index_lookups", (double)ixa);
        cJSON_AddNumberToObject(j, "index_asked", (double)ixq);
        if (rtt_ok) {
            kvs_cli_json_num(j, "rtt_bare_p50_us", rtt_p50, 1);
            kvs_cli_json_num(j, "release_bare_us", rtt_rel, 1);
            kvs_cli_json_num(j, "ratio_memcpy_bound", bound, 3);
        }
        if (tp) { /* block_bytes above is what each fetch moved */
            cJSON_AddNumberToObject(j, "prefill_tp", (double)o.prefill_tp);
            cJSON_AddNumberToObject(j, "decode_tp", (double)o.decode_tp);
            cJSON_AddNumberToObject(j, "whole_block_bytes", (double)o.block_bytes);
            cJSON_AddStringToObject(j, "kv_layout", o.kv_layout == KVS_KV_HND ? "hnd" : "nhd");
            /* gbps is the sliced fetch (the reader's view of the holder's
             * blocks); whole_gbps the same bytes as whole blocks. */
            kvs_cli_json_num(j, "sliced_gbps", gbps, 3);
            cJSON_AddStringToObject(j, "sliced_path", ran);
            kvs_cli_json_num(j, "whole_gbps", wgbps, 3);
            cJSON_AddStringToObject(j, "whole_path", wran);
            kvs_cli_json_num(j, "ratio_sliced_whole", wgbps > 0 ? gbps / wgbps : 0, 3);
        }
        if (kvs_cli_print_json("bench transfer", j) != 0)
            goto out;
    } else {
        printf(
            "  kvshare fetch        %8.2f GB/s   path %s, batch latency p50 %.0f us, p99 %.0f us\n"
            "  memcpy, one core     %8.2f GB/s   ratio_memcpy   %.2f\n"
            "  streaming stores     %8.2f GB/s   ratio_stream   %.2f (one core)\n",
            gbps, ran, p50, p99, mc, mc > 0 ? gbps / mc : 0, sc, sc > 0 ? gbps / sc : 0);
        double per_b = ph.batches > 0 ? (double)ph.batches : 1;
        printf("  per batch            lookup %.0f us (median %.0f), kvs_fetch %.0f us, wait %.0f "
               "us, release %.0f us\n",
               ph.lookup / per_b, lookup_p50, ph.fetch / per_b, ph.wait / per_b,
               ph.release / per_b);
        if (strcmp(ran, "ucx") != 0)
            printf("  copy helpers         %.0f %% of the mapped bytes (KVSHARE_COPY_THREADS)\n",
                   100 * helper_share(ctx));
        uint64_t cm = ctl_messages(ctx);
        printf("  lookups, releases    %s (%llu messages on the holder's Unix socket)\n",
               cm > 0 ? "unix" : "transport", (unsigned long long)cm);
        uint64_t ixa, ixq;
        index_counts(ctx, &ixa, &ixq);
        printf("  lookups answered by  %s (%llu from the holder's mapped index, %llu asked it)\n",
               ixa > 0 ? "index" : "holder", (unsigned long long)ixa, (unsigned long long)ixq);
        if (rtt_ok)
            printf("  bare Unix socket     round trip %.0f us (median), release %.0f us: with "
                   "one of each a batch,\n"
                   "                       ratio_memcpy_bound %.2f\n",
                   rtt_p50, rtt_rel, bound);
        if (tp)
            printf("  whole, same bytes    %8.2f GB/s   ratio_sliced_whole %.2f (%s, path %s)\n",
                   wgbps, wgbps > 0 ? gbps / wgbps : 0, o.kv_layout == KVS_KV_HND ? "hnd" : "nhd",
                   wran);
        if (cma > 0)
            printf("  raw CMA, one core    %8.2f GB/s   ratio_cma      %.2f\n", cma, gbps / cma);
        if (pt > 0)
            printf("  ucx_perftest %-9s %7.2f GB/s   ratio_perftest %.2f\n", pt_test, pt,
                   gbps / pt);
        else
            printf("  ucx_perftest %-9s   n/a      (%s)\n", pt_test, note);
    }
    rc = 0;
out:
    close(to);
    waitpid(srv, NULL, 0);
    fclose(from);
    kvs_pool_destroy(wpool);
    kvs_pool_destroy(pool);
    kvs_mem_free(ctx, wmem);
    kvs_mem_free(ctx, mem);
    kvs_ctx_destroy(ctx);
    free(keys);
    free(wkeys);
    free(dst);
    free(lat);
    free(lookups);
    free(rtts);
    if (rtt_sv[0] >= 0)
        close(rtt_sv[0]);
    free(rep);
    free(wrep);
    free(src);
    free(sids);
    free(mt);
    free(st_t);
    free(ct);
    return rc;
}
