/* SPDX-License-Identifier: Apache-2.0 */
/* ixshard.c - model -> shard, and the single-producer/single-consumer ring of a shard.
 *
 * The ring: head (consumer) and tail (producer) count items forever; slot = count & (cap-1).
 * The producer writes a slot, then stores tail with release; the consumer loads tail with
 * acquire before reading the slot, and stores head with release once done, which the
 * producer's acquire load of head orders before it reuses the slot. Each index sits on its
 * own cache line.
 *
 * Sleeping: a consumer with nothing to do sets `sleeping` and checks the ring again under
 * the mutex before waiting; the producer stores tail, then reads `sleeping` (both sequentially
 * consistent, so one of them sees the other) and signals under the mutex when set, so a
 * push never goes unnoticed. */
#include "ixshard_int.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

unsigned kvs__shard_of(const char *name, size_t len, unsigned nshards)
{
    if (nshards <= 1)
        return 0;
    uint64_t h = 14695981039346656037ull;
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)name[i];
        h *= 1099511628211ull;
    }
    return (unsigned)(h % nshards);
}

struct kvs__ring {
    _Alignas(64) size_t head; /* consumer */
    _Alignas(64) size_t tail; /* producer */
    size_t high_water;        /* producer writes, anyone reads */
    uint64_t full_waits;
    _Alignas(64) int sleeping;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    size_t cap, item_size;
    unsigned char *items;
};

kvs__ring_t *kvs__ring_create(size_t cap, size_t item_size)
{
    if (cap < 2 || (cap & (cap - 1)) != 0 || item_size == 0 || cap > SIZE_MAX / item_size)
        return NULL;
    kvs__ring_t *r = aligned_alloc(64, (sizeof(*r) + 63) & ~(size_t)63);
    if (r == NULL)
        return NULL;
    memset(r, 0, sizeof(*r));
    r->items = malloc(cap * item_size);
    if (r->items == NULL) {
        free(r);
        return NULL;
    }
    r->cap = cap;
    r->item_size = item_size;
    pthread_mutex_init(&r->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&r->cv, &ca);
    pthread_condattr_destroy(&ca);
    return r;
}

void kvs__ring_destroy(kvs__ring_t *r)
{
    if (r == NULL)
        return;
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
    free(r->items);
    free(r);
}

void *kvs__ring_slot(kvs__ring_t *r)
{
    size_t t = __atomic_load_n(&r->tail, __ATOMIC_RELAXED);
    if (t - __atomic_load_n(&r->head, __ATOMIC_ACQUIRE) >= r->cap)
        return NULL;
    return r->items + (t & (r->cap - 1)) * r->item_size;
}

void kvs__ring_push(kvs__ring_t *r)
{
    size_t t = __atomic_load_n(&r->tail, __ATOMIC_RELAXED) + 1;
    __atomic_store_n(&r->tail, t, __ATOMIC_SEQ_CST);
    size_t depth = t - __atomic_load_n(&r->head, __ATOMIC_RELAXED);
    if (depth > __atomic_load_n(&r->high_water, __ATOMIC_RELAXED))
        __atomic_store_n(&r->high_water, depth, __ATOMIC_RELAXED);
    if (__atomic_load_n(&r->sleeping, __ATOMIC_SEQ_CST))
        kvs__ring_wake(r);
}

void *kvs__ring_slot_wait(kvs__ring_t *r, const volatile int *stop)
{
    void *s;
    bool counted = false;
    while ((s = kvs__ring_slot(r)) == NULL) {
        if (__atomic_load_n(stop, __ATOMIC_RELAXED))
            return NULL;
        if (!counted) {
            __atomic_fetch_add(&r->full_waits, 1, __ATOMIC_RELAXED);
            counted = true;
        }
        struct timespec ts = {.tv_sec = 0, .tv_nsec = 50000};
        nanosleep(&ts, NULL);
    }
    return s;
}

void *kvs__ring_peek(kvs__ring_t *r)
{
    size_t h = __atomic_load_n(&r->head, __ATOMIC_RELAXED);
    if (__atomic_load_n(&r->tail, __ATOMIC_ACQUIRE) == h)
        return NULL;
    return r->items + (h & (r->cap - 1)) * r->item_size;
}

void kvs__ring_pop(kvs__ring_t *r)
{
    __atomic_store_n(&r->head, __atomic_load_n(&r->head, __ATOMIC_RELAXED) + 1, __ATOMIC_RELEASE);
}

void kvs__ring_wait(kvs__ring_t *r, unsigned timeout_ms)
{
    struct timespec dl;
    clock_gettime(CLOCK_MONOTONIC, &dl);
    dl.tv_sec += timeout_ms / 1000u;
    dl.tv_nsec += (long)(timeout_ms % 1000u) * 1000000L;
    if (dl.tv_nsec >= 1000000000L) {
        dl.tv_sec++;
        dl.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&r->mu);
    __atomic_store_n(&r->sleeping, 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&r->tail, __ATOMIC_SEQ_CST) == __atomic_load_n(&r->head, __ATOMIC_RELAXED))
        pthread_cond_timedwait(&r->cv, &r->mu, &dl);
    __atomic_store_n(&r->sleeping, 0, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&r->mu);
}

void kvs__ring_wake(kvs__ring_t *r)
{
    pthread_mutex_lock(&r->mu);
    pthread_cond_signal(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

size_t kvs__ring_depth(const kvs__ring_t *r)
{
    size_t t = __atomic_load_n(&r->tail, __ATOMIC_ACQUIRE);
    size_t h = __atomic_load_n(&r->head, __ATOMIC_ACQUIRE);
    return t >= h ? t - h : 0;
}

size_t kvs__ring_high_water(const kvs__ring_t *r)
{
    return __atomic_load_n(&r->high_water, __ATOMIC_RELAXED);
}

uint64_t kvs__ring_full_waits(const kvs__ring_t *r)
{
    return __atomic_load_n(&r->full_waits, __ATOMIC_RELAXED);
}

size_t kvs__ring_cap(const kvs__ring_t *r)
{
    return r->cap;
}
