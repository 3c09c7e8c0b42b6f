/* SPDX-License-Identifier: Apache-2.0 */
/* Tracking and registration: the table of live device allocations, the
 * regions connectors name, and libkvshare (loaded on first need) with the
 * context that holds the KV registrations. */
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kvshare_dl.h"
#include "shim_int.h"

typedef struct kvs_named {
    uintptr_t base;
    size_t len;
    kvs_region_h region; /* NULL when covered by a registered KV allocation */
    int used;
} kvs_named_t;

/* Lock order, everywhere (the fork handlers take them all): named_lock,
 * ctx_lock, track.lock, then the observer lock in api.c. */
static struct {
    /* The tracking table, over fixed arrays: nothing is allocated on a hook. */
    kvs_track_t track;
    kvs_track_slot_t slots[KVS_TRACK_CAP];
    _Atomic uint32_t order[2 * KVS_TRACK_CAP];
    uint32_t free_next[KVS_TRACK_CAP];
    int track_ready;
    _Atomic int full_logged;

    /* Regions named by kvs_preload_register_region(). */
    pthread_mutex_t named_lock;
    kvs_named_t named[KVS_NAMED_CAP];
    _Atomic uint32_t named_n;

    /* Guards the context's whole life: loading libkvshare, creating the
     * context, every kvs_mem_register_ex and kvs_mem_deregister, and the
     * teardown at exit (after which ctx_dead turns those into no-ops). */
    pthread_mutex_t ctx_lock;
    _Atomic(kvs_ctx_h) ctx;
    int ctx_dead;
    /* libkvshare, dlopen'd at the first KV region (or kvs_preload_get_ctx),
     * so a process that never allocates KV memory never maps it, UCX or
     * OpenSSL. Written once under ctx_lock before ctx is published; every
     * call through it is made with a context in hand, so it is loaded then. */
    kvs_dl_t kvs;
    int load_failed;
    /* Contexts inherited by forked children: unusable there, but kept
     * reachable so leak checkers do not count them. */
    kvs_ctx_h stale_ctx[8];
} g_reg = {
    .named_lock = PTHREAD_MUTEX_INITIALIZER,
    .ctx_lock = PTHREAD_MUTEX_INITIALIZER,
};

void kvs__reg_init(void)
{
    /* Under init's pthread_once; a forked child resets the table instead. */
    if (!g_reg.track_ready) {
        kvs__track_init(&g_reg.track, g_reg.slots, g_reg.order, g_reg.free_next, KVS_TRACK_CAP);
        g_reg.track_ready = 1;
    }
}

static void kvs__deregister(kvs_region_h region)
{
    if (region == NULL) {
        return;
    }
    pthread_mutex_lock(&g_reg.ctx_lock);
    if (!g_reg.ctx_dead) {
        g_reg.kvs.mem_deregister(region); /* after exit's teardown the context freed it */
    }
    pthread_mutex_unlock(&g_reg.ctx_lock);
}

/* Loads libkvshare into g_reg.kvs, most explicit place first: KVSHARE_LIBRARY
 * (alone: an explicit choice is never second-guessed), then the shim's own
 * folder (the webhook copies both files there, and a packager installs them
 * side by side), then the soname, which dlopen looks up through the shim's
 * RUNPATH and the usual search. Called under g_reg.ctx_lock. */
static kvs_status_t kvs__load_kvshare(char *why, size_t len)
{
    static const char soname[] = "/" KVS_DL_SONAME;
    const char *env = getenv("KVSHARE_LIBRARY");
    char path[PATH_MAX], first[256] = "";
    Dl_info info;
    const char *slash;

    if (env != NULL && env[0] != '\0') {
        return kvs_dl_open(&g_reg.kvs, env, why, len);
    }
    if (dladdr((void *)(uintptr_t)kvs__load_kvshare, &info) != 0 && info.dli_fname != NULL &&
        (slash = strrchr(info.dli_fname, '/')) != NULL &&
        (size_t)(slash - info.dli_fname) + sizeof(soname) <= sizeof(path)) {
        memcpy(path, info.dli_fname, (size_t)(slash - info.dli_fname));
        memcpy(path + (slash - info.dli_fname), soname, sizeof(soname));
        if (access(path, F_OK) == 0 &&
            kvs_dl_open(&g_reg.kvs, path, first, sizeof(first)) == KVS_OK) {
            return KVS_OK;
        }
    }
    if (kvs_dl_open(&g_reg.kvs, NULL, why, len) == KVS_OK) {
        return KVS_OK;
    }
    if (first[0] != '\0') {
        /* Both failed: say why for both. */
        size_t n = strlen(why);
        snprintf(why + n, len - n, "; %s", first);
    }
    return KVS_ERR_NOT_FOUND;
}

