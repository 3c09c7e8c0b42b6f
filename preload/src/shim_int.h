/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Private declarations shared by the shim's files, one job each:
 *   init.c     lazy init, modes, logging, the failure rule, fork and exit;
 *   resolve.c  the real driver functions, dlsym and cuGetProcAddress routing;
 *   hooks.c    the hook bodies and their exported aliases;
 *   track.c    the tracking table, named regions, libkvshare and its context;
 *   api.c      the kvs_preload_* API, the copy observer and the stats file.
 * Each file keeps its own state in one static struct; kvs__shim (init.c) is
 * the one every file reads: the mode, the settings and the counters.
 *
 * Rules every file keeps (STYLE.md rule 8):
 *  - Hook paths do no malloc and use no stdio streams, and leave errno as the
 *    driver set it. Two rare events leave the per-call path: loading
 *    libkvshare and registering a KV region (libkvshare allocates its
 *    bookkeeping), and the one-time failure line (vsnprintf into a stack
 *    buffer, then one write(2)).
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
#ifndef KVS_SHIM_INT_H
#define KVS_SHIM_INT_H

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "kvs_cuda.h"
#include "kvs_preload.h"
#include "kvshare.h"
#include "preload_int.h"

#define KVS_EXPORT      __attribute__((visibility("default")))
#define KVS_LIKELY(x)   __builtin_expect(!!(x), 1)
#define KVS_UNLIKELY(x) __builtin_expect(!!(x), 0)
#define RLX             memory_order_relaxed
#define KVS_TRACK_CAP   16384u
#define KVS_NAMED_CAP   256u
/* For code that runs when a sanitizer runtime calls dlsym while it is still
 * setting itself up (ASan resolves its interceptors through dlsym, which is
 * ours): instrumented code would touch shadow memory that is not there yet. */
#define KVS_NO_SANITIZE __attribute__((no_sanitize("address", "undefined")))

/* ---- hooks (hooks.c) ------------------------------------------------------ */
enum {
#define KVS_HOOK_ENUM(name, params, args) KVS_H_##name,
    KVS_CUDA_HOOKED_FUNCS(KVS_HOOK_ENUM)
#undef KVS_HOOK_ENUM
        KVS_H_COUNT
};

/* The driver names we hook, and our hooks by their hidden names (the
 * exported names could bind to another interposer loaded ahead of us). */
extern const char *const kvs__hook_names[KVS_H_COUNT];
extern void *const kvs__hook_addrs[KVS_H_COUNT];

/* ---- init, modes, logging, failure (init.c) -------------------------------- */
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

/* What every file reads; written by init (and a forked child's reset). */
typedef struct kvs_shim {
    _Atomic int mode;
    _Atomic int log_level;
    uint64_t kv_min;           /* KVSHARE_KV_MIN_BYTES */
    int vmm_export;            /* cuMemCreate asks for POSIX_FD export (KVSHARE_SHM != off) */
    char stats_tmpl[PATH_MAX]; /* KVSHARE_STATS_FILE, "" for none */
    kvs_shim_counters_t cnt;   /* process totals; a forked child starts at 0 */
    pthread_once_t once;
    int atfork_done;
} kvs_shim_t;

extern kvs_shim_t kvs__shim;

/* Set while this thread is inside the shim: every hook it reaches forwards. */
extern __thread int kvs__t_guard __attribute__((tls_model("initial-exec")));
/* Set while this thread runs the copy observer: the API refuses with BUSY. */
extern __thread int kvs__t_in_observer __attribute__((tls_model("initial-exec")));

#define KVS_COUNT(name, n) atomic_fetch_add_explicit(&kvs__shim.cnt.name, (uint64_t)(n), RLX)

/* One write(2) per line, only at or below KVSHARE_LOG's level; keeps errno. */
__attribute__((format(printf, 2, 3))) void kvs__log(int level, const char *fmt, ...);

/* Logs one line and switches to pass-through after dropping every
 * registration (the memory may be freed behind our back from now on). */
__attribute__((format(printf, 1, 2))) void kvs__fail(const char *fmt, ...);

/* Runs init once; keeps errno. Returns the mode. Never waits on itself: a
 * thread already inside the shim (kvs__t_guard) does not enter pthread_once. */
int kvs__mode_slow(void);

static inline int kvs__mode(void)
{
    int mode = atomic_load_explicit(&kvs__shim.mode, memory_order_acquire);

    return KVS_LIKELY(mode != KVS_MODE_UNINIT) ? mode : kvs__mode_slow();
}

