/* SPDX-License-Identifier: Apache-2.0 */
/* cmd_index.c - `kvshare index` (kvshare-index): vLLM KV events over ZMQ in, longest-prefix scores
 * over HTTP out.
 *
 * Threads: the main thread drains every SUB socket with non-blocking receives (ZMQ queues on
 * our side; a PUB never waits for us). With --shards 1 it is the index's only writer: it
 * tracks each pod's sequence numbers, asks the pod's replay ROUTER for missed batches, and
 * applies the events. With --shards N > 1 it only reads each frame set's topic and queues it
 * (a bounded single-producer/single-consumer ring, ixshard.c) for the shard of its model,
 * whose own writer thread does the rest on the shard's own index: a pod (a topic: name and
 * model) lives in exactly one shard, so its sequence, replay (the shard's own DEALER),
 * restart, clear, degraded flag and token map never involve another shard.
 * libmicrohttpd's threads (a pool of 4) answer HTTP; they only read the index (lock-free:
 * kvindex.c; a score reads its model's shard) and the counters (atomics). */
#include "cmdline_int.h"
#include "index.h"
#include "kvevents_int.h"
#include "kvindex_int.h"
#include "ixshard_int.h"
#include "tokkeys_int.h"
#ifdef KVS_HAVE_REDIS
#include "ixredis_int.h"
#endif

#include <cjson/cJSON.h>
#include <errno.h>
#include <microhttpd.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#define MAX_SOURCES      256
#define MAX_BODY         (8u << 20)
#define MAX_PROMPT_TOKS  (1u << 22)
#define REPLAY_IDLE_MS   1000
#define REPLAY_TOTAL_MS  5000
#define DRAIN_PER_SOCKET 4096
#define SHARDS_DEFAULT   1 /* --shards: see README.md, "Shards" */

/* Counters, one table: the metric names and the fields cannot disagree. */
#define KVS_INDEX_COUNTERS(X)                                                                      \
    X(batches, "Event batches received (live and replayed).")                                      \
    X(events_stored, "BlockStored events applied.")                                                \
    X(events_removed, "BlockRemoved events applied.")                                              \
    X(events_cleared, "AllBlocksCleared events applied.")                                          \
    X(events_unknown, "Events of a type this version does not know (skipped).")                    \
    X(events_skipped_group, "BlockStored events of a non-prefix cache group (skipped).")           \
    X(malformed, "Frames refused: wrong frame count, topic, sequence or payload.")                 \
    X(gaps, "Sequence gaps seen.")                                                                 \
    X(replays_ok, "Gaps filled by a replay.")                                                      \
    X(replays_failed, "Gaps a replay could not fill (the pod is then degraded).")                  \
    X(replayed_batches, "Batches applied from replays.")                                           \
    X(restarts, "Pods whose sequence went backwards (restarted; cleared).")                        \
    X(store_failures, "Stores refused for lack of memory.")                                        \
    X(token_orphans, "Token mode: BlockStored whose parent was never keyed (skipped).")            \
    X(token_unkeyable, "Token mode: BlockStored of another block size, or with extra keys "        \
                       "a prompt cannot carry (skipped).")                                         \
    X(token_full, "Token mode: blocks not keyed because the key maps are at --max-pairs.")         \
    X(scores, "Score requests answered.")                                                          \
    X(redis_scores, "Scores answered from Redis (--redis).")                                       \
    X(redis_fallbacks, "Scores answered locally because Redis was unreachable.")                   \
    X(redis_leases_taken, "Pod writer leases this replica took (each followed by a resync).")      \
    X(redis_snapshot_copies, "Copies loaded from the Redis snapshot at start.")

typedef struct counters {
#define KVS_COUNTER_FIELD(name, help) atomic_ullong name;
    KVS_INDEX_COUNTERS(KVS_COUNTER_FIELD)
#undef KVS_COUNTER_FIELD
} counters_t;

typedef struct source {
    const char *spec; /* argv: ENDPOINT[@replay=ENDPOINT] */
    char endpoint[512], replay[512];
    bool bind; /* bind:ENDPOINT: many pods connect their PUB to us */
    void *sub;
} source_t;

typedef struct pod_seq {
    bool have;
    uint64_t last;
    /* --redis: whether this replica writes the pod (holds its lease), when to renew, and
     * the connection epoch the lease was checked on */
    bool writer;
    uint64_t renew_at, epoch;
} pod_seq_t;

/* The last topic a source delivered to a shard, and its pod: a source is mostly one pod,
 * and pods are never deleted, so most frames skip the name lookups. */
typedef struct topic_cache {
    char topic[256];
    size_t len;
    uint32_t pod;
} topic_cache_t;

/* A live frame set queued for a shard's writer (--shards > 1): the receive thread moves the
 * three ZMQ messages in (no copy) and the writer closes them. */
typedef struct shard_item {
    zmq_msg_t parts[3];
    uint32_t src;
} shard_item_t;

struct index_daemon;

/* One shard: the index of the models that hash to it (kvs__shard_of), and everything its
 * writer alone touches. Pods are (name, model) pairs, so a pod's sequence, replay, restart,
 * degraded flag and token map all live in its model's shard. With --shards 1 the main thread
 * is the writer (no ring, no thread: the behaviour before sharding). */
typedef struct shard {
    struct index_daemon *d;
    unsigned id;
    kvs__idx_t *idx;
    kvs__ev_decoder_t *dec;
    kvs__tk_t *tk;   /* token mode (--keys tokens): the index's own keys; NULL: the engine's */
    uint64_t *tkeys; /* the writer's scratch for derived keys */
    size_t tkeys_cap;
    atomic_ullong tk_entries, tk_bytes; /* the maps' gauges, for HTTP threads */
    pod_seq_t *seq;                     /* by this shard's pod id; the writer only */
    size_t nseq;
    void **dealer;        /* per source with a replay endpoint: this shard's own DEALER */
    topic_cache_t *cache; /* per source */
    kvs__ring_t *ring;    /* --shards > 1: frames from the receive thread */
    pthread_t thread;
    bool started;
    uint64_t next_age;
    atomic_ullong batches, events; /* live batches routed here; events applied */
#ifdef KVS_HAVE_REDIS
    kvs__ixr_w_t *rw; /* --redis: this writer's own connection */
#endif
} shard_t;

typedef struct index_daemon {
    shard_t *sh;
    unsigned nsh;
    kvs_hasher_h hasher;
    size_t digest_len;
    uint32_t block_size;
    uint32_t shard_queue; /* --shard-queue: batches queued per shard (--shards > 1) */
    uint64_t max_idle_ms;
    source_t src[MAX_SOURCES];
    size_t nsrc;
    void *zctx;
    counters_t c;
#ifdef KVS_HAVE_REDIS
    kvs__ixr_t *redis;
    uint32_t lease_ms;
#endif
} index_daemon_t;

/* The shard holding model `name`. */
static shard_t *model_shard(index_daemon_t *d, const char *name, size_t len)
{
    return &d->sh[kvs__shard_of(name, len, d->nsh)];
}

static volatile sig_atomic_t stop_signal;
/* Set by a signal or when the daemon closes: stops the shard writers and a receive thread
 * waiting for a full queue (read atomically). */
static volatile int stopping;

