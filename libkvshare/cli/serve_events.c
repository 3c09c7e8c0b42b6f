/* SPDX-License-Identifier: Apache-2.0 */
/* serve_events.c - `kvshare serve --events`: the node's stores and removals as vLLM KV events.
 *
 * The store tells us of each change under its lock (kvs_block_event_fn), from whichever
 * thread made it; we only copy the event into a ring and return, so the data path never
 * waits on ZMQ. The ring has one producer at a time (the store lock serialises them: its
 * release/acquire orders one producer's writes before the next one's) and one consumer, a
 * thread that drains it every few milliseconds, groups consecutive events into BlockStored
 * / BlockRemoved runs and publishes one batch per topic, as vLLM does per step: frames
 * (topic kv@<pod>@<model>, seq as 8 bytes big-endian, msgpack [ts, [events], None]).
 *
 * A full ring drops the event and counts it; the next batch then skips a sequence number,
 * so an index sees the gap and stops trusting this pod (degraded) instead of keeping a
 * block that is gone. A clean stop publishes AllBlocksCleared. */
#include "cli.h"
#include "kvevents_int.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

#define EVENTS_MEDIUM "KVSHARE_POOL" /* the tier an index shows for this node's blocks */
#define MAX_TOPICS    64
#define CHUNK         4096 /* events per batch at most */
#define DRAIN_MS      2

typedef struct qev {
    uint64_t layout;
    uint64_t hash;
    uint8_t type; /* kvs_block_event_type_t */
} qev_t;

typedef struct topic {
    uint64_t layout; /* the layout this topic is for (0 with a fixed model: one topic) */
    uint64_t seq;
    char name[600];
} topic_t;

struct kvs_cli_events {
    void *zctx, *pub;
    char endpoint[300];
    char pod[256], model[256]; /* model "": one topic per layout, named by its id */
    qev_t *ring;
    size_t cap; /* a power of two */
    _Atomic size_t head, tail;
    atomic_ullong dropped, published, batches;
    unsigned long long dropped_seen;
    topic_t topics[MAX_TOPICS];
    size_t ntopics;
    pthread_t thread;
    bool running;
    atomic_bool stop;
    /* the consumer's scratch */
    qev_t chunk[CHUNK];
    uint64_t hashes[CHUNK];
    kvs__ev_out_t outs[CHUNK];
};

kvs_cli_events_t *kvs_cli_events_open(const char *spec, uint64_t queue, char *why, size_t wl)
{
    kvs_cli_events_t *ev = calloc(1, sizeof(*ev));
    if (ev == NULL) {
        snprintf(why, wl, "out of memory");
        return NULL;
    }
    size_t cap = 1;
    while (cap < queue)
        cap *= 2;
    ev->cap = cap;
    ev->ring = malloc(cap * sizeof(*ev->ring));
    ev->zctx = zmq_ctx_new();
    if (ev->ring == NULL || ev->zctx == NULL) {
        snprintf(why, wl, "out of memory");
        goto fail;
    }
    bool connect = strncmp(spec, "connect:", 8) == 0;
    const char *ep = connect ? spec + 8 : spec;
    int hwm = 100000, linger = 1000; /* vLLM's hwm; a stop's last batch gets a second out */
    ev->pub = zmq_socket(ev->zctx, ZMQ_PUB);
    if (ev->pub == NULL || zmq_setsockopt(ev->pub, ZMQ_SNDHWM, &hwm, sizeof(hwm)) != 0 ||
        zmq_setsockopt(ev->pub, ZMQ_LINGER, &linger, sizeof(linger)) != 0 ||
        (connect ? zmq_connect(ev->pub, ep) : zmq_bind(ev->pub, ep)) != 0) {
        snprintf(why, wl, "%s", zmq_strerror(errno));
        goto fail;
    }
    size_t elen = sizeof(ev->endpoint);
    if (connect || zmq_getsockopt(ev->pub, ZMQ_LAST_ENDPOINT, ev->endpoint, &elen) != 0)
        snprintf(ev->endpoint, sizeof(ev->endpoint), "%s", ep);
    return ev;
fail:
    if (ev->pub)
        zmq_close(ev->pub);
    if (ev->zctx)
        zmq_ctx_term(ev->zctx);
    free(ev->ring);
    free(ev);
    return NULL;
}

