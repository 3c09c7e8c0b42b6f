/* SPDX-License-Identifier: Apache-2.0 */
/* test_peer.c - the peer protocol between two contexts of one process, over the loopback transport.
 *
 * The bootstrap handshake runs over real TCP on 127.0.0.1; data moves over
 * the in-process loopback transport ("loop": GET; "loop-am": the holder
 * pushes). No UCX involved: this is the protocol's own unit test. */
#include "boot_int.h"
#include "kvs_test.h"
#include "proto_int.h"

#include <criterion/criterion.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static char tok_a[64], tok_b[64];

static void write_token(char *path, const char *secret)
{
    snprintf(path, 64, "/tmp/kvs-peer-tok-XXXXXX");
    int fd = mkstemp(path);
    cr_assert(fd >= 0);
    cr_assert_eq(write(fd, secret, strlen(secret)), (ssize_t)strlen(secret));
    fchmod(fd, 0600);
    close(fd);
}

static void setup(void)
{
    write_token(tok_a, "the-shared-secret\n");
    write_token(tok_b, "another-secret");
}

static void teardown(void)
{
    unlink(tok_a);
    unlink(tok_b);
}

TestSuite(peer, .init = setup, .fini = teardown, .timeout = 60);

/* A JSON config file every context of this test reads (NULL: none). Each
 * test runs in its own process. */
static const char *cfg_file;

static kvs_ctx_h make_ctx(const char *transport, bool listen, const char *token, int pool_node,
                          uint32_t lease_ms)
{
    static char err[512];
    kvs_ctx_params_t p = {.field_mask = KVS_CTX_FIELD_NO_ENV | KVS_CTX_FIELD_TRANSPORT |
                                        KVS_CTX_FIELD_CAPACITY | KVS_CTX_FIELD_ERRBUF |
                                        KVS_CTX_FIELD_POOL_NODE | KVS_CTX_FIELD_FETCH_TIMEOUT,
                          .transport = transport,
                          .capacity_bytes = 64u << 20,
                          .errbuf = err,
                          .errbuf_len = sizeof(err),
                          .pool_node = pool_node,
                          .fetch_timeout_ms = 5000};
    if (getenv("TEST_PEER_DEBUG") != NULL) {
        p.field_mask |= KVS_CTX_FIELD_LOG_LEVEL;
        p.log_level = KVS_LOG_DEBUG;
    }
    if (listen) {
        p.field_mask |= KVS_CTX_FIELD_LISTEN;
        p.listen = "127.0.0.1:0";
    }
    if (token != NULL) {
        p.field_mask |= KVS_CTX_FIELD_AUTH_TOKEN_FILE;
        p.auth_token_file = token;
    }
    if (lease_ms > 0) {
        p.field_mask |= KVS_CTX_FIELD_LEASE_TIMEOUT;
        p.lease_timeout_ms = lease_ms;
    }
    if (cfg_file != NULL) {
        p.field_mask |= KVS_CTX_FIELD_CONFIG_FILE;
        p.config_file = cfg_file;
    }
    kvs_ctx_h ctx = NULL;
    cr_assert_eq(kvs_ctx_create(&p, &ctx), KVS_OK, "kvs_ctx_create: %s", err);
    return ctx;
}

typedef struct pair {
    kvs_ctx_h a, b;
    test_pool_t pa, pb;
    char addr[300];
    kvs_key_t keys[64];
    uint32_t ids[64];
} pair_t;

/* A holder (a) with @n published blocks and a requester (b). */
static void pair_init(pair_t *pr, const char *transport, const char *token_b, uint32_t n,
                      uint32_t lease_ms)
{
    memset(pr, 0, sizeof(*pr));
    pr->a = make_ctx(transport, true, tok_a, 0, lease_ms);
    pr->b = make_ctx(transport, false, token_b, 0, 0);
    cr_assert_eq(kvs_ctx_listen_addr(pr->a, pr->addr, sizeof(pr->addr)), KVS_OK);
    test_pool_init(&pr->pa, pr->a, "m", 64, 3, 1024);
    test_pool_init(&pr->pb, pr->b, "m", 64, 3, 1024);
    for (uint32_t i = 0; i < n; i++) {
        pr->keys[i] = test_key(1000 + i);
        pr->ids[i] = (i * 7) % 64; /* scattered on the holder */
        test_fill_block(&pr->pa, pr->ids[i], 500 + i);
    }
    size_t pub = 0;
    cr_assert_eq(kvs_publish(pr->pa.pool, pr->keys, pr->ids, n, 0, &pub), KVS_OK);
    cr_assert_eq(pub, n);
}

static void pair_fini(pair_t *pr)
{
    test_pool_free(&pr->pa);
    test_pool_free(&pr->pb);
    kvs_ctx_destroy(pr->b);
    kvs_ctx_destroy(pr->a);
}

static kvs_status_t peer_lookup(pair_t *pr, uint32_t n, uint32_t lease_ms, kvs_lease_h *l)
{
    kvs_lookup_params_t lp = {.field_mask = KVS_LOOKUP_FIELD_SOURCES | KVS_LOOKUP_FIELD_PEER |
                                            KVS_LOOKUP_FIELD_LEASE_MS,
                              .sources = KVS_SOURCE_PEER,
                              .peer = pr->addr,
                              .lease_ms = lease_ms};
    return kvs_lookup(pr->b, kvs_pool_layout_id(pr->pb.pool), pr->keys, n, &lp, l);
}

static void fetch_all_and_check(pair_t *pr, uint32_t n)
{
    kvs_lease_h l = NULL;
    kvs_status_t s = peer_lookup(pr, n, 0, &l);
    cr_assert_eq(s, KVS_OK, "lookup: %s", kvs_status_string(s));
    cr_assert_eq(kvs_lease_hits(l), n);
    uint32_t dst[64];
    for (uint32_t i = 0; i < n; i++)
        dst[i] = 63 - i;
    kvs_request_h rq = NULL;
    cr_assert_eq(kvs_fetch(l, pr->pb.pool, dst, n, NULL, &rq), KVS_OK);
    cr_assert_eq(kvs_request_wait(rq, 10000), KVS_OK);
    kvs_request_free(rq);
    for (uint32_t i = 0; i < n; i++)
        cr_assert(test_block_is(&pr->pb, dst[i], 500 + i), "block %u differs", i);
    kvs_lease_release(l);
}

Test(peer, get_path_moves_every_byte)
{
    pair_t pr;
    pair_init(&pr, "loop", tok_a, 40, 0);
    fetch_all_and_check(&pr, 40);
    kvs_stats_t st = {.field_mask = KVS_STATS_FIELD_PEERS};
    cr_assert_eq(kvs_stats_query(pr.b, &st), KVS_OK);
    cr_assert_eq(st.peers, 1);
    pair_fini(&pr);
}

Test(peer, push_path_moves_every_byte)
{
    pair_t pr;
    pair_init(&pr, "loop-am", tok_a, 40, 0);
    fetch_all_and_check(&pr, 40);
    fetch_all_and_check(&pr, 40); /* again, on the same session */
    pair_fini(&pr);
}

/* Connecting ahead of the first request: the lookups after it reuse that
 * one connection; a background connect and a lookup racing it make one. */
Test(peer, connect_ahead_makes_the_one_connection_requests_use)
{
    pair_t pr;
    pair_init(&pr, "loop", tok_a, 8, 0);
    uint64_t layout = kvs_pool_layout_id(pr.pb.pool);
    const kvs_connect_params_t bg = {.field_mask = KVS_CONNECT_FIELD_FLAGS,
                                     .flags = KVS_CONNECT_BACKGROUND};
    kvs_status_t st = kvs_peer_connect(pr.b, layout, pr.addr, &bg);
    cr_assert(st == KVS_INPROGRESS || st == KVS_OK, "%s", kvs_status_string(st));
    fetch_all_and_check(&pr, 8); /* waits for that connect, makes no other */
    kvs_stats_t ps = {.field_mask = KVS_STATS_FIELD_PEERS};
    cr_assert_eq(kvs_stats_query(pr.b, &ps), KVS_OK);
    cr_assert_eq(ps.peers, 1);
    /* Connected already: both forms answer at once. */
    cr_assert_eq(kvs_peer_connect(pr.b, layout, pr.addr, &bg), KVS_OK);
    cr_assert_eq(kvs_peer_connect(pr.b, layout, pr.addr, NULL), KVS_OK);
    cr_assert_eq(kvs_stats_query(pr.b, &ps), KVS_OK);
    cr_assert_eq(ps.peers, 1);
    ps.field_mask = KVS_STATS_FIELD_PEERS;
    cr_assert_eq(kvs_stats_query(pr.a, &ps), KVS_OK);
    cr_assert_eq(ps.peers, 1, "the holder saw more than one connection");
    fetch_all_and_check(&pr, 8);
    pair_fini(&pr);
}

