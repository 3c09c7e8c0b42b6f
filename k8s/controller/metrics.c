/* SPDX-License-Identifier: Apache-2.0 */
/* Lock-free webhook counters and their Prometheus text exposition. */
#include "controller_int.h"

#include <limits.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Upper bounds in nanoseconds; a review normally takes tens of microseconds, and the API
 * server gives up at timeoutSeconds (at most 10 s in our manifests). */
static const uint64_t kvsc_buckets_ns[] = {
    50000,   100000,   250000,   500000,    1000000,    2500000,
    5000000, 10000000, 25000000, 100000000, 1000000000, 10000000000ULL,
};
#define KVSC_NBUCKETS (sizeof(kvsc_buckets_ns) / sizeof(kvsc_buckets_ns[0]))

struct kvsc_metrics {
    atomic_uint_fast64_t requests[KVSC_RESULT_COUNT];
    atomic_uint_fast64_t buckets[KVSC_NBUCKETS]; /* not cumulative; summed when rendered */
    atomic_uint_fast64_t duration_count;
    atomic_uint_fast64_t duration_sum_ns;
    atomic_uint_fast64_t patches;
    atomic_uint_fast64_t patch_ops;
    atomic_uint_fast64_t reloads_ok;
    atomic_uint_fast64_t reloads_failed;
    /* Set once before the server starts (the reconciler's counters); read-only after. */
    char *(*extra)(void *ud, size_t *len_p);
    void *extra_ud;
};

kvsc_status_t kvsc_metrics_create(kvsc_metrics_t **metrics_p)
{
    kvsc_metrics_t *m = calloc(1, sizeof(*m));
    if (m == NULL) {
        return KVSC_ERR_NO_MEMORY;
    }
    /* calloc's zero bytes are a valid zero for these lock-free atomics on every target we
     * build for; atomic_init keeps that explicit anyway. */
    for (size_t i = 0; i < KVSC_RESULT_COUNT; i++) {
        atomic_init(&m->requests[i], 0);
    }
    for (size_t i = 0; i < KVSC_NBUCKETS; i++) {
        atomic_init(&m->buckets[i], 0);
    }
    *metrics_p = m;
    return KVSC_OK;
}

void kvsc_metrics_destroy(kvsc_metrics_t *metrics)
{
    free(metrics);
}

void kvsc_metrics_observe(kvsc_metrics_t *m, kvsc_result_t result, uint64_t duration_ns,
                          size_t patch_ops)
{
    if ((unsigned)result >= KVSC_RESULT_COUNT) {
        result = KVSC_RESULT_ERROR;
    }
    atomic_fetch_add_explicit(&m->requests[result], 1, memory_order_relaxed);
    if (result == KVSC_RESULT_NOT_FOUND || result == KVSC_RESULT_BAD_METHOD) {
        return; /* not a review: keep them out of the latency histogram */
    }
    for (size_t i = 0; i < KVSC_NBUCKETS; i++) {
        if (duration_ns <= kvsc_buckets_ns[i]) {
            atomic_fetch_add_explicit(&m->buckets[i], 1, memory_order_relaxed);
            break;
        }
    }
    atomic_fetch_add_explicit(&m->duration_count, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&m->duration_sum_ns, duration_ns, memory_order_relaxed);
    if (result == KVSC_RESULT_PATCHED) {
        atomic_fetch_add_explicit(&m->patches, 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&m->patch_ops, patch_ops, memory_order_relaxed);
    }
}

void kvsc_metrics_set_extra(kvsc_metrics_t *m, char *(*fn)(void *ud, size_t *len_p), void *ud)
{
    m->extra = fn;
    m->extra_ud = ud;
}

void kvsc_metrics_cert_reload(kvsc_metrics_t *m, int ok)
{
    atomic_fetch_add_explicit(ok ? &m->reloads_ok : &m->reloads_failed, 1, memory_order_relaxed);
}

typedef struct {
    char *buf;
    size_t len, cap;
    int failed;
} kvsc_sbuf_t;

__attribute__((format(printf, 2, 3))) static void sb_printf(kvsc_sbuf_t *sb, const char *fmt, ...)
{
    if (sb->failed) {
        return;
    }
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(sb->buf + sb->len, sb->cap - sb->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            sb->failed = 1;
            return;
        }
        if ((size_t)n < sb->cap - sb->len) {
            sb->len += (size_t)n;
            return;
        }
        size_t cap = sb->cap * 2 + (size_t)n;
        char *b = realloc(sb->buf, cap);
        if (b == NULL) {
            sb->failed = 1;
            return;
        }
        sb->buf = b;
        sb->cap = cap;
    }
}

