/* SPDX-License-Identifier: Apache-2.0 */
/*
 * libkvshare_preload.so: interposes the CUDA driver's allocation, VMM and
 * copy entry points (reached by direct linking, dlsym and cuGetProcAddress),
 * tracks live device allocations, registers KV regions with libkvshare and
 * reports copies to an in-process observer.
 *
 * Rules this file keeps (STYLE.md rule 8):
 *  - Hook paths do no malloc and use no stdio streams, and leave errno as the
 *    driver set it. Two rare events leave the per-call path: registering a
 *    KV region (libkvshare allocates its bookkeeping) and the one-time
 *    failure line (vsnprintf into a stack buffer, then one write(2)).
 *  - A thread-local flag turns every hook reached from inside the shim (or
 *    from the driver while we call it) into a plain forward: no recursion.
 *  - Init is lazy, under pthread_once, and never calls the driver, so a hook
 *    entered during init on the same thread (the CUDA 12.8 cuGetExportTable
 *    re-entry that deadlocked HAMi-core) just forwards instead of waiting.
 *  - Real functions come from the driver's own handle (never the hook
 *    itself), and a NULL one is never called or handed out.
 *  - Any internal failure logs one line and turns the shim into a
 *    pass-through; it never takes the engine down.
 */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kvs_cuda.h"
#include "kvs_preload.h"
#include "kvshare.h"
#include "kvshare_dl.h"
#include "preload_int.h"

#define KVS_EXPORT       __attribute__((visibility("default")))
#define KVS_LIKELY(x)    __builtin_expect(!!(x), 1)
#define KVS_UNLIKELY(x)  __builtin_expect(!!(x), 0)
#define RLX              memory_order_relaxed
#define KVS_TRACK_CAP    16384u
#define KVS_NAMED_CAP    256u
#define KVS_REAL_MISSING ((void *)1) /* negative cache: the driver lacks it */
/* For code that runs when a sanitizer runtime calls dlsym while it is still
 * setting itself up (ASan resolves its interceptors through dlsym, which is
 * ours): instrumented code would touch shadow memory that is not there yet. */
#define KVS_NO_SANITIZE __attribute__((no_sanitize("address", "undefined")))

/* ------------------------------------------------------------------------ */
/* Hook table                                                               */
/* ------------------------------------------------------------------------ */
enum {
#define KVS_HOOK_ENUM(name, params, args) KVS_H_##name,
    KVS_CUDA_HOOKED_FUNCS(KVS_HOOK_ENUM)
#undef KVS_HOOK_ENUM
        KVS_H_COUNT
};

#define KVS_HOOK_DECL(name, params, args) static CUresult kvs_hook_##name params;
KVS_CUDA_HOOKED_FUNCS(KVS_HOOK_DECL)
#undef KVS_HOOK_DECL

static const char *const kvs_hook_names[KVS_H_COUNT] = {
#define KVS_HOOK_NAME(name, params, args) #name,
    KVS_CUDA_HOOKED_FUNCS(KVS_HOOK_NAME)
#undef KVS_HOOK_NAME
};

/* Our own hooks, by their hidden names: the exported names could bind to
 * another interposer loaded ahead of us. */
static void *const kvs_hook_addrs[KVS_H_COUNT] = {
#define KVS_HOOK_ADDR(name, params, args) (void *)(uintptr_t)kvs_hook_##name,
    KVS_CUDA_HOOKED_FUNCS(KVS_HOOK_ADDR)
#undef KVS_HOOK_ADDR
};

/* ------------------------------------------------------------------------ */
/* State                                                                    */
/* ------------------------------------------------------------------------ */
enum {
    KVS_MODE_UNINIT = 0,
    KVS_MODE_ACTIVE,   /* tracking */
    KVS_MODE_PASSTHRU, /* an internal failure after start: forward only */
    KVS_MODE_ASIDE,    /* a bad KVSHARE_* value at start: forward only */
    KVS_MODE_OFF,      /* KVSHARE_DISABLE=1: forward only, write nothing */
};

#define KVS_SHIM_COUNTERS(X)                                                                       \
    X(allocations)                                                                                 \
    X(allocated_bytes)                                                                             \
    X(frees)                                                                                       \
    X(freed_bytes)                                                                                 \
    X(kv_regions)                                                                                  \
    X(kv_registered)                                                                               \
    X(named_regions)                                                                               \
    X(vmm_creates)                                                                                 \
    X(vmm_releases)                                                                                \
    X(vmm_reserves)                                                                                \
    X(vmm_address_frees)                                                                           \
    X(vmm_maps)                                                                                    \
    X(vmm_unmaps)                                                                                  \
    X(copies_htod)                                                                                 \
    X(copies_htod_bytes)                                                                           \
    X(copies_dtoh)                                                                                 \
    X(copies_dtoh_bytes)                                                                           \
    X(copies_dtod)                                                                                 \
    X(copies_dtod_bytes)                                                                           \
    X(copies_other)                                                                                \
    X(copies_other_bytes)                                                                          \
    X(observer_calls)                                                                              \
    X(dlsym_hooked)                                                                                \
    X(procaddr_hooked)                                                                             \
    X(procaddr_unmatched)                                                                          \
    X(track_dropped)                                                                               \
    X(errors)

typedef struct kvs_shim_counters {
#define KVS_COUNTER_FIELD(name) _Atomic uint64_t name;
    KVS_SHIM_COUNTERS(KVS_COUNTER_FIELD)
#undef KVS_COUNTER_FIELD
} kvs_shim_counters_t;

typedef struct kvs_named {
    uintptr_t base;
    size_t len;
    kvs_region_h region; /* NULL when covered by a registered KV allocation */
    int used;
} kvs_named_t;

static _Atomic int g_mode;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static _Atomic int g_log_level;
static uint64_t g_kv_min = KVS_PRELOAD_KV_MIN_DEFAULT;
static char g_stats_tmpl[PATH_MAX];
static int g_atfork_done;
static int g_track_ready;
static kvs_shim_counters_t g_cnt;

static kvs_track_t g_track;
static kvs_track_slot_t g_track_slots[KVS_TRACK_CAP];
static _Atomic uint32_t g_track_order[2 * KVS_TRACK_CAP];
static uint32_t g_track_free[KVS_TRACK_CAP];
static _Atomic int g_full_logged;

static pthread_mutex_t g_named_lock = PTHREAD_MUTEX_INITIALIZER;
static kvs_named_t g_named[KVS_NAMED_CAP];
static _Atomic uint32_t g_named_n;

/* Guards the context's whole life: its creation, every kvs_mem_register and
 * kvs_mem_deregister, and its destruction at exit (after which g_ctx_dead
 * turns those into no-ops). Lock order: g_named_lock, g_ctx_lock,
 * g_track.lock, g_obs_lock. */
static pthread_mutex_t g_ctx_lock = PTHREAD_MUTEX_INITIALIZER;
static _Atomic(kvs_ctx_h) g_ctx;
static int g_ctx_dead;
/* libkvshare, dlopen'd at the first KV region (or kvs_preload_get_ctx), so a
 * process that never allocates KV memory never maps it, UCX or OpenSSL.
 * Written once under g_ctx_lock before g_ctx is published; every call
 * through it is made with a context in hand, so it is loaded by then. */
static kvs_dl_t g_kvs;
/* Contexts inherited by forked children: unusable there, but kept
 * reachable so leak checkers do not count them. */
static kvs_ctx_h g_stale_ctx[8];

static pthread_rwlock_t g_obs_lock = PTHREAD_RWLOCK_INITIALIZER;
static _Atomic(kvs_preload_copy_observer_fn) g_obs_fn;
static void *g_obs_arg;

