/* SPDX-License-Identifier: Apache-2.0 */
/* log.c - formatting log lines into a sink, and the default stderr sink. */
#include "kvs_int.h"

#include <stdio.h>
#include <time.h>
#include <unistd.h>

static const char *level_name(kvs_log_level_t level)
{
    static const char *const names[] = {"off", "error", "warn", "info", "debug", "trace"};
    return ((unsigned)level < KVS_ARRAY_SIZE(names)) ? names[level] : "?";
}

void kvs__log_default_sink(void *arg, kvs_log_level_t level, const char *msg)
{
    (void)arg;
    /* One fprintf per line so lines from threads do not interleave. */
    fprintf(stderr, "kvshare[%d] %s: %s\n", (int)getpid(), level_name(level), msg);
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
