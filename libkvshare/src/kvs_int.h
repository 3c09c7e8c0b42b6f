/* SPDX-License-Identifier: Apache-2.0 */
/* kvs_int.h - internals shared by the core's files: allocation, logging, time. */
#ifndef KVS_INT_H
#define KVS_INT_H

#include "kvshare.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define KVS_PRINTF(fmt, args) __attribute__((format(printf, fmt, args)))
#define KVS_ARRAY_SIZE(a)     (sizeof(a) / sizeof((a)[0]))
#define KVS_UNLIKELY(x)       __builtin_expect(!!(x), 0)
#define KVS_LIKELY(x)         __builtin_expect(!!(x), 1)

/* --- allocation: every allocation site goes through these so tests can
 * inject failures (kvs__alloc_fail_after) and walk every site. --------- */
void *kvs__malloc(size_t size);
void *kvs__calloc(size_t n, size_t size);
void *kvs__realloc(void *ptr, size_t size);
char *kvs__strdup(const char *s);
void kvs__free(void *ptr);
/* Make the (n+1)-th allocation from now fail, and every one after it while
 * `sticky`; n < 0 turns injection off. Test-only; not thread-safe. */
void kvs__alloc_fail_after(long n, bool sticky);
/* Number of allocations attempted since the counter was last reset. */
unsigned long kvs__alloc_count(bool reset);

/* --- block keys: test-only switch between the chain's SIMD token encoder
 * and the scalar one; returns whether the SIMD one is now in use (false where
 * the CPU or build has none). Not thread-safe with chains on @h. */
bool kvs__hasher_set_simd(kvs_hasher_h h, bool on);

/* --- logging: a sink per context; the level is checked before formatting. */
typedef struct kvs__logger {
    kvs_log_fn fn;
    void *arg;
    kvs_log_level_t level;
} kvs__logger_t;

void kvs__log_default_sink(void *arg, kvs_log_level_t level, const char *msg);
/* Writes a reason into the caller's buffer (if any) and returns @status:
 * the one way the core reports "what was wrong" next to a status code. */
kvs_status_t kvs__failf(char *buf, size_t len, kvs_status_t status, const char *fmt, ...)
    KVS_PRINTF(4, 5);
void kvs__logf(const kvs__logger_t *lg, kvs_log_level_t level, const char *fmt, ...)
    KVS_PRINTF(3, 4);

#define kvs__log(lg, lvl, ...)                                                                     \
    do {                                                                                           \
        const kvs__logger_t *lg_ = (lg);                                                           \
        if (lg_ != NULL && lg_->fn != NULL && (lvl) <= lg_->level)                                 \
            kvs__logf(lg_, (lvl), __VA_ARGS__);                                                    \
    } while (0)
#define kvs__error(lg, ...) kvs__log(lg, KVS_LOG_ERROR, __VA_ARGS__)
#define kvs__warn(lg, ...)  kvs__log(lg, KVS_LOG_WARN, __VA_ARGS__)
#define kvs__info(lg, ...)  kvs__log(lg, KVS_LOG_INFO, __VA_ARGS__)
#define kvs__debug(lg, ...) kvs__log(lg, KVS_LOG_DEBUG, __VA_ARGS__)

/* --- time ---------------------------------------------------------------- */
uint64_t kvs__now_ns(void);
static inline uint64_t kvs__now_ms(void)
{
    return kvs__now_ns() / 1000000u;
}

#endif /* KVS_INT_H */
