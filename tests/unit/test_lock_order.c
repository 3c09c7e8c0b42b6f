/* SPDX-License-Identifier: Apache-2.0 */
/* test_lock_order.c - the context's locks never wait on each other in a cycle.
 *
 * The listener answers a HELLO holding the peer lock and asks the pools
 * (regions_lock) which layouts it serves; kvs_mem_register() must therefore
 * never take the peer lock while it holds regions_lock. Here both run
 * flat out against one context for a while: a lock-order cycle hangs the
 * test (criterion's timeout fails it). */
#include "boot_int.h"
#include "kvs_int.h"
#include "kvs_test.h"
#include "proto_int.h"

#include <criterion/criterion.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define RUN_NS 1500000000ull /* how long both sides run */

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

typedef struct hello_arg {
    const char *addr;
    uint64_t layout_id, until;
    atomic_size_t answered;
} hello_arg_t;

/* Sends HELLOs to the listener, one connection each, and reads the answer
 * (a CHALLENGE): every one makes the listener look at its pools under the
 * peer lock. */
static void *hello_loop(void *p)
{
    hello_arg_t *a = p;
    while (mono_ns() < a->until) {
        const uint64_t deadline = mono_ns() + 5000000000ull;
        kvs_status_t st = KVS_OK;
        int fd = kvs__boot_connect(a->addr, deadline, &st);
        if (fd < 0)
            continue;
        uint8_t nonce[KVS_PROTO_NONCE_LEN];
        (void)RAND_bytes(nonce, sizeof(nonce));
        kvs__buf_t b;
        kvs__buf_init(&b);
        kvs__enc_hello(&b, 1, a->layout_id, nonce, "lock-order");
        if (kvs__boot_send(fd, b.data, b.len, deadline) == KVS_OK) {
            uint8_t *in = NULL;
            size_t n = 0;
            char why[128];
            if (kvs__boot_recv(fd, KVS_PROTO_MAX_PREAUTH, deadline, &in, &n, why, sizeof(why)) ==
                KVS_OK)
                atomic_fetch_add(&a->answered, 1);
            kvs__free(in);
        }
        kvs__buf_free(&b);
        close(fd);
    }
    return NULL;
}

Test(lock_order, mem_register_while_peers_say_hello, .timeout = 60)
{
    char token[] = "/tmp/kvs-lockorder-tok-XXXXXX";
    const int tfd = mkstemp(token);
    cr_assert(tfd >= 0);
    cr_assert_eq(write(tfd, "secret", 6), 6);
    close(tfd);
    char err[256] = "";
    kvs_ctx_params_t p = {.field_mask = KVS_CTX_FIELD_NO_ENV | KVS_CTX_FIELD_TRANSPORT |
                                        KVS_CTX_FIELD_CAPACITY | KVS_CTX_FIELD_ERRBUF |
                                        KVS_CTX_FIELD_LISTEN | KVS_CTX_FIELD_AUTH_TOKEN_FILE,
                          .transport = "loop",
                          .capacity_bytes = 4u << 20,
                          .listen = "127.0.0.1:0",
                          .auth_token_file = token,
                          .errbuf = err,
                          .errbuf_len = sizeof(err)};
    kvs_ctx_h ctx = NULL;
    const kvs_status_t cst = kvs_ctx_create(&p, &ctx);
    unlink(token);
    cr_assert_eq(cst, KVS_OK, "kvs_ctx_create: %s", err);
    test_pool_t tp;
    test_pool_init(&tp, ctx, "m", 8, 2, 256);
    char addr[300];
    cr_assert_eq(kvs_ctx_listen_addr(ctx, addr, sizeof(addr)), KVS_OK);

    hello_arg_t a = {
        .addr = addr, .layout_id = kvs_pool_layout_id(tp.pool), .until = mono_ns() + RUN_NS};
    pthread_t th[2];
    for (int i = 0; i < 2; i++)
        cr_assert_eq(pthread_create(&th[i], NULL, hello_loop, &a), 0);
    static uint8_t mem[64 << 10];
    size_t registered = 0;
    while (mono_ns() < a.until) {
        kvs_region_h r[16];
        for (size_t i = 0; i < 16; i++)
            cr_assert_eq(kvs_mem_register(ctx, mem + i * 4096, 4096, KVS_MEM_HOST, &r[i]), KVS_OK);
        for (size_t i = 0; i < 16; i++)
            kvs_mem_deregister(r[i]);
        registered += 16;
    }
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    cr_assert_eq(kvs_mem_region_count(ctx), 0);
    cr_assert_gt(atomic_load(&a.answered), 0, "no HELLO was answered");
    cr_assert_gt(registered, 0);
    cr_log_info("%zu HELLOs answered, %zu regions registered", atomic_load(&a.answered),
                registered);
    test_pool_free(&tp);
    kvs_ctx_destroy(ctx);
}
