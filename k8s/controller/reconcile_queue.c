/* SPDX-License-Identifier: Apache-2.0 */
/* The reconciler's work queue: pool keys, deduplicated, each due at a time, with failure
 * counts for per-key backoff. */
#include "controller_int.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct kvsc_qitem {
    struct kvsc_qitem *next;
    char *key;
    uint64_t due_ms;
    unsigned failures;
    int queued;
} kvsc_qitem_t;

struct kvsc_queue {
    pthread_mutex_t lock;
    pthread_cond_t cond; /* CLOCK_MONOTONIC */
    kvsc_qitem_t *items; /* few pools per cluster: a list is enough */
    int closed;
};

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

kvsc_status_t kvsc_queue_create(kvsc_queue_t **queue_p)
{
    kvsc_status_t status = KVSC_ERR_NO_MEMORY;
    pthread_condattr_t ca;
    kvsc_queue_t *q = calloc(1, sizeof(*q));
    if (q == NULL) {
        goto out;
    }
    if (pthread_condattr_init(&ca) != 0) {
        goto out_free;
    }
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    if (pthread_cond_init(&q->cond, &ca) != 0) {
        goto out_attr;
    }
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&q->lock, NULL);
    *queue_p = q;
    return KVSC_OK;
out_attr:
    pthread_condattr_destroy(&ca);
out_free:
    free(q);
out:
    return status;
}

void kvsc_queue_destroy(kvsc_queue_t *q)
{
    if (q == NULL) {
        return;
    }
    for (kvsc_qitem_t *it = q->items, *next; it != NULL; it = next) {
        next = it->next;
        free(it->key);
        free(it);
    }
    pthread_cond_destroy(&q->cond);
    pthread_mutex_destroy(&q->lock);
    free(q);
}

/* Under the lock. */
static kvsc_qitem_t *find(kvsc_queue_t *q, const char *key, int create)
{
    for (kvsc_qitem_t *it = q->items; it != NULL; it = it->next) {
        if (strcmp(it->key, key) == 0) {
            return it;
        }
    }
    if (!create) {
        return NULL;
    }
    kvsc_qitem_t *it = calloc(1, sizeof(*it));
    if (it == NULL) {
        return NULL;
    }
    it->key = strdup(key);
    if (it->key == NULL) {
        free(it);
        return NULL;
    }
    it->next = q->items;
    q->items = it;
    return it;
}

static kvsc_status_t add_locked(kvsc_queue_t *q, const char *key, uint64_t delay_ms, int fail)
{
    kvsc_qitem_t *it = find(q, key, 1);
    if (it == NULL) {
        return KVSC_ERR_NO_MEMORY;
    }
    uint64_t due = mono_ms() + delay_ms;
    if (!it->queued || due < it->due_ms) {
        it->due_ms = due;
    }
    it->queued = 1;
    if (fail) {
        it->failures++;
    }
    pthread_cond_broadcast(&q->cond);
    return KVSC_OK;
}

kvsc_status_t kvsc_queue_add(kvsc_queue_t *q, const char *key, uint64_t delay_ms)
{
    pthread_mutex_lock(&q->lock);
    kvsc_status_t status = add_locked(q, key, delay_ms, 0);
    pthread_mutex_unlock(&q->lock);
    return status;
}

kvsc_status_t kvsc_queue_retry(kvsc_queue_t *q, const char *key, uint64_t delay_ms)
{
    pthread_mutex_lock(&q->lock);
    kvsc_status_t status = add_locked(q, key, delay_ms, 1);
    pthread_mutex_unlock(&q->lock);
    return status;
}

unsigned kvsc_queue_failures(kvsc_queue_t *q, const char *key)
{
    pthread_mutex_lock(&q->lock);
    kvsc_qitem_t *it = find(q, key, 0);
    unsigned n = it != NULL ? it->failures : 0;
    pthread_mutex_unlock(&q->lock);
    return n;
}

void kvsc_queue_forget(kvsc_queue_t *q, const char *key)
{
    pthread_mutex_lock(&q->lock);
    for (kvsc_qitem_t **pp = &q->items; *pp != NULL; pp = &(*pp)->next) {
        kvsc_qitem_t *it = *pp;
        if (strcmp(it->key, key) != 0) {
            continue;
        }
        it->failures = 0;
        if (!it->queued) {
            /* Nothing pending: drop it so deleted pools do not pile up. */
            *pp = it->next;
            free(it->key);
            free(it);
        }
        break;
    }
    pthread_mutex_unlock(&q->lock);
}

int kvsc_queue_pop(kvsc_queue_t *q, uint64_t wait_ms, char **key_p)
{
    uint64_t deadline = mono_ms() + wait_ms;
    int rc = 0;
    pthread_mutex_lock(&q->lock);
    while (!q->closed) {
        uint64_t now = mono_ms();
        kvsc_qitem_t *best = NULL;
        for (kvsc_qitem_t *it = q->items; it != NULL; it = it->next) {
            if (it->queued && (best == NULL || it->due_ms < best->due_ms)) {
                best = it;
            }
        }
        if (best != NULL && best->due_ms <= now) {
            char *key = strdup(best->key);
            if (key == NULL) {
                rc = -1;
                break;
            }
            best->queued = 0;
            *key_p = key;
            rc = 1;
            break;
        }
        if (now >= deadline) {
            break;
        }
        uint64_t until = best != NULL && best->due_ms < deadline ? best->due_ms : deadline;
        struct timespec ts = {.tv_sec = (time_t)(until / 1000u),
                              .tv_nsec = (long)(until % 1000u) * 1000000L};
        int e = pthread_cond_timedwait(&q->cond, &q->lock, &ts);
        if (e != 0 && e != ETIMEDOUT) {
            break;
        }
    }
    pthread_mutex_unlock(&q->lock);
    return rc;
}

void kvsc_queue_close(kvsc_queue_t *q)
{
    pthread_mutex_lock(&q->lock);
    q->closed = 1;
    pthread_cond_broadcast(&q->cond);
    pthread_mutex_unlock(&q->lock);
}