static uint64_t load(atomic_uint_fast64_t *a)
{
    return (uint64_t)atomic_load_explicit(a, memory_order_relaxed);
}

char *kvsc_metrics_render(kvsc_metrics_t *m, const char *version, size_t *len_p)
{
    kvsc_sbuf_t sb = {.buf = malloc(4096), .len = 0, .cap = 4096, .failed = 0};
    if (sb.buf == NULL) {
        return NULL;
    }
    sb.buf[0] = '\0';
    sb_printf(&sb,
              "# HELP kvshare_webhook_build_info Version of kvshare-controller.\n"
              "# TYPE kvshare_webhook_build_info gauge\n"
              "kvshare_webhook_build_info{version=\"%s\"} 1\n",
              version);
    sb_printf(&sb, "# HELP kvshare_webhook_requests_total Requests to /mutate (and unknown "
                   "paths or methods) by result.\n"
                   "# TYPE kvshare_webhook_requests_total counter\n");
    for (unsigned i = 0; i < KVSC_RESULT_COUNT; i++) {
        sb_printf(&sb, "kvshare_webhook_requests_total{result=\"%s\"} %llu\n",
                  kvsc_result_name((kvsc_result_t)i), (unsigned long long)load(&m->requests[i]));
    }
    sb_printf(&sb, "# HELP kvshare_webhook_review_duration_seconds Time from request headers "
                   "to queued response for /mutate.\n"
                   "# TYPE kvshare_webhook_review_duration_seconds histogram\n");
    uint64_t cum = 0;
    for (size_t i = 0; i < KVSC_NBUCKETS; i++) {
        cum += load(&m->buckets[i]);
        sb_printf(&sb, "kvshare_webhook_review_duration_seconds_bucket{le=\"%g\"} %llu\n",
                  (double)kvsc_buckets_ns[i] / 1e9, (unsigned long long)cum);
    }
    /* Read count once and use it for +Inf so the histogram stays self-consistent. */
    uint64_t count = load(&m->duration_count);
    sb_printf(&sb,
              "kvshare_webhook_review_duration_seconds_bucket{le=\"+Inf\"} %llu\n"
              "kvshare_webhook_review_duration_seconds_sum %.9f\n"
              "kvshare_webhook_review_duration_seconds_count %llu\n",
              (unsigned long long)(count > cum ? count : cum),
              (double)load(&m->duration_sum_ns) / 1e9,
              (unsigned long long)(count > cum ? count : cum));
    sb_printf(&sb,
              "# HELP kvshare_webhook_patches_total Patches emitted (dry runs not counted).\n"
              "# TYPE kvshare_webhook_patches_total counter\n"
              "kvshare_webhook_patches_total %llu\n"
              "# HELP kvshare_webhook_patch_operations_total JSON Patch operations emitted.\n"
              "# TYPE kvshare_webhook_patch_operations_total counter\n"
              "kvshare_webhook_patch_operations_total %llu\n",
              (unsigned long long)load(&m->patches), (unsigned long long)load(&m->patch_ops));
    sb_printf(&sb,
              "# HELP kvshare_webhook_cert_reloads_total TLS certificate reloads by result.\n"
              "# TYPE kvshare_webhook_cert_reloads_total counter\n"
              "kvshare_webhook_cert_reloads_total{result=\"ok\"} %llu\n"
              "kvshare_webhook_cert_reloads_total{result=\"failed\"} %llu\n",
              (unsigned long long)load(&m->reloads_ok),
              (unsigned long long)load(&m->reloads_failed));
    if (m->extra != NULL && !sb.failed) {
        size_t xlen = 0;
        char *x = m->extra(m->extra_ud, &xlen);
        if (x == NULL || xlen > (size_t)INT_MAX) {
            sb.failed = 1;
        } else {
            sb_printf(&sb, "%.*s", (int)xlen, x);
        }
        free(x);
    }
    if (sb.failed) {
        free(sb.buf);
        return NULL;
    }
    *len_p = sb.len;
    return sb.buf;
}