static void on_signal(int sig)
{
    stop_signal = sig;
    __atomic_store_n(&stopping, 1, __ATOMIC_RELAXED);
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void usage(FILE *f)
{
    fprintf(
        f,
        "usage: kvshare index --source [bind:]ENDPOINT[@replay=ENDPOINT]... --http HOST:PORT\n"
        "                     [--block-size N] [--hash-algo sha256_cbor|xxhash_cbor]\n"
        "                     [--hash-seed S] [--keys hashes|tokens] [--max-pairs N]\n"
        "                     [--max-idle-s S] [--redis URL [--redis-id ID]\n"
        "                     [--redis-lease-ms MS] [--redis-ca FILE]\n"
        "                     [--redis-cert FILE --redis-key FILE] [--redis-cluster]]\n"
        "                     [--shards N [--shard-queue N]]\n"
        "\n"
        "Subscribes to vLLM KV events (ZMQ PUB, topic kv@<pod>@<model>) and answers\n"
        "  POST /v1/score {\"model\", \"token_ids\", \"lora_name\"?, \"cache_salt\"?, \"pods\"?}\n"
        "with each pod's longest cached prefix; GET /healthz, /readyz, /metrics.\n"
        "  --source      a vLLM publisher to connect to (repeatable); @replay= names its\n"
        "                replay ROUTER, asked for missed batches on a sequence gap;\n"
        "                bind:ENDPOINT binds one endpoint that many pods connect to\n"
        "  --http        where to serve; prints 'ready http://HOST:PORT' once listening\n"
        "  --block-size  vLLM's block size in tokens (default 16)\n"
        "  --hash-algo   vLLM's prefix_caching_hash_algo (default sha256_cbor)\n"
        "  --hash-seed   vLLM's PYTHONHASHSEED (default: $PYTHONHASHSEED, else 0)\n"
        "  --keys        hashes: match the events' block hashes (the engine must hash\n"
        "                reproducibly: sha256_cbor/xxhash_cbor and a fixed seed; default);\n"
        "                tokens: key blocks from the events' token_ids with our own chain\n"
        "                (--hash-algo/--hash-seed then need not match the engine's)\n"
        "  --max-pairs   bound on (pod, block) pairs held (default 100000000; with\n"
        "                --shards N, each shard holds at most a 1/N share)\n"
        "  --max-idle-s  clear pods silent this long (default 0: never)\n"
        "  --redis       share the index through Redis (redis[s]://[[USER]:PASS@]HOST\n"
        "                [:PORT][/DB] or unix:/PATH; or the password in KVSHARE_REDIS_PASSWORD;\n"
        "                rediss:// is TLS, the server's certificate and name verified):\n"
        "                each pod is written by one replica (a lease), scores\n"
        "                are one server-side walk, a new replica loads the snapshot; with\n"
        "                --redis, --source is optional (a replica that only scores)\n"
        "  --redis-id    this replica's lease holder name (default HOSTNAME:PID)\n"
        "  --redis-lease-ms  writer lease length (default 5000; renewed every third)\n"
        "  --redis-ca    rediss://: the CA file (PEM) the server's certificate must chain to\n"
        "                (default KVSHARE_REDIS_CA_FILE, else the system store)\n"
        "  --redis-cert, --redis-key  rediss://: a client certificate and its key, for a\n"
        "                Redis with tls-auth-clients (default KVSHARE_REDIS_CERT_FILE and\n"
        "                KVSHARE_REDIS_KEY_FILE)\n"
        "  --redis-cluster  --redis names one node of a Redis Cluster: the others are\n"
        "                learned (CLUSTER SLOTS), each model's keys live in one slot\n"
        "                ({model} hash tag), MOVED and ASK are followed\n"
        "  --shards      N writer threads, each with its own index of the models that hash\n"
        "                to it (a score reads one model's shard); 1-64, default 1 (the\n"
        "                receive thread writes); with --redis, each writer has its own\n"
        "                Redis connection\n"
        "  --shard-queue batches queued per shard before the receive thread waits for it\n"
        "                (a power of two, 2-1048576; default 4096)\n");
}

/* ------------------------------------------------------------------------ */
/* Events                                                                     */
/* ------------------------------------------------------------------------ */

static void malformed(index_daemon_t *d, const char *src, const char *why)
{
    unsigned long long n = atomic_fetch_add(&d->c.malformed, 1) + 1;
    /* The first few, then one in a thousand: a hostile stream cannot flood the log. */
    if (n <= 10 || n % 1000 == 0)
        fprintf(stderr, "kvshare index: %s: frame refused (%llu so far): %s\n", src, n, why);
}

/* Only these cache groups have a prefix to index (as llm-d's isPrefixIndexableSpecKind). */
static bool prefix_group(const kvs__ev_str_t *kind)
{
    static const char *const ok[] = {"full_attention", "mla_attention", "sink_full_attention"};
    if (kind->ptr == NULL)
        return true;
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++)
        if (strlen(ok[i]) == kind->len && memcmp(ok[i], kind->ptr, kind->len) == 0)
            return true;
    return false;
}

#ifdef KVS_HAVE_REDIS
static bool redis_writer(shard_t *sh, uint32_t pod);
#endif

static void clear_pod(shard_t *sh, uint32_t pod)
{
    kvs__idx_clear_pod(sh->idx, pod);
    if (sh->tk != NULL)
        kvs__tk_clear_pod(sh->tk, pod);
#ifdef KVS_HAVE_REDIS
    if (redis_writer(sh, pod))
        kvs__ixr_clear(sh->rw, kvs__idx_pod_model_name(sh->idx, pod),
                       kvs__idx_pod_name(sh->idx, pod));
#endif
}

static void set_degraded(shard_t *sh, uint32_t pod, bool degraded)
{
    kvs__idx_set_degraded(sh->idx, pod, degraded);
#ifdef KVS_HAVE_REDIS
    if (redis_writer(sh, pod))
        kvs__ixr_set_degraded(sh->rw, kvs__idx_pod_model_name(sh->idx, pod),
                              kvs__idx_pod_name(sh->idx, pod), degraded);
#endif
}

static bool tkeys_room(shard_t *sh, size_t n)
{
    if (n <= sh->tkeys_cap)
        return true;
    uint64_t *nk = realloc(sh->tkeys, n * sizeof(*nk));
    if (nk == NULL)
        return false;
    sh->tkeys = nk;
    sh->tkeys_cap = n;
    return true;
}

/* Token mode: derives BlockStored e's keys into sh->tkeys (*n of them). False when out of
 * memory; an event that cannot be keyed is counted and logged (first few) and gives 0. */
static bool token_keys(shard_t *sh, const char *src, uint32_t pod, const kvs__ev_t *e, size_t *n)
{
    index_daemon_t *d = sh->d;
    *n = 0;
    if (!tkeys_room(sh, e->nhashes))
        return false;
    kvs__tk_result_t r = kvs__tk_stored(sh->tk, pod, e, sh->tkeys, n);
    const char *why = NULL;
    unsigned long long k = 0;
    switch (r) {
    case KVS__TK_OK:
        return true;
    case KVS__TK_NO_MEMORY:
        return false;
    case KVS__TK_ORPHAN:
        k = atomic_fetch_add(&d->c.token_orphans, 1) + 1;
        why = "its parent block was never keyed (lost, or stored before we joined)";
        break;
    case KVS__TK_SHAPE:
        k = atomic_fetch_add(&d->c.token_unkeyable, 1) + 1;
        why = "token_ids are not --block-size tokens per block hash";
        break;
    case KVS__TK_EXTRA:
        k = atomic_fetch_add(&d->c.token_unkeyable, 1) + 1;
        why = "extra keys beyond LoRA name and cache salt (multimodal?)";
        break;
    case KVS__TK_FULL:
        k = atomic_fetch_add(&d->c.token_full, 1) + 1;
        why = "the key maps are full (--max-pairs)";
        break;
    }
    if (k <= 10 || k % 1000 == 0)
        fprintf(stderr, "kvshare index: %s: pod %s: BlockStored not keyed (%llu so far): %s\n", src,
                kvs__idx_pod_name(sh->idx, pod), k, why);
    return true;
}

#ifdef KVS_HAVE_REDIS
/* A medium as a C string (names longer than the buffer are no tier Redis knows anyway). */
static const char *medium_cstr(const kvs__ev_str_t *m, char *buf, size_t cap)
{
    if (m->ptr == NULL)
        return NULL;
    size_t n = m->len < cap - 1 ? m->len : cap - 1;
    memcpy(buf, m->ptr, n);
    buf[n] = '\0';
    return buf;
}

/* Replaces pod's state in Redis with ours: after taking its lease, whatever the last
 * writer (or a lost connection) left there is not to be trusted. */
static void redis_resync(shard_t *sh, uint32_t pod, const char *model, const char *pname)
{
    kvs__ixr_clear(sh->rw, model, pname);
    kvs__ixr_set_degraded(sh->rw, model, pname, kvs__idx_degraded(sh->idx, pod));
    size_t n = kvs__idx_pod_copies(sh->idx, pod, NULL, NULL, 0);
    uint64_t *h = malloc((n ? n : 1) * sizeof(*h));
    const char **m = malloc((n ? n : 1) * sizeof(*m));
    if (h != NULL && m != NULL) {
        n = kvs__idx_pod_copies(sh->idx, pod, h, m, n);
        /* One write per run of one medium (a pod's copies are mostly one tier). */
        for (size_t i = 0, j; i < n; i = j) {
            for (j = i + 1; j < n && m[j] == m[i]; j++)
                ;
            kvs__ixr_store(sh->rw, model, pname, h + i, j - i, m[i]);
        }
    }
    free(h);
    free(m);
}

/* Whether this replica writes pod to Redis now: takes or renews its lease when due. */
static bool redis_writer(shard_t *sh, uint32_t pod)
{
    index_daemon_t *d = sh->d;
    if (sh->rw == NULL || pod >= sh->nseq)
        return false;
    pod_seq_t *ps = &sh->seq[pod];
    uint64_t t = now_ms();
    if (t < ps->renew_at)
        return ps->writer;
    const char *model = kvs__idx_pod_model_name(sh->idx, pod),
               *pname = kvs__idx_pod_name(sh->idx, pod);
    uint64_t epoch = 0;
    int rc = kvs__ixr_lease(sh->rw, model, pname, &epoch);
    /* Renew well before the lease ends; a replica that cannot reach Redis stops writing
     * (its lease lapses and another takes the pod). */
    ps->renew_at = t + d->lease_ms / 3;
    if (rc <= 0) {
        ps->writer = false;
        return false;
    }
    if (rc == 2 || !ps->writer || epoch != ps->epoch) {
        atomic_fetch_add(&d->c.redis_leases_taken, 1);
        redis_resync(sh, pod, model, pname);
    }
    ps->writer = true;
    ps->epoch = epoch;
    return true;
}
#endif

