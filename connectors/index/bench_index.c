/* SPDX-License-Identifier: Apache-2.0 */
/* bench_index.c - `kvshare bench index` (kvshare-index bench): event ingest rate, score latency and
 * bytes per pair.
 *
 * One run:
 *  - ingest_block_events_per_s: msgpack BlockStored batches (positional, 16 hashes per
 *    event, 8 events per batch, 64 pods per model, --models models in turn) decoded and
 *    applied to empty indexes: by the calling thread with --shards 1, else queued for each
 *    model's shard and applied by that shard's writer thread (the daemon's --shards N).
 *    The median of INGEST_RUNS runs; with --shards N > 1 each alternates with a 1-shard
 *    run of the same models (ingest_1_shard_per_s), and ingest_ratio_vs_1_shard is the
 *    median of the run-by-run ratios.
 *  - score_p99_us: 8k-token prompts (512 blocks of 16) scored over 64 pods, keys given,
 *    against an index filled with up to --pairs (pod, block) pairs or what ~--setup-s
 *    seconds of setup reach: each pod holds a random-length prefix of each document.
 *  - score_with_hashing_p99_us: the same with the prompt's keys hashed first (xxhash_cbor).
 *  - score_hot_p50_us / _p99_us: the same prompt scored again straight after, its index
 *    lines now in cache (a prompt sharing a prefix scored a moment before). Beside
 *    score_p99_us it tells memory from work in the tail: on the 2-core test VM, under load
 *    3, the first score's p50/p99 were 5.4/39 us and the hot one's 2.4/3.1 us; when other
 *    processes run both tails grow alike (preemption, not the index).
 *  - bytes_per_holder_block: the index's table memory over its pairs.
 *  - score_during_ingest_p50_us / _p99_us: the same scores while a second thread writes
 *    (stores 16-block events for random pods and removes them 64 events later), and that
 *    writer's rate, ingest_during_scores_per_s: scoring takes no lock, so a writer never
 *    holds a score up (with a reader-writer lock, a score waited for the store in
 *    progress).
 * With --redis URL instead: the one-round-trip Redis score (kvs__ixr_score) of a 512-block
 * prompt against one pod holding it, and with --redis-anchor URL (the same server another
 * way, e.g. redis:// beside rediss://) the same scores there and their ratio. */
#include "cmdline_int.h"
#include "index.h"
#include "kvevents_int.h"
#include "ixshard_int.h"
#include "kvindex_int.h"

#ifdef KVS_HAVE_REDIS
#include "ixredis_int.h"
#endif

#include <msgpack.h>
#include <unistd.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PODS         64
#define PROMPT_BLKS  512
#define BLOCK_TOKENS 16

#define INGEST_RUNS 5

