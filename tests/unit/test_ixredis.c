/* SPDX-License-Identifier: Apache-2.0 */
/* test_ixredis.c - `kvshare index --redis` without a server: URLs, and an unreachable Redis
 * fails fast, is counted and never blocks (the real server: integration/index/index_redis). */
#include "ixredis_int.h"
#include "redis_test.h"

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

Test(ixredis, urls)
{
    static const char *const good[] = {"redis://127.0.0.1",    "redis://localhost:6380",
                                       "redis://[::1]:6379/2", "redis://host:1/0",
                                       "unix:/run/redis.sock", "unix:///run/redis.sock",
                                       "redis://user:pw@h:1",  "redis://:pw@h:1/3",
                                       "redis://u:p%40ss@h",   "redis://:p@ss@h",
                                       "rediss://h",           "rediss://u:p@[::1]:6380/1"};
    static const char *const bad[] = {"",
                                      "http://x",
                                      "redis://",
                                      "redis://:6379",
                                      "redis://h:0",
                                      "redis://h:65536",
                                      "redis://h:12x",
                                      "redis://user@h",
                                      "redis://:@h",
                                      "redis://:%zz@h",
                                      "redis://:%00@h",
                                      "redis://:pw@",
                                      "redis://h/db",
                                      "rediss://",
                                      "rediss://:6380",
                                      "redis:s://h",
                                      "redis://[::1",
                                      "unix:relative"};
    char why[256];
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        kvs__ixr_t *r = kvs__ixr_create(good[i], "me", 5000, NULL, false, why, sizeof(why));
        cr_assert_not_null(r, "%s: %s", good[i], why);
        kvs__ixr_destroy(r);
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        why[0] = '\0';
        cr_assert_null(kvs__ixr_create(bad[i], "me", 5000, NULL, false, why, sizeof(why)), "%s",
                       bad[i]);
        cr_assert(why[0] != '\0');
    }
    kvs__ixr_destroy(NULL);
}

Test(ixredis, unreachable_fails_fast_and_is_counted)
{
    char url[64], why[128];
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d", redis_test_free_port());
    kvs__ixr_t *r = kvs__ixr_create(url, "me", 5000, NULL, false, why, sizeof(why));
    cr_assert_not_null(r);
    kvs__ixr_w_t *w = kvs__ixr_writer_create(r);
    cr_assert_not_null(w);
    uint64_t epoch = 0, h[2] = {1, 2};
    cr_assert_eq(kvs__ixr_lease(w, "m", "p", &epoch), -1);
    kvs__ixr_store(w, "m", "p", h, 2, "GPU");
    kvs__ixr_clear(w, "m", "p");
    kvs__ixr_set_degraded(w, "m", "p", true);
    cr_assert_eq(kvs__ixr_flush(w), 0, "nothing was queued");
    kvs__ixr_score_t out[4];
    const char *only[] = {"p"};
    cr_assert_eq(kvs__ixr_score(r, "m", h, 2, only, 1, out, 4), -1);
    cr_assert_eq(kvs__ixr_score(r, "m", h, 0, NULL, 0, out, 4), 0, "no blocks: no round trip");
    cr_assert_eq(kvs__ixr_snapshot(r, NULL, NULL, NULL), -1);
    cr_assert_geq(kvs__ixr_errors(r), 2);
    kvs__ixr_writer_destroy(w);
    kvs__ixr_writer_destroy(NULL);
    kvs__ixr_destroy(r);
}