/* Decodes one batch and applies it to pod. */
static void apply(shard_t *sh, const char *src, uint32_t pod, const void *payload, size_t len)
{
    index_daemon_t *d = sh->d;
    kvs__ev_batch_t b;
    size_t skipped = 0;
    char why[200];
    atomic_fetch_add(&d->c.batches, 1);
    if (kvs__ev_decode(sh->dec, payload, len, &b, &skipped, why, sizeof(why)) != 0) {
        malformed(d, src, why);
        return;
    }
    atomic_fetch_add(&d->c.events_unknown, skipped);
    atomic_fetch_add(&sh->events, b.nevents);
    uint64_t t = now_ms();
    kvs__idx_touch(sh->idx, pod, t);
    for (size_t i = 0; i < b.nevents; i++) {
        const kvs__ev_t *e = &b.events[i];
        switch (e->type) {
        case KVS__EV_STORED: {
            if (!prefix_group(&e->spec_kind)) {
                atomic_fetch_add(&d->c.events_skipped_group, 1);
                break;
            }
            const uint64_t *keys = e->hashes;
            size_t nkeys = e->nhashes;
            if (sh->tk != NULL) {
                if (!token_keys(sh, src, pod, e, &nkeys)) /* may move sh->tkeys */
                    atomic_fetch_add(&d->c.store_failures, 1);
                keys = sh->tkeys;
            }
            if (kvs__idx_store(sh->idx, pod, keys, nkeys, e->medium.ptr, e->medium.len, t) != 0)
                atomic_fetch_add(&d->c.store_failures, 1);
#ifdef KVS_HAVE_REDIS
            if (redis_writer(sh, pod)) {
                char mb[64];
                kvs__ixr_store(sh->rw, kvs__idx_pod_model_name(sh->idx, pod),
                               kvs__idx_pod_name(sh->idx, pod), keys, nkeys,
                               medium_cstr(&e->medium, mb, sizeof(mb)));
            }
#endif
            atomic_fetch_add(&d->c.events_stored, 1);
            break;
        }
        case KVS__EV_REMOVED: {
            const uint64_t *keys = e->hashes;
            size_t nkeys = e->nhashes;
            if (sh->tk != NULL) {
                nkeys = tkeys_room(sh, e->nhashes)
                            ? kvs__tk_removed(sh->tk, pod, e->hashes, e->nhashes, sh->tkeys)
                            : 0;
                keys = sh->tkeys;
            }
            kvs__idx_remove(sh->idx, pod, keys, nkeys, e->medium.ptr, e->medium.len, t);
#ifdef KVS_HAVE_REDIS
            if (redis_writer(sh, pod)) {
                char mb[64];
                kvs__ixr_remove(sh->rw, kvs__idx_pod_model_name(sh->idx, pod),
                                kvs__idx_pod_name(sh->idx, pod), keys, nkeys,
                                medium_cstr(&e->medium, mb, sizeof(mb)));
            }
#endif
            atomic_fetch_add(&d->c.events_removed, 1);
            break;
        }
        case KVS__EV_CLEARED:
            /* The pod's state is known again from here on: it is fresh. */
            clear_pod(sh, pod);
            set_degraded(sh, pod, false);
            atomic_fetch_add(&d->c.events_cleared, 1);
            break;
        }
    }
    if (sh->tk != NULL) {
        atomic_store(&sh->tk_entries, kvs__tk_entries(sh->tk));
        atomic_store(&sh->tk_bytes, kvs__tk_bytes(sh->tk));
    }
#ifdef KVS_HAVE_REDIS
    if (sh->rw != NULL)
        kvs__ixr_flush(sh->rw); /* the batch's writes: one round trip */
#endif
}

static uint64_t be64(const void *p)
{
    const uint8_t *b = p;
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | b[i];
    return v;
}

/* Receives one multipart message (up to 3 frames kept, the rest counted). Returns the
 * number of frames, 0 when nothing is waiting, -1 on error. */
static int recv_multi(void *sock, zmq_msg_t *parts, int flags)
{
    int n = 0;
    for (;;) {
        zmq_msg_t tmp;
        zmq_msg_t *m = n < 3 ? &parts[n] : &tmp;
        zmq_msg_init(m);
        if (zmq_msg_recv(m, sock, n == 0 ? flags : 0) < 0) {
            zmq_msg_close(m);
            for (int i = 0; i < n && i < 3; i++)
                zmq_msg_close(&parts[i]);
            return (n == 0 && errno == EAGAIN) ? 0 : -1;
        }
        int more = zmq_msg_more(m);
        if (m == &tmp)
            zmq_msg_close(&tmp);
        n++;
        if (!more)
            return n;
    }
}

static void close_parts(zmq_msg_t *parts, int n)
{
    for (int i = 0; i < n && i < 3; i++)
        zmq_msg_close(&parts[i]);
}

/* Asks source s's replay ROUTER for batches [from, to) and applies them in order.
 * vLLM's ROUTER answers (seq, payload) for each buffered batch with seq >= from, then
 * seq = -1. True when every batch of the range arrived. */
