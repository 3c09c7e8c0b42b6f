/* SPDX-License-Identifier: Apache-2.0 */
/* alloc.c - the core's allocator wrappers, with failure injection for tests. */
#include "kvs_int.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

/* Countdown to the injected failure; -1 means off. Relaxed atomics keep
 * concurrent callers well-defined; injection itself is for single-threaded
 * tests. */
static _Atomic long fail_countdown = -1;
static _Atomic bool fail_sticky;
static _Atomic unsigned long alloc_counter;

void kvs__alloc_fail_after(long n, bool sticky)
{
    atomic_store(&fail_sticky, sticky);
    atomic_store(&fail_countdown, n);
}

unsigned long kvs__alloc_count(bool reset)
{
    return reset ? atomic_exchange(&alloc_counter, 0) : atomic_load(&alloc_counter);
}

static bool should_fail(void)
{
    atomic_fetch_add_explicit(&alloc_counter, 1, memory_order_relaxed);
    long c = atomic_load_explicit(&fail_countdown, memory_order_relaxed);
    if (KVS_LIKELY(c < 0))
        return false;
    if (c == 0) {
        if (!atomic_load(&fail_sticky))
            atomic_store(&fail_countdown, -1);
        return true;
    }
    atomic_store(&fail_countdown, c - 1);
    return false;
}

void *kvs__malloc(size_t size)
{
    return should_fail() ? NULL : malloc(size);
}

void *kvs__calloc(size_t n, size_t size)
{
    return should_fail() ? NULL : calloc(n, size);
}

void *kvs__realloc(void *ptr, size_t size)
{
    return should_fail() ? NULL : realloc(ptr, size);
}

char *kvs__strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = kvs__malloc(n);
    if (d != NULL)
        memcpy(d, s, n);
    return d;
}

void kvs__free(void *ptr)
{
    free(ptr);
}
