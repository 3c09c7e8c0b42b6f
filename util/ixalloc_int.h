/* SPDX-License-Identifier: Apache-2.0 */
/* ixalloc_int.h - allocation for the index and the decoder, with failure injection for tests. */
#ifndef KVS_IXALLOC_INT_H
#define KVS_IXALLOC_INT_H

#include <stdbool.h>
#include <stddef.h>

/* Every allocation of the event codec and of connectors/index goes through these, so the tests can
 * make each one fail in turn (libuv's loop_init_oom, our core's kvs__alloc_fail_after). Release
 * with free(). (msgpack-c's own allocations are not covered.) */
void *kvs__ix_malloc(size_t size);
void *kvs__ix_calloc(size_t n, size_t size);
void *kvs__ix_realloc(void *ptr, size_t size);

/* Makes the (n+1)-th allocation from now fail, and every one after it while sticky;
 * n < 0 turns injection off. Returns nothing; kvs__ix_alloc_failures() counts the failures
 * injected since the last call with n >= 0. Test-only; not thread-safe. */
void kvs__ix_alloc_fail_after(long n, bool sticky);
unsigned long kvs__ix_alloc_failures(void);

#endif
