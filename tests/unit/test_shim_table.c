/* SPDX-License-Identifier: Apache-2.0 */
/* The shim's interval map of live allocations (preload/src/table.c). */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdlib.h>

#include "preload_int.h"

#define CAP 64

static kvs_track_t t;
static kvs_track_slot_t slots[CAP];
static _Atomic uint32_t order[2 * CAP];
static uint32_t free_next[CAP];

static void setup(void)
{
    kvs__track_init(&t, slots, order, free_next, CAP);
}

TestSuite(shim_table, .init = setup);

Test(shim_table, insert_find_remove)
{
    kvs_track_entry_t e;

    cr_assert_eq(kvs__track_insert(&t, 0x3000, 0x1000, KVS_TRACK_KV, 0, &e), KVS_OK);
    cr_expect_eq(e.base, 0x3000);
    cr_assert_eq(kvs__track_insert(&t, 0x1000, 0x1000, 0, 0, &e), KVS_OK);
    cr_assert_eq(kvs__track_insert(&t, 0x2000, 0x800, KVS_TRACK_VMM, 77, &e), KVS_OK);
    cr_expect_eq(kvs__track_count(&t), 3);

    cr_expect_eq(kvs__track_find(&t, 0xfff, &e), KVS_TRACK_NONE);
    cr_expect_neq(kvs__track_find(&t, 0x1000, &e), KVS_TRACK_NONE);
    cr_expect_eq(e.base, 0x1000);
    cr_expect_neq(kvs__track_find(&t, 0x27ff, &e), KVS_TRACK_NONE);
    cr_expect_eq(e.base, 0x2000);
    cr_expect_eq(e.flags, KVS_TRACK_VMM);
    cr_expect_eq(kvs__track_find(&t, 0x2800, &e), KVS_TRACK_NONE); /* the gap */
    cr_expect_neq(kvs__track_find(&t, 0x3fff, &e), KVS_TRACK_NONE);
    cr_expect_eq(e.flags, KVS_TRACK_KV);
    cr_expect_eq(kvs__track_find(&t, 0x4000, &e), KVS_TRACK_NONE);

    cr_expect_eq(kvs__track_remove(&t, 0x2001, &e), KVS_ERR_NOT_FOUND); /* exact base only */
    cr_expect_eq(kvs__track_remove(&t, 0x2000, &e), KVS_OK);
    cr_expect_eq(e.handle, 77);
    cr_expect_eq(kvs__track_find(&t, 0x2000, &e), KVS_TRACK_NONE);
    cr_expect_eq(kvs__track_remove(&t, 0x2000, &e), KVS_ERR_NOT_FOUND);
    cr_expect_eq(kvs__track_count(&t), 2);
}

Test(shim_table, rejects_overlap_and_empty)
{
    kvs_track_entry_t e;

    cr_assert_eq(kvs__track_insert(&t, 0x2000, 0x1000, 0, 0, &e), KVS_OK);
    cr_expect_eq(kvs__track_insert(&t, 0x2fff, 0x10, 0, 0, &e), KVS_ERR_INVALID_PARAM);
    cr_expect_eq(kvs__track_insert(&t, 0x1ff0, 0x11, 0, 0, &e), KVS_ERR_INVALID_PARAM);
    cr_expect_eq(kvs__track_insert(&t, 0x1000, 0x10000, 0, 0, &e), KVS_ERR_INVALID_PARAM);
    cr_expect_eq(kvs__track_insert(&t, 0x5000, 0, 0, 0, &e), KVS_ERR_INVALID_PARAM);
    cr_expect_eq(kvs__track_insert(&t, UINTPTR_MAX - 4, 16, 0, 0, &e), KVS_ERR_INVALID_PARAM);
    cr_expect_eq(kvs__track_insert(&t, 0x1000, 0x1000, 0, 0, &e), KVS_OK); /* touching is fine */
    cr_expect_eq(kvs__track_insert(&t, 0x3000, 0x1000, 0, 0, &e), KVS_OK);
    cr_expect_eq(kvs__track_count(&t), 3);
}

Test(shim_table, full_then_reuse)
{
    kvs_track_entry_t e;

    for (uintptr_t i = 0; i < CAP; i++) {
        cr_assert_eq(kvs__track_insert(&t, 0x10000 + i * 0x100, 0x100, 0, 0, &e), KVS_OK);
    }
    cr_expect_eq(kvs__track_insert(&t, 0x1, 0x1, 0, 0, &e), KVS_ERR_NO_SPACE);
    cr_expect_eq(kvs__track_remove(&t, 0x10000 + 5 * 0x100, &e), KVS_OK);
    cr_expect_eq(kvs__track_insert(&t, 0x1, 0x1, 0, 0, &e), KVS_OK);
    cr_expect_neq(kvs__track_find(&t, 0x1, &e), KVS_TRACK_NONE);
}

Test(shim_table, take_overlap_takes_each_once)
{
    kvs_track_entry_t e;
    int n = 0;

    kvs__track_insert(&t, 0x1000, 0x1000, 0, 1, &e);
    kvs__track_insert(&t, 0x2000, 0x1000, 0, 2, &e);
    kvs__track_insert(&t, 0x3000, 0x1000, 0, 3, &e);
    kvs__track_insert(&t, 0x9000, 0x1000, 0, 4, &e);
    while (kvs__track_take_overlap(&t, 0x1800, 0x2000, &e) == KVS_OK) {
        cr_expect(e.handle >= 1 && e.handle <= 3);
        n++;
    }
    cr_expect_eq(n, 3); /* 0x1000.., 0x2000.., 0x3000.. overlap [0x1800, 0x3800) */
    cr_expect_eq(kvs__track_count(&t), 1);
}