static bool replay(shard_t *sh, source_t *s, uint32_t pod, uint64_t from, uint64_t to)
{
    index_daemon_t *d = sh->d;
    void *dealer = sh->dealer[s - d->src];
    if (dealer == NULL)
        return false;
    zmq_msg_t parts[3];
    int n;
    while ((n = recv_multi(dealer, parts, ZMQ_DONTWAIT)) > 0) /* a late answer */
        close_parts(parts, n);
    uint8_t req[8];
    for (int i = 0; i < 8; i++)
        req[i] = (uint8_t)(from >> (56 - 8 * i));
    if (zmq_send(dealer, "", 0, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0 ||
        zmq_send(dealer, req, 8, ZMQ_DONTWAIT) < 0)
        return false;
    uint64_t next = from, deadline = now_ms() + REPLAY_TOTAL_MS;
    while (!stop_signal) {
        uint64_t t = now_ms();
        if (t >= deadline)
            break;
        zmq_pollitem_t it = {.socket = dealer, .events = ZMQ_POLLIN};
        long wait = (long)(deadline - t) < REPLAY_IDLE_MS ? (long)(deadline - t) : REPLAY_IDLE_MS;
        int rc = zmq_poll(&it, 1, wait);
        if (rc < 0 && errno == EINTR)
            continue;
        if (rc <= 0)
            break; /* the ROUTER went quiet */
        n = recv_multi(dealer, parts, ZMQ_DONTWAIT);
        if (n <= 0)
            continue;
        /* DEALER side of vLLM's (identity, "", seq, payload): ("", seq, payload). */
        if (n != 3 || zmq_msg_size(&parts[0]) != 0 || zmq_msg_size(&parts[1]) != 8) {
            malformed(d, s->replay, "replay answer is not (\"\", seq, payload)");
            close_parts(parts, n);
            continue;
        }
        uint64_t seq = be64(zmq_msg_data(&parts[1]));
        if (seq == UINT64_MAX) { /* END_SEQ = -1 */
            close_parts(parts, n);
            break;
        }
        if (seq == next && seq < to) {
            apply(sh, s->replay, pod, zmq_msg_data(&parts[2]), zmq_msg_size(&parts[2]));
            atomic_fetch_add(&d->c.replayed_batches, 1);
            next++;
        }
        close_parts(parts, n);
    }
    return next >= to;
}

static bool seq_slot(shard_t *sh, uint32_t pod)
{
    if (pod < sh->nseq)
        return true;
    size_t nn = sh->nseq ? sh->nseq : 16;
    while (nn <= pod)
        nn *= 2;
    pod_seq_t *ns = realloc(sh->seq, nn * sizeof(*ns));
    if (ns == NULL)
        return false;
    memset(ns + sh->nseq, 0, (nn - sh->nseq) * sizeof(*ns));
    sh->seq = ns;
    sh->nseq = nn;
    return true;
}

/* One live frame set (topic, seq, payload) from source s. */
static void on_frames(shard_t *sh, source_t *s, zmq_msg_t *parts, int n)
{
    index_daemon_t *d = sh->d;
    topic_cache_t *tc = &sh->cache[s - d->src];
    bool can_replay = sh->dealer[s - d->src] != NULL;
    if (n != 3) {
        char why[64];
        snprintf(why, sizeof(why), "%d frames, expected 3 (topic, seq, payload)", n);
        malformed(d, s->endpoint, why);
        return;
    }
    const char *topic = zmq_msg_data(&parts[0]);
    size_t tlen = zmq_msg_size(&parts[0]);
    const char *a1 = memchr(topic, '@', tlen);
    const char *a2 = a1 ? memchr(a1 + 1, '@', tlen - (size_t)(a1 + 1 - topic)) : NULL;
    if (a1 == NULL || a2 == NULL || a2 == a1 + 1 || a2 + 1 == topic + tlen ||
        memchr(a2 + 1, '@', tlen - (size_t)(a2 + 1 - topic)) != NULL) {
        malformed(d, s->endpoint, "topic is not kv@<pod>@<model>");
        return;
    }
    if (zmq_msg_size(&parts[1]) != 8) {
        malformed(d, s->endpoint, "sequence frame is not 8 bytes");
        return;
    }
    uint64_t seq = be64(zmq_msg_data(&parts[1]));
    int64_t pod;
    if (tc->len == tlen && memcmp(tc->topic, topic, tlen) == 0) {
        pod = tc->pod;
        goto known;
    }
    int64_t model = kvs__idx_model(sh->idx, a2 + 1, tlen - (size_t)(a2 + 1 - topic), true);
    pod = model < 0 ? -1
                    : kvs__idx_pod(sh->idx, a1 + 1, (size_t)(a2 - a1 - 1), (uint32_t)model, true);
    if (pod < 0 || !seq_slot(sh, (uint32_t)pod)) {
        malformed(d, s->endpoint, "cannot track this pod (out of memory or too many pods)");
        return;
    }
    if (tlen < sizeof(tc->topic)) {
        memcpy(tc->topic, topic, tlen);
        tc->len = tlen;
        tc->pod = (uint32_t)pod;
    }
known:;
    uint32_t p = (uint32_t)pod;
    pod_seq_t *ps = &sh->seq[p];
    const char *pname = kvs__idx_pod_name(sh->idx, p);
    if (!ps->have) {
        /* Joining mid-stream: what the replay buffer still holds warms the index. What it
         * no longer holds we never saw stored, so missing it cannot make a pod look
         * better than it is: no degradation. */
        if (seq > 0 && can_replay)
            replay(sh, s, p, 0, seq);
    } else if (seq <= ps->last) {
        fprintf(stderr, "kvshare index: pod %s: sequence %llu after %llu: restarted, cleared\n",
                pname, (unsigned long long)seq, (unsigned long long)ps->last);
        atomic_fetch_add(&d->c.restarts, 1);
        clear_pod(sh, p);
        set_degraded(sh, p, false);
        if (seq > 0 && can_replay)
            replay(sh, s, p, 0, seq);
    } else if (seq > ps->last + 1) {
        atomic_fetch_add(&d->c.gaps, 1);
        if (replay(sh, s, p, ps->last + 1, seq)) {
            atomic_fetch_add(&d->c.replays_ok, 1);
        } else {
            atomic_fetch_add(&d->c.replays_failed, 1);
            if (!kvs__idx_degraded(sh->idx, p))
                fprintf(stderr,
                        "kvshare index: pod %s: batches %llu..%llu lost and not replayable: "
                        "degraded until it clears or restarts\n",
                        pname, (unsigned long long)ps->last + 1, (unsigned long long)seq - 1);
            set_degraded(sh, p, true);
        }
    }
    ps->have = true;
    ps->last = seq;
    apply(sh, s->endpoint, p, zmq_msg_data(&parts[2]), zmq_msg_size(&parts[2]));
}

/* Clears the shard's pods silent for --max-idle-s (every second at most); aged pods lose
 * their key maps too. The shard's writer only. */
static void shard_age(shard_t *sh, uint64_t t)
{
    index_daemon_t *d = sh->d;
    if (d->max_idle_ms == 0 || t < sh->next_age)
        return;
    if (kvs__idx_age(sh->idx, t, d->max_idle_ms) > 0 && sh->tk != NULL)
        for (uint32_t p = 0; p < sh->nseq; p++)
            if (kvs__idx_pod_pairs(sh->idx, p) == 0)
                kvs__tk_clear_pod(sh->tk, p);
    sh->next_age = t + 1000;
}

/* A shard's writer (--shards > 1): applies the frame sets the receive thread queued, in the
 * order they came, then closes them. */
static void *shard_main(void *arg)
{
    shard_t *sh = arg;
    index_daemon_t *d = sh->d;
    while (!__atomic_load_n(&stopping, __ATOMIC_RELAXED)) {
        shard_item_t *it = kvs__ring_peek(sh->ring);
        if (it == NULL) {
            shard_age(sh, now_ms());
            kvs__ring_wait(sh->ring, 200);
            continue;
        }
        on_frames(sh, &d->src[it->src], it->parts, 3);
        close_parts(it->parts, 3);
        kvs__ring_pop(sh->ring);
        shard_age(sh, now_ms());
    }
    /* what is left at shutdown is dropped (daemon_close closes it) */
    return NULL;
}

/* The receive thread's part of one frame set from source si: with one shard, apply it here;
 * otherwise find the topic's model, and queue the frames (moved, not copied) for that
 * model's shard. A full queue makes the receive thread wait for that shard (counted): the
 * frames behind it wait in ZMQ's receive queues, and a publisher never waits (ZMQ PUB drops
 * past its high-water mark, which the pod's next sequence number shows as a gap, replayed
 * or degraded). Dropping here instead would lose removals silently until the pod's next
 * batch: scores could list blocks a pod no longer holds. */
static void route_frames(index_daemon_t *d, uint32_t si, zmq_msg_t *parts, int n)
{
    source_t *s = &d->src[si];
    if (d->nsh == 1 || n != 3) {
        on_frames(&d->sh[0], s, parts, n); /* refuses n != 3 */
        close_parts(parts, n);
        if (d->nsh == 1 && n == 3)
            atomic_fetch_add(&d->sh[0].batches, 1);
        return;
    }
    const char *topic = zmq_msg_data(&parts[0]);
    size_t tlen = zmq_msg_size(&parts[0]);
    const char *a1 = memchr(topic, '@', tlen);
    const char *a2 = a1 ? memchr(a1 + 1, '@', tlen - (size_t)(a1 + 1 - topic)) : NULL;
    if (a2 == NULL) {
        on_frames(&d->sh[0], s, parts, n); /* refuses the topic, with the reason */
        close_parts(parts, n);
        return;
    }
    shard_t *sh = model_shard(d, a2 + 1, tlen - (size_t)(a2 + 1 - topic));
    shard_item_t *it = kvs__ring_slot_wait(sh->ring, &stopping);
    if (it == NULL) {
        close_parts(parts, n);
        return;
    }
    for (int i = 0; i < 3; i++) {
        zmq_msg_init(&it->parts[i]);
        zmq_msg_move(&it->parts[i], &parts[i]);
        zmq_msg_close(&parts[i]);
    }
    it->src = si;
    kvs__ring_push(sh->ring);
    atomic_fetch_add(&sh->batches, 1);
}

/* ------------------------------------------------------------------------ */
/* HTTP                                                                       */
/* ------------------------------------------------------------------------ */

typedef struct req_body {
    char *data;
    size_t len;
    bool too_big;
} req_body_t;

static enum MHD_Result reply(struct MHD_Connection *conn, unsigned code, const char *type,
                             char *body, bool owned)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(
        strlen(body), body, owned ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_MUST_COPY);
    if (r == NULL) {
        if (owned)
            free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", type);
    enum MHD_Result ret = MHD_queue_response(conn, code, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result reply_error(struct MHD_Connection *conn, unsigned code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static enum MHD_Result reply_error(struct MHD_Connection *conn, unsigned code, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    cJSON *o = cJSON_CreateObject();
    char *body = NULL;
    if (o != NULL && cJSON_AddStringToObject(o, "error", msg) != NULL)
        body = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (body == NULL)
        return reply(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "text/plain", "out of memory\n", false);
    return reply(conn, code, "application/json", body, true);
}

static enum MHD_Result score(index_daemon_t *d, struct MHD_Connection *conn, const req_body_t *rb)
{
    if (rb->too_big)
        return reply_error(conn, MHD_HTTP_CONTENT_TOO_LARGE, "body over %u bytes", MAX_BODY);
    cJSON *req = cJSON_ParseWithLength(rb->data ? rb->data : "", rb->len);
    if (req == NULL || !cJSON_IsObject(req)) {
        cJSON_Delete(req);
        return reply_error(conn, MHD_HTTP_BAD_REQUEST, "body is not a JSON object");
    }
    enum MHD_Result ret;
    uint32_t *tokens = NULL, *only = NULL;
#ifdef KVS_HAVE_REDIS
    const char **only_names = NULL;
    kvs__ixr_score_t *rout = NULL;
#endif
    kvs_key_t *keys = NULL;
    uint64_t *k64 = NULL;
    kvs__idx_score_t *out = NULL;
    char *body = NULL;
    cJSON *resp = NULL;
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(req, "model");
    const cJSON *toks = cJSON_GetObjectItemCaseSensitive(req, "token_ids");
    const cJSON *lora = cJSON_GetObjectItemCaseSensitive(req, "lora_name");
    const cJSON *salt = cJSON_GetObjectItemCaseSensitive(req, "cache_salt");
    const cJSON *pods = cJSON_GetObjectItemCaseSensitive(req, "pods");
    if (!cJSON_IsString(model)) {
        ret = reply_error(conn, MHD_HTTP_BAD_REQUEST, "\"model\" must be a string");
        goto out;
    }
    if (!cJSON_IsArray(toks)) {
        ret = reply_error(conn, MHD_HTTP_BAD_REQUEST, "\"token_ids\" must be a list of token ids");
        goto out;
    }
    if ((lora != NULL && !cJSON_IsNull(lora) && !cJSON_IsString(lora)) ||
        (salt != NULL && !cJSON_IsNull(salt) && !cJSON_IsString(salt))) {
        ret = reply_error(conn, MHD_HTTP_BAD_REQUEST,
                          "\"lora_name\" and \"cache_salt\" must be strings or null");
        goto out;
    }
    if (pods != NULL && !cJSON_IsNull(pods) && !cJSON_IsArray(pods)) {
        ret = reply_error(conn, MHD_HTTP_BAD_REQUEST, "\"pods\" must be a list of pod names");
        goto out;
    }
    /* A score reads the one shard its model lives in (lock-free, as with one shard). */
    kvs__idx_t *idx = model_shard(d, model->valuestring, strlen(model->valuestring))->idx;
    int64_t mid = kvs__idx_model(idx, model->valuestring, strlen(model->valuestring), false);
    bool shared = false; /* scores come from Redis */
#ifdef KVS_HAVE_REDIS
    /* Another replica may have seen a model this one has not. */
    shared = d->redis != NULL && strchr(model->valuestring, '@') == NULL;
#endif
    if (mid < 0 && !shared) {
        ret = reply_error(conn, MHD_HTTP_NOT_FOUND,
                          "unknown model '%.200s' (no events seen for it)", model->valuestring);
        goto out;
    }
    int ntok_i = cJSON_GetArraySize(toks);
    size_t ntok = ntok_i > 0 ? (size_t)ntok_i : 0;
    if (ntok > MAX_PROMPT_TOKS) {
        ret = reply_error(conn, MHD_HTTP_CONTENT_TOO_LARGE, "more than %u tokens", MAX_PROMPT_TOKS);
        goto out;
    }
    size_t nblocks = ntok / d->block_size;
    tokens = malloc((ntok ? ntok : 1) * sizeof(*tokens));
    keys = malloc((nblocks ? nblocks : 1) * sizeof(*keys));
    k64 = malloc((nblocks ? nblocks : 1) * sizeof(*k64));
    if (tokens == NULL || keys == NULL || k64 == NULL) {
        ret = reply_error(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory");
        goto out;
    }
    size_t i = 0;
    const cJSON *t;
    cJSON_ArrayForEach(t, toks)
    {
        double v = cJSON_IsNumber(t) ? t->valuedouble : -1;
        if (v < 0 || v > 4294967295.0 || v != (double)(uint32_t)v) {
            ret = reply_error(conn, MHD_HTTP_BAD_REQUEST, "token_ids[%zu] is not a token id", i);
            goto out;
        }
        tokens[i++] = (uint32_t)v;
    }
    size_t nonly = 0, nonly_names = 0;
    if (cJSON_IsArray(pods)) {
        int np = cJSON_GetArraySize(pods);
        only = malloc((np > 0 ? (size_t)np : 1) * sizeof(*only));
#ifdef KVS_HAVE_REDIS
        only_names = malloc((np > 0 ? (size_t)np : 1) * sizeof(*only_names));
        if (only_names == NULL) {
            ret = reply_error(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory");
            goto out;
        }
#endif
        if (only == NULL) {
            ret = reply_error(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory");
            goto out;
        }
        const cJSON *pn;
        cJSON_ArrayForEach(pn, pods)
        {
            if (!cJSON_IsString(pn)) {
                ret =
                    reply_error(conn, MHD_HTTP_BAD_REQUEST, "\"pods\" must be a list of pod names");
                goto out;
            }
#ifdef KVS_HAVE_REDIS
            only_names[nonly_names++] = pn->valuestring;
#endif
            int64_t pid = mid < 0 ? -1
                                  : kvs__idx_pod(idx, pn->valuestring, strlen(pn->valuestring),
                                                 (uint32_t)mid, false);
            if (pid >= 0)
                only[nonly++] = (uint32_t)pid;
        }
    }
    (void)nonly_names; /* only read with --redis */
    kvs_chain_params_t cp = {.field_mask = 0};
    if (cJSON_IsString(lora)) {
        cp.field_mask |= KVS_CHAIN_FIELD_LORA_NAME;
        cp.lora_name = lora->valuestring;
    }
    if (cJSON_IsString(salt)) {
        cp.field_mask |= KVS_CHAIN_FIELD_CACHE_SALT;
        cp.cache_salt = salt->valuestring;
    }
    size_t nkeys = 0;
    kvs_status_t st = kvs_hasher_chain(d->hasher, &cp, tokens, ntok, keys, nblocks, &nkeys);
    if (st != KVS_OK) {
        ret =
            reply_error(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "hashing: %s", kvs_status_string(st));
        goto out;
    }
    for (size_t b = 0; b < nkeys; b++)
        k64[b] = kvs_key_to_u64(&keys[b], d->digest_len);
    kvs__idx_stats_t stats;
    kvs__idx_get_stats(idx, &stats);
    size_t max_out = stats.pods ? (size_t)stats.pods : 1;
    long n = -2; /* not scored yet */
#ifdef KVS_HAVE_REDIS
    if (shared) {
        /* Redis knows every replica's pods: room for as many as could answer. */
        size_t rmax = max_out < 4096 ? 4096 : max_out;
        max_out = rmax;
        rout = malloc(rmax * sizeof(*rout));
        out = malloc(rmax * sizeof(*out));
        long rn = rout && out ? kvs__ixr_score(d->redis, model->valuestring, k64, nkeys, only_names,
                                               only_names ? nonly_names : 0, rout, rmax)
                              : -1;
        if (rn >= 0) {
            n = rn < (long)rmax ? rn : (long)rmax;
            for (long j = 0; j < n; j++)
                out[j] = (kvs__idx_score_t){
                    .pod_name = rout[j].pod, .blocks = rout[j].blocks, .medium = rout[j].medium};
            atomic_fetch_add(&d->c.redis_scores, 1);
        } else {
            atomic_fetch_add(&d->c.redis_fallbacks, 1);
            free(out);
            out = NULL;
        }
    }
#endif
    if (n == -2 && mid < 0) {
        ret = reply_error(conn, MHD_HTTP_NOT_FOUND,
                          "unknown model '%.200s' (no events seen for it)", model->valuestring);
        goto out;
    }
    if (n == -2) {
        out = malloc(max_out * sizeof(*out));
        n = out ? kvs__idx_score(idx, (uint32_t)mid, k64, nkeys, only ? only : NULL, nonly, out,
                                 max_out)
                : -1;
    }
    if (n < 0) {
        ret = reply_error(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory");
        goto out;
    }
    if ((size_t)n > max_out)
        n = (long)max_out; /* pods added since the stats: the next request sees them */
    resp = cJSON_CreateObject();
    cJSON *arr = resp ? cJSON_AddArrayToObject(resp, "pods") : NULL;
    bool ok = arr != NULL && cJSON_AddStringToObject(resp, "model", model->valuestring) &&
              cJSON_AddNumberToObject(resp, "blocks", (double)nkeys) &&
              cJSON_AddNumberToObject(resp, "block_size", d->block_size);
    for (long j = 0; ok && j < n; j++) {
        cJSON *o = cJSON_CreateObject();
        ok = o != NULL && cJSON_AddItemToArray(arr, o) &&
             cJSON_AddStringToObject(o, "pod", out[j].pod_name) &&
             cJSON_AddNumberToObject(o, "blocks", out[j].blocks) &&
             cJSON_AddNumberToObject(o, "tokens", (double)out[j].blocks * d->block_size) &&
             cJSON_AddStringToObject(o, "medium", out[j].medium);
    }
    if (ok)
        body = cJSON_PrintUnformatted(resp);
    if (body == NULL) {
        ret = reply_error(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory");
        goto out;
    }
    atomic_fetch_add(&d->c.scores, 1);
    ret = reply(conn, MHD_HTTP_OK, "application/json", body, true);
out:
    cJSON_Delete(resp);
    cJSON_Delete(req);
    free(tokens);
    free(keys);
    free(k64);
    free(only);
    free(out);
#ifdef KVS_HAVE_REDIS
    free(only_names);
    free(rout);
#endif
    return ret;
}

static enum MHD_Result metrics(index_daemon_t *d, struct MHD_Connection *conn)
{
    /* about 4 KiB used, and about 1 KiB per shard: room for more metrics */
    size_t cap = 16384 + 2048 * (size_t)d->nsh, len = 0;
    char *b = malloc(cap);
    if (b == NULL)
        return reply(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "text/plain", "out of memory\n", false);
#define KVS_COUNTER_TEXT(name, help)                                                               \
    len += (size_t)snprintf(b + len, cap - len,                                                    \
                            "# HELP kvshare_index_" #name "_total " help "\n"                      \
                            "# TYPE kvshare_index_" #name "_total counter\n"                       \
                            "kvshare_index_" #name "_total %llu\n",                                \
                            (unsigned long long)atomic_load(&d->c.name));                          \
    if (len >= cap)                                                                                \
        len = cap - 1;
    KVS_INDEX_COUNTERS(KVS_COUNTER_TEXT)
#undef KVS_COUNTER_TEXT
    kvs__idx_stats_t s = {0};
    for (unsigned i = 0; i < d->nsh; i++) { /* the index's gauges: the sum over the shards */
        kvs__idx_stats_t t;
        kvs__idx_get_stats(d->sh[i].idx, &t);
        s.pairs += t.pairs;
        s.blocks += t.blocks;
        s.pods += t.pods;
        s.degraded_pods += t.degraded_pods;
        s.bytes += t.bytes;
        s.evicted += t.evicted;
    }
    len += (size_t)snprintf(
        b + len, cap - len,
        "# HELP kvshare_index_pairs (pod, block) pairs held.\n# TYPE kvshare_index_pairs gauge\n"
        "kvshare_index_pairs %llu\n"
        "# HELP kvshare_index_blocks Distinct blocks held.\n# TYPE kvshare_index_blocks gauge\n"
        "kvshare_index_blocks %llu\n"
        "# HELP kvshare_index_pods Pods seen.\n# TYPE kvshare_index_pods gauge\n"
        "kvshare_index_pods %llu\n"
        "# HELP kvshare_index_degraded_pods Pods scoring zero after an unreplayable gap.\n"
        "# TYPE kvshare_index_degraded_pods gauge\nkvshare_index_degraded_pods %llu\n"
        "# HELP kvshare_index_bytes Memory held by the index's tables.\n"
        "# TYPE kvshare_index_bytes gauge\nkvshare_index_bytes %llu\n"
        "# HELP kvshare_index_evicted_total Pairs dropped at --max-pairs.\n"
        "# TYPE kvshare_index_evicted_total counter\nkvshare_index_evicted_total %llu\n",
        (unsigned long long)s.pairs, (unsigned long long)s.blocks, (unsigned long long)s.pods,
        (unsigned long long)s.degraded_pods, (unsigned long long)s.bytes,
        (unsigned long long)s.evicted);
    if (len >= cap)
        len = cap - 1;
#ifdef KVS_HAVE_REDIS
    if (len >= cap)
        len = cap - 1;
    if (d->redis != NULL)
        len += (size_t)snprintf(b + len, cap - len,
                                "# HELP kvshare_index_redis_errors_total Redis round trips that "
                                "failed (unreachable, timed out, refused).\n"
                                "# TYPE kvshare_index_redis_errors_total counter\n"
                                "kvshare_index_redis_errors_total %llu\n"
                                "# HELP kvshare_index_redis_redirects_total Redis Cluster "
                                "redirects (MOVED, ASK) followed, and pipelined writes lost to "
                                "a moving slot.\n"
                                "# TYPE kvshare_index_redis_redirects_total counter\n"
                                "kvshare_index_redis_redirects_total %llu\n",
                                kvs__ixr_errors(d->redis), kvs__ixr_redirects(d->redis));
    if (len >= cap)
        len = cap - 1;
#endif
    if (d->sh[0].tk != NULL) {
        unsigned long long te = 0, tb = 0;
        for (unsigned i = 0; i < d->nsh; i++) {
            te += atomic_load(&d->sh[i].tk_entries);
            tb += atomic_load(&d->sh[i].tk_bytes);
        }
        len += (size_t)snprintf(
            b + len, cap - len,
            "# HELP kvshare_index_token_map_entries Token mode: engine hash -> key entries.\n"
            "# TYPE kvshare_index_token_map_entries gauge\n"
            "kvshare_index_token_map_entries %llu\n"
            "# HELP kvshare_index_token_map_bytes Token mode: memory of the key maps.\n"
            "# TYPE kvshare_index_token_map_bytes gauge\nkvshare_index_token_map_bytes %llu\n",
            te, tb);
        if (len >= cap)
            len = cap - 1;
    }
    /* Per shard (--shards): live batches routed to it, events its writer applied, its
     * queue now and at most (0 with one shard: no queue), the times the receive thread found
     * the queue full and waited, and its pairs and models. */
    static const char *const shard_help[][3] = {
        {"shard_batches_total", "counter", "Live event batches routed to the shard."},
        {"shard_events_total", "counter", "Events the shard's writer applied."},
        {"shard_queue_depth", "gauge", "Batches queued for the shard's writer."},
        {"shard_queue_high_water", "gauge", "Most batches ever queued for the shard."},
        {"shard_queue_full_waits_total", "counter",
         "Times the receive thread found the shard's queue full and waited for it."},
        {"shard_pairs", "gauge", "(pod, block) pairs the shard holds."},
        {"shard_models", "gauge", "Models the shard holds."}};
    for (size_t m = 0; m < sizeof(shard_help) / sizeof(shard_help[0]); m++) {
        len += (size_t)snprintf(
            b + len, cap - len, "# HELP kvshare_index_%s %s\n# TYPE kvshare_index_%s %s\n",
            shard_help[m][0], shard_help[m][2], shard_help[m][0], shard_help[m][1]);
        if (len >= cap)
            len = cap - 1;
        for (unsigned i = 0; i < d->nsh; i++) {
            shard_t *sh = &d->sh[i];
            kvs__idx_stats_t t;
            kvs__idx_get_stats(sh->idx, &t);
            unsigned long long v = 0;
            switch (m) {
            case 0:
                v = atomic_load(&sh->batches);
                break;
            case 1:
                v = atomic_load(&sh->events);
                break;
            case 2:
                v = sh->ring ? kvs__ring_depth(sh->ring) : 0;
                break;
            case 3:
                v = sh->ring ? kvs__ring_high_water(sh->ring) : 0;
                break;
            case 4:
                v = sh->ring ? kvs__ring_full_waits(sh->ring) : 0;
                break;
            case 5:
                v = t.pairs;
                break;
            default:
                v = t.models;
                break;
            }
            len += (size_t)snprintf(b + len, cap - len, "kvshare_index_%s{shard=\"%u\"} %llu\n",
                                    shard_help[m][0], i, v);
            if (len >= cap)
                len = cap - 1;
        }
    }
    return reply(conn, MHD_HTTP_OK, "text/plain; version=0.0.4", b, true);
}

static enum MHD_Result on_http(void *cls, struct MHD_Connection *conn, const char *url,
                               const char *method, const char *version, const char *data,
                               size_t *size, void **state)
{
    (void)version;
    index_daemon_t *d = cls;
    if (strcmp(method, "POST") == 0 && strcmp(url, "/v1/score") == 0) {
        req_body_t *rb = *state;
        if (rb == NULL) { /* headers only: allocate the body on the first call */
            if ((rb = calloc(1, sizeof(*rb))) == NULL)
                return MHD_NO;
            *state = rb;
            return MHD_YES;
        }
        if (*size > 0) {
            if (!rb->too_big && rb->len + *size <= MAX_BODY) {
                char *nd = realloc(rb->data, rb->len + *size + 1);
                if (nd == NULL)
                    return MHD_NO;
                memcpy(nd + rb->len, data, *size);
                rb->data = nd;
                rb->len += *size;
                nd[rb->len] = '\0';
            } else {
                rb->too_big = true;
            }
            *size = 0;
            return MHD_YES;
        }
        return score(d, conn, rb);
    }
    if (strcmp(url, "/v1/score") == 0)
        return reply_error(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "POST /v1/score");
    if (strcmp(method, "GET") != 0)
        return reply_error(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "%.16s %.200s: only GET", method,
                           url);
    if (strcmp(url, "/healthz") == 0)
        return reply(conn, MHD_HTTP_OK, "text/plain", "ok\n", false);
    if (strcmp(url, "/readyz") == 0)
        return reply(conn, MHD_HTTP_OK, "text/plain", "ready\n", false);
    if (strcmp(url, "/metrics") == 0)
        return metrics(d, conn);
    return reply_error(conn, MHD_HTTP_NOT_FOUND, "no such path '%.200s'", url);
}

static void on_http_done(void *cls, struct MHD_Connection *conn, void **state,
                         enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    (void)conn;
    (void)toe;
    req_body_t *rb = *state;
    if (rb != NULL) {
        free(rb->data);
        free(rb);
        *state = NULL;
    }
}

/* ------------------------------------------------------------------------ */
/* The command                                                                */
/* ------------------------------------------------------------------------ */

/* [bind:]ENDPOINT[@replay=ENDPOINT]; false with a message naming --source when malformed. */
static bool parse_source(source_t *s, const char *spec)
{
    s->spec = spec;
    if (strncmp(spec, "bind:", 5) == 0) {
        s->bind = true;
        spec += 5;
        if (strstr(spec, "@replay=") != NULL) {
            fprintf(stderr,
                    "kvshare index: --source '%s': a bound endpoint serves many pods; "
                    "replay endpoints belong to --source ENDPOINT@replay=... of one pod\n",
                    s->spec);
            return false;
        }
    }
    const char *at = strstr(spec, "@replay=");
    size_t elen = at ? (size_t)(at - spec) : strlen(spec);
    const char *rep = at ? at + strlen("@replay=") : NULL;
    if (elen == 0 || elen >= sizeof(s->endpoint) ||
        (rep && (rep[0] == '\0' || strlen(rep) >= sizeof(s->replay)))) {
        fprintf(stderr,
                "kvshare index: --source '%s': expected [bind:]ENDPOINT[@replay=ENDPOINT]\n",
                s->spec);
        return false;
    }
    memcpy(s->endpoint, spec, elen);
    s->endpoint[elen] = '\0';
    if (rep)
        snprintf(s->replay, sizeof(s->replay), "%s", rep);
    return true;
}

#ifdef KVS_HAVE_REDIS
typedef struct snap_ctx {
    index_daemon_t *d;
    shard_t *sh; /* the shard of the pod's model */
    int64_t pod; /* the pod whose copies come next; -1: none (refused) */
} snap_ctx_t;

static void snap_pod(void *arg, const char *model, const char *pod, bool degraded)
{
    snap_ctx_t *sc = arg;
    sc->sh = model_shard(sc->d, model, strlen(model));
    int64_t m = kvs__idx_model(sc->sh->idx, model, strlen(model), true);
    sc->pod = m < 0 ? -1 : kvs__idx_pod(sc->sh->idx, pod, strlen(pod), (uint32_t)m, true);
    if (sc->pod >= 0 && !seq_slot(sc->sh, (uint32_t)sc->pod))
        sc->pod = -1;
    if (sc->pod >= 0)
        kvs__idx_set_degraded(sc->sh->idx, (uint32_t)sc->pod, degraded);
}

static void snap_copy(void *arg, const char *model, const char *pod, uint64_t hash,
                      const char *medium)
{
    (void)model;
    (void)pod;
    snap_ctx_t *sc = arg;
    if (sc->pod < 0)
        return;
    if (kvs__idx_store(sc->sh->idx, (uint32_t)sc->pod, &hash, 1, medium, strlen(medium),
                       now_ms()) == 0)
        atomic_fetch_add(&sc->d->c.redis_snapshot_copies, 1);
}
#endif

static void daemon_close(index_daemon_t *d)
{
    __atomic_store_n(&stopping, 1, __ATOMIC_RELAXED);
    for (unsigned i = 0; d->sh != NULL && i < d->nsh; i++) {
        shard_t *sh = &d->sh[i];
        if (sh->started) {
            kvs__ring_wake(sh->ring);
            pthread_join(sh->thread, NULL);
        }
        shard_item_t *it; /* queued after the writer stopped */
        while (sh->ring != NULL && (it = kvs__ring_peek(sh->ring)) != NULL) {
            close_parts(it->parts, 3);
            kvs__ring_pop(sh->ring);
        }
    }
    for (size_t i = 0; i < d->nsrc; i++)
        if (d->src[i].sub)
            zmq_close(d->src[i].sub);
    for (unsigned i = 0; d->sh != NULL && i < d->nsh; i++) {
        shard_t *sh = &d->sh[i];
        for (size_t k = 0; sh->dealer != NULL && k < d->nsrc; k++)
            if (sh->dealer[k])
                zmq_close(sh->dealer[k]);
        free(sh->dealer);
        free(sh->cache);
        kvs__ring_destroy(sh->ring);
        kvs__ev_decoder_destroy(sh->dec);
        kvs__idx_destroy(sh->idx);
        kvs__tk_destroy(sh->tk); /* before the hasher it borrows */
#ifdef KVS_HAVE_REDIS
        kvs__ixr_writer_destroy(sh->rw); /* before the kvs__ixr_t it borrows */
#endif
        free(sh->tkeys);
        free(sh->seq);
    }
    free(d->sh);
    if (d->zctx)
        zmq_ctx_term(d->zctx);
#ifdef KVS_HAVE_REDIS
    kvs__ixr_destroy(d->redis);
#endif
    kvs_hasher_destroy(d->hasher);
}

/* Sets up shard i: its index (max_pairs of the global bound), decoder, token map, replay
 * DEALERs (one per source with a replay endpoint: ZMQ sockets are one thread's) and, with
 * more than one shard, its queue. 0, or the exit status with a message: 1 out of memory, 2 a
 * replay endpoint ZMQ refuses. */
static int shard_init(index_daemon_t *d, unsigned i, uint64_t max_pairs, bool token_mode)
{
    shard_t *sh = &d->sh[i];
    sh->d = d;
    sh->id = i;
    sh->idx = kvs__idx_create(max_pairs);
    sh->dec = kvs__ev_decoder_create();
    sh->dealer = calloc(d->nsrc ? d->nsrc : 1, sizeof(*sh->dealer));
    sh->cache = calloc(d->nsrc ? d->nsrc : 1, sizeof(*sh->cache));
    if (d->nsh > 1)
        sh->ring = kvs__ring_create(d->shard_queue, sizeof(shard_item_t));
    /* The maps hold one entry per (pod, block) as the index does: the same bound. */
    if (token_mode)
        sh->tk = kvs__tk_create(d->hasher, d->block_size, max_pairs);
    if (sh->idx == NULL || sh->dec == NULL || sh->dealer == NULL || sh->cache == NULL ||
        (d->nsh > 1 && sh->ring == NULL) || (token_mode && sh->tk == NULL)) {
        fprintf(stderr, "kvshare index: out of memory\n");
        return 1;
    }
    for (size_t k = 0; k < d->nsrc; k++) {
        source_t *s = &d->src[k];
        if (s->replay[0] == '\0')
            continue;
        int linger = 0;
        sh->dealer[k] = zmq_socket(d->zctx, ZMQ_DEALER);
        if (sh->dealer[k] == NULL ||
            zmq_setsockopt(sh->dealer[k], ZMQ_LINGER, &linger, sizeof(linger)) != 0 ||
            zmq_connect(sh->dealer[k], s->replay) != 0) {
            fprintf(stderr, "kvshare index: --source '%s': replay: %s\n", s->spec,
                    zmq_strerror(errno));
            return 2;
        }
    }
    return 0;
}

enum {
    O_SOURCE = 256,
    O_HTTP,
    O_BLOCK_SIZE,
    O_HASH_ALGO,
    O_HASH_SEED,
    O_MAX_PAIRS,
    O_MAX_IDLE_S,
    O_KEYS,
    O_REDIS,
    O_REDIS_ID,
    O_REDIS_LEASE_MS,
    O_REDIS_CA,
    O_REDIS_CERT,
    O_REDIS_KEY,
    O_SHARDS,
    O_SHARD_QUEUE,
    O_REDIS_CLUSTER
};

static const struct option index_options[] = {
    {"source", required_argument, NULL, O_SOURCE},
    {"http", required_argument, NULL, O_HTTP},
    {"block-size", required_argument, NULL, O_BLOCK_SIZE},
    {"hash-algo", required_argument, NULL, O_HASH_ALGO},
    {"hash-seed", required_argument, NULL, O_HASH_SEED},
    {"max-pairs", required_argument, NULL, O_MAX_PAIRS},
    {"max-idle-s", required_argument, NULL, O_MAX_IDLE_S},
    {"keys", required_argument, NULL, O_KEYS},
    {"redis", required_argument, NULL, O_REDIS},
    {"redis-id", required_argument, NULL, O_REDIS_ID},
    {"redis-lease-ms", required_argument, NULL, O_REDIS_LEASE_MS},
    {"redis-ca", required_argument, NULL, O_REDIS_CA},
    {"redis-cert", required_argument, NULL, O_REDIS_CERT},
    {"redis-key", required_argument, NULL, O_REDIS_KEY},
    {"redis-cluster", no_argument, NULL, O_REDIS_CLUSTER},
    {"shards", required_argument, NULL, O_SHARDS},
    {"shard-queue", required_argument, NULL, O_SHARD_QUEUE},
    KVS_CLI_OPT_HELP_ENTRY,
    KVS_CLI_OPT_END};
static const kvs_cli_cmd_t index_cmd = {"index", usage, index_options};

int kvs_cli_index(int argc, char **argv)
{
    static index_daemon_t d; /* large (sources); one per process */
    const char *http = NULL, *algo = "sha256_cbor", *seed = NULL;
    bool token_mode = false, redis_cluster = false;
    const char *redis_url = NULL, *redis_id = NULL;
    const char *redis_ca = NULL, *redis_cert = NULL, *redis_key = NULL;
    uint64_t lease_ms = 5000;
    uint64_t block_size = 16, max_pairs = 100000000, max_idle_s = 0, nshards = 0,
             shard_queue = 4096;
    int c;
    while ((c = kvs_cli_getopt(&index_cmd, argc, argv)) != -1) {
        const char *v = optarg;
        switch (c) {
        case O_SOURCE:
            if (d.nsrc == MAX_SOURCES)
                return kvs_cli_usage_error(&index_cmd, "--source: at most %d", MAX_SOURCES);
            if (!parse_source(&d.src[d.nsrc], v))
                return 2;
            d.nsrc++;
            break;
        case O_HTTP:
            http = v;
            break;
        case O_BLOCK_SIZE:
            if (!kvs_cli_parse_u64("--block-size", v, 1, 1u << 20, &block_size))
                return 2;
            break;
        case O_HASH_ALGO:
            if (strcmp(v, "sha256_cbor") != 0 && strcmp(v, "xxhash_cbor") != 0)
                return kvs_cli_usage_error(&index_cmd,
                                           "--hash-algo '%s': accepted: sha256_cbor, xxhash_cbor "
                                           "(vLLM's default 'sha256' pickles and cannot be "
                                           "reproduced)",
                                           v);
            algo = v;
            break;
        case O_HASH_SEED:
            seed = v;
            break;
        case O_REDIS:
            redis_url = v;
            break;
        case O_REDIS_ID:
            redis_id = v;
            break;
        case O_REDIS_CA:
            redis_ca = v;
            break;
        case O_REDIS_CERT:
            redis_cert = v;
            break;
        case O_REDIS_KEY:
            redis_key = v;
            break;
        case O_REDIS_CLUSTER:
            redis_cluster = true;
            break;
        case O_REDIS_LEASE_MS:
            if (!kvs_cli_parse_u64("--redis-lease-ms", v, 300, 600000, &lease_ms))
                return 2;
            break;
        case O_KEYS:
            if (strcmp(v, "hashes") != 0 && strcmp(v, "tokens") != 0)
                return kvs_cli_usage_error(&index_cmd, "--keys '%s': accepted: hashes, tokens", v);
            token_mode = strcmp(v, "tokens") == 0;
            break;
        case O_MAX_PAIRS:
            if (!kvs_cli_parse_u64("--max-pairs", v, 1, UINT64_MAX, &max_pairs))
                return 2;
            break;
        case O_SHARDS:
            if (!kvs_cli_parse_u64("--shards", v, 1, KVS__SHARDS_MAX, &nshards))
                return 2;
            break;
        case O_SHARD_QUEUE:
            if (!kvs_cli_parse_u64("--shard-queue", v, 2, 1u << 20, &shard_queue))
                return 2;
            if ((shard_queue & (shard_queue - 1)) != 0)
                return kvs_cli_usage_error(&index_cmd, "--shard-queue %llu: a power of two",
                                           (unsigned long long)shard_queue);
            break;
        case O_MAX_IDLE_S:
            if (!kvs_cli_parse_u64("--max-idle-s", v, 0, UINT32_MAX, &max_idle_s))
                return 2;
            break;
        default:
            return c == KVS_CLI_OPT_HELP ? 0 : 2;
        }
    }
    if (kvs_cli_no_operands(&index_cmd, argc, argv) != 0)
        return 2;
#ifndef KVS_HAVE_REDIS
    if (redis_url != NULL)
        return kvs_cli_usage_error(&index_cmd, "--redis: built without libhiredis-dev");
#endif
    if ((redis_id != NULL || redis_cluster) && redis_url == NULL)
        return kvs_cli_usage_error(&index_cmd, redis_id != NULL ? "--redis-id needs --redis"
                                                                : "--redis-cluster needs --redis");
    if ((redis_ca != NULL || redis_cert != NULL || redis_key != NULL) &&
        (redis_url == NULL || strncmp(redis_url, "rediss://", 9) != 0))
        return kvs_cli_usage_error(
            &index_cmd, "--redis-ca, --redis-cert and --redis-key need --redis rediss://");
    /* With --redis a replica may only score (what the others write). */
    if ((d.nsrc == 0 && redis_url == NULL) || http == NULL) {
        kvs_cli_usage_error(&index_cmd, "%s is required",
                            d.nsrc == 0 && redis_url == NULL ? "--source" : "--http");
        usage(stderr);
        return 2;
    }
    if (nshards == 0)
        nshards = SHARDS_DEFAULT;
    int rc = 1;
    struct MHD_Daemon *mhd = NULL;
    kvs_hasher_params_t hp = {.field_mask = KVS_HASHER_FIELD_ALGO | KVS_HASHER_FIELD_BLOCK_TOKENS,
                              .algo = strcmp(algo, "sha256_cbor") == 0 ? KVS_HASH_SHA256_CBOR
                                                                       : KVS_HASH_XXHASH_CBOR,
                              .block_tokens = (uint32_t)block_size};
    if (seed != NULL) {
        hp.field_mask |= KVS_HASHER_FIELD_SEED;
        hp.seed = seed;
    }
    kvs_status_t st = kvs_hasher_create(&hp, &d.hasher);
    if (st != KVS_OK) {
        fprintf(stderr, "kvshare: index: hasher: %s\n", kvs_status_string(st));
        return 1;
    }
    d.digest_len = kvs_hasher_digest_len(d.hasher);
    d.block_size = (uint32_t)block_size;
    d.max_idle_ms = max_idle_s * 1000u;
    d.shard_queue = (uint32_t)shard_queue;
    d.zctx = zmq_ctx_new();
    d.nsh = (unsigned)nshards;
    d.sh = calloc(d.nsh, sizeof(*d.sh));
    if (d.zctx == NULL || d.sh == NULL) {
        fprintf(stderr, "kvshare index: out of memory\n");
        goto out;
    }
    /* --max-pairs is global: each shard holds at most its share. */
    for (unsigned i = 0; i < d.nsh; i++)
        if ((rc = shard_init(&d, i, (max_pairs + d.nsh - 1) / d.nsh, token_mode)) != 0)
            goto out;
    rc = 1;
#ifdef KVS_HAVE_REDIS
    if (redis_url != NULL) {
        char rid[160], rwhy[600];
        if (redis_id == NULL) {
            char host[64] = "replica";
            gethostname(host, sizeof(host) - 1);
            snprintf(rid, sizeof(rid), "%s:%ld", host, (long)getpid());
            redis_id = rid;
        }
        d.lease_ms = (uint32_t)lease_ms;
        kvs__ixr_tls_t tls = {.ca_file = redis_ca, .cert_file = redis_cert, .key_file = redis_key};
        d.redis = kvs__ixr_create(redis_url, redis_id, d.lease_ms, &tls, redis_cluster, rwhy,
                                  sizeof(rwhy));
        if (d.redis == NULL) {
            fprintf(stderr, "kvshare index: --redis %s\n", rwhy);
            rc = 2;
            goto out;
        }
        /* Each shard's writer thread writes through its own connection. */
        for (unsigned i = 0; i < d.nsh; i++)
            if ((d.sh[i].rw = kvs__ixr_writer_create(d.redis)) == NULL) {
                fprintf(stderr, "kvshare index: out of memory\n");
                goto out;
            }
        /* Warm from what the replicas wrote; without Redis this replica starts cold (and
         * says so) rather than not at all. */
        snap_ctx_t sc = {.d = &d, .pod = -1};
        if (kvs__ixr_snapshot(d.redis, snap_pod, snap_copy, &sc) != 0)
            fprintf(stderr, "kvshare index: --redis: no snapshot loaded (Redis unreachable?); "
                            "starting cold\n");
        else
            fprintf(stderr, "kvshare index: --redis: snapshot of %llu copies loaded\n",
                    (unsigned long long)atomic_load(&d.c.redis_snapshot_copies));
    }
#endif
    for (size_t i = 0; i < d.nsrc; i++) {
        source_t *s = &d.src[i];
        int hwm = 1000000; /* batches queued on our side before ZMQ drops (never blocks) */
        s->sub = zmq_socket(d.zctx, ZMQ_SUB);
        if (s->sub == NULL || zmq_setsockopt(s->sub, ZMQ_RCVHWM, &hwm, sizeof(hwm)) != 0 ||
            zmq_setsockopt(s->sub, ZMQ_SUBSCRIBE, "", 0) != 0 ||
            (s->bind ? zmq_bind(s->sub, s->endpoint) : zmq_connect(s->sub, s->endpoint)) != 0) {
            fprintf(stderr, "kvshare index: --source '%s': %s\n", s->spec, zmq_strerror(errno));
            rc = 2;
            goto out;
        }
        int linger = 0;
        zmq_setsockopt(s->sub, ZMQ_LINGER, &linger, sizeof(linger));
    }
    char bound[300], why[256];
    int usage_err = 0;
    int fd = kvs_cli_listen(http, bound, sizeof(bound), why, sizeof(why), &usage_err);
    if (fd < 0) {
        fprintf(stderr, "kvshare index: --http '%s': %s\n", http, why);
        rc = usage_err ? 2 : 1;
        goto out;
    }
    mhd = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG, 0, NULL, NULL,
                           on_http, &d, MHD_OPTION_LISTEN_SOCKET, (MHD_socket)fd,
                           MHD_OPTION_NOTIFY_COMPLETED, on_http_done, NULL,
                           MHD_OPTION_CONNECTION_TIMEOUT, 30u,
                           /* scores run in parallel: the index's readers take no lock */
                           MHD_OPTION_THREAD_POOL_SIZE, 4u, MHD_OPTION_END);
    if (mhd == NULL) {
        fprintf(stderr, "kvshare index: --http '%s': cannot start the HTTP server\n", http);
        close(fd);
        goto out;
    }
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    printf("ready http://%s\n", bound);
    fflush(stdout);
    fprintf(stderr,
            "kvshare index: %zu source(s), block size %u, %s, keys from %s, %u shard(s), serving "
            "on %s\n",
            d.nsrc, d.block_size, algo, token_mode ? "token_ids" : "block hashes", d.nsh, bound);

    /* With more than one shard, each shard's writer applies its models' batches; this thread
     * only receives and routes them. */
    for (unsigned i = 0; d.nsh > 1 && i < d.nsh; i++) {
        if (pthread_create(&d.sh[i].thread, NULL, shard_main, &d.sh[i]) != 0) {
            fprintf(stderr, "kvshare index: cannot start shard %u's writer\n", i);
            goto out;
        }
        d.sh[i].started = true;
    }
    zmq_pollitem_t items[MAX_SOURCES];
    for (size_t i = 0; i < d.nsrc; i++)
        items[i] = (zmq_pollitem_t){.socket = d.src[i].sub, .events = ZMQ_POLLIN};
    while (!stop_signal) {
        if (d.nsrc == 0) { /* a scoring-only replica (--redis): HTTP threads do the work */
            struct timespec ts = {.tv_sec = 0, .tv_nsec = 200000000L};
            nanosleep(&ts, NULL);
            continue;
        }
        int n = zmq_poll(items, (int)d.nsrc, 200);
        if (n < 0 && errno != EINTR) {
            fprintf(stderr, "kvshare index: zmq_poll: %s\n", zmq_strerror(errno));
            goto out;
        }
        for (size_t i = 0; n > 0 && i < d.nsrc && !stop_signal; i++) {
            if (!(items[i].revents & ZMQ_POLLIN))
                continue;
            for (int k = 0; k < DRAIN_PER_SOCKET; k++) {
                zmq_msg_t parts[3];
                int np = recv_multi(d.src[i].sub, parts, ZMQ_DONTWAIT);
                if (np <= 0)
                    break;
                route_frames(&d, (uint32_t)i, parts, np);
            }
        }
        if (d.nsh == 1)
            shard_age(&d.sh[0], now_ms());
    }
    fprintf(stderr, "kvshare index: stopping (%s)\n",
            stop_signal == SIGTERM ? "SIGTERM" : "SIGINT");
    rc = 0;
out:
    if (mhd != NULL)
        MHD_stop_daemon(mhd);
    daemon_close(&d);
    return rc;
}