const char *kvs_cli_events_endpoint(const kvs_cli_events_t *ev)
{
    return ev->endpoint;
}

/* The hash vLLM's events carry for a key: the digest's last 8 bytes, big-endian. A pool node
 * does not know the algorithm; xxhash_cbor's 16-byte digests are zero-padded to 32, and a
 * sha256 digest ends in 16 zero bytes with probability 2^-128. */
static uint64_t event_hash(const kvs_key_t *k)
{
    for (size_t i = 16; i < KVS_KEY_BYTES; i++)
        if (k->bytes[i] != 0)
            return kvs_key_to_u64(k, 32);
    return kvs_key_to_u64(k, 16);
}

void kvs_cli_events_on_block(void *arg, const kvs_block_event_t *e)
{
    kvs_cli_events_t *ev = arg;
    size_t h = atomic_load_explicit(&ev->head, memory_order_relaxed);
    size_t t = atomic_load_explicit(&ev->tail, memory_order_acquire);
    if (h - t >= ev->cap) {
        atomic_fetch_add_explicit(&ev->dropped, 1, memory_order_relaxed);
        return;
    }
    ev->ring[h & (ev->cap - 1)] =
        (qev_t){.layout = e->layout_id, .hash = event_hash(&e->key), .type = (uint8_t)e->type};
    atomic_store_explicit(&ev->head, h + 1, memory_order_release);
}

static topic_t *topic_for(kvs_cli_events_t *ev, uint64_t layout)
{
    uint64_t key = ev->model[0] != '\0' ? 0 : layout;
    for (size_t i = 0; i < ev->ntopics; i++)
        if (ev->topics[i].layout == key)
            return &ev->topics[i];
    if (ev->ntopics == MAX_TOPICS)
        return NULL;
    topic_t *t = &ev->topics[ev->ntopics++];
    t->layout = key;
    t->seq = 0;
    if (ev->model[0] != '\0')
        snprintf(t->name, sizeof(t->name), "kv@%s@%s", ev->pod, ev->model);
    else
        snprintf(t->name, sizeof(t->name), "kv@%s@%016llx", ev->pod, (unsigned long long)layout);
    return t;
}

static void send_batch(kvs_cli_events_t *ev, topic_t *t, const kvs__ev_out_t *outs, size_t n)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    char *buf;
    size_t len;
    if (kvs__ev_encode(outs, n, (double)ts.tv_sec + (double)ts.tv_nsec / 1e9, &buf, &len) != 0) {
        /* Lost like a dropped event: the skipped sequence number tells the index. */
        atomic_fetch_add_explicit(&ev->dropped, 1, memory_order_relaxed);
        t->seq++;
        return;
    }
    uint8_t seq[8];
    for (int i = 0; i < 8; i++)
        seq[i] = (uint8_t)(t->seq >> (56 - 8 * i));
    t->seq++;
    /* A PUB socket never blocks: past its high-water mark it drops, as vLLM's does. */
    if (zmq_send(ev->pub, t->name, strlen(t->name), ZMQ_SNDMORE) >= 0 &&
        zmq_send(ev->pub, seq, 8, ZMQ_SNDMORE) >= 0 && zmq_send(ev->pub, buf, len, 0) >= 0)
        atomic_fetch_add_explicit(&ev->batches, 1, memory_order_relaxed);
    free(buf);
}

/* Publishes what the ring holds, a chunk at a time; per chunk, one batch per topic whose
 * events are the chunk's runs of one type. */
