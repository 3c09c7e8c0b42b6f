/* SPDX-License-Identifier: Apache-2.0 */
/* The shim's life: lazy init from the environment, the modes, logging, the
 * failure rule, fork, and the report and teardown at exit. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "shim_int.h"
#include "util_int.h"

kvs_shim_t kvs__shim = {
    .kv_min = KVS_PRELOAD_KV_MIN_DEFAULT,
    .once = PTHREAD_ONCE_INIT,
};

_Static_assert(KVS_PL_TRACE + 1 == KVS__LOG_LEVEL_COUNT, "the shim's levels are util's list");

__thread int kvs__t_guard __attribute__((tls_model("initial-exec")));
__thread int kvs__t_in_observer __attribute__((tls_model("initial-exec")));

__attribute__((format(printf, 2, 3))) void kvs__log(int level, const char *fmt, ...)
{
    char buf[512];
    int err = errno;
    int n;
    va_list ap;

    if (level > atomic_load_explicit(&kvs__shim.log_level, RLX)) {
        return;
    }
    n = snprintf(buf, sizeof(buf), "kvshare-preload[%ld]: %s: ", (long)getpid(),
                 kvs__log_level_name(level));
    if (n < 0 || (size_t)n >= sizeof(buf)) {
        goto out;
    }
    va_start(ap, fmt);
    vsnprintf(buf + n, sizeof(buf) - (size_t)n, fmt, ap);
    va_end(ap);
    n = (int)strlen(buf);
    if ((size_t)n >= sizeof(buf) - 1) {
        n = (int)sizeof(buf) - 2;
    }
    buf[n++] = '\n';
    if (write(STDERR_FILENO, buf, (size_t)n) < 0) {
        /* nowhere else to report it */
    }
out:
    errno = err;
}

/* Fork: every lock, in the order used everywhere (named, ctx, track in
 * track.c; then the observer's), so the child never inherits one held. */
static void kvs__atfork_prepare(void)
{
    kvs__reg_lock_all();
    kvs__api_lock_all();
}

static void kvs__atfork_parent(void)
{
    kvs__api_unlock_all();
    kvs__reg_unlock_all();
}

/* The child is a new process: its driver state, libkvshare context and
 * counters start over, and the next hook runs init again. */
static void kvs__atfork_child(void)
{
    kvs__reg_atfork_child();
    kvs__api_atfork_child();
    memset(&kvs__shim.cnt, 0, sizeof(kvs__shim.cnt));
    kvs__t_guard = 0;
    kvs__t_in_observer = 0;
    kvs__shim.once = (pthread_once_t)PTHREAD_ONCE_INIT;
    atomic_store_explicit(&kvs__shim.mode, KVS_MODE_UNINIT, memory_order_release);
}