kvs_ctx_h kvs__ctx(void)
{
    kvs_ctx_h ctx = atomic_load_explicit(&g_reg.ctx, memory_order_acquire);
    kvs_ctx_params_t params;
    char errbuf[256] = "";
    kvs_status_t status;

    if (KVS_LIKELY(ctx != NULL)) {
        return ctx;
    }
    pthread_mutex_lock(&g_reg.ctx_lock);
    ctx = atomic_load_explicit(&g_reg.ctx, RLX);
    if (ctx == NULL && g_reg.ctx_dead) {
        pthread_mutex_unlock(&g_reg.ctx_lock);
        return NULL; /* exiting: torn down for good */
    }
    if (ctx == NULL && g_reg.kvs.handle == NULL) {
        /* Tried once per process: a thread still in a hook when another
         * failed must not dlopen again (nor log again). */
        if (g_reg.load_failed || kvs__load_kvshare(errbuf, sizeof(errbuf)) != KVS_OK) {
            int first = !g_reg.load_failed;
            g_reg.load_failed = 1;
            pthread_mutex_unlock(&g_reg.ctx_lock);
            if (first) {
                kvs__fail("loading libkvshare: %s", errbuf);
            }
            return NULL;
        }
    }
    if (ctx == NULL) {
        memset(&params, 0, sizeof(params));
        params.field_mask = KVS_CTX_FIELD_ERRBUF;
        params.errbuf = errbuf;
        params.errbuf_len = sizeof(errbuf);
        status = g_reg.kvs.ctx_create(&params, &ctx);
        if (status != KVS_OK) {
            pthread_mutex_unlock(&g_reg.ctx_lock);
            kvs__fail("kvs_ctx_create: %s%s%s", g_reg.kvs.status_string(status),
                      errbuf[0] ? ": " : "", errbuf);
            return NULL;
        }
        atomic_store_explicit(&g_reg.ctx, ctx, memory_order_release);
    }
    pthread_mutex_unlock(&g_reg.ctx_lock);
    return ctx;
}

/* Registers a new KV allocation. Runs after the driver call returned and
 * with no shim lock held; libkvshare makes no CUDA call here (and if a
 * future transport does, kvs__t_guard makes that call a plain forward). */
static void kvs__register_entry(const kvs_track_entry_t *e)
{
    kvs_ctx_h ctx = kvs__ctx();
    kvs_region_h region = NULL;
    kvs_status_t status;
    const kvs_mem_register_params_t cuda_mem = {
        .field_mask = KVS_MEM_REGISTER_FIELD_MEM_TYPE,
        .mem_type = KVS_MEM_CUDA,
    };

    if (ctx == NULL) {
        return;
    }
    pthread_mutex_lock(&g_reg.ctx_lock);
    status = g_reg.ctx_dead
                 ? KVS_OK
                 : g_reg.kvs.mem_register_ex(ctx, (void *)e->base, e->len, &cuda_mem, &region);
    pthread_mutex_unlock(&g_reg.ctx_lock);
    if (status == KVS_OK && region == NULL) {
        return; /* exiting */
    }
    if (status != KVS_OK) {
        kvs__fail("kvs_mem_register_ex(%p, %zu): %s", (void *)e->base, e->len,
                  g_reg.kvs.status_string(status));
        return;
    }
    KVS_COUNT(kv_registered, 1);
    if (!kvs__track_swap_region(&g_reg.track, e->slot, e->gen, NULL, region)) {
        kvs__deregister(region); /* freed meanwhile (a racy program) */
        return;
    }
    /* If the shim failed meanwhile its sweep may have run before we stored
     * the handle; take it back unless the sweep already did. */
    if (atomic_load_explicit(&kvs__shim.mode, memory_order_acquire) != KVS_MODE_ACTIVE &&
        kvs__track_swap_region(&g_reg.track, e->slot, e->gen, region, NULL)) {
        kvs__deregister(region);
    }
}

