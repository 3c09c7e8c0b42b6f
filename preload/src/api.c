/* SPDX-License-Identifier: Apache-2.0 */
/* The kvs_preload_* API for in-process connectors, the copy observer, and
 * the counters and stats file. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "shim_int.h"

/* The one copy observer. Copies read fn lock-free and call it under the
 * read lock, so setting a new one (under the write lock) waits for the
 * calls of the old one to end. */
static struct {
    pthread_rwlock_t lock;
    _Atomic(kvs_preload_copy_observer_fn) fn;
    void *arg;
} g_api = {
    .lock = PTHREAD_RWLOCK_INITIALIZER,
};

void kvs__observe(int api, kvs_preload_copy_kind_t kind, uintptr_t dst, uintptr_t src, size_t n,
                  void *stream, const kvs_track_entry_t *de, const kvs_track_entry_t *se)
{
    kvs_preload_copy_observer_fn fn;

    if (KVS_LIKELY(atomic_load_explicit(&g_api.fn, RLX) == NULL)) {
        return;
    }
    pthread_rwlock_rdlock(&g_api.lock);
    fn = atomic_load_explicit(&g_api.fn, RLX);
    if (fn != NULL) {
        kvs_preload_copy_t copy = {
            .version = KVS_PRELOAD_COPY_VERSION,
            .kind = kind,
            .dst = dst,
            .src = src,
            .bytes = n,
            .stream = stream,
            .api = kvs__hook_names[api],
            .dst_region = de != NULL ? de->base : 0,
            .src_region = se != NULL ? se->base : 0,
            .dst_kv = de != NULL && (de->flags & KVS_TRACK_KV) != 0,
            .src_kv = se != NULL && (se->flags & KVS_TRACK_KV) != 0,
        };
        KVS_COUNT(observer_calls, 1);
        kvs__t_in_observer = 1;
        fn(g_api.arg, &copy);
        kvs__t_in_observer = 0;
    }
    pthread_rwlock_unlock(&g_api.lock);
}

void kvs__api_lock_all(void)
{
    pthread_rwlock_wrlock(&g_api.lock);
}

void kvs__api_unlock_all(void)
{
    pthread_rwlock_unlock(&g_api.lock);
}

/* The observer stays installed in the child (it is the application's). */
void kvs__api_atfork_child(void)
{
    pthread_rwlock_init(&g_api.lock, NULL);
}

/* Common entry: init, refuse inside an observer, set the guard. */
static kvs_status_t kvs__api_enter(void)
{
    if (kvs__t_in_observer) {
        return KVS_ERR_BUSY;
    }
    if (kvs__mode() != KVS_MODE_ACTIVE) {
        return KVS_ERR_UNSUPPORTED;
    }
    kvs__t_guard++;
    return KVS_OK;
}

static void kvs__api_leave(void)
{
    kvs__t_guard--;
}

KVS_EXPORT int kvs_preload_enabled(void)
{
    return kvs__mode() == KVS_MODE_ACTIVE;
}

KVS_EXPORT kvs_status_t kvs_preload_set_copy_observer(kvs_preload_copy_observer_fn fn, void *arg)
{
    kvs_status_t status = kvs__api_enter();

    if (status != KVS_OK) {
        return status;
    }
    pthread_rwlock_wrlock(&g_api.lock);
    g_api.arg = arg;
    atomic_store_explicit(&g_api.fn, fn, RLX);
    pthread_rwlock_unlock(&g_api.lock);
    kvs__api_leave();
    return KVS_OK;
}

/* Loads libkvshare and creates the context when no KV region has yet: a
 * connector may ask before the engine allocates its KV cache. */
KVS_EXPORT kvs_status_t kvs_preload_get_ctx(kvs_ctx_h *ctx_p)
{
    kvs_status_t status = kvs__api_enter();
    kvs_ctx_h ctx;

    if (status != KVS_OK) {
        return status;
    }
    if (ctx_p == NULL) {
        status = KVS_ERR_INVALID_PARAM;
        goto out;
    }
    ctx = kvs__ctx();
    if (ctx == NULL) {
        status = KVS_ERR_UNSUPPORTED; /* loading or creation failed; the shim passed through */
        goto out;
    }
    *ctx_p = ctx;
out:
    kvs__api_leave();
    return status;
}