Test(shim_table, region_swap_checks_generation_and_owner)
{
    kvs_track_entry_t e, gone;
    kvs_region_h r1 = (kvs_region_h)(uintptr_t)0x111, taken = NULL;

    cr_assert_eq(kvs__track_insert(&t, 0x1000, 0x1000, KVS_TRACK_KV, 0, &e), KVS_OK);
    cr_expect_eq(kvs__track_swap_region(&t, e.slot, e.gen + 1, NULL, r1), 0);
    cr_expect_eq(kvs__track_swap_region(&t, e.slot, e.gen, NULL, r1), 1);
    cr_expect_eq(kvs__track_swap_region(&t, e.slot, e.gen, NULL, r1), 0); /* not NULL now */
    cr_expect_eq(kvs__track_take_region(&t, &taken), KVS_OK);
    cr_expect_eq(taken, r1);
    cr_expect_eq(kvs__track_take_region(&t, &taken), KVS_ERR_NOT_FOUND);
    cr_expect_eq(kvs__track_swap_region(&t, e.slot, e.gen, NULL, r1), 1);
    cr_expect_eq(kvs__track_remove(&t, 0x1000, &gone), KVS_OK);
    cr_expect_eq(gone.region, r1);
    /* The slot is free (or reused): the old generation no longer matches. */
    cr_expect_eq(kvs__track_swap_region(&t, e.slot, e.gen, NULL, r1), 0);
}

/* Readers never see a torn entry while writers insert and remove. */
#define RANGES 32
static _Atomic int stop;

static void *writer(void *arg)
{
    uintptr_t id = (uintptr_t)arg;
    kvs_track_entry_t e;

    for (int i = 0; i < 20000; i++) {
        uintptr_t base = 0x100000 * (1 + id * RANGES + (uintptr_t)(i % RANGES));
        cr_assert_eq(kvs__track_insert(&t, base, 0x1000 * (1 + (base >> 20) % 7), 0, base, &e),
                     KVS_OK);
        cr_assert_eq(kvs__track_remove(&t, base, &e), KVS_OK);
        cr_assert_eq(e.handle, base);
    }
    return NULL;
}

static void *reader(void *arg)
{
    kvs_track_entry_t e;
    unsigned long hits = 0;

    (void)arg;
    while (!atomic_load(&stop)) {
        for (uintptr_t k = 1; k <= 2 * RANGES; k++) {
            uintptr_t addr = 0x100000 * k + 0x10;
            if (kvs__track_find(&t, addr, &e) != KVS_TRACK_NONE) {
                /* A consistent snapshot: the entry holds the address. */
                cr_assert_eq(e.base, 0x100000 * k);
                cr_assert_eq(e.len, 0x1000 * (1 + k % 7));
                hits++;
            }
        }
    }
    return (void *)hits;
}

Test(shim_table, concurrent_readers_and_writers)
{
    pthread_t w[2], r[2];

    atomic_store(&stop, 0);
    for (uintptr_t i = 0; i < 2; i++) {
        pthread_create(&r[i], NULL, reader, NULL);
    }
    for (uintptr_t i = 0; i < 2; i++) {
        pthread_create(&w[i], NULL, writer, (void *)i);
    }
    for (int i = 0; i < 2; i++) {
        pthread_join(w[i], NULL);
    }
    atomic_store(&stop, 1);
    for (int i = 0; i < 2; i++) {
        pthread_join(r[i], NULL);
    }
    cr_expect_eq(kvs__track_count(&t), 0);
}

/* Random inserts and removes (front, back, middle) against a plain model,
 * so the window's two growth directions are both exercised. */
Test(shim_table, random_ops_match_a_model)
{
    enum { UNITS = 200 };
    static int live[UNITS]; /* unit u is [u*0x1000, u*0x1000 + 0x800) when live */
    kvs_track_entry_t e;
    unsigned seed = 12345;
    int nlive = 0;

    for (int step = 0; step < 20000; step++) {
        unsigned u;
        seed = seed * 1103515245u + 12345u;
        u = (seed >> 8) % UNITS;
        if (live[u]) {
            cr_assert_eq(kvs__track_remove(&t, (uintptr_t)u * 0x1000 + 0x1000, &e), KVS_OK);
            live[u] = 0;
            nlive--;
        } else if (nlive < CAP) {
            cr_assert_eq(kvs__track_insert(&t, (uintptr_t)u * 0x1000 + 0x1000, 0x800, 0, u, &e),
                         KVS_OK);
            live[u] = 1;
            nlive++;
        }
        cr_assert_eq(kvs__track_count(&t), (uint32_t)nlive);
        if (step % 97 == 0) {
            for (unsigned k = 0; k < UNITS; k++) {
                uintptr_t a = (uintptr_t)k * 0x1000 + 0x1000;
                uint32_t in = kvs__track_find(&t, a + 0x7ff, &e);
                cr_assert_eq(in != KVS_TRACK_NONE, live[k] != 0, "unit %u", k);
                if (in != KVS_TRACK_NONE) {
                    cr_assert_eq(e.base, a);
                }
                cr_assert_eq(kvs__track_find(&t, a + 0x800, &e), KVS_TRACK_NONE);
            }
        }
    }
}