static int cmp_dbl(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The median of n values (sorts a copy). */
static double median(const double *v, int n)
{
    double c[INGEST_RUNS];
    memcpy(c, v, (size_t)n * sizeof(*c));
    qsort(c, (size_t)n, sizeof(*c), cmp_dbl);
    return c[n / 2];
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

static uint64_t now_ns(void)
{
    return (uint64_t)(kvs_cli_now() * 1e9);
}

/* The machine's own stalls, the anchor for the p99 figures: a loop that only reads the
 * clock for 300 ms counts its gaps over 10 us (the vCPU descheduled, an interrupt taken). An
 * operation of T us meets one with probability about rate * T, so once rate * T passes 1 %
 * its p99 is the stall's length, not the operation's. On the 2-core test VM: 1.3 gaps per
 * ms of ~40 us each (5 % of the time) with nothing else running, so anything longer than
 * ~8 us has a p99 near 40 us there. */
static void machine_stalls(double *per_ms, double *mean_us)
{
    const uint64_t span = 300000000ull, gap = 10000;
    uint64_t t0 = now_ns(), prev = t0, n = 0, lost = 0;
    for (uint64_t t = t0; t - t0 < span; prev = t) {
        t = now_ns();
        if (t - prev > gap) {
            n++;
            lost += t - prev;
        }
    }
    *per_ms = (double)n / ((double)span / 1e6);
    *mean_us = n > 0 ? (double)lost / (double)n / 1e3 : 0;
}

/* Document d's tokens: deterministic from d. */
static void doc_tokens(uint64_t d, uint32_t *tok)
{
    for (uint32_t i = 0; i < PROMPT_BLKS * BLOCK_TOKENS; i++)
        tok[i] = (uint32_t)(kvs_cli_mix(d * 1000003u + i) % 150000u);
}

static bool doc_keys(kvs_hasher_h h, uint64_t d, uint32_t *tok, kvs_key_t *keys, uint64_t *k64)
{
    doc_tokens(d, tok);
    size_t nk = 0;
    if (kvs_hasher_chain(h, NULL, tok, PROMPT_BLKS * BLOCK_TOKENS, keys, PROMPT_BLKS, &nk) !=
            KVS_OK ||
        nk != PROMPT_BLKS)
        return false;
    for (size_t i = 0; i < nk; i++)
        k64[i] = kvs_key_to_u64(&keys[i], kvs_hasher_digest_len(h));
    return true;
}

/* The bench model and its PODS pods, "pod-0".., in @idx; returns the model. */
static uint32_t bench_pods(kvs__idx_t *idx, uint32_t *pods)
{
    uint32_t m = (uint32_t)kvs__idx_model(idx, "bench", 5, true);
    for (uint32_t p = 0; p < PODS; p++) {
        char name[16];
        snprintf(name, sizeof(name), "pod-%u", p);
        pods[p] = (uint32_t)kvs__idx_pod(idx, name, strlen(name), m, true);
    }
    return m;
}

#define MAX_MODELS 64

/* One shard of the ingest run: its index, decoder, queue and the pods of its models. */
typedef struct ingest_shard {
    kvs__idx_t *idx;
    kvs__ev_decoder_t *dec;
    kvs__ring_t *ring;
    const msgpack_sbuffer *bufs;
    uint32_t (*pods)[PODS]; /* by model; only this shard's models are filled in */
    const int *fed;
    uint64_t events;
    bool failed;
} ingest_shard_t;

/* Decodes batch b (of model m) and applies it to the shard. */
static bool ingest_batch(ingest_shard_t *sh, uint32_t b, uint32_t m)
{
    kvs__ev_batch_t batch;
    char why[128];
    if (kvs__ev_decode(sh->dec, sh->bufs[b].data, sh->bufs[b].size, &batch, NULL, why,
                       sizeof(why)) != 0)
        return false;
    for (size_t e = 0; e < batch.nevents; e++) {
        const kvs__ev_t *ev = &batch.events[e];
        if (kvs__idx_store(sh->idx, sh->pods[m][b % PODS], ev->hashes, ev->nhashes, ev->medium.ptr,
                           ev->medium.len, b) != 0)
            return false;
        sh->events += ev->nhashes;
    }
    return true;
}

/* A shard's writer: what the daemon's does with --shards > 1 (queue in, decode, apply). */
static void *ingest_writer(void *arg)
{
    ingest_shard_t *sh = arg;
    for (;;) {
        uint32_t *it = kvs__ring_peek(sh->ring);
        if (it == NULL) {
            if (__atomic_load_n(sh->fed, __ATOMIC_ACQUIRE) && kvs__ring_peek(sh->ring) == NULL)
                break;
            kvs__ring_wait(sh->ring, 5);
            continue;
        }
        if (!sh->failed && !ingest_batch(sh, it[0], it[1]))
            sh->failed = true;
        kvs__ring_pop(sh->ring);
    }
    return NULL;
}

/* Block events per second decoded and applied: batches spread round-robin over `models`
 * models; with one shard the calling thread applies them (the daemon's --shards 1), else it
 * queues each for its model's shard, whose writer thread applies it. -1 on failure. */
static double ingest_rate(unsigned shards, unsigned models)
{
    enum { BATCHES = 4096, EVENTS = 8, HASHES = 16 };
    msgpack_sbuffer *bufs = calloc(BATCHES, sizeof(*bufs));
    uint32_t(*pods)[PODS] = calloc(models, sizeof(*pods));
    ingest_shard_t sh[KVS__SHARDS_MAX] = {{0}};
    pthread_t th[KVS__SHARDS_MAX];
    unsigned started = 0, shard_of[MAX_MODELS];
    int fed = 0;
    double rate = -1;
    if (bufs == NULL || pods == NULL)
        goto out;
    for (unsigned s = 0; s < shards; s++) {
        sh[s] = (ingest_shard_t){.idx = kvs__idx_create(0),
                                 .dec = kvs__ev_decoder_create(),
                                 .ring = shards > 1 ? kvs__ring_create(4096, 2 * sizeof(uint32_t))
                                                    : NULL,
                                 .bufs = bufs,
                                 .pods = pods,
                                 .fed = &fed};
        if (sh[s].idx == NULL || sh[s].dec == NULL || (shards > 1 && sh[s].ring == NULL))
            goto out;
    }
    for (unsigned m = 0; m < models; m++) {
        char name[16];
        int n = snprintf(name, sizeof(name), "bench-%u", m);
        shard_of[m] = kvs__shard_of(name, (size_t)n, shards);
        kvs__idx_t *idx = sh[shard_of[m]].idx;
        uint32_t mid = (uint32_t)kvs__idx_model(idx, name, (size_t)n, true);
        for (uint32_t p = 0; p < PODS; p++) { /* stores go by pod, a pod belongs to a model */
            snprintf(name, sizeof(name), "pod-%u", p);
            pods[m][p] = (uint32_t)kvs__idx_pod(idx, name, strlen(name), mid, true);
        }
    }
    for (uint32_t b = 0; b < BATCHES; b++) {
        msgpack_sbuffer_init(&bufs[b]);
        msgpack_packer pk;
        msgpack_packer_init(&pk, &bufs[b], msgpack_sbuffer_write);
        msgpack_pack_array(&pk, 3);
        msgpack_pack_double(&pk, 1.0);
        msgpack_pack_array(&pk, EVENTS);
        for (uint32_t e = 0; e < EVENTS; e++) {
            msgpack_pack_array(&pk, 8);
            msgpack_pack_str_with_body(&pk, "BlockStored", 11);
            msgpack_pack_array(&pk, HASHES);
            for (uint32_t h = 0; h < HASHES; h++)
                msgpack_pack_uint64(&pk, kvs_cli_mix(((uint64_t)b * EVENTS + e) * HASHES + h));
            msgpack_pack_nil(&pk);
            msgpack_pack_array(&pk, 0); /* vLLM sends the tokens; the hash mode ignores them */
            msgpack_pack_uint32(&pk, BLOCK_TOKENS);
            msgpack_pack_nil(&pk);
            msgpack_pack_str_with_body(&pk, "GPU", 3);
            msgpack_pack_nil(&pk);
        }
        msgpack_pack_nil(&pk);
    }
    for (; shards > 1 && started < shards; started++)
        if (pthread_create(&th[started], NULL, ingest_writer, &sh[started]) != 0)
            goto out;
    uint64_t t0 = now_ns(), events = 0;
    for (uint32_t b = 0; b < BATCHES; b++) {
        uint32_t m = b % models;
        if (shards == 1) {
            if (!ingest_batch(&sh[0], b, m))
                goto out;
            continue;
        }
        static const volatile int never;
        uint32_t *it = kvs__ring_slot_wait(sh[shard_of[m]].ring, &never);
        it[0] = b;
        it[1] = m;
        kvs__ring_push(sh[shard_of[m]].ring);
    }
    __atomic_store_n(&fed, 1, __ATOMIC_RELEASE);
    for (unsigned s = 0; s < started; s++) {
        kvs__ring_wake(sh[s].ring);
        pthread_join(th[s], NULL);
    }
    uint64_t t1 = now_ns();
    bool failed = false;
    for (unsigned s = 0; s < shards; s++) {
        events += sh[s].events;
        failed |= sh[s].failed;
    }
    started = 0;
    if (!failed)
        rate = (double)events / ((double)(t1 - t0) * 1e-9);
out:
    __atomic_store_n(&fed, 1, __ATOMIC_RELEASE);
    for (unsigned s = 0; s < started; s++) {
        kvs__ring_wake(sh[s].ring);
        pthread_join(th[s], NULL);
    }
    for (uint32_t b = 0; bufs != NULL && b < BATCHES; b++)
        msgpack_sbuffer_destroy(&bufs[b]);
    free(bufs);
    free(pods);
    for (unsigned s = 0; s < shards; s++) {
        kvs__idx_destroy(sh[s].idx);
        kvs__ev_decoder_destroy(sh[s].dec);
        kvs__ring_destroy(sh[s].ring);
    }
    return rate;
}

typedef struct churn {
    kvs__idx_t *idx;
    const uint32_t *pods;
    int stop;
    uint64_t events;
} churn_t;

/* The writer beside the scores: 16-block stores for random pods, each removed again 64
 * stores later, so the index keeps its size while blocks come and go. */
static void *churn_writer(void *arg)
{
    churn_t *c = arg;
    enum { HASHES = 16, RING = 64 };
    static uint64_t ring[RING][HASHES];
    uint32_t ring_pod[RING] = {0};
    uint64_t i = 0;
    while (!__atomic_load_n(&c->stop, __ATOMIC_ACQUIRE)) {
        uint32_t r = (uint32_t)(i % RING);
        if (i >= RING)
            kvs__idx_remove(c->idx, ring_pod[r], ring[r], HASHES, NULL, 0, 2);
        for (uint32_t h = 0; h < HASHES; h++)
            ring[r][h] = kvs_cli_mix((1ull << 62) + i * HASHES + h);
        ring_pod[r] = c->pods[kvs_cli_mix(i) % PODS];
        if (kvs__idx_store(c->idx, ring_pod[r], ring[r], HASHES, NULL, 0, 2) != 0)
            break;
        i++;
    }
    for (uint64_t j = i > RING ? i - RING : 0; j < i; j++)
        kvs__idx_remove(c->idx, ring_pod[j % RING], ring[j % RING], HASHES, NULL, 0, 2);
    __atomic_store_n(&c->events, i * HASHES, __ATOMIC_RELEASE);
    return NULL;
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: kvshare bench index [--pairs N] [--setup-s S] [--samples N] [--shards N]\n"
            "                          [--models M] [--json]\n"
            "       kvshare bench index --redis URL [--redis-cluster] [--redis-anchor URL]\n"
            "                           [--redis-ca FILE] [--samples N] [--json]\n"
            "\n"
            "KV event ingest rate, then prefix scores over 64 pods: an index filled with up\n"
            "to --pairs (pod, block) pairs, for at most --setup-s seconds, is scored\n"
            "--samples times, with the keys given and with the tokens hashed first.\n"
            "Ingest spreads its batches over --models models, applied as the daemon's\n"
            "--shards does: with 1 the receiving thread applies them, with N > 1 each\n"
            "model's shard has its own writer thread behind a queue.\n"
            "Defaults: --pairs 10000000 --setup-s 10 --samples 10000 --shards 1 --models 1\n"
            "--redis: scores of a %d-block prompt by one round trip to Redis (a pod\n"
            "written under the model kvs-bench, cleared at the end); --redis-anchor: the\n"
            "same against another URL (the same server over plain TCP, or one Redis beside\n"
            "a cluster) and the ratio; --redis-cluster: --redis names a Redis Cluster node.\n",
            PROMPT_BLKS);
}

enum {
    O_JSON = 256,
    O_PAIRS,
    O_SETUP_S,
    O_SAMPLES,
    O_REDIS,
    O_REDIS_ANCHOR,
    O_REDIS_CA,
    O_SHARDS,
    O_MODELS,
    O_REDIS_CLUSTER
};

static const struct option index_options[] = {
    {"json", no_argument, NULL, O_JSON},
    {"pairs", required_argument, NULL, O_PAIRS},
    {"setup-s", required_argument, NULL, O_SETUP_S},
    {"samples", required_argument, NULL, O_SAMPLES},
    {"redis", required_argument, NULL, O_REDIS},
    {"redis-anchor", required_argument, NULL, O_REDIS_ANCHOR},
    {"redis-ca", required_argument, NULL, O_REDIS_CA},
    {"redis-cluster", no_argument, NULL, O_REDIS_CLUSTER},
    {"shards", required_argument, NULL, O_SHARDS},
    {"models", required_argument, NULL, O_MODELS},
    KVS_CLI_OPT_HELP_ENTRY,
    KVS_CLI_OPT_END};
static const kvs_cli_cmd_t index_cmd = {"bench index", usage, index_options};

#ifdef KVS_HAVE_REDIS
/* p50/p99 (us) of samples scores of one PROMPT_BLKS-block prompt through url; false with a
 * message when Redis cannot be used. */
static bool redis_scores(const char *url, const char *ca, bool cluster, uint64_t samples,
                         uint64_t *lat, double *p50, double *p99)
{
    char why[600], pod[64];
    snprintf(pod, sizeof(pod), "bench-%ld", (long)getpid());
    kvs__ixr_tls_t tls = {.ca_file = ca};
    kvs__ixr_t *r = kvs__ixr_create(url, pod, 60000, &tls, cluster, why, sizeof(why));
    if (r == NULL) {
        fprintf(stderr, "kvshare bench index: --redis %s\n", why);
        return false;
    }
    uint64_t k[PROMPT_BLKS], epoch;
    for (size_t i = 0; i < PROMPT_BLKS; i++)
        k[i] = kvs_cli_mix(i + 1);
    kvs__ixr_score_t out[4];
    kvs__ixr_w_t *w = kvs__ixr_writer_create(r);
    bool ok = w != NULL && kvs__ixr_lease(w, "kvs-bench", pod, &epoch) >= 1;
    if (ok) {
        kvs__ixr_store(w, "kvs-bench", pod, k, PROMPT_BLKS, "GPU");
        ok = kvs__ixr_flush(w) == 0;
    }
    for (uint64_t s = 0; ok && s < samples; s++) {
        uint64_t t0 = now_ns();
        long n = kvs__ixr_score(r, "kvs-bench", k, PROMPT_BLKS, NULL, 0, out, 4);
        lat[s] = now_ns() - t0;
        ok = n >= 1 && out[0].blocks == PROMPT_BLKS;
    }
    if (w != NULL) {
        kvs__ixr_clear(w, "kvs-bench", pod);
        kvs__ixr_flush(w);
    }
    if (!ok)
        fprintf(stderr, "kvshare bench index: %s: Redis did not answer as expected\n", url);
    kvs__ixr_writer_destroy(w);
    kvs__ixr_destroy(r);
    if (ok) {
        qsort(lat, samples, sizeof(*lat), cmp_u64);
        *p50 = (double)lat[samples / 2] / 1e3;
        *p99 = (double)lat[(size_t)((double)samples * 0.99)] / 1e3;
    }
    return ok;
}

static int bench_redis(const char *url, const char *anchor, const char *ca, bool cluster,
                       uint64_t samples, bool json)
{
    uint64_t *lat = malloc(samples * sizeof(*lat));
    double p50 = 0, p99 = 0, a50 = 0, a99 = 0;
    int rc = 1;
    if (lat == NULL || !redis_scores(url, ca, cluster, samples, lat, &p50, &p99) ||
        (anchor != NULL && !redis_scores(anchor, ca, false, samples, lat, &a50, &a99)))
        goto out;
    if (json) {
        cJSON *j = cJSON_CreateObject();
        cJSON_AddStringToObject(j, "bench", "index_redis");
        cJSON_AddNumberToObject(j, "prompt_blocks", PROMPT_BLKS);
        cJSON_AddNumberToObject(j, "samples", (double)samples);
        cJSON_AddBoolToObject(j, "cluster", cluster);
        kvs_cli_json_num(j, "score_p50_us", p50, 1);
        kvs_cli_json_num(j, "score_p99_us", p99, 1);
        if (anchor != NULL) {
            kvs_cli_json_num(j, "anchor_p50_us", a50, 1);
            kvs_cli_json_num(j, "anchor_p99_us", a99, 1);
            kvs_cli_json_num(j, "ratio_p50", a50 > 0 ? p50 / a50 : 0, 3);
        }
        rc = kvs_cli_print_json("bench index", j);
        goto out;
    }
    printf(
        "bench index --redis: %d-block prompt, %llu scores\n  score   p50 %.1f us, p99 %.1f us\n",
        PROMPT_BLKS, (unsigned long long)samples, p50, p99);
    if (anchor != NULL)
        printf("  anchor  p50 %.1f us, p99 %.1f us (ratio p50 %.3f)\n", a50, a99,
               a50 > 0 ? p50 / a50 : 0);
    rc = 0;
out:
    free(lat);
    return rc;
}
#endif

int kvs_cli_bench_index(int argc, char **argv)
{
    bool json = false, redis_cluster = false;
    const char *redis = NULL, *redis_anchor = NULL, *redis_ca = NULL;
    uint64_t target = 10000000, setup_s = 10, samples = 10000, shards = 1, models = 1;
    int c;
    while ((c = kvs_cli_getopt(&index_cmd, argc, argv)) != -1) {
        switch (c) {
        case O_JSON:
            json = true;
            break;
        case O_PAIRS:
            if (!kvs_cli_parse_u64("--pairs", optarg, 1, 1ull << 34, &target))
                return 2;
            break;
        case O_SETUP_S:
            if (!kvs_cli_parse_u64("--setup-s", optarg, 1, 3600, &setup_s))
                return 2;
            break;
        case O_SAMPLES:
            if (!kvs_cli_parse_u64("--samples", optarg, 100, 10000000, &samples))
                return 2;
            break;
        case O_REDIS:
            redis = optarg;
            break;
        case O_REDIS_ANCHOR:
            redis_anchor = optarg;
            break;
        case O_REDIS_CA:
            redis_ca = optarg;
            break;
        case O_REDIS_CLUSTER:
            redis_cluster = true;
            break;
        case O_SHARDS:
            if (!kvs_cli_parse_u64("--shards", optarg, 1, KVS__SHARDS_MAX, &shards))
                return 2;
            break;
        case O_MODELS:
            if (!kvs_cli_parse_u64("--models", optarg, 1, MAX_MODELS, &models))
                return 2;
            break;
        default:
            return c == KVS_CLI_OPT_HELP ? 0 : 2;
        }
    }
    if (kvs_cli_no_operands(&index_cmd, argc, argv) != 0)
        return 2;
    if ((redis_anchor != NULL || redis_ca != NULL || redis_cluster) && redis == NULL)
        return kvs_cli_usage_error(&index_cmd, redis_anchor != NULL ? "--redis-anchor needs --redis"
                                               : redis_ca != NULL
                                                   ? "--redis-ca needs --redis"
                                                   : "--redis-cluster needs --redis");
    if (redis != NULL) {
#ifdef KVS_HAVE_REDIS
        return bench_redis(redis, redis_anchor, redis_ca, redis_cluster, samples, json);
#else
        return kvs_cli_usage_error(&index_cmd, "--redis: built without libhiredis-dev");
#endif
    }
    int rc = 1;
    /* Ingest is short and the machine may be shared: INGEST_RUNS runs, medians; with
     * --shards N > 1, each run alternates with one of the 1-shard anchor (the same models),
     * and the ratio is taken run by run. */
    double r_n[INGEST_RUNS], r_1[INGEST_RUNS], ratio[INGEST_RUNS];
    bool ingest_ok = true;
    for (int i = 0; i < INGEST_RUNS; i++) {
        r_n[i] = ingest_rate((unsigned)shards, (unsigned)models);
        r_1[i] = shards > 1 ? ingest_rate(1, (unsigned)models) : r_n[i];
        ingest_ok &= r_n[i] > 0 && r_1[i] > 0;
        ratio[i] = r_1[i] > 0 ? r_n[i] / r_1[i] : 0;
    }
    double ingest = median(r_n, INGEST_RUNS), ingest_1 = median(r_1, INGEST_RUNS),
           ingest_ratio = median(ratio, INGEST_RUNS);
    kvs_hasher_params_t hp = {.field_mask = KVS_HASHER_FIELD_ALGO | KVS_HASHER_FIELD_SEED |
                                            KVS_HASHER_FIELD_BLOCK_TOKENS,
                              .algo = KVS_HASH_XXHASH_CBOR,
                              .seed = "0",
                              .block_tokens = BLOCK_TOKENS};
    kvs_hasher_h h = NULL;
    kvs__idx_t *idx = kvs__idx_create(0);
    uint32_t *tok = malloc(PROMPT_BLKS * BLOCK_TOKENS * sizeof(*tok));
    kvs_key_t *keys = malloc(PROMPT_BLKS * sizeof(*keys));
    uint64_t *k64 = malloc(PROMPT_BLKS * sizeof(*k64));
    uint64_t *lat = malloc(samples * sizeof(*lat)), *lat_h = malloc(samples * sizeof(*lat_h));
    uint64_t *lat_c = malloc(samples * sizeof(*lat_c)),
             *lat_hot = malloc(samples * sizeof(*lat_hot));
    kvs__idx_score_t out[PODS];
    if (!ingest_ok || kvs_hasher_create(&hp, &h) != KVS_OK || idx == NULL || tok == NULL ||
        keys == NULL || k64 == NULL || lat == NULL || lat_h == NULL || lat_c == NULL ||
        lat_hot == NULL) {
        fprintf(stderr, "kvshare bench index: setup failed (out of memory?)\n");
        goto out;
    }
    uint32_t pods[PODS];
    uint32_t m = bench_pods(idx, pods);
    kvs__idx_stats_t st = {0};
    uint64_t docs = 0, t_end = now_ns() + setup_s * 1000000000ull;
    while (st.pairs < target && now_ns() < t_end) {
        if (!doc_keys(h, docs, tok, keys, k64))
            goto out;
        for (uint32_t p = 0; p < PODS; p++) {
            size_t len = (size_t)(kvs_cli_mix(docs * PODS + p) % (PROMPT_BLKS + 1));
            if (kvs__idx_store(idx, pods[p], k64, len, NULL, 0, 1) != 0)
                goto out;
        }
        docs++;
        kvs__idx_get_stats(idx, &st);
    }
    for (uint64_t s = 0; s < samples; s++) {
        uint64_t d = kvs_cli_mix(s) % docs;
        if (!doc_keys(h, d, tok, keys, k64))
            goto out;
        uint64_t t0 = now_ns();
        long n = kvs__idx_score(idx, m, k64, PROMPT_BLKS, NULL, 0, out, PODS);
        lat[s] = now_ns() - t0;
        t0 = now_ns();
        long again = kvs__idx_score(idx, m, k64, PROMPT_BLKS, NULL, 0, out, PODS);
        lat_hot[s] = now_ns() - t0;
        /* With hashing: the tokens in hand, keys computed on the request path. */
        t0 = now_ns();
        size_t nk = 0;
        kvs_hasher_chain(h, NULL, tok, PROMPT_BLKS * BLOCK_TOKENS, keys, PROMPT_BLKS, &nk);
        for (size_t i = 0; i < nk; i++)
            k64[i] = kvs_key_to_u64(&keys[i], kvs_hasher_digest_len(h));
        long n2 = kvs__idx_score(idx, m, k64, nk, NULL, 0, out, PODS);
        lat_h[s] = now_ns() - t0;
        if (n < 0 || n != n2 || n != again) {
            fprintf(stderr, "kvshare bench index: scores disagree (%ld, %ld, %ld)\n", n, again, n2);
            goto out;
        }
    }
    /* The same scores with a writer running beside them. */
    churn_t ch = {.idx = idx, .pods = pods};
    pthread_t wt;
    if (pthread_create(&wt, NULL, churn_writer, &ch) != 0) {
        fprintf(stderr, "kvshare bench index: cannot start the writer thread\n");
        goto out;
    }
    uint64_t tc0 = now_ns();
    for (uint64_t s = 0; s < samples; s++) {
        uint64_t d = kvs_cli_mix(s + samples) % docs;
        if (!doc_keys(h, d, tok, keys, k64))
            break;
        uint64_t t0 = now_ns();
        long n = kvs__idx_score(idx, m, k64, PROMPT_BLKS, NULL, 0, out, PODS);
        lat_c[s] = now_ns() - t0;
        (void)n;
    }
    __atomic_store_n(&ch.stop, 1, __ATOMIC_RELEASE);
    pthread_join(wt, NULL);
    double churn_rate =
        (double)__atomic_load_n(&ch.events, __ATOMIC_ACQUIRE) / ((double)(now_ns() - tc0) * 1e-9);
    double stalls_per_ms = 0, stall_us = 0;
    machine_stalls(&stalls_per_ms, &stall_us);
    qsort(lat, samples, sizeof(*lat), cmp_u64);
    qsort(lat_h, samples, sizeof(*lat_h), cmp_u64);
    qsort(lat_c, samples, sizeof(*lat_c), cmp_u64);
    qsort(lat_hot, samples, sizeof(*lat_hot), cmp_u64);
    size_t p99 = (size_t)((double)samples * 0.99);
    double bph = st.pairs ? (double)st.bytes / (double)st.pairs : 0;
    if (json) {
        cJSON *j = cJSON_CreateObject();
        cJSON_AddStringToObject(j, "bench", "index");
        kvs_cli_json_num(j, "ingest_block_events_per_s", ingest, 0);
        cJSON_AddNumberToObject(j, "shards", (double)shards);
        cJSON_AddNumberToObject(j, "models", (double)models);
        cJSON_AddNumberToObject(j, "ingest_runs", INGEST_RUNS);
        kvs_cli_json_num(j, "ingest_1_shard_per_s", ingest_1, 0);
        kvs_cli_json_num(j, "ingest_ratio_vs_1_shard", ingest_ratio, 2);
        kvs_cli_json_num(j, "score_p50_us", (double)lat[samples / 2] / 1e3, 2);
        kvs_cli_json_num(j, "score_p99_us", (double)lat[p99] / 1e3, 2);
        kvs_cli_json_num(j, "score_with_hashing_p99_us", (double)lat_h[p99] / 1e3, 2);
        kvs_cli_json_num(j, "bytes_per_holder_block", bph, 1);
        cJSON_AddNumberToObject(j, "pairs", (double)st.pairs);
        cJSON_AddNumberToObject(j, "blocks", (double)st.blocks);
        cJSON_AddNumberToObject(j, "pods", PODS);
        cJSON_AddNumberToObject(j, "prompt_blocks", PROMPT_BLKS);
        cJSON_AddNumberToObject(j, "samples", (double)samples);
        kvs_cli_json_num(j, "score_with_hashing_p50_us", (double)lat_h[samples / 2] / 1e3, 2);
        kvs_cli_json_num(j, "score_during_ingest_p50_us", (double)lat_c[samples / 2] / 1e3, 2);
        kvs_cli_json_num(j, "score_during_ingest_p99_us", (double)lat_c[p99] / 1e3, 2);
        kvs_cli_json_num(j, "ingest_during_scores_per_s", churn_rate, 0);
        kvs_cli_json_num(j, "score_hot_p50_us", (double)lat_hot[samples / 2] / 1e3, 2);
        kvs_cli_json_num(j, "score_hot_p99_us", (double)lat_hot[p99] / 1e3, 2);
        kvs_cli_json_num(j, "machine_stalls_per_ms", stalls_per_ms, 2);
        kvs_cli_json_num(j, "machine_stall_us", stall_us, 1);
        rc = kvs_cli_print_json("bench index", j);
        goto out;
    }
    printf("bench index: %d pods, %llu pairs over %llu blocks\n"
           "  ingest                %.2f M block events/s (%llu shard(s), %llu model(s); "
           "1 shard: %.2f M, ratio %.2f; medians of %d)\n"
           "  score (keys given)    p50 %.2f us, p99 %.2f us (%d-block prompts)\n"
           "  same prompt again     p50 %.2f us, p99 %.2f us (its index lines in cache)\n"
           "  score with hashing    p99 %.2f us (xxhash_cbor)\n"
           "  memory                %.1f bytes per (pod, block) pair\n"
           "  score beside a writer p50 %.2f us, p99 %.2f us (writer: %.2f M block "
           "events/s)\n"
           "  this machine          %.2f stalls per ms of %.1f us on average (a loop reading "
           "the clock: gaps over 10 us)\n",
           PODS, (unsigned long long)st.pairs, (unsigned long long)st.blocks, ingest / 1e6,
           (unsigned long long)shards, (unsigned long long)models, ingest_1 / 1e6, ingest_ratio,
           INGEST_RUNS, (double)lat[samples / 2] / 1e3, (double)lat[p99] / 1e3, PROMPT_BLKS,
           (double)lat_hot[samples / 2] / 1e3, (double)lat_hot[p99] / 1e3, (double)lat_h[p99] / 1e3,
           bph, (double)lat_c[samples / 2] / 1e3, (double)lat_c[p99] / 1e3, churn_rate / 1e6,
           stalls_per_ms, stall_us);
    rc = 0;
out:
    kvs_hasher_destroy(h);
    kvs__idx_destroy(idx);
    free(tok);
    free(keys);
    free(k64);
    free(lat);
    free(lat_h);
    free(lat_c);
    free(lat_hot);
    return rc;
}
