/* SPDX-License-Identifier: Apache-2.0 */
/* The reconciler's helpers: watch-stream line splitter, backoff, work queue. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <criterion/criterion.h>

#include "controller_int.h"

typedef struct {
    char lines[16][128];
    size_t n;
    size_t stop_after; /* 0: never */
} kvsc_t_sink_t;

static int sink(void *ud, char *line, size_t len)
{
    kvsc_t_sink_t *s = ud;
    cr_assert_eq(strlen(line), len, "NUL-terminated at len");
    cr_assert_lt(s->n, 16u);
    snprintf(s->lines[s->n], sizeof(s->lines[0]), "%s", line);
    s->n++;
    return s->stop_after != 0 && s->n == s->stop_after ? 7 : 0;
}

static const char kvsc_t_stream[] = "{\"type\":\"ADDED\",\"object\":{}}\n"
                                    "\r\n"
                                    "\n"
                                    "{\"type\":\"MODIFIED\"}\r\n"
                                    "{\"type\":\"BOOKMARK\"}\n"
                                    "{\"partial\":";

Test(lines, every_split_point_gives_the_same_lines)
{
    size_t len = strlen(kvsc_t_stream);
    for (size_t a = 0; a <= len; a++) {
        for (size_t b = a; b <= len; b++) {
            kvsc_lines_t l = {0};
            kvsc_t_sink_t s = {0};
            cr_assert_eq(kvsc_lines_feed(&l, kvsc_t_stream, a, sink, &s), 0);
            cr_assert_eq(kvsc_lines_feed(&l, kvsc_t_stream + a, b - a, sink, &s), 0);
            cr_assert_eq(kvsc_lines_feed(&l, kvsc_t_stream + b, len - b, sink, &s), 0);
            cr_assert_eq(s.n, 3u, "split at %zu,%zu: %zu lines", a, b, s.n);
            cr_assert_str_eq(s.lines[0], "{\"type\":\"ADDED\",\"object\":{}}");
            cr_assert_str_eq(s.lines[1], "{\"type\":\"MODIFIED\"}", "CR removed");
            cr_assert_str_eq(s.lines[2], "{\"type\":\"BOOKMARK\"}");
            cr_assert_eq(l.len, strlen("{\"partial\":"), "partial line kept");
            kvsc_t_sink_t s2 = {0};
            cr_assert_eq(kvsc_lines_feed(&l, "1}\n", 3, sink, &s2), 0);
            cr_assert_str_eq(s2.lines[0], "{\"partial\":1}");
            kvsc_lines_free(&l);
        }
    }
}

Test(lines, byte_at_a_time)
{
    kvsc_lines_t l = {0};
    kvsc_t_sink_t s = {0};
    for (size_t i = 0; i < strlen(kvsc_t_stream); i++) {
        cr_assert_eq(kvsc_lines_feed(&l, kvsc_t_stream + i, 1, sink, &s), 0);
    }
    cr_assert_eq(s.n, 3u);
    kvsc_lines_free(&l);
    kvsc_lines_free(NULL);
}

Test(lines, callback_stops_the_feed)
{
    kvsc_lines_t l = {0};
    kvsc_t_sink_t s = {.stop_after = 1};
    cr_assert_eq(kvsc_lines_feed(&l, kvsc_t_stream, strlen(kvsc_t_stream), sink, &s), 7);
    cr_assert_eq(s.n, 1u);
    kvsc_lines_free(&l);
}

Test(lines, overlong_line_is_refused)
{
    kvsc_lines_t l = {.max = 8};
    kvsc_t_sink_t s = {0};
    cr_assert_eq(kvsc_lines_feed(&l, "12345678\n", 9, sink, &s), 0);
    cr_assert_eq(s.n, 1u);
    cr_assert_eq(kvsc_lines_feed(&l, "12345", 5, sink, &s), 0);
    cr_assert_eq(kvsc_lines_feed(&l, "6789", 4, sink, &s), -2);
    kvsc_lines_free(&l);
}

Test(backoff, grows_caps_and_jitters)
{
    for (unsigned a = 0; a < 80; a++) {
        uint64_t nominal = 100;
        for (unsigned i = 0; i < a && nominal < 5000; i++) {
            nominal *= 2;
        }
        nominal = nominal > 5000 ? 5000 : nominal;
        uint64_t lo = UINT64_MAX, hi = 0;
        for (uint64_t r = 0; r < 2000; r++) {
            uint64_t d = kvsc_backoff_ms(a, 100, 5000, r * 0x9e3779b97f4a7c15ULL);
            lo = d < lo ? d : lo;
            hi = d > hi ? d : hi;
        }
        cr_assert_geq(lo, nominal / 2, "attempt %u: never below half", a);
        cr_assert_leq(hi, nominal, "attempt %u: never above nominal", a);
        cr_assert_gt(hi, lo, "attempt %u: jittered", a);
    }
    cr_assert_leq(kvsc_backoff_ms(UINT32_MAX, 100, 30000, UINT64_MAX), 30000u);
    cr_assert_eq(kvsc_backoff_ms(0, 0, 0, 12345), 0u);
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

Test(queue, dedupes_and_orders_by_due_time)
{
    kvsc_queue_t *q;
    char *key = NULL;
    cr_assert_eq(kvsc_queue_create(&q), KVSC_OK);
    cr_assert_eq(kvsc_queue_pop(q, 0, &key), 0, "empty");
    kvsc_queue_add(q, "ns/a", 0);
    kvsc_queue_add(q, "ns/a", 0);
    kvsc_queue_add(q, "ns/b", 60000);
    cr_assert_eq(kvsc_queue_pop(q, 0, &key), 1);
    cr_assert_str_eq(key, "ns/a");
    free(key);
    cr_assert_eq(kvsc_queue_pop(q, 0, &key), 0, "a was deduplicated, b not due");
    kvsc_queue_add(q, "ns/b", 0); /* an earlier due time wins */
    cr_assert_eq(kvsc_queue_pop(q, 0, &key), 1);
    cr_assert_str_eq(key, "ns/b");
    free(key);
    kvsc_queue_destroy(q);
}

Test(queue, retry_counts_failures_and_waits)
{
    kvsc_queue_t *q;
    char *key = NULL;
    cr_assert_eq(kvsc_queue_create(&q), KVSC_OK);
    cr_assert_eq(kvsc_queue_failures(q, "ns/a"), 0u);
    uint64_t t0 = now_ms();
    kvsc_queue_retry(q, "ns/a", 50);
    cr_assert_eq(kvsc_queue_failures(q, "ns/a"), 1u);
    cr_assert_eq(kvsc_queue_pop(q, 5000, &key), 1);
    cr_assert_geq(now_ms() - t0, 50u, "not before its due time");
    free(key);
    kvsc_queue_retry(q, "ns/a", 0);
    cr_assert_eq(kvsc_queue_failures(q, "ns/a"), 2u);
    kvsc_queue_forget(q, "ns/a");
    cr_assert_eq(kvsc_queue_failures(q, "ns/a"), 0u);
    cr_assert_eq(kvsc_queue_pop(q, 0, &key), 1, "forget keeps a pending key queued");
    free(key);
    kvsc_queue_forget(q, "ns/a");
    kvsc_queue_close(q);
    t0 = now_ms();
    cr_assert_eq(kvsc_queue_pop(q, 5000, &key), 0, "closed");
    cr_assert_lt(now_ms() - t0, 1000u, "a closed queue does not wait");
    kvsc_queue_destroy(q);
    kvsc_queue_destroy(NULL);
}
