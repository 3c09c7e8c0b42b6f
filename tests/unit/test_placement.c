/* SPDX-License-Identifier: Apache-2.0 */
/* test_placement.c - rendezvous placement: stable, balanced, and minimal movement. */
#include "ctx_int.h"
#include "kvs_test.h"

#include <criterion/criterion.h>
#include <stdio.h>

#define KEYS 20000

static void names(char buf[][32], const char **ptrs, size_t n, size_t first)
{
    for (size_t i = 0; i < n; i++) {
        snprintf(buf[i], 32, "10.0.0.%zu:18515", first + i);
        ptrs[i] = buf[i];
    }
}

Test(placement, balanced_and_stable)
{
    char buf[8][32];
    const char *nodes[8];
    names(buf, nodes, 4, 1);
    size_t count[4] = {0};
    for (uint64_t k = 0; k < KEYS; k++) {
        kvs_key_t key = test_key(k);
        size_t a = kvs__rendezvous(&key, nodes, 4);
        cr_assert_eq(a, kvs__rendezvous(&key, nodes, 4), "placement must be deterministic");
        count[a]++;
    }
    for (int i = 0; i < 4; i++)
        cr_assert(count[i] > KEYS / 4 * 8 / 10 && count[i] < KEYS / 4 * 12 / 10,
                  "node %d holds %zu of %d chains", i, count[i], KEYS);
}

Test(placement, adding_a_node_moves_only_its_share)
{
    char buf[8][32];
    const char *nodes[8];
    names(buf, nodes, 5, 1);
    size_t moved = 0;
    for (uint64_t k = 0; k < KEYS; k++) {
        kvs_key_t key = test_key(k);
        size_t before = kvs__rendezvous(&key, nodes, 4);
        size_t after = kvs__rendezvous(&key, nodes, 5);
        if (after != before) {
            cr_assert_eq(after, 4, "a chain may only move to the new node");
            moved++;
        }
    }
    /* About 1/5 of the chains move; none move between old nodes. */
    cr_assert(moved > KEYS / 5 * 8 / 10 && moved < KEYS / 5 * 12 / 10, "%zu moved", moved);
}

Test(placement, losing_a_node_loses_only_its_share)
{
    char buf[8][32];
    const char *nodes[8], *without[8];
    names(buf, nodes, 4, 1);
    without[0] = nodes[0];
    without[1] = nodes[1];
    without[2] = nodes[3]; /* node 2 is gone */
    for (uint64_t k = 0; k < KEYS; k++) {
        kvs_key_t key = test_key(k);
        size_t before = kvs__rendezvous(&key, nodes, 4);
        size_t after = kvs__rendezvous(&key, without, 3);
        if (before != 2)
            cr_assert_str_eq(without[after], nodes[before], "chain %llu moved off a live node",
                             (unsigned long long)k);
    }
}