typedef void *(*kvs_dlsym_fn)(void *handle, const char *symbol);
static _Atomic(kvs_dlsym_fn) g_real_dlsym;
static _Atomic(void *) g_libcuda;
static _Atomic(void *) g_real[KVS_H_COUNT];
static _Atomic int g_missing_logged[KVS_H_COUNT];
static kvs_cuda_driver_t g_drv;
static _Atomic int g_drv_state; /* 0 none, 1 opening, 2 ready, 3 failed */

static __thread int t_guard __attribute__((tls_model("initial-exec")));
static __thread int t_in_observer __attribute__((tls_model("initial-exec")));

/* The trampoline in dlsym_tramp.S (same address as our exported dlsym). */
void *kvs__dlsym_tramp(void *handle, const char *symbol) __attribute__((visibility("hidden")));
void *kvs__dlsym_route(void *handle, const char *symbol, void **result_p)
    __attribute__((visibility("hidden")));

#define KVS_COUNT(name, n) atomic_fetch_add_explicit(&g_cnt.name, (uint64_t)(n), RLX)

/* ------------------------------------------------------------------------ */
/* Logging: one write(2) per line, only at or below KVSHARE_LOG's level.     */
/* ------------------------------------------------------------------------ */
__attribute__((format(printf, 2, 3))) static void kvs__log(int level, const char *fmt, ...)
{
    static const char *const names[] = {"off", "error", "warn", "info", "debug", "trace"};
    char buf[512];
    int err = errno;
    int n;
    va_list ap;

    if (level > atomic_load_explicit(&g_log_level, RLX)) {
        return;
    }
    n = snprintf(buf, sizeof(buf), "kvshare-preload[%ld]: %s: ", (long)getpid(), names[level]);
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

/* ------------------------------------------------------------------------ */
/* Real functions                                                           */
/* ------------------------------------------------------------------------ */
KVS_NO_SANITIZE static kvs_dlsym_fn kvs__real_dlsym(void)
{
    static const char *const versions[] = {"GLIBC_2.34", "GLIBC_2.2.5", "GLIBC_2.17"};
    kvs_dlsym_fn fn = atomic_load_explicit(&g_real_dlsym, memory_order_acquire);

    if (KVS_LIKELY(fn != NULL)) {
        return fn;
    }
    /* Idempotent: racing threads find the same answer, so no lock (a racy
     * one-time init was a HAMi-core bug; an idempotent one is not). */
    for (size_t i = 0; i < sizeof(versions) / sizeof(versions[0]); i++) {
        void *p = dlvsym(RTLD_NEXT, "dlsym", versions[i]);
        if (p != NULL && p != (void *)(uintptr_t)kvs__dlsym_tramp) {
            fn = (kvs_dlsym_fn)(uintptr_t)p;
            break;
        }
    }
    if (fn == NULL) {
        kvs__log(KVS_PL_ERROR, "dlvsym(RTLD_NEXT, \"dlsym\"): no real dlsym besides the hook");
        return NULL;
    }
    atomic_store_explicit(&g_real_dlsym, fn, memory_order_release);
    return fn;
}

static void *kvs__libcuda(void)
{
    void *h = atomic_load_explicit(&g_libcuda, memory_order_acquire);
    void *expected = NULL;
    const char *path;

    if (KVS_LIKELY(h != NULL)) {
        return h;
    }
    path = getenv("KVSHARE_LIBCUDA");
    if (path == NULL || path[0] == '\0') {
        path = "libcuda.so.1";
    }
    /* The application has the driver loaded already (it called into it),
     * so this only takes a reference to the same object. */
    h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (h == NULL) {
        kvs__log(KVS_PL_ERROR, "dlopen(%s): %s", path, dlerror());
        return NULL;
    }
    if (!atomic_compare_exchange_strong(&g_libcuda, &expected, h)) {
        dlclose(h); /* another thread won; drop our extra reference */
        h = expected;
    }
    return h;
}

static void *kvs__real_slow(int idx)
{
    int err = errno;
    kvs_dlsym_fn rd = kvs__real_dlsym();
    void *h = kvs__libcuda();
    void *p = (rd != NULL && h != NULL) ? rd(h, kvs_hook_names[idx]) : NULL;

    if (p == kvs_hook_addrs[idx]) {
        p = NULL; /* never call ourselves */
    }
    if (p == NULL) {
        if (h != NULL) {
            /* Only a definite "not in this driver" is cached. */
            atomic_store_explicit(&g_real[idx], KVS_REAL_MISSING, memory_order_release);
        }
    } else {
        atomic_store_explicit(&g_real[idx], p, memory_order_release);
    }
    errno = err;
    return p;
}

static inline void *kvs__real(int idx)
{
    void *p = atomic_load_explicit(&g_real[idx], memory_order_acquire);

    if (KVS_LIKELY(p != NULL && p != KVS_REAL_MISSING)) {
        return p;
    }
    return p == KVS_REAL_MISSING ? NULL : kvs__real_slow(idx);
}

/* What a hook returns when the driver lacks the function it stands for. */
static CUresult kvs__missing(int idx)
{
    int expected = 0;

    if (atomic_compare_exchange_strong(&g_missing_logged[idx], &expected, 1)) {
        kvs__log(KVS_PL_WARN, "%s: not found in the CUDA driver; returning CUDA_ERROR_NOT_FOUND",
                 kvs_hook_names[idx]);
    }
    return CUDA_ERROR_NOT_FOUND;
}

/* The driver table for memory-type queries; NULL while another thread
 * opens it (the caller then treats the pointer's kind as unknown). */
static const kvs_cuda_driver_t *kvs__driver(void)
{
    int state = atomic_load_explicit(&g_drv_state, memory_order_acquire);
    int expected = 0;
    kvs_dlsym_fn rd;

    if (state == 2) {
        return &g_drv;
    }
    if (state != 0 || !atomic_compare_exchange_strong(&g_drv_state, &expected, 1)) {
        return NULL;
    }
    rd = kvs__real_dlsym();
    if (rd == NULL || kvs_cuda_driver_open(rd, &g_drv, NULL, 0) != KVS_OK) {
        atomic_store_explicit(&g_drv_state, 3, memory_order_release);
        return NULL;
    }
    atomic_store_explicit(&g_drv_state, 2, memory_order_release);
    return &g_drv;
}

/* ------------------------------------------------------------------------ */
/* Init, fork, failure                                                      */
/* ------------------------------------------------------------------------ */
static void kvs__atfork_prepare(void)
{
    /* The lock order used everywhere: named, ctx, track, observer. */
    pthread_mutex_lock(&g_named_lock);
    pthread_mutex_lock(&g_ctx_lock);
    if (g_track_ready) {
        pthread_mutex_lock(&g_track.lock);
    }
    pthread_rwlock_wrlock(&g_obs_lock);
}

static void kvs__atfork_parent(void)
{
    pthread_rwlock_unlock(&g_obs_lock);
    if (g_track_ready) {
        pthread_mutex_unlock(&g_track.lock);
    }
    pthread_mutex_unlock(&g_ctx_lock);
    pthread_mutex_unlock(&g_named_lock);
}

static void kvs__atfork_child(void)
{
    kvs_ctx_h ctx = atomic_load_explicit(&g_ctx, RLX);

    /* The child is a new process: its driver state, libkvshare context and
     * counters start over, and the next hook runs init again. The parent's
     * region handles stay in the (unused) arrays, reachable but never used. */
    pthread_mutex_init(&g_ctx_lock, NULL);
    pthread_mutex_init(&g_named_lock, NULL);
    pthread_rwlock_init(&g_obs_lock, NULL);
    if (g_track_ready) {
        kvs__track_reset(&g_track);
    }
    if (ctx != NULL) {
        for (size_t i = 0; i < sizeof(g_stale_ctx) / sizeof(g_stale_ctx[0]); i++) {
            if (g_stale_ctx[i] == NULL) {
                g_stale_ctx[i] = ctx;
                break;
            }
        }
    }
    atomic_store_explicit(&g_ctx, NULL, RLX);
    g_ctx_dead = 0;
    for (uint32_t i = 0; i < KVS_NAMED_CAP; i++) {
        g_named[i].used = 0;
    }
    atomic_store_explicit(&g_named_n, 0, RLX);
    memset(&g_cnt, 0, sizeof(g_cnt));
    atomic_store_explicit(&g_full_logged, 0, RLX);
    t_guard = 0;
    t_in_observer = 0;
    g_once = (pthread_once_t)PTHREAD_ONCE_INIT;
    atomic_store_explicit(&g_mode, KVS_MODE_UNINIT, memory_order_release);
}

static void kvs__init(void)
{
    const char *v;
    int level = KVS_PL_OFF, disable = 0;
    int mode = KVS_MODE_ACTIVE;

    v = getenv("KVSHARE_LOG");
    if (v != NULL && kvs__preload_parse_log_level(v, &level) != KVS_OK) {
        atomic_store_explicit(&g_log_level, KVS_PL_ERROR, RLX);
        kvs__log(KVS_PL_ERROR,
                 "KVSHARE_LOG=%s: expected off|error|warn|info|debug|trace; "
                 "kvshare steps aside (pass-through)",
                 v);
        mode = KVS_MODE_ASIDE;
        goto out;
    }
    atomic_store_explicit(&g_log_level, level, RLX);

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
    g_stats_tmpl[0] = '\0';
    v = getenv("KVSHARE_STATS_FILE");
    if (v != NULL && v[0] != '\0') {
        char probe[PATH_MAX];
        if (strlen(v) >= sizeof(g_stats_tmpl) ||
            kvs__preload_expand_path(v, 1, probe, sizeof(probe)) != KVS_OK) {
            kvs__log(KVS_PL_ERROR,
                     "KVSHARE_STATS_FILE=%s: expected a path shorter than %d bytes, where "
                     "%%p stands for the pid and %%%% for %%; kvshare steps aside (pass-through)",
                     v, PATH_MAX);
            mode = KVS_MODE_ASIDE;
            goto out;
        }
        memcpy(g_stats_tmpl, v, strlen(v) + 1);
    }

    g_kv_min = KVS_PRELOAD_KV_MIN_DEFAULT;
    v = getenv("KVSHARE_KV_MIN_BYTES");
    if (v != NULL && kvs__preload_parse_bytes(v, &g_kv_min) != KVS_OK) {
        kvs__log(KVS_PL_ERROR,
                 "KVSHARE_KV_MIN_BYTES=%s: expected a byte count such as 67108864, 64M or "
                 "64MiB; kvshare steps aside (pass-through)",
                 v);
        g_kv_min = KVS_PRELOAD_KV_MIN_DEFAULT;
        KVS_COUNT(errors, 1);
        mode = KVS_MODE_ASIDE;
        goto out;
    }

    if (!g_track_ready) {
        kvs__track_init(&g_track, g_track_slots, g_track_order, g_track_free, KVS_TRACK_CAP);
        g_track_ready = 1;
    }
    kvs__log(KVS_PL_INFO, "active: KV regions are allocations >= %llu bytes; stats file %s",
             (unsigned long long)g_kv_min, g_stats_tmpl[0] ? g_stats_tmpl : "(none)");
out:
    if (!g_atfork_done) {
        g_atfork_done = 1;
        if (pthread_atfork(kvs__atfork_prepare, kvs__atfork_parent, kvs__atfork_child) != 0) {
            kvs__log(KVS_PL_ERROR, "pthread_atfork failed; kvshare steps aside (pass-through)");
            mode = KVS_MODE_ASIDE;
        }
    }
    atomic_store_explicit(&g_mode, mode, memory_order_release);
}

/* Runs init once; keeps errno. Returns the mode. Never waits on itself: a
 * thread already inside the shim (t_guard) does not enter pthread_once. */
static int kvs__mode(void)
{
    int mode = atomic_load_explicit(&g_mode, memory_order_acquire);
    int err;

    if (KVS_LIKELY(mode != KVS_MODE_UNINIT)) {
        return mode;
    }
    if (t_guard) {
        return KVS_MODE_UNINIT;
    }
    err = errno;
    t_guard = 1;
    pthread_once(&g_once, kvs__init);
    t_guard = 0;
    errno = err;
    return atomic_load_explicit(&g_mode, memory_order_acquire);
}

/* Enters a hook's bookkeeping: 1 (guard set) when the shim should track. */
static inline int kvs__enter(void)
{
    if (KVS_UNLIKELY(t_guard)) {
        return 0;
    }
    if (KVS_UNLIKELY(kvs__mode() != KVS_MODE_ACTIVE)) {
        return 0;
    }
    t_guard = 1;
    return 1;
}

static inline void kvs__leave(int err)
{
    t_guard = 0;
    errno = err;
}

static void kvs__deregister(kvs_region_h region)
{
    if (region == NULL) {
        return;
    }
    pthread_mutex_lock(&g_ctx_lock);
    if (!g_ctx_dead) {
        g_kvs.mem_deregister(region); /* after exit's teardown the context freed it */
    }
    pthread_mutex_unlock(&g_ctx_lock);
}

/* Logs one line, and switches to pass-through after dropping every
 * registration (the memory may be freed behind our back from now on). */
__attribute__((format(printf, 1, 2))) static void kvs__fail(const char *fmt, ...)
{
    int expected = KVS_MODE_ACTIVE;
    kvs_region_h region;
    char msg[384];
    va_list ap;

    KVS_COUNT(errors, 1);
    if (!atomic_compare_exchange_strong(&g_mode, &expected, KVS_MODE_PASSTHRU)) {
        return; /* someone else failed first and logged */
    }
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    kvs__log(KVS_PL_ERROR, "%s; kvshare passes through from now on", msg);
    while (kvs__track_take_region(&g_track, &region) == KVS_OK) {
        kvs__deregister(region);
    }
    pthread_mutex_lock(&g_named_lock);
    for (uint32_t i = 0; i < KVS_NAMED_CAP; i++) {
        if (g_named[i].used) {
            kvs__deregister(g_named[i].region);
            g_named[i].used = 0;
        }
    }
    atomic_store_explicit(&g_named_n, 0, RLX);
    pthread_mutex_unlock(&g_named_lock);
}

/* ------------------------------------------------------------------------ */
/* libkvshare registration                                                  */
/* ------------------------------------------------------------------------ */
/* Loads libkvshare into g_kvs, most explicit place first: KVSHARE_LIBRARY
 * (alone: an explicit choice is never second-guessed), then the shim's own
 * folder (the webhook copies both files there, and a packager installs them
 * side by side), then the soname, which dlopen looks up through the shim's
 * RUNPATH and the usual search. Called under g_ctx_lock. */
static kvs_status_t kvs__load_kvshare(char *why, size_t len)
{
    static const char soname[] = "/" KVS_DL_SONAME;
    const char *env = getenv("KVSHARE_LIBRARY");
    char path[PATH_MAX], first[256] = "";
    Dl_info info;
    const char *slash;

    if (env != NULL && env[0] != '\0') {
        return kvs_dl_open(&g_kvs, env, why, len);
    }
    if (dladdr((void *)(uintptr_t)kvs__load_kvshare, &info) != 0 && info.dli_fname != NULL &&
        (slash = strrchr(info.dli_fname, '/')) != NULL &&
        (size_t)(slash - info.dli_fname) + sizeof(soname) <= sizeof(path)) {
        memcpy(path, info.dli_fname, (size_t)(slash - info.dli_fname));
        memcpy(path + (slash - info.dli_fname), soname, sizeof(soname));
        if (access(path, F_OK) == 0 && kvs_dl_open(&g_kvs, path, first, sizeof(first)) == KVS_OK) {
            return KVS_OK;
        }
    }
    if (kvs_dl_open(&g_kvs, NULL, why, len) == KVS_OK) {
        return KVS_OK;
    }
    if (first[0] != '\0') {
        /* Both failed: say why for both. */
        size_t n = strlen(why);
        snprintf(why + n, len - n, "; %s", first);
    }
    return KVS_ERR_NOT_FOUND;
}

static kvs_ctx_h kvs__ctx(void)
{
    kvs_ctx_h ctx = atomic_load_explicit(&g_ctx, memory_order_acquire);
    kvs_ctx_params_t params;
    char errbuf[256] = "";
    kvs_status_t status;

    if (KVS_LIKELY(ctx != NULL)) {
        return ctx;
    }
    pthread_mutex_lock(&g_ctx_lock);
    ctx = atomic_load_explicit(&g_ctx, RLX);
    if (ctx == NULL && g_ctx_dead) {
        pthread_mutex_unlock(&g_ctx_lock);
        return NULL; /* exiting: torn down for good */
    }
    if (ctx == NULL && g_kvs.handle == NULL &&
        kvs__load_kvshare(errbuf, sizeof(errbuf)) != KVS_OK) {
        pthread_mutex_unlock(&g_ctx_lock);
        kvs__fail("loading libkvshare: %s", errbuf);
        return NULL;
    }
    if (ctx == NULL) {
        memset(&params, 0, sizeof(params));
        params.field_mask = KVS_CTX_FIELD_ERRBUF;
        params.errbuf = errbuf;
        params.errbuf_len = sizeof(errbuf);
        status = g_kvs.ctx_create(&params, &ctx);
        if (status != KVS_OK) {
            pthread_mutex_unlock(&g_ctx_lock);
            kvs__fail("kvs_ctx_create: %s%s%s", g_kvs.status_string(status), errbuf[0] ? ": " : "",
                      errbuf);
            return NULL;
        }
        atomic_store_explicit(&g_ctx, ctx, memory_order_release);
    }
    pthread_mutex_unlock(&g_ctx_lock);
    return ctx;
}

/* Registers a new KV allocation. Runs after the driver call returned and
 * with no shim lock held; libkvshare makes no CUDA call here (and if a
 * future transport does, t_guard makes that call a plain forward). */
static void kvs__register_entry(const kvs_track_entry_t *e)
{
    kvs_ctx_h ctx = kvs__ctx();
    kvs_region_h region = NULL;
    kvs_status_t status;

    if (ctx == NULL) {
        return;
    }
    pthread_mutex_lock(&g_ctx_lock);
    status = g_ctx_dead ? KVS_OK
                        : g_kvs.mem_register(ctx, (void *)e->base, e->len, KVS_MEM_CUDA, &region);
    pthread_mutex_unlock(&g_ctx_lock);
    if (status == KVS_OK && region == NULL) {
        return; /* exiting */
    }
    if (status != KVS_OK) {
        kvs__fail("kvs_mem_register(%p, %zu): %s", (void *)e->base, e->len,
                  g_kvs.status_string(status));
        return;
    }
    KVS_COUNT(kv_registered, 1);
    if (!kvs__track_swap_region(&g_track, e->slot, e->gen, NULL, region)) {
        kvs__deregister(region); /* freed meanwhile (a racy program) */
        return;
    }
    /* If the shim failed meanwhile its sweep may have run before we stored
     * the handle; take it back unless the sweep already did. */
    if (atomic_load_explicit(&g_mode, memory_order_acquire) != KVS_MODE_ACTIVE &&
        kvs__track_swap_region(&g_track, e->slot, e->gen, region, NULL)) {
        kvs__deregister(region);
    }
}

/* Deregisters named regions inside a freed allocation. */
static void kvs__drop_named_in(uintptr_t base, size_t len)
{
    if (atomic_load_explicit(&g_named_n, RLX) == 0) {
        return;
    }
    pthread_mutex_lock(&g_named_lock);
    for (uint32_t i = 0; i < KVS_NAMED_CAP; i++) {
        if (g_named[i].used && g_named[i].base >= base && g_named[i].base - base < len) {
            kvs__deregister(g_named[i].region);
            g_named[i].used = 0;
            atomic_fetch_sub_explicit(&g_named_n, 1, RLX);
        }
    }
    pthread_mutex_unlock(&g_named_lock);
}

static void kvs__untrack(const kvs_track_entry_t *e)
{
    kvs__drop_named_in(e->base, e->len);
    kvs__deregister(e->region);
}

/* ------------------------------------------------------------------------ */
/* Bookkeeping                                                              */
/* ------------------------------------------------------------------------ */
static void kvs__track_range(uintptr_t base, size_t len, uint32_t flags, uint64_t handle)
{
    kvs_track_entry_t e, old;
    kvs_status_t status;

    if (len >= g_kv_min) {
        flags |= KVS_TRACK_KV;
    }
    status = kvs__track_insert(&g_track, base, len, flags, handle, &e);
    if (status == KVS_ERR_INVALID_PARAM) {
        /* The driver handed out memory we still track: we missed its free
         * (e.g. through an entry point we do not hook). Drop the stale ones. */
        while (kvs__track_take_overlap(&g_track, base, len, &old) == KVS_OK) {
            kvs__untrack(&old);
        }
        status = kvs__track_insert(&g_track, base, len, flags, handle, &e);
    }
    if (status == KVS_ERR_NO_SPACE) {
        int expected = 0;
        KVS_COUNT(track_dropped, 1);
        if (atomic_compare_exchange_strong(&g_full_logged, &expected, 1)) {
            kvs__log(KVS_PL_WARN, "tracking table full (%u allocations); new ones go untracked",
                     KVS_TRACK_CAP);
        }
        return;
    }
    if (status != KVS_OK) {
        KVS_COUNT(errors, 1);
        return;
    }
    if (flags & KVS_TRACK_KV) {
        KVS_COUNT(kv_regions, 1);
        kvs__register_entry(&e);
    }
}

static void kvs__on_alloc(CUdeviceptr base, size_t len)
{
    KVS_COUNT(allocations, 1);
    KVS_COUNT(allocated_bytes, len);
    kvs__track_range((uintptr_t)base, len, 0, 0);
}

/* Before the driver frees @base: deregister first, as libkvshare requires. */
static void kvs__on_free(CUdeviceptr base, size_t *len_p)
{
    kvs_track_entry_t e;

    *len_p = 0;
    if (base != 0 && kvs__track_remove(&g_track, (uintptr_t)base, &e) == KVS_OK) {
        *len_p = e.len;
        kvs__untrack(&e);
    }
}

static void kvs__untrack_range(uintptr_t base, size_t len)
{
    kvs_track_entry_t e;

    while (kvs__track_take_overlap(&g_track, base, len, &e) == KVS_OK) {
        kvs__untrack(&e);
    }
}

enum { KVS_CK_HTOD, KVS_CK_DTOH, KVS_CK_DTOD, KVS_CK_UNIFIED };

/* 1 device, 0 host, -1 unknown: for unified-address copies of memory we
 * do not track (allocated before the shim, or by another process). */
static int kvs__is_device(uintptr_t p)
{
    const kvs_cuda_driver_t *drv = kvs__driver();
    kvs_mem_type_t type;

    if (drv == NULL || kvs_cuda_mem_type(drv, (const void *)p, &type, NULL) != KVS_OK) {
        return -1;
    }
    return type == KVS_MEM_CUDA;
}

static void kvs__on_copy(int api, int how, uintptr_t dst, uintptr_t src, size_t n, void *stream)
{
    kvs_track_entry_t de, se;
    uint32_t ds = KVS_TRACK_NONE, ss = KVS_TRACK_NONE;
    kvs_preload_copy_kind_t kind;
    kvs_preload_copy_observer_fn fn;

    if (how != KVS_CK_HTOD) {
        ss = kvs__track_find(&g_track, src, &se);
    }
    if (how != KVS_CK_DTOH) {
        ds = kvs__track_find(&g_track, dst, &de);
    }
    switch (how) {
    case KVS_CK_HTOD:
        kind = KVS_PRELOAD_COPY_HTOD;
        break;
    case KVS_CK_DTOH:
        kind = KVS_PRELOAD_COPY_DTOH;
        break;
    case KVS_CK_DTOD:
        kind = KVS_PRELOAD_COPY_DTOD;
        break;
    default: {
        int dd = ds != KVS_TRACK_NONE ? 1 : kvs__is_device(dst);
        int sd = ss != KVS_TRACK_NONE ? 1 : kvs__is_device(src);
        if (dd < 0 || sd < 0) {
            kind = KVS_PRELOAD_COPY_OTHER;
        } else if (dd && sd) {
            kind = KVS_PRELOAD_COPY_DTOD;
        } else if (dd) {
            kind = KVS_PRELOAD_COPY_HTOD;
        } else if (sd) {
            kind = KVS_PRELOAD_COPY_DTOH;
        } else {
            kind = KVS_PRELOAD_COPY_OTHER;
        }
        break;
    }
    }
    switch (kind) {
    case KVS_PRELOAD_COPY_HTOD:
        KVS_COUNT(copies_htod, 1);
        KVS_COUNT(copies_htod_bytes, n);
        break;
    case KVS_PRELOAD_COPY_DTOH:
        KVS_COUNT(copies_dtoh, 1);
        KVS_COUNT(copies_dtoh_bytes, n);
        break;
    case KVS_PRELOAD_COPY_DTOD:
        KVS_COUNT(copies_dtod, 1);
        KVS_COUNT(copies_dtod_bytes, n);
        break;
    default:
        KVS_COUNT(copies_other, 1);
        KVS_COUNT(copies_other_bytes, n);
        break;
    }
    if (ds != KVS_TRACK_NONE) {
        atomic_fetch_add_explicit(&g_track.slots[ds].copies_in, 1, RLX);
        atomic_fetch_add_explicit(&g_track.slots[ds].bytes_in, n, RLX);
    }
    if (ss != KVS_TRACK_NONE) {
        atomic_fetch_add_explicit(&g_track.slots[ss].copies_out, 1, RLX);
        atomic_fetch_add_explicit(&g_track.slots[ss].bytes_out, n, RLX);
    }
    if (KVS_LIKELY(atomic_load_explicit(&g_obs_fn, RLX) == NULL)) {
        return;
    }
    pthread_rwlock_rdlock(&g_obs_lock);
    fn = atomic_load_explicit(&g_obs_fn, RLX);
    if (fn != NULL) {
        kvs_preload_copy_t copy = {
            .version = KVS_PRELOAD_COPY_VERSION,
            .kind = kind,
            .dst = dst,
            .src = src,
            .bytes = n,
            .stream = stream,
            .api = kvs_hook_names[api],
            .dst_region = ds != KVS_TRACK_NONE ? de.base : 0,
            .src_region = ss != KVS_TRACK_NONE ? se.base : 0,
            .dst_kv = ds != KVS_TRACK_NONE && (de.flags & KVS_TRACK_KV) != 0,
            .src_kv = ss != KVS_TRACK_NONE && (se.flags & KVS_TRACK_KV) != 0,
        };
        KVS_COUNT(observer_calls, 1);
        t_in_observer = 1;
        fn(g_obs_arg, &copy);
        t_in_observer = 0;
    }
    pthread_rwlock_unlock(&g_obs_lock);
}

/* The hook a returned driver pointer stands for, or @p itself. */
static void *kvs__swap_one(int idx, void *p)
{
    if (p == NULL || p == kvs_hook_addrs[idx]) {
        return p;
    }
    if (p == kvs__real(idx)) {
        return kvs_hook_addrs[idx];
    }
    KVS_COUNT(procaddr_unmatched, 1);
    return p;
}

static void *kvs__swap_any(void *p)
{
    for (int i = 0; i < KVS_H_COUNT; i++) {
        if (p == kvs_hook_addrs[i]) {
            return p;
        }
        if (p == kvs__real(i)) {
            KVS_COUNT(procaddr_hooked, 1);
            return kvs_hook_addrs[i];
        }
    }
    return p; /* a function we do not hook (cuGetExportTable, kernels, ...) */
}

static int kvs__hook_index(const char *symbol)
{
    /* Exact names only: a "cu" prefix would also catch cudnn and cublas. */
    if (symbol[0] != 'c' || symbol[1] != 'u') {
        return -1;
    }
    for (int i = 0; i < KVS_H_COUNT; i++) {
        if (strcmp(symbol, kvs_hook_names[i]) == 0) {
            return i;
        }
    }
    return -1;
}

/* ------------------------------------------------------------------------ */
/* dlsym                                                                    */
/* ------------------------------------------------------------------------ */
KVS_NO_SANITIZE void *kvs__dlsym_route(void *handle, const char *symbol, void **result_p)
{
    kvs_dlsym_fn real = kvs__real_dlsym();
    int idx, err;
    void *p;

    if (KVS_UNLIKELY(real == NULL)) {
        *result_p = NULL;
        return NULL;
    }
    /* RTLD_NEXT and every name we do not hook: the trampoline tail-jumps,
     * so glibc sees the caller's return address. */
    if (handle == RTLD_NEXT || symbol == NULL || t_guard || symbol[0] != 'c' || symbol[1] != 'u') {
        return (void *)(uintptr_t)real;
    }
    /* From here on, only lookups of cu* names: never a sanitizer's own. */
    idx = kvs__hook_index(symbol);
    if (idx < 0) {
        return (void *)(uintptr_t)real;
    }
    err = errno;
    if (!kvs__enter()) {
        errno = err;
        return (void *)(uintptr_t)real;
    }
    p = real(handle, symbol);
    err = errno;
    if (p != NULL && p != kvs_hook_addrs[idx]) {
        void *swapped = kvs__swap_one(idx, p);
        if (swapped != p) {
            KVS_COUNT(dlsym_hooked, 1);
        }
        p = swapped;
    }
    *result_p = p;
    kvs__leave(err);
    return NULL;
}

#if !defined(__x86_64__) && !defined(__aarch64__)
/* INCOMPLETE: no trampoline for this architecture, so RTLD_NEXT lookups
 * through this C fallback resolve relative to the shim, not the caller. */
KVS_EXPORT void *dlsym(void *handle, const char *symbol)
{
    void *result = NULL;
    void *real = kvs__dlsym_route(handle, symbol, &result);
    return real ? ((kvs_dlsym_fn)(uintptr_t)real)(handle, symbol) : result;
}
void *kvs__dlsym_tramp(void *handle, const char *symbol)
{
    return dlsym(handle, symbol);
}
#endif

/* ------------------------------------------------------------------------ */
/* Hooks                                                                    */
/* ------------------------------------------------------------------------ */
#define KVS_REAL(name) ((kvs_pfn_##name)(uintptr_t)kvs__real(KVS_H_##name))

static CUresult kvs_hook_cuGetProcAddress(const char *symbol, void **pfn, int cudaVersion,
                                          cuuint64_t flags)
{
    kvs_pfn_cuGetProcAddress real = KVS_REAL(cuGetProcAddress);
    CUresult res;
    int err;

    if (real == NULL) {
        return kvs__missing(KVS_H_cuGetProcAddress);
    }
    /* The driver chooses first (_v2/_v3/_ptsz/_ptds by version and flags). */
    res = real(symbol, pfn, cudaVersion, flags);
    if (res != CUDA_SUCCESS || pfn == NULL || *pfn == NULL || !kvs__enter()) {
        return res;
    }
    err = errno;
    *pfn = kvs__swap_any(*pfn);
    kvs__leave(err);
    return res;
}

static CUresult kvs_hook_cuGetProcAddress_v2(const char *symbol, void **pfn, int cudaVersion,
                                             cuuint64_t flags,
                                             CUdriverProcAddressQueryResult *symbolStatus)
{
    kvs_pfn_cuGetProcAddress_v2 real = KVS_REAL(cuGetProcAddress_v2);
    CUresult res;
    int err;

    if (real == NULL) {
        return kvs__missing(KVS_H_cuGetProcAddress_v2);
    }
    res = real(symbol, pfn, cudaVersion, flags, symbolStatus);
    if (res != CUDA_SUCCESS || pfn == NULL || *pfn == NULL || !kvs__enter()) {
        return res;
    }
    err = errno;
    *pfn = kvs__swap_any(*pfn);
    kvs__leave(err);
    return res;
}

/* Allocation: forward, then track what the driver returned. */
#define KVS_ALLOC_HOOK(name, dptr_expr, len_expr, args)                                            \
    kvs_pfn_##name real = KVS_REAL(name);                                                          \
    CUresult res;                                                                                  \
    int err;                                                                                       \
    if (real == NULL) {                                                                            \
        return kvs__missing(KVS_H_##name);                                                         \
    }                                                                                              \
    if (!kvs__enter()) {                                                                           \
        return real args;                                                                          \
    }                                                                                              \
    res = real args;                                                                               \
    err = errno;                                                                                   \
    if (res == CUDA_SUCCESS) {                                                                     \
        kvs__on_alloc((dptr_expr), (len_expr));                                                    \
    }                                                                                              \
    kvs__leave(err);                                                                               \
    return res

static CUresult kvs_hook_cuMemAlloc_v2(CUdeviceptr *dptr, size_t bytesize)
{
    KVS_ALLOC_HOOK(cuMemAlloc_v2, *dptr, bytesize, (dptr, bytesize));
}

static CUresult kvs_hook_cuMemAllocPitch_v2(CUdeviceptr *dptr, size_t *pPitch, size_t WidthInBytes,
                                            size_t Height, unsigned int ElementSizeBytes)
{
    KVS_ALLOC_HOOK(cuMemAllocPitch_v2, *dptr, *pPitch * Height,
                   (dptr, pPitch, WidthInBytes, Height, ElementSizeBytes));
}

static CUresult kvs_hook_cuMemAllocAsync(CUdeviceptr *dptr, size_t bytesize, CUstream hStream)
{
    KVS_ALLOC_HOOK(cuMemAllocAsync, *dptr, bytesize, (dptr, bytesize, hStream));
}

static CUresult kvs_hook_cuMemAllocAsync_ptsz(CUdeviceptr *dptr, size_t bytesize, CUstream hStream)
{
    KVS_ALLOC_HOOK(cuMemAllocAsync_ptsz, *dptr, bytesize, (dptr, bytesize, hStream));
}

/* Free: stop tracking (and deregister) before the driver frees. */
#define KVS_FREE_HOOK(name, dptr, args)                                                            \
    kvs_pfn_##name real = KVS_REAL(name);                                                          \
    CUresult res;                                                                                  \
    size_t len;                                                                                    \
    int err = errno;                                                                               \
    if (real == NULL) {                                                                            \
        return kvs__missing(KVS_H_##name);                                                         \
    }                                                                                              \
    if (!kvs__enter()) {                                                                           \
        return real args;                                                                          \
    }                                                                                              \
    kvs__on_free((dptr), &len);                                                                    \
    errno = err;                                                                                   \
    res = real args;                                                                               \
    err = errno;                                                                                   \
    if (res == CUDA_SUCCESS) {                                                                     \
        KVS_COUNT(frees, 1);                                                                       \
        KVS_COUNT(freed_bytes, len);                                                               \
    }                                                                                              \
    kvs__leave(err);                                                                               \
    return res

static CUresult kvs_hook_cuMemFree_v2(CUdeviceptr dptr)
{
    KVS_FREE_HOOK(cuMemFree_v2, dptr, (dptr));
}

static CUresult kvs_hook_cuMemFreeAsync(CUdeviceptr dptr, CUstream hStream)
{
    KVS_FREE_HOOK(cuMemFreeAsync, dptr, (dptr, hStream));
}

static CUresult kvs_hook_cuMemFreeAsync_ptsz(CUdeviceptr dptr, CUstream hStream)
{
    KVS_FREE_HOOK(cuMemFreeAsync_ptsz, dptr, (dptr, hStream));
}

/* VMM. Physical handles are counted; what we track is where they are
 * mapped (VA -> handle), since that is what copies and RDMA see. */
#define KVS_VMM_PRE(name, args)                                                                    \
    kvs_pfn_##name real = KVS_REAL(name);                                                          \
    CUresult res;                                                                                  \
    int err = errno;                                                                               \
    if (real == NULL) {                                                                            \
        return kvs__missing(KVS_H_##name);                                                         \
    }                                                                                              \
    if (!kvs__enter()) {                                                                           \
        return real args;                                                                          \
    }

static CUresult kvs_hook_cuMemCreate(CUmemGenericAllocationHandle *handle, size_t size,
                                     const CUmemAllocationProp *prop, unsigned long long flags)
{
    KVS_VMM_PRE(cuMemCreate, (handle, size, prop, flags));
    res = real(handle, size, prop, flags);
    err = errno;
    if (res == CUDA_SUCCESS) {
        KVS_COUNT(vmm_creates, 1);
        KVS_COUNT(allocations, 1);
        KVS_COUNT(allocated_bytes, size);
    }
    kvs__leave(err);
    return res;
}

static CUresult kvs_hook_cuMemRelease(CUmemGenericAllocationHandle handle)
{
    KVS_VMM_PRE(cuMemRelease, (handle));
    res = real(handle);
    err = errno;
    if (res == CUDA_SUCCESS) {
        KVS_COUNT(vmm_releases, 1);
        KVS_COUNT(frees, 1);
    }
    kvs__leave(err);
    return res;
}

static CUresult kvs_hook_cuMemAddressReserve(CUdeviceptr *ptr, size_t size, size_t alignment,
                                             CUdeviceptr addr, unsigned long long flags)
{
    KVS_VMM_PRE(cuMemAddressReserve, (ptr, size, alignment, addr, flags));
    res = real(ptr, size, alignment, addr, flags);
    err = errno;
    if (res == CUDA_SUCCESS) {
        KVS_COUNT(vmm_reserves, 1);
    }
    kvs__leave(err);
    return res;
}

static CUresult kvs_hook_cuMemAddressFree(CUdeviceptr ptr, size_t size)
{
    KVS_VMM_PRE(cuMemAddressFree, (ptr, size));
    /* Mappings the application forgot to unmap go with the range. */
    kvs__untrack_range((uintptr_t)ptr, size);
    errno = err;
    res = real(ptr, size);
    err = errno;
    if (res == CUDA_SUCCESS) {
        KVS_COUNT(vmm_address_frees, 1);
    }
    kvs__leave(err);
    return res;
}

static CUresult kvs_hook_cuMemMap(CUdeviceptr ptr, size_t size, size_t offset,
                                  CUmemGenericAllocationHandle handle, unsigned long long flags)
{
    KVS_VMM_PRE(cuMemMap, (ptr, size, offset, handle, flags));
    res = real(ptr, size, offset, handle, flags);
    err = errno;
    if (res == CUDA_SUCCESS) {
        KVS_COUNT(vmm_maps, 1);
        kvs__track_range((uintptr_t)ptr, size, KVS_TRACK_VMM, handle);
    }
    kvs__leave(err);
    return res;
}

static CUresult kvs_hook_cuMemUnmap(CUdeviceptr ptr, size_t size)
{
    KVS_VMM_PRE(cuMemUnmap, (ptr, size));
    kvs__untrack_range((uintptr_t)ptr, size);
    errno = err;
    res = real(ptr, size);
    err = errno;
    if (res == CUDA_SUCCESS) {
        KVS_COUNT(vmm_unmaps, 1);
    }
    kvs__leave(err);
    return res;
}

/* Copies: forward, then count and observe what the driver accepted. */
#define KVS_COPY_HOOK(name, how, dstv, srcv, nv, streamv, args)                                    \
    kvs_pfn_##name real = KVS_REAL(name);                                                          \
    CUresult res;                                                                                  \
    int err;                                                                                       \
    if (real == NULL) {                                                                            \
        return kvs__missing(KVS_H_##name);                                                         \
    }                                                                                              \
    if (!kvs__enter()) {                                                                           \
        return real args;                                                                          \
    }                                                                                              \
    res = real args;                                                                               \
    err = errno;                                                                                   \
    if (res == CUDA_SUCCESS) {                                                                     \
        kvs__on_copy(KVS_H_##name, how, (uintptr_t)(dstv), (uintptr_t)(srcv), nv,                  \
                     (void *)(streamv));                                                           \
    }                                                                                              \
    kvs__leave(err);                                                                               \
    return res

static CUresult kvs_hook_cuMemcpy(CUdeviceptr dst, CUdeviceptr src, size_t n)
{
    KVS_COPY_HOOK(cuMemcpy, KVS_CK_UNIFIED, dst, src, n, NULL, (dst, src, n));
}
static CUresult kvs_hook_cuMemcpy_ptds(CUdeviceptr dst, CUdeviceptr src, size_t n)
{
    KVS_COPY_HOOK(cuMemcpy_ptds, KVS_CK_UNIFIED, dst, src, n, NULL, (dst, src, n));
}
static CUresult kvs_hook_cuMemcpyAsync(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s)
{
    KVS_COPY_HOOK(cuMemcpyAsync, KVS_CK_UNIFIED, dst, src, n, s, (dst, src, n, s));
}
static CUresult kvs_hook_cuMemcpyAsync_ptsz(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s)
{
    KVS_COPY_HOOK(cuMemcpyAsync_ptsz, KVS_CK_UNIFIED, dst, src, n, s, (dst, src, n, s));
}
static CUresult kvs_hook_cuMemcpyHtoD_v2(CUdeviceptr dst, const void *src, size_t n)
{
    KVS_COPY_HOOK(cuMemcpyHtoD_v2, KVS_CK_HTOD, dst, src, n, NULL, (dst, src, n));
}
static CUresult kvs_hook_cuMemcpyHtoD_v2_ptds(CUdeviceptr dst, const void *src, size_t n)
{
    KVS_COPY_HOOK(cuMemcpyHtoD_v2_ptds, KVS_CK_HTOD, dst, src, n, NULL, (dst, src, n));
}
static CUresult kvs_hook_cuMemcpyDtoH_v2(void *dst, CUdeviceptr src, size_t n)
{
    KVS_COPY_HOOK(cuMemcpyDtoH_v2, KVS_CK_DTOH, dst, src, n, NULL, (dst, src, n));
}
static CUresult kvs_hook_cuMemcpyDtoH_v2_ptds(void *dst, CUdeviceptr src, size_t n)
{
    KVS_COPY_HOOK(cuMemcpyDtoH_v2_ptds, KVS_CK_DTOH, dst, src, n, NULL, (dst, src, n));
}
static CUresult kvs_hook_cuMemcpyDtoD_v2(CUdeviceptr dst, CUdeviceptr src, size_t n)
{
    KVS_COPY_HOOK(cuMemcpyDtoD_v2, KVS_CK_DTOD, dst, src, n, NULL, (dst, src, n));
}
static CUresult kvs_hook_cuMemcpyDtoD_v2_ptds(CUdeviceptr dst, CUdeviceptr src, size_t n)
{
    KVS_COPY_HOOK(cuMemcpyDtoD_v2_ptds, KVS_CK_DTOD, dst, src, n, NULL, (dst, src, n));
}
static CUresult kvs_hook_cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void *src, size_t n,
                                              CUstream s)
{
    KVS_COPY_HOOK(cuMemcpyHtoDAsync_v2, KVS_CK_HTOD, dst, src, n, s, (dst, src, n, s));
}
static CUresult kvs_hook_cuMemcpyHtoDAsync_v2_ptsz(CUdeviceptr dst, const void *src, size_t n,
                                                   CUstream s)
{
    KVS_COPY_HOOK(cuMemcpyHtoDAsync_v2_ptsz, KVS_CK_HTOD, dst, src, n, s, (dst, src, n, s));
}
static CUresult kvs_hook_cuMemcpyDtoHAsync_v2(void *dst, CUdeviceptr src, size_t n, CUstream s)
{
    KVS_COPY_HOOK(cuMemcpyDtoHAsync_v2, KVS_CK_DTOH, dst, src, n, s, (dst, src, n, s));
}
static CUresult kvs_hook_cuMemcpyDtoHAsync_v2_ptsz(void *dst, CUdeviceptr src, size_t n, CUstream s)
{
    KVS_COPY_HOOK(cuMemcpyDtoHAsync_v2_ptsz, KVS_CK_DTOH, dst, src, n, s, (dst, src, n, s));
}
static CUresult kvs_hook_cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t n,
                                              CUstream s)
{
    KVS_COPY_HOOK(cuMemcpyDtoDAsync_v2, KVS_CK_DTOD, dst, src, n, s, (dst, src, n, s));
}
static CUresult kvs_hook_cuMemcpyDtoDAsync_v2_ptsz(CUdeviceptr dst, CUdeviceptr src, size_t n,
                                                   CUstream s)
{
    KVS_COPY_HOOK(cuMemcpyDtoDAsync_v2_ptsz, KVS_CK_DTOD, dst, src, n, s, (dst, src, n, s));
}

/* The exported driver names are aliases of the hidden hooks. */
#define KVS_HOOK_ALIAS(name, params, args)                                                         \
    KVS_EXPORT CUresult name params __attribute__((alias("kvs_hook_" #name)));
KVS_CUDA_HOOKED_FUNCS(KVS_HOOK_ALIAS)
#undef KVS_HOOK_ALIAS

/* ------------------------------------------------------------------------ */
/* kvs_preload_* API                                                        */
/* ------------------------------------------------------------------------ */
/* Common entry: init, refuse inside an observer, set the guard. */
static kvs_status_t kvs__api_enter(void)
{
    if (t_in_observer) {
        return KVS_ERR_BUSY;
    }
    if (kvs__mode() != KVS_MODE_ACTIVE) {
        return KVS_ERR_UNSUPPORTED;
    }
    t_guard++;
    return KVS_OK;
}

static void kvs__api_leave(void)
{
    t_guard--;
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
    pthread_rwlock_wrlock(&g_obs_lock);
    g_obs_arg = arg;
    atomic_store_explicit(&g_obs_fn, fn, RLX);
    pthread_rwlock_unlock(&g_obs_lock);
    kvs__api_leave();
    return KVS_OK;
}

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
        status = KVS_ERR_UNSUPPORTED; /* creation failed; the shim passed through */
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
    kvs_track_entry_t e;
    kvs_region_h region = NULL;
    kvs_mem_type_t type = KVS_MEM_CUDA;
    uint32_t slot;
    int covered = 0;
    kvs_ctx_h ctx;

    if (status != KVS_OK) {
        return status;
    }
    if (ptr == NULL || len == 0 || (uintptr_t)ptr + len < (uintptr_t)ptr) {
        status = KVS_ERR_INVALID_PARAM;
        goto out;
    }
    slot = kvs__track_find(&g_track, (uintptr_t)ptr, &e);
    if (slot != KVS_TRACK_NONE && (e.flags & KVS_TRACK_KV) &&
        (uintptr_t)ptr + len <= e.base + e.len) {
        covered = 1; /* the whole allocation is registered already */
    } else if (slot == KVS_TRACK_NONE) {
        int dev = kvs__is_device((uintptr_t)ptr);
        type = dev == 0 ? KVS_MEM_HOST : KVS_MEM_CUDA;
    }
    /* The context before the named lock: the fork handler's lock order. */
    ctx = covered ? NULL : kvs__ctx();
    if (!covered && ctx == NULL) {
        status = KVS_ERR_UNSUPPORTED;
        goto out;
    }
    pthread_mutex_lock(&g_named_lock);
    for (uint32_t i = 0; i < KVS_NAMED_CAP; i++) {
        if (!g_named[i].used) {
            if (!covered) {
                pthread_mutex_lock(&g_ctx_lock);
                status = g_ctx_dead ? KVS_ERR_UNSUPPORTED
                                    : g_kvs.mem_register(ctx, ptr, len, type, &region);
                pthread_mutex_unlock(&g_ctx_lock);
                if (status != KVS_OK) {
                    break;
                }
            }
            g_named[i].base = (uintptr_t)ptr;
            g_named[i].len = len;
            g_named[i].region = region;
            g_named[i].used = 1;
            atomic_fetch_add_explicit(&g_named_n, 1, RLX);
            KVS_COUNT(named_regions, 1);
            pthread_mutex_unlock(&g_named_lock);
            goto out;
        }
    }
    if (status == KVS_OK) {
        status = KVS_ERR_NO_SPACE;
    }
    pthread_mutex_unlock(&g_named_lock);
out:
    kvs__api_leave();
    return status;
}

KVS_EXPORT kvs_status_t kvs_preload_deregister_region(void *ptr)
{
    kvs_status_t status = kvs__api_enter();

    if (status != KVS_OK) {
        return status;
    }
    status = KVS_ERR_NOT_FOUND;
    pthread_mutex_lock(&g_named_lock);
    for (uint32_t i = 0; i < KVS_NAMED_CAP; i++) {
        if (g_named[i].used && g_named[i].base == (uintptr_t)ptr) {
            kvs__deregister(g_named[i].region);
            g_named[i].used = 0;
            atomic_fetch_sub_explicit(&g_named_n, 1, RLX);
            status = KVS_OK;
            break;
        }
    }
    pthread_mutex_unlock(&g_named_lock);
    kvs__api_leave();
    return status;
}

/* Counter values by name; also used for the stats file. */
static int kvs__counter_value(const char *name, uint64_t *value_p)
{
#define KVS_COUNTER_GET(field)                                                                     \
    if (strcmp(name, #field) == 0) {                                                               \
        *value_p = atomic_load_explicit(&g_cnt.field, RLX);                                        \
        return 1;                                                                                  \
    }
    KVS_SHIM_COUNTERS(KVS_COUNTER_GET)
#undef KVS_COUNTER_GET
    if (strcmp(name, "tracked") == 0) {
        *value_p = g_track_ready ? kvs__track_count(&g_track) : 0;
        return 1;
    }
    if (strcmp(name, "kvs_regions") == 0) {
        kvs_ctx_h ctx;
        pthread_mutex_lock(&g_ctx_lock);
        ctx = atomic_load_explicit(&g_ctx, memory_order_acquire);
        *value_p = ctx != NULL && !g_ctx_dead ? (uint64_t)g_kvs.mem_region_count(ctx) : 0;
        pthread_mutex_unlock(&g_ctx_lock);
        return 1;
    }
    return 0;
}

KVS_EXPORT kvs_status_t kvs_preload_counter(const char *name, uint64_t *value_p)
{
    int mode = kvs__mode();

    if (t_in_observer) {
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
    kvs_track_entry_t e;
    kvs_track_slot_t *slot;
    uint32_t s;

    if (status != KVS_OK) {
        return status;
    }
    status = KVS_ERR_NOT_FOUND;
    if (field == NULL || value_p == NULL) {
        status = KVS_ERR_INVALID_PARAM;
        goto out;
    }
    s = kvs__track_find(&g_track, (uintptr_t)ptr, &e);
    if (s == KVS_TRACK_NONE) {
        goto out;
    }
    slot = &g_track.slots[s];
    status = KVS_OK;
    if (strcmp(field, "base") == 0) {
        *value_p = e.base;
    } else if (strcmp(field, "length") == 0) {
        *value_p = e.len;
    } else if (strcmp(field, "kv") == 0) {
        *value_p = (e.flags & KVS_TRACK_KV) != 0;
    } else if (strcmp(field, "handle") == 0) {
        *value_p = atomic_load_explicit(&slot->handle, RLX);
    } else if (strcmp(field, "copies_in") == 0) {
        *value_p = atomic_load_explicit(&slot->copies_in, RLX);
    } else if (strcmp(field, "bytes_in") == 0) {
        *value_p = atomic_load_explicit(&slot->bytes_in, RLX);
    } else if (strcmp(field, "copies_out") == 0) {
        *value_p = atomic_load_explicit(&slot->copies_out, RLX);
    } else if (strcmp(field, "bytes_out") == 0) {
        *value_p = atomic_load_explicit(&slot->bytes_out, RLX);
    } else {
        status = KVS_ERR_NOT_FOUND;
    }
out:
    kvs__api_leave();
    return status;
}

/* ------------------------------------------------------------------------ */
/* Stats file, written at exit                                              */
/* ------------------------------------------------------------------------ */
static void kvs__write_stats(int mode)
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

    if (g_stats_tmpl[0] == '\0' ||
        kvs__preload_expand_path(g_stats_tmpl, (long)getpid(), path, sizeof(path)) != KVS_OK) {
        return;
    }
    w = snprintf(buf, sizeof(buf), "{\"pid\":%ld,\"mode\":\"%s\",\"kv_min_bytes\":%llu",
                 (long)getpid(),
                 mode == KVS_MODE_ACTIVE     ? "active"
                 : mode == KVS_MODE_PASSTHRU ? "passthrough"
                                             : "stepped_aside",
                 (unsigned long long)g_kv_min);
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

/* Ends every registration and destroys the context, so the transport
 * closes cleanly and nothing is left behind. Other threads may still be in
 * hooks: under g_ctx_lock they either finished their libkvshare call or
 * will see g_ctx_dead and skip it; handles they still hold were freed by
 * kvs_ctx_destroy() and are never used again. */
static void kvs__teardown(void)
{
    kvs_ctx_h ctx;
    kvs_region_h region;

    pthread_mutex_lock(&g_named_lock);
    pthread_mutex_lock(&g_ctx_lock);
    ctx = atomic_load_explicit(&g_ctx, memory_order_acquire);
    if (ctx != NULL) {
        while (g_track_ready && kvs__track_take_region(&g_track, &region) == KVS_OK) {
            g_kvs.mem_deregister(region);
        }
        for (uint32_t i = 0; i < KVS_NAMED_CAP; i++) {
            if (g_named[i].used && g_named[i].region != NULL) {
                g_kvs.mem_deregister(g_named[i].region);
                g_named[i].region = NULL;
            }
        }
        g_kvs.ctx_destroy(ctx);
        atomic_store_explicit(&g_ctx, NULL, memory_order_release);
    }
    g_ctx_dead = 1;
    pthread_mutex_unlock(&g_ctx_lock);
    pthread_mutex_unlock(&g_named_lock);
}

/* Not a constructor: at unload it reports and tears down, and only if a
 * hook ran. */
__attribute__((destructor)) static void kvs__fini(void)
{
    int mode = atomic_load_explicit(&g_mode, memory_order_acquire);
    int err = errno;

    if (mode == KVS_MODE_ACTIVE || mode == KVS_MODE_PASSTHRU || mode == KVS_MODE_ASIDE) {
        t_guard++;
        kvs__write_stats(mode);
        kvs__teardown();
        t_guard--;
    }
    errno = err;
}