KVS_EXPORT kvs_status_t kvs_preload_register_region(void *ptr, size_t len)
{
    kvs_status_t status = kvs__api_enter();

    if (status != KVS_OK) {
        return status;
    }
    status = kvs__named_register(ptr, len);
    kvs__api_leave();
    return status;
}

KVS_EXPORT kvs_status_t kvs_preload_deregister_region(void *ptr)
{
    kvs_status_t status = kvs__api_enter();

    if (status != KVS_OK) {
        return status;
    }
    status = kvs__named_deregister(ptr);
    kvs__api_leave();
    return status;
}

/* Counter values by name; also used for the stats file. */
static int kvs__counter_value(const char *name, uint64_t *value_p)
{
#define KVS_COUNTER_GET(field)                                                                     \
    if (strcmp(name, #field) == 0) {                                                               \
        *value_p = atomic_load_explicit(&kvs__shim.cnt.field, RLX);                                \
        return 1;                                                                                  \
    }
    KVS_SHIM_COUNTERS(KVS_COUNTER_GET)
#undef KVS_COUNTER_GET
    return kvs__reg_counter(name, value_p);
}

KVS_EXPORT kvs_status_t kvs_preload_counter(const char *name, uint64_t *value_p)
{
    int mode = kvs__mode();

    if (kvs__t_in_observer) {
        return KVS_ERR_BUSY;
    }
    if (mode == KVS_MODE_OFF || mode == KVS_MODE_UNINIT) {
        return KVS_ERR_UNSUPPORTED;
    }
    if (name == NULL || value_p == NULL) {
        return KVS_ERR_INVALID_PARAM;
    }
    return kvs__counter_value(name, value_p) ? KVS_OK : KVS_ERR_NOT_FOUND;
}

KVS_EXPORT kvs_status_t kvs_preload_region_query(const void *ptr, const char *field,
                                                 uint64_t *value_p)
{
    kvs_status_t status = kvs__api_enter();

    if (status != KVS_OK) {
        return status;
    }
    if (field == NULL || value_p == NULL) {
        status = KVS_ERR_INVALID_PARAM;
    } else {
        status = kvs__region_query(ptr, field, value_p);
    }
    kvs__api_leave();
    return status;
}

/* Written at exit: write then rename, so readers never see half a file. */
void kvs__write_stats(int mode)
{
    static const char *const fields[] = {
#define KVS_COUNTER_NAME(field) #field,
        KVS_SHIM_COUNTERS(KVS_COUNTER_NAME)
#undef KVS_COUNTER_NAME
            "tracked",
        "kvs_regions",
    };
    char path[PATH_MAX], tmp[PATH_MAX + 32], buf[4096];
    size_t n = 0;
    int fd, w;

    if (kvs__shim.stats_tmpl[0] == '\0' ||
        kvs__preload_expand_path(kvs__shim.stats_tmpl, (long)getpid(), path, sizeof(path)) !=
            KVS_OK) {
        return;
    }
    w = snprintf(buf, sizeof(buf), "{\"pid\":%ld,\"mode\":\"%s\",\"kv_min_bytes\":%llu",
                 (long)getpid(),
                 mode == KVS_MODE_ACTIVE     ? "active"
                 : mode == KVS_MODE_PASSTHRU ? "passthrough"
                                             : "stepped_aside",
                 (unsigned long long)kvs__shim.kv_min);
    if (w < 0) {
        return;
    }
    n = (size_t)w;
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]) && n < sizeof(buf); i++) {
        uint64_t v = 0;
        kvs__counter_value(fields[i], &v);
        w = snprintf(buf + n, sizeof(buf) - n, ",\"%s\":%llu", fields[i], (unsigned long long)v);
        if (w < 0) {
            return;
        }
        n += (size_t)w;
    }
    if (n + 3 > sizeof(buf)) {
        return;
    }
    buf[n++] = '}';
    buf[n++] = '\n';
    /* Write then rename, so readers never see half a file. */
    snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long)getpid());
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        kvs__log(KVS_PL_WARN, "open(%s): %s", tmp, strerror(errno));
        return;
    }
    if (write(fd, buf, n) != (ssize_t)n || close(fd) != 0 || rename(tmp, path) != 0) {
        kvs__log(KVS_PL_WARN, "writing %s: %s", path, strerror(errno));
        unlink(tmp);
    }
}