/* Deregisters named regions inside a freed allocation. */
static void kvs__drop_named_in(uintptr_t base, size_t len)
{
    if (atomic_load_explicit(&g_reg.named_n, RLX) == 0) {
        return;
    }
    pthread_mutex_lock(&g_reg.named_lock);
    for (uint32_t i = 0; i < KVS_NAMED_CAP; i++) {
        if (g_reg.named[i].used && g_reg.named[i].base >= base &&
            g_reg.named[i].base - base < len) {
            kvs__deregister(g_reg.named[i].region);
            g_reg.named[i].used = 0;
            atomic_fetch_sub_explicit(&g_reg.named_n, 1, RLX);
        }
    }
    pthread_mutex_unlock(&g_reg.named_lock);
}

static void kvs__untrack(const kvs_track_entry_t *e)
{
    kvs__drop_named_in(e->base, e->len);
    kvs__deregister(e->region);
}

void kvs__track_range(uintptr_t base, size_t len, uint32_t flags, uint64_t handle)
{
    kvs_track_entry_t e, old;
    kvs_status_t status;

    if (len >= kvs__shim.kv_min) {
        flags |= KVS_TRACK_KV;
    }
    status = kvs__track_insert(&g_reg.track, base, len, flags, handle, &e);
    if (status == KVS_ERR_INVALID_PARAM) {
        /* The driver handed out memory we still track: we missed its free
         * (e.g. through an entry point we do not hook). Drop the stale ones. */
        while (kvs__track_take_overlap(&g_reg.track, base, len, &old) == KVS_OK) {
            kvs__untrack(&old);
        }
        status = kvs__track_insert(&g_reg.track, base, len, flags, handle, &e);
    }
    if (status == KVS_ERR_NO_SPACE) {
        int expected = 0;
        KVS_COUNT(track_dropped, 1);
        if (atomic_compare_exchange_strong(&g_reg.full_logged, &expected, 1)) {
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

void kvs__on_alloc(CUdeviceptr base, size_t len)
{
    KVS_COUNT(allocations, 1);
    KVS_COUNT(allocated_bytes, len);
    kvs__track_range((uintptr_t)base, len, 0, 0);
}

/* Before the driver frees @base: deregister first, as libkvshare requires. */
void kvs__on_free(CUdeviceptr base, size_t *len_p)
{
    kvs_track_entry_t e;

    *len_p = 0;
    if (base != 0 && kvs__track_remove(&g_reg.track, (uintptr_t)base, &e) == KVS_OK) {
        *len_p = e.len;
        kvs__untrack(&e);
    }
}

void kvs__untrack_range(uintptr_t base, size_t len)
{
    kvs_track_entry_t e;

    while (kvs__track_take_overlap(&g_reg.track, base, len, &e) == KVS_OK) {
        kvs__untrack(&e);
    }
}

void kvs__on_copy(int api, int how, uintptr_t dst, uintptr_t src, size_t n, void *stream)
{
    kvs_track_entry_t de, se;
    uint32_t ds = KVS_TRACK_NONE, ss = KVS_TRACK_NONE;
    kvs_preload_copy_kind_t kind;

    if (how != KVS_CK_HTOD) {
        ss = kvs__track_find(&g_reg.track, src, &se);
    }
    if (how != KVS_CK_DTOH) {
        ds = kvs__track_find(&g_reg.track, dst, &de);
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
        atomic_fetch_add_explicit(&g_reg.track.slots[ds].copies_in, 1, RLX);
        atomic_fetch_add_explicit(&g_reg.track.slots[ds].bytes_in, n, RLX);
    }
    if (ss != KVS_TRACK_NONE) {
        atomic_fetch_add_explicit(&g_reg.track.slots[ss].copies_out, 1, RLX);
        atomic_fetch_add_explicit(&g_reg.track.slots[ss].bytes_out, n, RLX);
    }
    kvs__observe(api, kind, dst, src, n, stream, ds != KVS_TRACK_NONE ? &de : NULL,
                 ss != KVS_TRACK_NONE ? &se : NULL);
}

kvs_status_t kvs__named_register(void *ptr, size_t len)
{
    kvs_track_entry_t e;
    kvs_region_h region = NULL;
    kvs_mem_type_t type = KVS_MEM_CUDA;
    kvs_status_t status = KVS_OK;
    uint32_t slot;
    int covered = 0;
    kvs_ctx_h ctx;

    if (ptr == NULL || len == 0 || (uintptr_t)ptr + len < (uintptr_t)ptr) {
        return KVS_ERR_INVALID_PARAM;
    }
    slot = kvs__track_find(&g_reg.track, (uintptr_t)ptr, &e);
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
        return KVS_ERR_UNSUPPORTED;
    }
    const kvs_mem_register_params_t mp = {
        .field_mask = KVS_MEM_REGISTER_FIELD_MEM_TYPE,
        .mem_type = type,
    };
    pthread_mutex_lock(&g_reg.named_lock);
    for (uint32_t i = 0; i < KVS_NAMED_CAP; i++) {
        if (!g_reg.named[i].used) {
            if (!covered) {
                pthread_mutex_lock(&g_reg.ctx_lock);
                status = g_reg.ctx_dead ? KVS_ERR_UNSUPPORTED
                                        : g_reg.kvs.mem_register_ex(ctx, ptr, len, &mp, &region);
                pthread_mutex_unlock(&g_reg.ctx_lock);
                if (status != KVS_OK) {
                    break;
                }
            }
            g_reg.named[i].base = (uintptr_t)ptr;
            g_reg.named[i].len = len;
            g_reg.named[i].region = region;
            g_reg.named[i].used = 1;
            atomic_fetch_add_explicit(&g_reg.named_n, 1, RLX);
            KVS_COUNT(named_regions, 1);
            pthread_mutex_unlock(&g_reg.named_lock);
            return KVS_OK;
        }
    }
    if (status == KVS_OK) {
        status = KVS_ERR_NO_SPACE;
    }
    pthread_mutex_unlock(&g_reg.named_lock);
    return status;
}

kvs_status_t kvs__named_deregister(void *ptr)
{
    kvs_status_t status = KVS_ERR_NOT_FOUND;

    pthread_mutex_lock(&g_reg.named_lock);
    for (uint32_t i = 0; i < KVS_NAMED_CAP; i++) {
        if (g_reg.named[i].used && g_reg.named[i].base == (uintptr_t)ptr) {
            kvs__deregister(g_reg.named[i].region);
            g_reg.named[i].used = 0;
            atomic_fetch_sub_explicit(&g_reg.named_n, 1, RLX);
            status = KVS_OK;
            break;
        }
    }
    pthread_mutex_unlock(&g_reg.named_lock);
    return status;
}

kvs_status_t kvs__region_query(const void *ptr, const char *field, uint64_t *value_p)
{
    kvs_track_entry_t e;
    kvs_track_slot_t *slot;
    uint32_t s = kvs__track_find(&g_reg.track, (uintptr_t)ptr, &e);

    if (s == KVS_TRACK_NONE) {
        return KVS_ERR_NOT_FOUND;
    }
    slot = &g_reg.track.slots[s];
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
        return KVS_ERR_NOT_FOUND;
    }
    return KVS_OK;
}

int kvs__reg_counter(const char *name, uint64_t *value_p)
{
    if (strcmp(name, "tracked") == 0) {
        *value_p = g_reg.track_ready ? kvs__track_count(&g_reg.track) : 0;
        return 1;
    }
    if (strcmp(name, "kvs_regions") == 0) {
        kvs_ctx_h ctx;
        pthread_mutex_lock(&g_reg.ctx_lock);
        ctx = atomic_load_explicit(&g_reg.ctx, memory_order_acquire);
        *value_p = ctx != NULL && !g_reg.ctx_dead ? (uint64_t)g_reg.kvs.mem_region_count(ctx) : 0;
        pthread_mutex_unlock(&g_reg.ctx_lock);
        return 1;
    }
    return 0;
}

void kvs__reg_sweep(void)
{
    kvs_region_h region;

    while (kvs__track_take_region(&g_reg.track, &region) == KVS_OK) {
        kvs__deregister(region);
    }
    pthread_mutex_lock(&g_reg.named_lock);
    for (uint32_t i = 0; i < KVS_NAMED_CAP; i++) {
        if (g_reg.named[i].used) {
            kvs__deregister(g_reg.named[i].region);
            g_reg.named[i].used = 0;
        }
    }
    atomic_store_explicit(&g_reg.named_n, 0, RLX);
    pthread_mutex_unlock(&g_reg.named_lock);
}

/* Other threads may still be in hooks: under ctx_lock they either finished
 * their libkvshare call or will see ctx_dead and skip it; handles they still
 * hold were freed by kvs_ctx_destroy() and are never used again. */
void kvs__reg_teardown(void)
{
    kvs_ctx_h ctx;
    kvs_region_h region;

    pthread_mutex_lock(&g_reg.named_lock);
    pthread_mutex_lock(&g_reg.ctx_lock);
    ctx = atomic_load_explicit(&g_reg.ctx, memory_order_acquire);
    if (ctx != NULL) {
        while (g_reg.track_ready && kvs__track_take_region(&g_reg.track, &region) == KVS_OK) {
            g_reg.kvs.mem_deregister(region);
        }
        for (uint32_t i = 0; i < KVS_NAMED_CAP; i++) {
            if (g_reg.named[i].used && g_reg.named[i].region != NULL) {
                g_reg.kvs.mem_deregister(g_reg.named[i].region);
                g_reg.named[i].region = NULL;
            }
        }
        g_reg.kvs.ctx_destroy(ctx);
        atomic_store_explicit(&g_reg.ctx, NULL, memory_order_release);
    }
    g_reg.ctx_dead = 1;
    pthread_mutex_unlock(&g_reg.ctx_lock);
    pthread_mutex_unlock(&g_reg.named_lock);
}

void kvs__reg_lock_all(void)
{
    pthread_mutex_lock(&g_reg.named_lock);
    pthread_mutex_lock(&g_reg.ctx_lock);
    if (g_reg.track_ready) {
        pthread_mutex_lock(&g_reg.track.lock);
    }
}

void kvs__reg_unlock_all(void)
{
    if (g_reg.track_ready) {
        pthread_mutex_unlock(&g_reg.track.lock);
    }
    pthread_mutex_unlock(&g_reg.ctx_lock);
    pthread_mutex_unlock(&g_reg.named_lock);
}

/* The child is a new process: an empty table and its own context, created
 * again at its first KV region. libkvshare stays loaded (it is mapped in the
 * child too). The parent's region handles stay in the (unused) arrays,
 * reachable but never used. */
void kvs__reg_atfork_child(void)
{
    kvs_ctx_h ctx = atomic_load_explicit(&g_reg.ctx, RLX);

    pthread_mutex_init(&g_reg.ctx_lock, NULL);
    pthread_mutex_init(&g_reg.named_lock, NULL);
    if (g_reg.track_ready) {
        kvs__track_reset(&g_reg.track);
    }
    if (ctx != NULL) {
        for (size_t i = 0; i < sizeof(g_reg.stale_ctx) / sizeof(g_reg.stale_ctx[0]); i++) {
            if (g_reg.stale_ctx[i] == NULL) {
                g_reg.stale_ctx[i] = ctx;
                break;
            }
        }
    }
    atomic_store_explicit(&g_reg.ctx, NULL, RLX);
    g_reg.ctx_dead = 0;
    g_reg.load_failed = 0; /* the child runs init again, and reports for itself */
    for (uint32_t i = 0; i < KVS_NAMED_CAP; i++) {
        g_reg.named[i].used = 0;
    }
    atomic_store_explicit(&g_reg.named_n, 0, RLX);
    atomic_store_explicit(&g_reg.full_logged, 0, RLX);
}
