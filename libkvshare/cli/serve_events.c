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
 * block that is gone. A clean stop publishes AllBlocksCleared.
 *
 * With one topic (--events-model), a replay ROUTER (--events-replay) answers as vLLM's:
 * [id, "", start seq] -> [id, "", seq, payload] for each kept batch from start, then
 * [id, "", -1, ""]; the last --events-replay-batches batches are kept. An index joining
 * late replays from 0 and is warm; a gap made by a drop stays a gap (never sent, never
 * kept). The same thread serves it between drains. */
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
    /* replay: a ring of the last nkeep batches (payload copies) of the one topic */
    void *router;
    struct kept {
        uint64_t seq;
        char *buf;
        size_t len;
    } * keep;
    size_t nkeep, keep_head, keep_n;
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

int kvs_cli_events_replay(kvs_cli_events_t *ev, const char *endpoint, uint64_t batches, char *why,
                          size_t wl)
{
    int linger = 0;
    ev->keep = calloc(batches, sizeof(*ev->keep));
    ev->router = ev->keep ? zmq_socket(ev->zctx, ZMQ_ROUTER) : NULL;
    if (ev->router == NULL || zmq_setsockopt(ev->router, ZMQ_LINGER, &linger, sizeof(linger)) ||
        zmq_bind(ev->router, endpoint) != 0) {
        snprintf(why, wl, "%s", ev->keep ? zmq_strerror(errno) : "out of memory");
        return -1;
    }
    ev->nkeep = batches;
    return 0;
}

const char *kvs_cli_events_replay_endpoint(const kvs_cli_events_t *ev, char *buf, size_t len)
{
    if (ev->router == NULL || zmq_getsockopt(ev->router, ZMQ_LAST_ENDPOINT, buf, &len) != 0)
        return NULL;
    return buf;
}

/* Keeps a copy of a sent batch for replays (the oldest goes when the ring is full). */
static void keep_batch(kvs_cli_events_t *ev, uint64_t seq, const char *buf, size_t len)
{
    if (ev->nkeep == 0)
        return;
    char *copy = malloc(len ? len : 1);
    if (copy == NULL)
        return; /* a hole a replay reports as such */
    memcpy(copy, buf, len);
    struct kept *k = &ev->keep[(ev->keep_head + ev->keep_n) % ev->nkeep];
    if (ev->keep_n == ev->nkeep) {
        k = &ev->keep[ev->keep_head];
        free(k->buf);
        ev->keep_head = (ev->keep_head + 1) % ev->nkeep;
    } else {
        ev->keep_n++;
    }
    *k = (struct kept){.seq = seq, .buf = copy, .len = len};
}

static void be64_put(uint8_t *b, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)(v >> (56 - 8 * i));
}

/* Answers the replay requests waiting on the ROUTER (never blocks: a peer too slow to take
 * its answer gets a truncated one, which it reads as a gap). */
static void serve_replays(kvs_cli_events_t *ev)
{
    for (int req = 0; req < 16; req++) {
        zmq_msg_t parts[3];
        int n = 0, more = 1;
        while (more) {
            zmq_msg_t tmp, *m = n < 3 ? &parts[n] : &tmp;
            zmq_msg_init(m);
            if (zmq_msg_recv(m, ev->router, n == 0 ? ZMQ_DONTWAIT : 0) < 0) {
                zmq_msg_close(m);
                for (int i = 0; i < n && i < 3; i++)
                    zmq_msg_close(&parts[i]);
                return;
            }
            more = zmq_msg_more(m);
            if (m == &tmp)
                zmq_msg_close(&tmp);
            n++;
        }
        /* [id, "", start(8)], as vLLM's ROUTER expects; anything else is ignored. */
        if (n == 3 && zmq_msg_size(&parts[1]) == 0 && zmq_msg_size(&parts[2]) == 8) {
            const uint8_t *b = zmq_msg_data(&parts[2]);
            uint64_t start = 0;
            for (int i = 0; i < 8; i++)
                start = (start << 8) | b[i];
            const void *id = zmq_msg_data(&parts[0]);
            size_t idlen = zmq_msg_size(&parts[0]);
            bool ok = true;
            for (size_t i = 0; ok && i < ev->keep_n; i++) {
                const struct kept *k = &ev->keep[(ev->keep_head + i) % ev->nkeep];
                if (k->seq < start)
                    continue;
                uint8_t seq[8];
                be64_put(seq, k->seq);
                ok = zmq_send(ev->router, id, idlen, ZMQ_SNDMORE | ZMQ_DONTWAIT) >= 0 &&
                     zmq_send(ev->router, "", 0, ZMQ_SNDMORE | ZMQ_DONTWAIT) >= 0 &&
                     zmq_send(ev->router, seq, 8, ZMQ_SNDMORE | ZMQ_DONTWAIT) >= 0 &&
                     zmq_send(ev->router, k->buf, k->len, ZMQ_DONTWAIT) >= 0;
            }
            uint8_t end[8];
            be64_put(end, UINT64_MAX); /* -1: the end */
            if (ok && zmq_send(ev->router, id, idlen, ZMQ_SNDMORE | ZMQ_DONTWAIT) >= 0 &&
                zmq_send(ev->router, "", 0, ZMQ_SNDMORE | ZMQ_DONTWAIT) >= 0 &&
                zmq_send(ev->router, end, 8, ZMQ_SNDMORE | ZMQ_DONTWAIT) >= 0)
                zmq_send(ev->router, "", 0, ZMQ_DONTWAIT);
        }
        for (int i = 0; i < n && i < 3; i++)
            zmq_msg_close(&parts[i]);
    }
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
    be64_put(seq, t->seq);
    keep_batch(ev, t->seq, buf, len);
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
        if (ev->router != NULL) { /* wait for a replay request, or the next drain */
            zmq_pollitem_t it = {.socket = ev->router, .events = ZMQ_POLLIN};
            if (zmq_poll(&it, 1, DRAIN_MS) > 0)
                serve_replays(ev);
            continue;
        }
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
    if (ev->router != NULL)
        zmq_close(ev->router);
    zmq_ctx_term(ev->zctx);
    for (size_t i = 0; i < ev->keep_n; i++)
        free(ev->keep[(ev->keep_head + i) % ev->nkeep].buf);
    free(ev->keep);
    free(ev->ring);
    free(ev);
}