static void kvs__init(void)
{
    const char *v;
    int level = KVS_PL_OFF, disable = 0;
    int mode = KVS_MODE_ACTIVE;

    v = getenv("KVSHARE_LOG");
    /* The library's own list (util/loglevel.c), so the two never disagree about one variable. */
    if (v != NULL && kvs__log_level_parse(v, &level) != 0) {
        atomic_store_explicit(&kvs__shim.log_level, KVS_PL_ERROR, RLX);
        kvs__log(KVS_PL_ERROR, "KVSHARE_LOG=%s: expected %s; kvshare steps aside (pass-through)", v,
                 KVS__LOG_LEVEL_NAMES);
        mode = KVS_MODE_ASIDE;
        goto out;
    }
    atomic_store_explicit(&kvs__shim.log_level, level, RLX);

    v = getenv("KVSHARE_DISABLE");
    if (v != NULL && kvs__preload_parse_bool(v, &disable) != KVS_OK) {
        kvs__log(KVS_PL_ERROR,
                 "KVSHARE_DISABLE=%s: expected 1|true|yes|on or 0|false|no|off; "
                 "kvshare steps aside (pass-through)",
                 v);
        mode = KVS_MODE_ASIDE;
        goto out;
    }
    if (disable) {
        mode = KVS_MODE_OFF;
        goto out;
    }

    /* Read before the KV threshold so a stepped-aside shim still reports. */
    kvs__shim.stats_tmpl[0] = '\0';
    v = getenv("KVSHARE_STATS_FILE");
    if (v != NULL && v[0] != '\0') {
        char probe[PATH_MAX];
        if (strlen(v) >= sizeof(kvs__shim.stats_tmpl) ||
            kvs__preload_expand_path(v, 1, probe, sizeof(probe)) != KVS_OK) {
            kvs__log(KVS_PL_ERROR,
                     "KVSHARE_STATS_FILE=%s: expected a path shorter than %d bytes, where "
                     "%%p stands for the pid and %%%% for %%; kvshare steps aside (pass-through)",
                     v, PATH_MAX);
            mode = KVS_MODE_ASIDE;
            goto out;
        }
        memcpy(kvs__shim.stats_tmpl, v, strlen(v) + 1);
    }

    kvs__shim.kv_min = KVS_PRELOAD_KV_MIN_DEFAULT;
    v = getenv("KVSHARE_KV_MIN_BYTES");
    if (v != NULL && kvs__size_parse(v, &kvs__shim.kv_min, NULL, 0) != 0) {
        kvs__log(KVS_PL_ERROR,
                 "KVSHARE_KV_MIN_BYTES=%s: expected %s, such as 67108864 or 64MiB; kvshare steps "
                 "aside (pass-through)",
                 v, KVS__SIZE_GRAMMAR);
        kvs__shim.kv_min = KVS_PRELOAD_KV_MIN_DEFAULT;
        KVS_COUNT(errors, 1);
        mode = KVS_MODE_ASIDE;
        goto out;
    }

    /* Same-host readers map VMM memory only when it can be exported as a
     * POSIX fd; KVSHARE_SHM itself is checked strictly by libkvshare. */
    v = getenv("KVSHARE_SHM");
    kvs__shim.vmm_export = v == NULL || strcasecmp(v, "off") != 0;

    kvs__reg_init();
    kvs__log(KVS_PL_INFO, "active: KV regions are allocations >= %llu bytes; stats file %s",
             (unsigned long long)kvs__shim.kv_min,
             kvs__shim.stats_tmpl[0] ? kvs__shim.stats_tmpl : "(none)");
out:
    if (!kvs__shim.atfork_done) {
        kvs__shim.atfork_done = 1;
        if (pthread_atfork(kvs__atfork_prepare, kvs__atfork_parent, kvs__atfork_child) != 0) {
            kvs__log(KVS_PL_ERROR, "pthread_atfork failed; kvshare steps aside (pass-through)");
            mode = KVS_MODE_ASIDE;
        }
    }
    atomic_store_explicit(&kvs__shim.mode, mode, memory_order_release);
}

int kvs__mode_slow(void)
{
    int err;

    if (kvs__t_guard) {
        return KVS_MODE_UNINIT;
    }
    err = errno;
    kvs__t_guard = 1;
    pthread_once(&kvs__shim.once, kvs__init);
    kvs__t_guard = 0;
    errno = err;
    return atomic_load_explicit(&kvs__shim.mode, memory_order_acquire);
}

void kvs__fail(const char *fmt, ...)
{
    int expected = KVS_MODE_ACTIVE;
    char msg[384];
    va_list ap;

    KVS_COUNT(errors, 1);
    if (!atomic_compare_exchange_strong(&kvs__shim.mode, &expected, KVS_MODE_PASSTHRU)) {
        return; /* someone else failed first and logged */
    }
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    kvs__log(KVS_PL_ERROR, "%s; kvshare passes through from now on", msg);
    kvs__reg_sweep();
}

/* Not a constructor: at unload it reports and tears down, and only if a
 * hook ran. The teardown ends every registration and destroys the context,
 * so the transport closes cleanly and nothing is left behind. */
__attribute__((destructor)) static void kvs__fini(void)
{
    int mode = atomic_load_explicit(&kvs__shim.mode, memory_order_acquire);
    int err = errno;

    if (mode == KVS_MODE_ACTIVE || mode == KVS_MODE_PASSTHRU || mode == KVS_MODE_ASIDE) {
        kvs__t_guard++;
        kvs__write_stats(mode);
        kvs__reg_teardown();
        kvs__t_guard--;
    }
    errno = err;
}