static void drain(kvs_cli_events_t *ev)
{
    for (;;) {
        size_t t = atomic_load_explicit(&ev->tail, memory_order_relaxed);
        size_t h = atomic_load_explicit(&ev->head, memory_order_acquire);
        size_t n = h - t < CHUNK ? h - t : CHUNK;
        unsigned long long dropped = atomic_load_explicit(&ev->dropped, memory_order_relaxed);
        bool gap = dropped != ev->dropped_seen;
        if (gap) {
            fprintf(stderr,
                    "kvshare serve: --events: %llu event(s) dropped (queue full); indexes see "
                    "a sequence gap\n",
                    dropped - ev->dropped_seen);
            ev->dropped_seen = dropped;
            for (size_t i = 0; i < ev->ntopics; i++) {
                ev->topics[i].seq++;
                /* Nothing else to send: an empty batch shows the gap now, not at the next
                 * store, which may never come. */
                if (n == 0)
                    send_batch(ev, &ev->topics[i], NULL, 0);
            }
        }
        if (n == 0)
            return;
        for (size_t i = 0; i < n; i++)
            ev->chunk[i] = ev->ring[(t + i) & (ev->cap - 1)];
        atomic_store_explicit(&ev->tail, t + n, memory_order_release);
        uint8_t done[CHUNK] = {0};
        for (size_t first = 0; first < n; first++) {
            if (done[first])
                continue;
            topic_t *tp = topic_for(ev, ev->chunk[first].layout);
            if (tp != NULL && gap && tp->seq == 0)
                tp->seq = 1; /* a topic first seen after a drop starts with the gap too */
            size_t nh = 0, no = 0;
            for (size_t i = first; i < n; i++) {
                const qev_t *q = &ev->chunk[i];
                if (done[i] || topic_for(ev, q->layout) != tp)
                    continue;
                done[i] = 1;
                kvs__ev_type_t type =
                    q->type == KVS_BLOCK_EVENT_STORED ? KVS__EV_STORED : KVS__EV_REMOVED;
                if (no == 0 || ev->outs[no - 1].type != type)
                    ev->outs[no++] = (kvs__ev_out_t){
                        .type = type, .hashes = &ev->hashes[nh], .medium = EVENTS_MEDIUM};
                ev->hashes[nh++] = q->hash;
                ev->outs[no - 1].nhashes++;
            }
            if (tp == NULL) {
                atomic_fetch_add_explicit(&ev->dropped, nh, memory_order_relaxed);
                continue; /* more layouts than topics: counted as dropped */
            }
            send_batch(ev, tp, ev->outs, no);
            atomic_fetch_add_explicit(&ev->published, nh, memory_order_relaxed);
        }
    }
}

static void *events_main(void *arg)
{
    kvs_cli_events_t *ev = arg;
    while (!atomic_load(&ev->stop)) {
        drain(ev);
        struct timespec ts = {.tv_sec = 0, .tv_nsec = DRAIN_MS * 1000000L};
        nanosleep(&ts, NULL);
    }
    drain(ev);
    return NULL;
}

int kvs_cli_events_run(kvs_cli_events_t *ev, const char *pod, const char *model, char *why,
                       size_t wl)
{
    snprintf(ev->pod, sizeof(ev->pod), "%s", pod);
    snprintf(ev->model, sizeof(ev->model), "%s", model ? model : "");
    int rc = pthread_create(&ev->thread, NULL, events_main, ev);
    if (rc != 0) {
        snprintf(why, wl, "cannot start the publisher thread: %s", strerror(rc));
        return -1;
    }
    ev->running = true;
    return 0;
}

void kvs_cli_events_stats(const kvs_cli_events_t *ev, unsigned long long *published,
                          unsigned long long *dropped, unsigned long long *batches)
{
    *published = atomic_load(&ev->published);
    *dropped = atomic_load(&ev->dropped);
    *batches = atomic_load(&ev->batches);
}

void kvs_cli_events_close(kvs_cli_events_t *ev)
{
    if (ev == NULL)
        return;
    if (ev->running) {
        atomic_store(&ev->stop, true);
        pthread_join(ev->thread, NULL);
        /* The node's blocks go with it: tell the indexes. */
        kvs__ev_out_t clr = {.type = KVS__EV_CLEARED};
        for (size_t i = 0; i < ev->ntopics; i++)
            send_batch(ev, &ev->topics[i], &clr, 1);
    }
    zmq_close(ev->pub);
    zmq_ctx_term(ev->zctx);
    free(ev->ring);
    free(ev);
}
