/* SPDX-License-Identifier: Apache-2.0 */
/* log.c - formatting log lines into a sink, and the default stderr sink. */
#include "kvs_int.h"
#include "util_int.h"

#include <stdio.h>
#include <time.h>
#include <unistd.h>

_Static_assert(KVS_LOG_TRACE + 1 == KVS__LOG_LEVEL_COUNT, "kvs_log_level_t is util's list");

void kvs__log_default_sink(void *arg, kvs_log_level_t level, const char *msg)
{
    (void)arg;
    /* One fprintf per line so lines from threads do not interleave. */
    fprintf(stderr, "kvshare[%d] %s: %s\n", (int)getpid(), kvs__log_level_name((int)level), msg);
}

void kvs__logf(const kvs__logger_t *lg, kvs_log_level_t level, const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    lg->fn(lg->arg, level, line);
}

uint64_t kvs__now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

kvs_status_t kvs__failf(char *buf, size_t len, kvs_status_t status, const char *fmt, ...)
{
    if (buf != NULL && len > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(buf, len, fmt, ap);
        va_end(ap);
    }
    return status;
}
