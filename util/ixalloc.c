/* SPDX-License-Identifier: Apache-2.0 */
/* ixalloc.c - allocation wrappers of the KV event codec (util/kvevents.c) and the index
 * (connectors/index), with test-only failure injection. */
#include "ixalloc_int.h"

#include <stdlib.h>

static long fail_after = -1; /* allocations left before the failing one; -1: off */
static bool fail_sticky;
static unsigned long failures;

static bool should_fail(void)
{
    if (fail_after < 0)
        return false;
    if (fail_after > 0) {
        fail_after--;
        return false;
    }
    if (!fail_sticky)
        fail_after = -1;
    failures++;
    return true;
}

void *kvs__ix_malloc(size_t size)
{
    return should_fail() ? NULL : malloc(size);
}

void *kvs__ix_calloc(size_t n, size_t size)
{
    return should_fail() ? NULL : calloc(n, size);
}

void *kvs__ix_realloc(void *ptr, size_t size)
{
    return should_fail() ? NULL : realloc(ptr, size);
}

void kvs__ix_alloc_fail_after(long n, bool sticky)
{
    fail_after = n;
    fail_sticky = sticky;
    if (n >= 0)
        failures = 0;
}

unsigned long kvs__ix_alloc_failures(void)
{
    return failures;
}