Test(peer, connect_refuses_bad_input_and_reports_failures)
{
    pair_t pr;
    pair_init(&pr, "loop", tok_a, 1, 0);
    uint64_t layout = kvs_pool_layout_id(pr.pb.pool);
    const kvs_connect_params_t odd = {.field_mask = KVS_CONNECT_FIELD_FLAGS, .flags = 1u << 7};
    cr_assert_eq(kvs_peer_connect(NULL, layout, pr.addr, NULL), KVS_ERR_INVALID_PARAM);
    cr_assert_eq(kvs_peer_connect(pr.b, layout, NULL, NULL), KVS_ERR_INVALID_PARAM);
    cr_assert_eq(kvs_peer_connect(pr.b, layout, "", NULL), KVS_ERR_INVALID_PARAM);
    cr_assert_eq(kvs_peer_connect(pr.b, layout, pr.addr, &odd), KVS_ERR_INVALID_PARAM);
    char longname[400];
    memset(longname, 'a', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = '\0';
    cr_assert_eq(kvs_peer_connect(pr.b, layout, longname, NULL), KVS_ERR_INVALID_PARAM);
    cr_assert_eq(kvs_peer_connect(pr.b, layout, "not-an-address", NULL), KVS_ERR_INVALID_PARAM);
    /* Nobody listens there (the port of a socket we close at once). */
    char dead[64];
    {
        kvs_ctx_h tmp = make_ctx("loop", true, tok_a, 0, 0);
        cr_assert_eq(kvs_ctx_listen_addr(tmp, dead, sizeof(dead)), KVS_OK);
        kvs_ctx_destroy(tmp);
    }
    kvs_status_t st = kvs_peer_connect(pr.b, layout, dead, NULL);
    cr_assert(st == KVS_ERR_PEER_FAILED || st == KVS_ERR_TIMED_OUT, "%s", kvs_status_string(st));
    /* In the background the failure shows at the next request, and the
     * context still ends cleanly with it behind. */
    const kvs_connect_params_t bg = {.field_mask =
                                         KVS_CONNECT_FIELD_FLAGS | KVS_CONNECT_FIELD_TIMEOUT_MS,
                                     .timeout_ms = 500,
                                     .flags = KVS_CONNECT_BACKGROUND};
    st = kvs_peer_connect(pr.b, layout, dead, &bg);
    cr_assert(st == KVS_INPROGRESS || st == KVS_OK, "%s", kvs_status_string(st));
    /* A wrong secret is refused in the background too, and leaves nothing. */
    kvs_ctx_h other = make_ctx("loop", false, tok_b, 0, 0);
    st = kvs_peer_connect(other, layout, pr.addr, NULL);
    cr_assert_eq(st, KVS_ERR_AUTH, "%s", kvs_status_string(st));
    kvs_ctx_destroy(other);
    pair_fini(&pr);
}

Test(peer, wrong_or_missing_secret_is_refused)
{
    pair_t pr;
    pair_init(&pr, "loop", tok_b, 4, 0);
    kvs_lease_h l = NULL;
    cr_assert_eq(peer_lookup(&pr, 4, 0, &l), KVS_ERR_AUTH);
    kvs_stats_t st = {.field_mask = KVS_STATS_FIELD_PEERS};
    cr_assert_eq(kvs_stats_query(pr.a, &st), KVS_OK);
    cr_assert_eq(st.peers, 0, "the holder kept an unauthenticated peer");
    pair_fini(&pr);
}

Test(peer, other_layout_is_refused_by_name)
{
    pair_t pr;
    pair_init(&pr, "loop", tok_a, 4, 0);
    test_pool_t other;
    test_pool_init(&other, pr.b, "another-model", 8, 1, 1024);
    kvs_lookup_params_t lp = {.field_mask = KVS_LOOKUP_FIELD_SOURCES | KVS_LOOKUP_FIELD_PEER,
                              .sources = KVS_SOURCE_PEER,
                              .peer = pr.addr};
    kvs_lease_h l = NULL;
    kvs_status_t s = kvs_lookup(pr.b, kvs_pool_layout_id(other.pool), pr.keys, 4, &lp, &l);
    cr_assert(s == KVS_ERR_LAYOUT_MISMATCH || (s == KVS_OK && kvs_lease_hits(l) == 0), "got %s",
              kvs_status_string(s));
    kvs_lease_release(l);
    test_pool_free(&other);
    pair_fini(&pr);
}

/* A lease the requester never releases ends at its deadline on the holder. */
Test(peer, server_leases_expire_at_their_deadline)
{
    pair_t pr;
    pair_init(&pr, "loop", tok_a, 8, 300);
    kvs_lease_h l = NULL;
    cr_assert_eq(peer_lookup(&pr, 8, 300, &l), KVS_OK);
    cr_assert_eq(kvs_lease_hits(l), 8);
    kvs_stats_t st = {0};
    cr_assert_eq(kvs_stats_query(pr.a, &st), KVS_OK);
    cr_assert_eq(st.leased_blocks, 8);
    uint64_t deadline = kvs__now_ms() + 5000;
    do {
        usleep(20000);
        cr_assert_eq(kvs_stats_query(pr.a, &st), KVS_OK);
    } while (st.leased_blocks != 0 && kvs__now_ms() < deadline);
    cr_assert_eq(st.leased_blocks, 0, "lease still held after its deadline");
    kvs_lease_release(l); /* RELEASE of an expired lease is harmless */
    pair_fini(&pr);
}

/* A loop pair whose holder publishes four zero-copy blocks @zc, keys
 * test_key(key0 + i), contents tagged fill0 + i (the reader-count tests). */
static void pair_publish_four(pair_t *pr, const uint32_t zc[4], uint64_t key0, uint64_t fill0)
{
    pair_init(pr, "loop", tok_a, 0, 300);
    for (uint32_t i = 0; i < 4; i++) {
        pr->keys[i] = test_key(key0 + i);
        test_fill_block(&pr->pa, zc[i], fill0 + i);
    }
    cr_assert_eq(kvs_publish(pr->pa.pool, pr->keys, zc, 4, KVS_PUBLISH_ZERO_COPY, NULL), KVS_OK);
}

/* kvs_pool_reads: a reader's RELEASE counts on the holder's zero-copy
 * blocks; a lease left to expire does not, and republishing starts over. */
Test(peer, reads_count_released_leases_only)
{
    pair_t pr;
    uint32_t zc[4] = {40, 41, 42, 43};
    pair_publish_four(&pr, zc, 7000, 900);
    uint32_t reads[4];
    cr_assert_eq(kvs_pool_reads(pr.pa.pool, zc, 4, reads), KVS_OK);
    for (int i = 0; i < 4; i++)
        cr_assert_eq(reads[i], 0);

    /* Two keys leased and left to expire: no read. */
    kvs_lease_h l = NULL;
    cr_assert_eq(peer_lookup(&pr, 2, 300, &l), KVS_OK);
    cr_assert_eq(kvs_lease_hits(l), 2);
    kvs_stats_t st = {0};
    uint64_t deadline = kvs__now_ms() + 5000;
    do {
        usleep(20000);
        cr_assert_eq(kvs_stats_query(pr.a, &st), KVS_OK);
    } while (st.leased_blocks != 0 && kvs__now_ms() < deadline);
    cr_assert_eq(st.leased_blocks, 0);
    cr_assert_eq(kvs_pool_reads(pr.pa.pool, zc, 4, reads), KVS_OK);
    cr_assert_eq(reads[0] + reads[1], 0, "an expired lease counted as a read");
    kvs_lease_release(l);

    /* All four fetched and released: one read each (the RELEASE is async,
     * so poll for it). */
    l = NULL;
    cr_assert_eq(peer_lookup(&pr, 4, 0, &l), KVS_OK);
    cr_assert_eq(kvs_lease_hits(l), 4);
    uint32_t dst[4] = {0, 1, 2, 3};
    kvs_request_h rq = NULL;
    cr_assert_eq(kvs_fetch(l, pr.pb.pool, dst, 4, NULL, &rq), KVS_OK);
    cr_assert_eq(kvs_request_wait(rq, 10000), KVS_OK);
    kvs_request_free(rq);
    kvs_lease_release(l);
    deadline = kvs__now_ms() + 5000;
    do {
        usleep(10000);
        cr_assert_eq(kvs_pool_reads(pr.pa.pool, zc, 4, reads), KVS_OK);
    } while (reads[3] == 0 && kvs__now_ms() < deadline);
    for (int i = 0; i < 4; i++)
        cr_assert_eq(reads[i], 1, "block %d: %u reads", i, reads[i]);

    /* Republished blocks start from zero; bad ids are refused. */
    cr_assert_eq(kvs_unpublish(pr.pa.pool, zc, 4, 0), KVS_OK);
    cr_assert_eq(kvs_publish(pr.pa.pool, pr.keys, zc, 4, KVS_PUBLISH_ZERO_COPY, NULL), KVS_OK);
    cr_assert_eq(kvs_pool_reads(pr.pa.pool, zc, 4, reads), KVS_OK);
    cr_assert_eq(reads[0], 0);
    uint32_t bad = 64;
    cr_assert_eq(kvs_pool_reads(pr.pa.pool, &bad, 1, reads), KVS_ERR_INVALID_PARAM);
    pair_fini(&pr);
}

/* A lease on memory the holder has let go since (its pool replaced) is
 * stale, even once a later lookup's region table made us forget that
 * memory: KVS_ERR_STALE (look up again), not a protocol error, and the
 * connection keeps serving the new lease. */
Test(peer, a_lease_on_memory_the_holder_let_go_is_stale)
{
    pair_t pr;
    pair_init(&pr, "loop", tok_a, 0, 300);
    for (uint32_t i = 0; i < 4; i++) { /* zero-copy: the blocks live in the pool's memory */
        pr.keys[i] = test_key(1000 + i);
        pr.ids[i] = 20 + i;
        test_fill_block(&pr.pa, pr.ids[i], 500 + i);
    }
    cr_assert_eq(kvs_publish(pr.pa.pool, pr.keys, pr.ids, 4, KVS_PUBLISH_ZERO_COPY, NULL), KVS_OK);
    kvs_lease_h old = NULL;
    cr_assert_eq(peer_lookup(&pr, 4, 0, &old), KVS_OK);
    cr_assert_eq(kvs_lease_hits(old), 4);
    /* The holder's pool goes (after the 300 ms lease) and another takes
     * its place, with new bytes under the same keys. */
    test_pool_free(&pr.pa);
    test_pool_init(&pr.pa, pr.a, "m", 64, 3, 1024);
    for (uint32_t i = 0; i < 4; i++)
        test_fill_block(&pr.pa, pr.ids[i], 600 + i);
    cr_assert_eq(kvs_publish(pr.pa.pool, pr.keys, pr.ids, 4, KVS_PUBLISH_ZERO_COPY, NULL), KVS_OK);
    kvs_lease_h now = NULL;
    cr_assert_eq(peer_lookup(&pr, 4, 0, &now), KVS_OK); /* brings the new region table */
    cr_assert_eq(kvs_lease_hits(now), 4);
    uint32_t dst[4] = {10, 11, 12, 13};
    kvs_request_h rq = NULL;
    cr_assert_eq(kvs_fetch(old, pr.pb.pool, dst, 4, NULL, &rq), KVS_OK);
    kvs_status_t st = kvs_request_wait(rq, 10000);
    cr_assert_eq(st, KVS_ERR_STALE, "a fetch from memory the holder let go: %s",
                 kvs_status_string(st));
    kvs_request_free(rq);
    kvs_lease_release(old);
    rq = NULL;
    cr_assert_eq(kvs_fetch(now, pr.pb.pool, dst, 4, NULL, &rq), KVS_OK);
    st = kvs_request_wait(rq, 10000);
    cr_assert_eq(st, KVS_OK, "the new lease after a stale one: %s", kvs_status_string(st));
    kvs_request_free(rq);
    for (uint32_t i = 0; i < 4; i++)
        cr_assert(test_block_is(&pr.pb, dst[i], 600 + i), "block %u differs", i);
    kvs_lease_release(now);
    pair_fini(&pr);
}

/* A peer lookup of the first @n keys announcing @readers (0: not said),
 * fetched whole and released; returns once the holder counted the read. */
static void read_announcing(pair_t *pr, uint32_t n, uint32_t readers, const uint32_t *zc,
                            uint32_t reads_before)
{
    kvs_lookup_params_t lp = {.field_mask = KVS_LOOKUP_FIELD_SOURCES | KVS_LOOKUP_FIELD_PEER |
                                            KVS_LOOKUP_FIELD_READERS,
                              .sources = KVS_SOURCE_PEER,
                              .peer = pr->addr,
                              .readers = readers};
    kvs_lease_h l = NULL;
    cr_assert_eq(kvs_lookup(pr->b, kvs_pool_layout_id(pr->pb.pool), pr->keys, n, &lp, &l), KVS_OK);
    cr_assert_eq(kvs_lease_hits(l), n);
    uint32_t dst[4] = {0, 1, 2, 3};
    kvs_request_h rq = NULL;
    cr_assert_eq(kvs_fetch(l, pr->pb.pool, dst, n, NULL, &rq), KVS_OK);
    cr_assert_eq(kvs_request_wait(rq, 10000), KVS_OK);
    kvs_request_free(rq);
    kvs_lease_release(l);
    uint32_t reads = 0;
    uint64_t deadline = kvs__now_ms() + 5000;
    do {
        usleep(5000);
        cr_assert_eq(kvs_pool_readers(pr->pa.pool, &zc[n - 1], 1, &reads, NULL), KVS_OK);
    } while (reads == reads_before && kvs__now_ms() < deadline);
    cr_assert_eq(reads, reads_before + 1, "the RELEASE was not counted");
}

/* kvs_pool_readers: each RELEASE carries how many readers the reader says
 * read these blocks (P/D, several decode ranks per prefill rank); the
 * holder keeps the largest, so a producer frees after the last of them. */
Test(peer, release_announces_the_readers_to_expect)
{
    pair_t pr;
    uint32_t zc[4] = {40, 41, 42, 43};
    pair_publish_four(&pr, zc, 7100, 700);
    uint32_t reads[4], expected[4];
    cr_assert_eq(kvs_pool_readers(pr.pa.pool, zc, 4, reads, expected), KVS_OK);
    for (int i = 0; i < 4; i++)
        cr_assert(reads[i] == 0 && expected[i] == 0);

    /* The first of three readers: one read, three expected, on every block
     * it read (and only those). */
    read_announcing(&pr, 3, 3, zc, 0);
    cr_assert_eq(kvs_pool_readers(pr.pa.pool, zc, 4, reads, expected), KVS_OK);
    for (int i = 0; i < 3; i++)
        cr_assert(reads[i] == 1 && expected[i] == 3, "block %d: %u of %u", i, reads[i],
                  expected[i]);
    cr_assert(reads[3] == 0 && expected[3] == 0);
    /* A reader saying fewer, and one saying nothing, never lower it. */
    read_announcing(&pr, 3, 2, zc, 1);
    read_announcing(&pr, 3, 0, zc, 2);
    cr_assert_eq(kvs_pool_readers(pr.pa.pool, zc, 4, reads, expected), KVS_OK);
    cr_assert(reads[2] == 3 && expected[2] == 3, "%u of %u", reads[2], expected[2]);
    /* kvs_pool_reads() is the same count. */
    cr_assert_eq(kvs_pool_reads(pr.pa.pool, zc, 4, reads), KVS_OK);
    cr_assert_eq(reads[2], 3);

    /* Republished blocks start over; bad arguments are refused. */
    cr_assert_eq(kvs_unpublish(pr.pa.pool, zc, 4, 0), KVS_OK);
    cr_assert_eq(kvs_publish(pr.pa.pool, pr.keys, zc, 4, KVS_PUBLISH_ZERO_COPY, NULL), KVS_OK);
    cr_assert_eq(kvs_pool_readers(pr.pa.pool, zc, 4, reads, expected), KVS_OK);
    cr_assert(reads[0] == 0 && expected[0] == 0);
    uint32_t bad = 64;
    cr_assert_eq(kvs_pool_readers(pr.pa.pool, &bad, 1, reads, expected), KVS_ERR_INVALID_PARAM);
    cr_assert_eq(kvs_pool_readers(NULL, zc, 1, reads, expected), KVS_ERR_INVALID_PARAM);
    cr_assert_eq(kvs_pool_readers(pr.pa.pool, zc, 1, NULL, expected), KVS_ERR_INVALID_PARAM);
    kvs_lookup_params_t lp = {.field_mask = KVS_LOOKUP_FIELD_SOURCES | KVS_LOOKUP_FIELD_PEER |
                                            KVS_LOOKUP_FIELD_READERS,
                              .sources = KVS_SOURCE_PEER,
                              .peer = pr.addr,
                              .readers = KVS_LOOKUP_MAX_READERS + 1};
    kvs_lease_h l = (kvs_lease_h)&lp; /* must stay unwritten */
    cr_assert_eq(kvs_lookup(pr.b, kvs_pool_layout_id(pr.pb.pool), pr.keys, 1, &lp, &l),
                 KVS_ERR_INVALID_PARAM);
    cr_assert_eq(l, (kvs_lease_h)&lp);
    pair_fini(&pr);
}

/* Garbage on the bootstrap port, silent connections and a half-sent
 * handshake: the holder keeps serving. */
Test(peer, bootstrap_garbage_and_silence_do_not_stop_serving)
{
    pair_t pr;
    pair_init(&pr, "loop", tok_a, 8, 0);
    int silent[200];
    for (int i = 0; i < 200; i++) {
        kvs_status_t st;
        silent[i] = kvs__boot_connect(pr.addr, kvs__now_ns() + 2000000000ull, &st);
        cr_assert(silent[i] >= 0);
    }
    for (int i = 0; i < 20; i++) {
        kvs_status_t st;
        int fd = kvs__boot_connect(pr.addr, kvs__now_ns() + 2000000000ull, &st);
        cr_assert(fd >= 0);
        uint8_t junk[300];
        for (size_t k = 0; k < sizeof(junk); k++)
            junk[k] = (uint8_t)(k * 31 + (size_t)i);
        if (i % 2 == 0)
            memcpy(junk, "KVSH", 4); /* right magic, garbage after it */
        kvs__boot_send(fd, junk, sizeof(junk), kvs__now_ns() + 1000000000ull);
        close(fd);
    }
    fetch_all_and_check(&pr, 8);
    for (int i = 0; i < 200; i++)
        close(silent[i]);
    pair_fini(&pr);
}

/* A client of the pool node at @addr, with puts and fetches timing out
 * after @timeout_ms (0: the default). */
static kvs_ctx_h make_client(const char *transport, const char *addr, uint32_t timeout_ms)
{
    static char err[256];
    kvs_ctx_params_t p = {.field_mask = KVS_CTX_FIELD_NO_ENV | KVS_CTX_FIELD_TRANSPORT |
                                        KVS_CTX_FIELD_POOL | KVS_CTX_FIELD_AUTH_TOKEN_FILE |
                                        KVS_CTX_FIELD_ERRBUF,
                          .transport = transport,
                          .pool = addr,
                          .auth_token_file = tok_a,
                          .errbuf = err,
                          .errbuf_len = sizeof(err)};
    if (timeout_ms > 0) {
        p.field_mask |= KVS_CTX_FIELD_FETCH_TIMEOUT;
        p.fetch_timeout_ms = timeout_ms;
    }
    kvs_ctx_h cl = NULL;
    cr_assert_eq(kvs_ctx_create(&p, &cl), KVS_OK, "%s", err);
    return cl;
}

/* Offload into a pool node: blocks land only when every piece arrived.
 * "loop" has RMA: the node pulls (GET into arena slots); "loop-am" does
 * not: the client pushes. */
static void put_round_trip(const char *transport)
{
    kvs_ctx_h node = make_ctx(transport, true, tok_a, 1, 0);
    char addr[300];
    cr_assert_eq(kvs_ctx_listen_addr(node, addr, sizeof(addr)), KVS_OK);
    kvs_ctx_h cl = make_client(transport, addr, 0);
    test_pool_t src, dst;
    test_pool_init(&src, cl, "m", 16, 2, 4096);
    test_pool_init(&dst, cl, "m", 16, 2, 4096);
    kvs_key_t keys[8];
    uint32_t ids[8];
    for (uint32_t i = 0; i < 8; i++) {
        keys[i] = test_key(77 + i);
        ids[i] = 15 - i;
        test_fill_block(&src, ids[i], 900 + i);
    }
    kvs_request_h rq = NULL;
    kvs_put_params_t pp = {.field_mask = KVS_PUT_FIELD_TIMEOUT_MS, .timeout_ms = 10000};
    cr_assert_eq(kvs_put_ex(src.pool, keys, ids, 8, &pp, &rq), KVS_OK);
    cr_assert_eq(kvs_request_wait(rq, 10000), KVS_OK);
    kvs_request_free(rq);
    kvs_stats_t st = {0};
    cr_assert_eq(kvs_stats_query(node, &st), KVS_OK);
    cr_assert_eq(st.blocks, 8);
    /* And back from the pool. */
    kvs_lookup_params_t lp = {.field_mask = KVS_LOOKUP_FIELD_SOURCES, .sources = KVS_SOURCE_POOL};
    kvs_lease_h l = NULL;
    cr_assert_eq(kvs_lookup(cl, kvs_pool_layout_id(dst.pool), keys, 8, &lp, &l), KVS_OK);
    cr_assert_eq(kvs_lease_hits(l), 8);
    uint32_t d[8] = {0, 1, 2, 3, 4, 5, 6, 7};
    cr_assert_eq(kvs_fetch(l, dst.pool, d, 8, NULL, &rq), KVS_OK);
    cr_assert_eq(kvs_request_wait(rq, 10000), KVS_OK);
    kvs_request_free(rq);
    kvs_lease_release(l);
    for (uint32_t i = 0; i < 8; i++)
        cr_assert(test_block_is(&dst, i, 900 + i));
    test_pool_free(&src);
    test_pool_free(&dst);
    kvs_ctx_destroy(cl);
    kvs_ctx_destroy(node);
}

Test(peer, put_into_a_pool_node_by_pull)
{
    put_round_trip("loop");
}

Test(peer, put_into_a_pool_node_by_push)
{
    put_round_trip("loop-am");
}

/* A pull put large enough for several batches, each its own PUT. */
Test(peer, pull_put_in_batches_stores_every_block)
{
    kvs_ctx_h node = make_ctx("loop", true, tok_a, 1, 0);
    char addr[300];
    cr_assert_eq(kvs_ctx_listen_addr(node, addr, sizeof(addr)), KVS_OK);
    kvs_ctx_h cl = make_client("loop", addr, 0);
    test_pool_t src, dst;
    test_pool_init(&src, cl, "m", 256, 3, 512);
    test_pool_init(&dst, cl, "m", 256, 3, 512);
    kvs_key_t keys[200];
    uint32_t ids[200];
    for (uint32_t i = 0; i < 200; i++) {
        keys[i] = test_key(5000 + i);
        ids[i] = (i * 37) % 256; /* scattered */
        test_fill_block(&src, ids[i], 70000 + i);
    }
    kvs_request_h rq = NULL;
    cr_assert_eq(kvs_put_ex(src.pool, keys, ids, 200, NULL, &rq), KVS_OK);
    cr_assert_eq(kvs_request_wait(rq, 10000), KVS_OK);
    kvs_request_free(rq);
    kvs_stats_t st = {0};
    cr_assert_eq(kvs_stats_query(node, &st), KVS_OK);
    cr_assert_eq(st.blocks, 200);
    /* Offered again: the node keeps what it has, reads nothing. */
    cr_assert_eq(kvs_put_ex(src.pool, keys, ids, 200, NULL, &rq), KVS_OK);
    cr_assert_eq(kvs_request_wait(rq, 10000), KVS_OK);
    kvs_request_free(rq);
    cr_assert_eq(kvs_stats_query(node, &st), KVS_OK);
    cr_assert_eq(st.blocks, 200);
    kvs_lookup_params_t lp = {.field_mask = KVS_LOOKUP_FIELD_SOURCES, .sources = KVS_SOURCE_POOL};
    kvs_lease_h l = NULL;
    cr_assert_eq(kvs_lookup(cl, kvs_pool_layout_id(dst.pool), keys, 200, &lp, &l), KVS_OK);
    cr_assert_eq(kvs_lease_hits(l), 200);
    uint32_t d[200];
    for (uint32_t i = 0; i < 200; i++)
        d[i] = 255 - i;
    cr_assert_eq(kvs_fetch(l, dst.pool, d, 200, NULL, &rq), KVS_OK);
    cr_assert_eq(kvs_request_wait(rq, 10000), KVS_OK);
    kvs_request_free(rq);
    kvs_lease_release(l);
    for (uint32_t i = 0; i < 200; i++)
        cr_assert(test_block_is(&dst, d[i], 70000 + i), "block %u differs", i);
    test_pool_free(&src);
    test_pool_free(&dst);
    kvs_ctx_destroy(cl);
    kvs_ctx_destroy(node);
}

/* More puts in flight at once than the node takes from one connection
 * (KVS_PEER_MAX_PUTS, 16: it refuses more BUSY): 40 requests of two batches
 * each, none waited for until all are out. The client holds back what the
 * node has no room for, so every put lands, byte-exact. Pulled, it fails
 * without that count; pushed ("loop-am"), each kvs_put_ex waits for its
 * PUT_ACK and the pieces land before the node reads the next PUT, so the
 * node never holds 16: that twin checks only that all land. */
static void many_puts_at_once(const char *transport)
{
    enum { NREQ = 40, PER = 130 }; /* 130 blocks: batches of 128 and 2 */
    kvs_ctx_h node = make_ctx(transport, true, tok_a, 1, 0);
    char addr[300];
    cr_assert_eq(kvs_ctx_listen_addr(node, addr, sizeof(addr)), KVS_OK);
    kvs_ctx_h cl = make_client(transport, addr, 0);
    test_pool_t src, dst;
    test_pool_init(&src, cl, "m", NREQ * PER, 3, 512);
    test_pool_init(&dst, cl, "m", PER, 3, 512);
    static kvs_key_t keys[NREQ * PER];
    static uint32_t ids[NREQ * PER];
    for (uint32_t i = 0; i < NREQ * PER; i++) {
        keys[i] = test_key(30000 + i);
        ids[i] = i;
        test_fill_block(&src, i, 30000 + i);
    }
    kvs_request_h rq[NREQ];
    for (uint32_t r = 0; r < NREQ; r++)
        cr_assert_eq(kvs_put_ex(src.pool, keys + r * PER, ids + r * PER, PER, NULL, &rq[r]),
                     KVS_OK);
    for (uint32_t r = 0; r < NREQ; r++) {
        kvs_status_t st = kvs_request_wait(rq[r], 20000);
        cr_assert_eq(st, KVS_OK, "%s: put %u of %u: %s", transport, r, NREQ, kvs_status_string(st));
        kvs_request_free(rq[r]);
    }
    kvs_stats_t ns = {0};
    cr_assert_eq(kvs_stats_query(node, &ns), KVS_OK);
    cr_assert_eq(ns.blocks, NREQ * PER);
    /* The first, a middle and the last request's blocks come back intact. */
    const uint32_t back[3] = {0, NREQ / 2, NREQ - 1};
    for (int k = 0; k < 3; k++) {
        kvs_lookup_params_t lp = {.field_mask = KVS_LOOKUP_FIELD_SOURCES,
                                  .sources = KVS_SOURCE_POOL};
        kvs_lease_h l = NULL;
        const kvs_key_t *kk = keys + back[k] * PER;
        cr_assert_eq(kvs_lookup(cl, kvs_pool_layout_id(dst.pool), kk, PER, &lp, &l), KVS_OK);
        cr_assert_eq(kvs_lease_hits(l), PER);
        uint32_t d[PER];
        for (uint32_t i = 0; i < PER; i++)
            d[i] = PER - 1 - i;
        kvs_request_h f = NULL;
        cr_assert_eq(kvs_fetch(l, dst.pool, d, PER, NULL, &f), KVS_OK);
        cr_assert_eq(kvs_request_wait(f, 10000), KVS_OK);
        kvs_request_free(f);
        kvs_lease_release(l);
        for (uint32_t i = 0; i < PER; i++)
            cr_assert(test_block_is(&dst, d[i], 30000 + back[k] * PER + i),
                      "%s: put %u, block %u differs", transport, back[k], i);
    }
    test_pool_free(&src);
    test_pool_free(&dst);
    kvs_ctx_destroy(cl);
    kvs_ctx_destroy(node);
}

Test(peer, more_pull_puts_than_the_node_takes_at_once_all_land)
{
    many_puts_at_once("loop");
}

Test(peer, more_push_puts_than_the_node_takes_at_once_all_land)
{
    many_puts_at_once("loop-am");
}

/* Puts @n keys (5000 + i, block ids scattered) from @src into the node
 * and checks every block comes back byte-exact through a fetch. */
static void put_and_read_back(kvs_ctx_h cl, test_pool_t *src, test_pool_t *dst, uint32_t n,
                              uint64_t tag0)
{
    kvs_key_t keys[600];
    uint32_t ids[600], d[600];
    cr_assert(n <= 600);
    for (uint32_t i = 0; i < n; i++) {
        keys[i] = test_key(tag0 + i);
        ids[i] = (i * 37) % 1024;
        d[i] = 1023 - i;
        test_fill_block(src, ids[i], tag0 + i);
    }
    kvs_request_h rq = NULL;
    cr_assert_eq(kvs_put_ex(src->pool, keys, ids, n, NULL, &rq), KVS_OK);
    kvs_status_t st = kvs_request_wait(rq, 10000);
    cr_assert_eq(st, KVS_OK, "put: %s", kvs_status_string(st));
    kvs_request_free(rq);
    kvs_lookup_params_t lp = {.field_mask = KVS_LOOKUP_FIELD_SOURCES, .sources = KVS_SOURCE_POOL};
    kvs_lease_h l = NULL;
    cr_assert_eq(kvs_lookup(cl, kvs_pool_layout_id(dst->pool), keys, n, &lp, &l), KVS_OK);
    cr_assert_eq(kvs_lease_hits(l), n);
    cr_assert_eq(kvs_fetch(l, dst->pool, d, n, NULL, &rq), KVS_OK);
    cr_assert_eq(kvs_request_wait(rq, 10000), KVS_OK);
    kvs_request_free(rq);
    kvs_lease_release(l);
    for (uint32_t i = 0; i < n; i++)
        cr_assert(test_block_is(dst, d[i], tag0 + i), "block %u differs", i);
}

/* Pull puts into a node whose reads fail ("loop-noget" claims GET, and every
 * GET it posts fails): each batch falls back to a push, the put still
 * lands byte-exact, and later batches and puts on that connection push from
 * the start. Against "loop" the same puts are pulled. */
static void put_with_node_transport(const char *node_transport, kvs_stats_t *cs)
{
    kvs_ctx_h node = make_ctx(node_transport, true, tok_a, 1, 0);
    char addr[300];
    cr_assert_eq(kvs_ctx_listen_addr(node, addr, sizeof(addr)), KVS_OK);
    kvs_ctx_h cl = make_client("loop", addr, 0);
    test_pool_t src, dst;
    test_pool_init(&src, cl, "m", 1024, 3, 512);
    test_pool_init(&dst, cl, "m", 1024, 3, 512);
    /* 600 blocks of 1536 bytes: five batches of at most 128, four out at
     * once; the fifth goes out after the first answer. */
    put_and_read_back(cl, &src, &dst, 600, 5000);
    put_and_read_back(cl, &src, &dst, 40, 9000); /* a second put, same connection */
    kvs_stats_t ns = {0};
    cr_assert_eq(kvs_stats_query(node, &ns), KVS_OK);
    cr_assert_eq(ns.blocks, 640);
    /* The failed reads' slots were given back: only stored blocks use the arena. */
    cr_assert_eq(ns.bytes, ns.blocks * 1536, "%llu bytes in use for %llu blocks",
                 (unsigned long long)ns.bytes, (unsigned long long)ns.blocks);
    cs->field_mask = KVS_STATS_FIELD_PUTS;
    cr_assert_eq(kvs_stats_query(cl, cs), KVS_OK);
    test_pool_free(&src);
    test_pool_free(&dst);
    kvs_ctx_destroy(cl);
    kvs_ctx_destroy(node);
}

Test(peer, pull_put_falls_back_to_push_when_the_nodes_reads_fail)
{
    kvs_stats_t cs;
    put_with_node_transport("loop-noget", &cs);
    cr_assert_eq(cs.put_pushed_blocks, 640);
    cr_assert_eq(cs.put_pulled_blocks, 0);
    cr_assert_eq(cs.put_fallbacks, 1, "one fallback per connection, not per batch");
    put_with_node_transport("loop", &cs);
    cr_assert_eq(cs.put_pulled_blocks, 640);
    cr_assert_eq(cs.put_pushed_blocks, 0);
    cr_assert_eq(cs.put_fallbacks, 0);
}

/* The node in poll mode: it moves only when the test drives it. */
static kvs_ctx_h make_poll_node(void)
{
    static char err[512];
    kvs_ctx_params_t p = {.field_mask = KVS_CTX_FIELD_NO_ENV | KVS_CTX_FIELD_TRANSPORT |
                                        KVS_CTX_FIELD_CAPACITY | KVS_CTX_FIELD_ERRBUF |
                                        KVS_CTX_FIELD_POOL_NODE | KVS_CTX_FIELD_LISTEN |
                                        KVS_CTX_FIELD_AUTH_TOKEN_FILE | KVS_CTX_FIELD_PROGRESS,
                          .transport = "loop",
                          .capacity_bytes = 64u << 20,
                          .errbuf = err,
                          .errbuf_len = sizeof(err),
                          .pool_node = 1,
                          .listen = "127.0.0.1:0",
                          .auth_token_file = tok_a,
                          .progress = KVS_PROGRESS_POLL};
    kvs_ctx_h ctx = NULL;
    cr_assert_eq(kvs_ctx_create(&p, &ctx), KVS_OK, "kvs_ctx_create: %s", err);
    return ctx;
}

/* Connects @cl to the poll-mode @node, driving the node meanwhile. */
static void connect_driving(kvs_ctx_h cl, kvs_ctx_h node, const char *addr, uint64_t layout)
{
    const kvs_connect_params_t cp = {.field_mask = KVS_CONNECT_FIELD_FLAGS,
                                     .flags = KVS_CONNECT_BACKGROUND};
    kvs_status_t st = kvs_peer_connect(cl, layout, addr, &cp);
    cr_assert(st == KVS_INPROGRESS || st == KVS_OK, "%s", kvs_status_string(st));
    uint64_t end = kvs__now_ns() + 5000000000ull;
    /* A second background call answers KVS_OK once the connection is made. */
    while ((st = kvs_peer_connect(cl, layout, addr, &cp)) == KVS_INPROGRESS && kvs__now_ns() < end)
        kvs_progress_ex(node, NULL);
    cr_assert_eq(st, KVS_OK, "%s", kvs_status_string(st));
    /* Let its warm-up round trip finish too. */
    for (uint64_t t = kvs__now_ns() + 50000000ull; kvs__now_ns() < t;)
        kvs_progress_ex(node, NULL);
}

/* Drives a poll-mode context from a thread while the test thread waits in
 * calls that need it to answer. */
typedef struct driver {
    kvs_ctx_h ctx;
    _Atomic bool stop;
    pthread_t th;
} driver_t;

static void *drive(void *arg)
{
    driver_t *d = arg;
    while (!atomic_load(&d->stop)) {
        unsigned events = 1;
        (void)kvs_progress_ex(d->ctx, &events);
        if (events == 0)
            sched_yield();
    }
    return NULL;
}

static void driver_start(driver_t *d, kvs_ctx_h ctx)
{
    d->ctx = ctx;
    atomic_store(&d->stop, false);
    cr_assert_eq(pthread_create(&d->th, NULL, drive, d), 0);
}

static void driver_stop(driver_t *d)
{
    atomic_store(&d->stop, true);
    pthread_join(d->th, NULL);
}

/* Every block the node holds is whole and right, and no arena slot is
 * left reserved by a put that did not finish. */
static void node_holds_only_whole_blocks(kvs_ctx_h node, const kvs_key_t *keys, size_t n,
                                         uint64_t tag0, size_t block_bytes)
{
    kvs_stats_t st = {0};
    cr_assert_eq(kvs_stats_query(node, &st), KVS_OK);
    cr_assert_eq(st.bytes, st.blocks * block_bytes, "%llu bytes in use for %llu blocks",
                 (unsigned long long)st.bytes, (unsigned long long)st.blocks);
    if (st.blocks == 0)
        return;
    char addr[300];
    cr_assert_eq(kvs_ctx_listen_addr(node, addr, sizeof(addr)), KVS_OK);
    driver_t drv;
    driver_start(&drv, node);
    kvs_ctx_h rd = make_client("loop", addr, 0);
    test_pool_t dst;
    test_pool_init(&dst, rd, "m", 64, 2, 4096);
    /* Each key alone: what the node holds must be exactly its block. */
    for (size_t i = 0; i < n; i++) {
        kvs_lookup_params_t lp = {.field_mask = KVS_LOOKUP_FIELD_SOURCES,
                                  .sources = KVS_SOURCE_POOL};
        kvs_lease_h l = NULL;
        cr_assert_eq(kvs_lookup(rd, kvs_pool_layout_id(dst.pool), &keys[i], 1, &lp, &l), KVS_OK);
        if (kvs_lease_hits(l) == 1) {
            uint32_t d = 0;
            kvs_request_h rq = NULL;
            cr_assert_eq(kvs_fetch(l, dst.pool, &d, 1, NULL, &rq), KVS_OK);
            cr_assert_eq(kvs_request_wait(rq, 10000), KVS_OK);
            kvs_request_free(rq);
            cr_assert(test_block_is(&dst, 0, tag0 + i), "key %zu: half-put block published", i);
        }
        kvs_lease_release(l);
    }
    test_pool_free(&dst);
    kvs_ctx_destroy(rd);
    driver_stop(&drv);
}

/* A client that goes away in the middle of a pull put: its memory is gone
 * before the node reads it. The node refuses the put, publishes nothing,
 * gives every reserved slot back, and keeps serving. */
Test(peer, client_gone_mid_pull_put_publishes_nothing)
{
    kvs_ctx_h node = make_poll_node();
    char addr[300];
    cr_assert_eq(kvs_ctx_listen_addr(node, addr, sizeof(addr)), KVS_OK);
    kvs_ctx_h cl = make_client("loop", addr, 0);
    test_pool_t src;
    test_pool_init(&src, cl, "m", 64, 2, 4096);
    connect_driving(cl, node, addr, kvs_pool_layout_id(src.pool));
    kvs_key_t keys[48];
    uint32_t ids[48];
    for (uint32_t i = 0; i < 48; i++) {
        keys[i] = test_key(300 + i);
        ids[i] = 63 - i;
        test_fill_block(&src, ids[i], 3000 + i);
    }
    kvs_request_h rq = NULL;
    cr_assert_eq(kvs_put_ex(src.pool, keys, ids, 48, NULL, &rq), KVS_OK);
    /* The client's memory goes before the node has read a byte of it. */
    test_pool_free(&src);
    kvs_status_t st;
    uint64_t end = kvs__now_ns() + 5000000000ull;
    while ((st = kvs_request_test(rq)) == KVS_INPROGRESS && kvs__now_ns() < end)
        kvs_progress_ex(node, NULL);
    cr_assert(st != KVS_OK && st != KVS_INPROGRESS, "put of vanished blocks: %s",
              kvs_status_string(st));
    kvs_request_free(rq);
    node_holds_only_whole_blocks(node, keys, 48, 3000, 8192);
    kvs_stats_t ns = {0};
    cr_assert_eq(kvs_stats_query(node, &ns), KVS_OK);
    cr_assert_eq(ns.blocks, 0);
    /* The node still takes an honest put. */
    test_pool_init(&src, cl, "m", 64, 2, 4096);
    for (uint32_t i = 0; i < 48; i++)
        test_fill_block(&src, ids[i], 3000 + i);
    cr_assert_eq(kvs_put_ex(src.pool, keys, ids, 48, NULL, &rq), KVS_OK);
    while ((st = kvs_request_test(rq)) == KVS_INPROGRESS)
        kvs_progress_ex(node, NULL);
    cr_assert_eq(st, KVS_OK, "%s", kvs_status_string(st));
    kvs_request_free(rq);
    cr_assert_eq(kvs_stats_query(node, &ns), KVS_OK);
    cr_assert_eq(ns.blocks, 48);
    node_holds_only_whole_blocks(node, keys, 48, 3000, 8192);
    test_pool_free(&src);
    kvs_ctx_destroy(cl);
    kvs_ctx_destroy(node);
}

/* A client whose connection closes with its pull put in flight: whatever
 * the order the node sees things in, it publishes whole blocks or none, and
 * leaves no slot reserved. */
Test(peer, client_closing_mid_pull_put_leaves_no_half_blocks)
{
    kvs_ctx_h node = make_poll_node();
    char addr[300];
    cr_assert_eq(kvs_ctx_listen_addr(node, addr, sizeof(addr)), KVS_OK);
    for (int round = 0; round < 3; round++) {
        /* A short deadline: freeing the put waits for the node's answer
         * only that long, then closes the connection. */
        kvs_ctx_h cl = make_client("loop", addr, 100);
        test_pool_t src;
        test_pool_init(&src, cl, "m", 64, 2, 4096);
        connect_driving(cl, node, addr, kvs_pool_layout_id(src.pool));
        kvs_key_t keys[40];
        uint32_t ids[40];
        for (uint32_t i = 0; i < 40; i++) {
            keys[i] = test_key(100000u * (uint32_t)(round + 1) + i);
            ids[i] = i;
            test_fill_block(&src, ids[i], 8000 + i);
        }
        kvs_request_h rq = NULL;
        cr_assert_eq(kvs_put_ex(src.pool, keys, ids, 40, NULL, &rq), KVS_OK);
        for (int k = 0; k < round; k++)
            kvs_progress_ex(node, NULL); /* round 0: the node has not even seen the PUT */
        kvs_request_free(rq);
        test_pool_free(&src);
        kvs_ctx_destroy(cl);
        for (uint64_t t = kvs__now_ns() + 100000000ull; kvs__now_ns() < t;)
            kvs_progress_ex(node, NULL);
        node_holds_only_whole_blocks(node, keys, 40, 8000, 8192);
    }
    kvs_ctx_destroy(node);
}

/* A holder that goes away fails the requester's next use cleanly. */
Test(peer, holder_gone_fails_cleanly)
{
    pair_t pr;
    pair_init(&pr, "loop-am", tok_a, 8, 0);
    fetch_all_and_check(&pr, 8);
    test_pool_free(&pr.pa);
    kvs_ctx_destroy(pr.a);
    pr.a = NULL;
    kvs_lease_h l = NULL;
    kvs_status_t s = peer_lookup(&pr, 8, 0, &l);
    cr_assert(s == KVS_ERR_PEER_FAILED || s == KVS_ERR_TIMED_OUT, "got %s", kvs_status_string(s));
    test_pool_free(&pr.pb);
    kvs_ctx_destroy(pr.b);
}

/* --- polling before sleeping (KVSHARE_POLL_US, issue 15) ----------------- */
static char poll_cfg[64];

static void poll_cfg_remove(void)
{
    if (poll_cfg[0] != '\0')
        unlink(poll_cfg);
}

/* Makes every context of this test poll for @us microseconds (callers and
 * progress threads). */
static void set_poll_us(unsigned us)
{
    poll_cfg_remove();
    snprintf(poll_cfg, sizeof(poll_cfg), "/tmp/kvs-peer-cfg-XXXXXX");
    int fd = mkstemp(poll_cfg);
    cr_assert(fd >= 0);
    atexit(poll_cfg_remove);
    char text[96];
    int len = snprintf(text, sizeof(text), "{\"poll_us\": %u, \"thread_poll_us\": %u}", us, us);
    cr_assert_eq(write(fd, text, (size_t)len), (ssize_t)len);
    close(fd);
    cfg_file = poll_cfg;
}

typedef struct looker {
    pair_t *pr;
    pthread_t th;
    int ok, failed;
} looker_t;

static void *look_repeatedly(void *arg)
{
    looker_t *lk = arg;
    for (int i = 0; i < 200; i++) {
        kvs_lease_h l = NULL;
        if (peer_lookup(lk->pr, 8, 0, &l) == KVS_OK && kvs_lease_hits(l) == 8)
            lk->ok++;
        else
            lk->failed++;
        kvs_lease_release(l);
    }
    return NULL;
}

/* With the window off (0, the sleeping waits as before) and at its longest,
 * lookups complete, also from two threads at once: while one polls for its
 * reply the progress thread stands aside, and the other's reply must still
 * reach it. */
Test(peer, lookups_complete_with_polling_off_and_on)
{
    static const unsigned windows[] = {0, 1000};
    for (size_t w = 0; w < sizeof(windows) / sizeof(windows[0]); w++) {
        set_poll_us(windows[w]);
        pair_t pr;
        pair_init(&pr, "loop", tok_a, 8, 0);
        fetch_all_and_check(&pr, 8);
        looker_t lk[2] = {{.pr = &pr}, {.pr = &pr}};
        for (int i = 0; i < 2; i++)
            cr_assert_eq(pthread_create(&lk[i].th, NULL, look_repeatedly, &lk[i]), 0);
        for (int i = 0; i < 2; i++) {
            pthread_join(lk[i].th, NULL);
            cr_assert_eq(lk[i].failed, 0, "window %u us: %d of 200 lookups failed", windows[w],
                         lk[i].failed);
            cr_assert_eq(lk[i].ok, 200);
        }
        fetch_all_and_check(&pr, 8);
        pair_fini(&pr);
    }
}

static double cpu_seconds(void)
{
    struct rusage ru;
    cr_assert_eq(getrusage(RUSAGE_SELF, &ru), 0);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

/* The window is counted from the last work and never renewed by polling
 * itself: once traffic stops, both contexts' progress threads go back to
 * sleep. A thread that kept polling would burn its core for the whole idle
 * second; sleeping ones wake every IDLE_WAKE_MS for housekeeping and use
 * well under a tenth of it. (CPU time, not speed: a correctness property.) */
Test(peer, idle_engine_sleeps_once_its_polling_window_closes)
{
    set_poll_us(1000);
    pair_t pr;
    pair_init(&pr, "loop", tok_a, 8, 0);
    for (int i = 0; i < 20; i++)
        fetch_all_and_check(&pr, 8); /* every thread has had work just now */
    double before = cpu_seconds();
    struct timespec idle = {1, 0};
    while (nanosleep(&idle, &idle) != 0)
        ;
    double used = cpu_seconds() - before;
    cr_assert_lt(used, 0.1, "%.3f s of CPU over an idle second", used);
    pair_fini(&pr);
}

/* --- across views (issue 13) ------------------------------------------------ */
/* fp32 elements that encode (plane, token, global head, dim); 0 = never written. */
static uint32_t xval(uint32_t plane, uint32_t tok, uint32_t head, uint32_t d)
{
    return (((plane * 1024 + tok) * 64 + head) * 64 + d) + 1;
}

typedef struct xpool {
    kvs_layout_t l;
    uint32_t *mem;
    kvs_pool_h pool;
    uint32_t heads, first;
} xpool_t;

#define XLAYERS 2u
#define XDIM    4u
#define XBLOCKS 8u

/* One segment per plane (K and V of each layer apart), 8 blocks. */
static void xpool_init(xpool_t *x, kvs_ctx_h ctx, uint32_t tp, uint32_t rank, kvs_kv_layout_t kl,
                       uint32_t bt)
{
    x->l = (kvs_layout_t){.field_mask = KVS_LAYOUT_FIELD_KEY_TOKENS,
                          .model_id = "x",
                          .dtype = KVS_DTYPE_FP32,
                          .block_tokens = bt,
                          .num_layers = XLAYERS,
                          .num_kv_heads = 4 / tp,
                          .head_dim = XDIM,
                          .tp_rank = rank,
                          .tp_size = tp,
                          .kv_layout = kl,
                          .kv_order = KVS_KV_ORDER_KV_OUTER,
                          .key_tokens = 16};
    x->heads = 4 / tp;
    x->first = rank * x->heads;
    size_t plane = (size_t)bt * x->heads * XDIM;
    x->mem = calloc(2 * XLAYERS * XBLOCKS * plane, 4);
    kvs_segment_t segs[2 * XLAYERS];
    for (uint32_t p = 0; p < 2 * XLAYERS; p++)
        segs[p] = (kvs_segment_t){.base = x->mem + p * XBLOCKS * plane,
                                  .block_stride = plane * 4,
                                  .block_bytes = plane * 4};
    kvs_pool_params_t pp = {
        .layout = &x->l, .segments = segs, .num_segments = 2 * XLAYERS, .num_blocks = XBLOCKS};
    cr_assert_eq(kvs_pool_create(ctx, &pp, &x->pool), KVS_OK);
}

static uint32_t *xelem(xpool_t *x, uint32_t b, uint32_t p, uint32_t t, uint32_t h, uint32_t d)
{
    uint32_t bt = x->l.block_tokens;
    size_t plane = (size_t)bt * x->heads * XDIM;
    size_t in = x->l.kv_layout == KVS_KV_NHD ? ((size_t)t * x->heads + h) * XDIM + d
                                             : ((size_t)h * bt + t) * XDIM + d;
    return x->mem + ((size_t)p * XBLOCKS + b) * plane + in;
}

static void across_views(const char *transport)
{
    kvs_ctx_h a = make_ctx(transport, true, tok_a, 0, 0),
              b = make_ctx(transport, false, tok_a, 0, 0);
    char addr[300];
    cr_assert_eq(kvs_ctx_listen_addr(a, addr, sizeof(addr)), KVS_OK);
    /* Holder: TP rank 1 of 2 (heads 2, 3), NHD, 32-token blocks; 4 keys in blocks 5, 6. */
    xpool_t h, r;
    xpool_init(&h, a, 2, 1, KVS_KV_NHD, 32);
    kvs_key_t keys[4];
    uint32_t hids[4], rids[4];
    for (uint32_t j = 0; j < 4; j++) {
        keys[j] = test_key(7000 + j);
        hids[j] = 5 + j / 2;
        rids[j] = 7 - j; /* reader: 16-token blocks, scattered */
    }
    for (uint32_t blk = 0; blk < 2; blk++)
        for (uint32_t p = 0; p < 2 * XLAYERS; p++)
            for (uint32_t t = 0; t < 32; t++)
                for (uint32_t hd = 0; hd < 2; hd++)
                    for (uint32_t d = 0; d < XDIM; d++)
                        *xelem(&h, 5 + blk, p, t, hd, d) = xval(p, blk * 32 + t, 2 + hd, d);
    cr_assert_eq(kvs_publish(h.pool, keys, hids, 4, 0, NULL), KVS_OK);
    /* Reader: TP 1 (all 4 heads), HND, 16-token blocks. */
    xpool_init(&r, b, 1, 0, KVS_KV_HND, 16);
    uint64_t lid = kvs_pool_layout_id(r.pool);
    cr_assert_neq(lid, kvs_pool_layout_id(h.pool));
    kvs_lookup_params_t lp = {.field_mask = KVS_LOOKUP_FIELD_SOURCES | KVS_LOOKUP_FIELD_PEER,
                              .sources = KVS_SOURCE_PEER,
                              .peer = addr};
    kvs_lease_h l = NULL;
    cr_assert_eq(kvs_lookup(b, lid, keys, 4, &lp, &l), KVS_OK);
    cr_assert_eq(kvs_lease_hits(l), 4);
    uint32_t first = 9, count = 9;
    cr_assert_eq(kvs_lease_heads(l, &first, &count), KVS_OK);
    cr_assert(first == 2 && count == 2, "heads %u+%u", first, count);
    kvs_fetch_params_t fp = {.field_mask = KVS_FETCH_FIELD_FIRST, .first = 1};
    kvs_request_h rq = NULL;
    cr_assert_eq(kvs_fetch(l, r.pool, rids + 1, 3, &fp, &rq), KVS_OK);
    cr_assert_eq(kvs_request_wait(rq, 10000), KVS_OK);
    kvs_request_free(rq);
    kvs_lease_release(l);
    for (uint32_t j = 0; j < 4; j++)
        for (uint32_t p = 0; p < 2 * XLAYERS; p++)
            for (uint32_t t = 0; t < 16; t++)
                for (uint32_t hd = 0; hd < 4; hd++)
                    for (uint32_t d = 0; d < XDIM; d++) {
                        uint32_t want = j >= 1 && hd >= 2 ? xval(p, j * 16 + t, hd, d) : 0;
                        uint32_t got = *xelem(&r, rids[j], p, t, hd, d);
                        cr_assert_eq(got, want, "%s: key %u plane %u token %u head %u dim %u",
                                     transport, j, p, t, hd, d);
                    }
    kvs_pool_destroy(r.pool);
    kvs_pool_destroy(h.pool);
    kvs_ctx_destroy(b);
    kvs_ctx_destroy(a);
    free(r.mem);
    free(h.mem);
}

/* A block that changes between lookup and fetch fails the request, and
 * what was staged never reaches the reader's pool. */
static void across_views_stale(const char *transport)
{
    kvs_ctx_h a = make_ctx(transport, true, tok_a, 0, 0),
              b = make_ctx(transport, false, tok_a, 0, 0);
    char addr[300];
    cr_assert_eq(kvs_ctx_listen_addr(a, addr, sizeof(addr)), KVS_OK);
    xpool_t h, r;
    xpool_init(&h, a, 2, 0, KVS_KV_NHD, 16);
    xpool_init(&r, b, 1, 0, KVS_KV_HND, 16);
    kvs_key_t keys[3];
    uint32_t ids[3] = {1, 2, 3};
    for (uint32_t j = 0; j < 3; j++)
        keys[j] = test_key(8000 + j);
    memset(h.mem, 0x5a, 2 * XLAYERS * XBLOCKS * (size_t)16 * h.heads * XDIM * 4);
    cr_assert_eq(kvs_publish(h.pool, keys, ids, 3, KVS_PUBLISH_ZERO_COPY, NULL), KVS_OK);
    kvs_lookup_params_t lp = {.field_mask = KVS_LOOKUP_FIELD_SOURCES | KVS_LOOKUP_FIELD_PEER,
                              .sources = KVS_SOURCE_PEER,
                              .peer = addr};
    kvs_lease_h l = NULL;
    cr_assert_eq(kvs_lookup(b, kvs_pool_layout_id(r.pool), keys, 3, &lp, &l), KVS_OK);
    cr_assert_eq(kvs_lease_hits(l), 3);
    uint32_t gone = 2;
    cr_assert_eq(kvs_unpublish(h.pool, &gone, 1, KVS_UNPUBLISH_FORCE), KVS_OK);
    kvs_request_h rq = NULL;
    cr_assert_eq(kvs_fetch(l, r.pool, ids, 3, NULL, &rq), KVS_OK);
    cr_assert_eq(kvs_request_wait(rq, 10000), KVS_ERR_STALE, "%s", transport);
    kvs_request_free(rq);
    kvs_lease_release(l);
    size_t n = 2 * XLAYERS * XBLOCKS * (size_t)16 * r.heads * XDIM;
    for (size_t i = 0; i < n; i++)
        cr_assert_eq(r.mem[i], 0, "%s: element %zu reached the pool", transport, i);
    kvs_pool_destroy(r.pool);
    kvs_pool_destroy(h.pool);
    kvs_ctx_destroy(b);
    kvs_ctx_destroy(a);
    free(r.mem);
    free(h.mem);
}

Test(peer, across_views_stale_block_never_reaches_the_pool)
{
    across_views_stale("loop");
    across_views_stale("loop-am");
}

Test(peer, across_views_get_path)
{
    across_views("loop");
}

Test(peer, across_views_push_path)
{
    across_views("loop-am");
}

/* In a child forked while a UCX context of ours ran, UCX cannot run (its
 * process-wide async state came across without its thread): the child's
 * kvs_ctx_create fails and says why. Forked after the last UCX context went,
 * the child makes one as any process does. The transport's "none" is
 * unaffected either way. */
static int child_create(const char *transport, char *err, size_t errlen)
{
    kvs_ctx_params_t p = {.field_mask = KVS_CTX_FIELD_NO_ENV | KVS_CTX_FIELD_TRANSPORT |
                                        KVS_CTX_FIELD_ERRBUF | KVS_CTX_FIELD_LISTEN |
                                        KVS_CTX_FIELD_AUTH_TOKEN_FILE,
                          .transport = transport,
                          .listen = "127.0.0.1:0",
                          .auth_token_file = tok_a,
                          .errbuf = err,
                          .errbuf_len = errlen};
    if (strcmp(transport, "none") == 0)
        p.field_mask &= ~(uint64_t)(KVS_CTX_FIELD_LISTEN | KVS_CTX_FIELD_AUTH_TOKEN_FILE);
    kvs_ctx_h ctx = NULL;
    kvs_status_t st = kvs_ctx_create(&p, &ctx);
    kvs_ctx_destroy(ctx);
    return (int)st;
}

/* Forks; the child creates a context of @transport and reports its status
 * and message through a pipe. */
static kvs_status_t create_in_child(const char *transport, char *err, size_t errlen)
{
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    fflush(NULL);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        close(fds[0]);
        alarm(20);
        char e[512] = "";
        int st = child_create(transport, e, sizeof(e));
        dprintf(fds[1], "%d %s", st, e);
        _exit(0);
    }
    close(fds[1]);
    char buf[600] = "";
    size_t used = 0;
    ssize_t got;
    while (used + 1 < sizeof(buf) && (got = read(fds[0], buf + used, sizeof(buf) - 1 - used)) > 0)
        used += (size_t)got;
    close(fds[0]);
    int ws = 0;
    cr_assert_eq(waitpid(pid, &ws, 0), pid);
    cr_assert(WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "child status 0x%x", ws);
    int st = 0, off = 0;
    cr_assert_eq(sscanf(buf, "%d %n", &st, &off), 1, "child said '%s'", buf);
    snprintf(err, errlen, "%s", buf + off);
    return (kvs_status_t)st;
}

Test(peer, a_child_forked_while_ucx_ran_refuses_ucx_and_says_why)
{
    char err[600];
    kvs_ctx_h ctx = make_ctx("ucx", true, tok_a, 0, 0);
    kvs_status_t st = create_in_child("ucx", err, sizeof(err));
    cr_expect_eq(st, KVS_ERR_UNSUPPORTED, "forked while UCX ran: %s (%s)", kvs_status_string(st),
                 err);
    cr_expect_not_null(strstr(err, "UCX cannot run in this process: it was forked from one whose "
                                   "kvshare context was running"),
                       "message: %s", err);
    st = create_in_child("none", err, sizeof(err));
    cr_expect_eq(st, KVS_OK, "transport none in the same child: %s (%s)", kvs_status_string(st),
                 err);
    kvs_ctx_destroy(ctx);
    st = create_in_child("ucx", err, sizeof(err));
    cr_expect_eq(st, KVS_OK, "forked after the last UCX context went: %s (%s)",
                 kvs_status_string(st), err);
}