/* Enters a hook's bookkeeping: 1 (guard set) when the shim should track. */
static inline int kvs__enter(void)
{
    if (KVS_UNLIKELY(kvs__t_guard)) {
        return 0;
    }
    if (KVS_UNLIKELY(kvs__mode() != KVS_MODE_ACTIVE)) {
        return 0;
    }
    kvs__t_guard = 1;
    return 1;
}

static inline void kvs__leave(int err)
{
    kvs__t_guard = 0;
    errno = err;
}

/* ---- real functions, dlsym, cuGetProcAddress (resolve.c) ------------------- */
#define KVS_REAL_MISSING ((void *)1) /* negative cache: the driver lacks it */

/* The real driver functions, resolved on first use; read lock-free. */
extern _Atomic(void *) kvs__real_fns[KVS_H_COUNT];

void *kvs__real_slow(int idx);

static inline void *kvs__real(int idx)
{
    void *p = atomic_load_explicit(&kvs__real_fns[idx], memory_order_acquire);

    if (KVS_LIKELY(p != NULL && p != KVS_REAL_MISSING)) {
        return p;
    }
    return p == KVS_REAL_MISSING ? NULL : kvs__real_slow(idx);
}

/* What a hook returns when the driver lacks the function it stands for
 * (CUDA_ERROR_NOT_FOUND, logged once per function). */
CUresult kvs__missing(int idx);

/* 1 device, 0 host, -1 unknown (no driver table yet, or the query failed). */
int kvs__is_device(uintptr_t p);

/* cuGetProcAddress's answer, swapped for the matching hook when it is the
 * real address of a hooked function; anything else is returned untouched. */
void *kvs__swap_any(void *p);

/* ---- tracking and registration (track.c) ----------------------------------- */
enum { KVS_CK_HTOD, KVS_CK_DTOH, KVS_CK_DTOD, KVS_CK_UNIFIED };

/* Sets up the tracking table (once; init calls it). */
void kvs__reg_init(void);
void kvs__on_alloc(CUdeviceptr base, size_t len);
/* Before the driver frees @base: deregister first, as libkvshare requires. */
void kvs__on_free(CUdeviceptr base, size_t *len_p);
void kvs__track_range(uintptr_t base, size_t len, uint32_t flags, uint64_t handle);
void kvs__untrack_range(uintptr_t base, size_t len);
void kvs__on_copy(int api, int how, uintptr_t dst, uintptr_t src, size_t n, void *stream);

/* The libkvshare context, loading libkvshare and creating the context on
 * first use; NULL (after kvs__fail) when either fails, or after exit. */
kvs_ctx_h kvs__ctx(void);
kvs_status_t kvs__named_register(void *ptr, size_t len);
kvs_status_t kvs__named_deregister(void *ptr);
kvs_status_t kvs__region_query(const void *ptr, const char *field, uint64_t *value_p);
/* "tracked" and "kvs_regions"; 0 for another name. */
int kvs__reg_counter(const char *name, uint64_t *value_p);
/* Drops every registration (the failure rule). */
void kvs__reg_sweep(void);
/* Ends every registration and destroys the context (exit). */
void kvs__reg_teardown(void);
/* Fork: takes (and gives back) the locks in the order used everywhere:
 * named, ctx, track; the child starts over with fresh ones. */
void kvs__reg_lock_all(void);
void kvs__reg_unlock_all(void);
void kvs__reg_atfork_child(void);

/* ---- API, observer, stats (api.c) ------------------------------------------ */
/* Hands a copy to the observer, if one is set. @de/@se: the tracked entries
 * of both ends, or NULL. */
void kvs__observe(int api, kvs_preload_copy_kind_t kind, uintptr_t dst, uintptr_t src, size_t n,
                  void *stream, const kvs_track_entry_t *de, const kvs_track_entry_t *se);
/* The observer lock comes last in the fork handlers' order. */
void kvs__api_lock_all(void);
void kvs__api_unlock_all(void);
void kvs__api_atfork_child(void);
void kvs__write_stats(int mode);

/* ---- dlsym (resolve.c, dlsym_tramp.S) -------------------------------------- */
/* The trampoline in dlsym_tramp.S (same address as our exported dlsym). */
void *kvs__dlsym_tramp(void *handle, const char *symbol);
/* Returns the function to tail-jump to, or NULL when *result_p is the answer. */
void *kvs__dlsym_route(void *handle, const char *symbol, void **result_p);

#endif /* KVS_SHIM_INT_H */
