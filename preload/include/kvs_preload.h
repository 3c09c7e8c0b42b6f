/* SPDX-License-Identifier: Apache-2.0 */
/*
 * kvs_preload.h - the API that libkvshare_preload.so offers to code running
 * in the same process (e.g. the vLLM KV connector). The shim is loaded with
 * LD_PRELOAD, so callers never link to it: they look each function up with
 * dlsym(RTLD_DEFAULT, "kvs_preload_...") and treat NULL as "no shim". The
 * kvs_preload_*_fn typedefs below are the types to cast those results to.
 *
 * Every function is thread-safe. None of them may be called from inside a
 * copy observer (they return KVS_ERR_BUSY there).
 */
#ifndef KVS_PRELOAD_H
#define KVS_PRELOAD_H

#include <stddef.h>
#include <stdint.h>

#include "kvshare.h"

#ifdef __cplusplus
extern "C" {
#endif

/** Direction of an observed copy. */
typedef enum kvs_preload_copy_kind {
    KVS_PRELOAD_COPY_HTOD = 0,
    KVS_PRELOAD_COPY_DTOH = 1,
    KVS_PRELOAD_COPY_DTOD = 2,
    KVS_PRELOAD_COPY_OTHER = 3, /* host to host, or a pointer of unknown kind */
} kvs_preload_copy_kind_t;

/**
 * One copy the application made through the driver, after the driver
 * accepted it (for *Async calls: after it was queued, not completed).
 * Valid only during the observer call.
 */
typedef struct kvs_preload_copy {
    uint32_t version; /* KVS_PRELOAD_COPY_VERSION; fields only get appended */
    kvs_preload_copy_kind_t kind;
    uintptr_t dst;
    uintptr_t src;
    size_t bytes;
    void *stream;         /* CUstream; NULL for synchronous calls */
    const char *api;      /* the driver symbol, e.g. "cuMemcpyHtoDAsync_v2_ptsz" */
    uintptr_t dst_region; /* base of the tracked allocation holding dst, or 0 */
    uintptr_t src_region; /* base of the tracked allocation holding src, or 0 */
    int dst_kv;           /* 1 when dst lies in a KV region */
    int src_kv;
} kvs_preload_copy_t;

#define KVS_PRELOAD_COPY_VERSION 1u

/**
 * A copy observer. Runs on the thread that made the copy, inside the
 * driver hook, so it must be quick; driver calls it makes pass straight to
 * the driver (they are not observed again). It must not fork(), and its
 * kvs_preload_* calls are refused with KVS_ERR_BUSY.
 */
typedef void (*kvs_preload_copy_observer_fn)(void *arg, const kvs_preload_copy_t *copy);

/**
 * Installs @fn (NULL removes it) as the one copy observer; @arg is passed
 * back as is and stays the caller's. Once this returns, the old observer
 * is not running and will not be called again.
 * Errors: KVS_ERR_UNSUPPORTED (shim disabled or passed through),
 * KVS_ERR_BUSY (called from inside an observer).
 */
kvs_status_t kvs_preload_set_copy_observer(kvs_preload_copy_observer_fn fn, void *arg);
typedef kvs_status_t (*kvs_preload_set_copy_observer_fn)(kvs_preload_copy_observer_fn fn,
                                                         void *arg);

/**
 * Names [ptr, ptr+len) as KV memory: the shim registers it with its
 * libkvshare context (kvs_mem_register_ex) unless it already lies inside a
 * registered KV allocation, and deregisters it when the allocation holding
 * it is freed or at kvs_preload_deregister_region().
 * Errors: INVALID_PARAM, UNSUPPORTED (shim disabled), NO_SPACE (the table
 * of named regions is full), or kvs_mem_register_ex()'s error.
 */
kvs_status_t kvs_preload_register_region(void *ptr, size_t len);
typedef kvs_status_t (*kvs_preload_register_region_fn)(void *ptr, size_t len);

/** Undoes kvs_preload_register_region(@ptr, ...). Errors: NOT_FOUND, UNSUPPORTED. */
kvs_status_t kvs_preload_deregister_region(void *ptr);
typedef kvs_status_t (*kvs_preload_deregister_region_fn)(void *ptr);

/**
 * Reads one of the shim's counters by name: the fields of the stats file
 * (allocations, allocated_bytes, kv_regions, copies_htod, ...) plus
 * "kvs_regions" (regions libkvshare holds now, by kvs_mem_region_count).
 * Errors: NOT_FOUND (unknown name), UNSUPPORTED (shim disabled).
 */
kvs_status_t kvs_preload_counter(const char *name, uint64_t *value_p);
typedef kvs_status_t (*kvs_preload_counter_fn)(const char *name, uint64_t *value_p);

/**
 * Reads a field of the tracked allocation holding @ptr: "base", "length",
 * "kv" (0/1), "handle" (VMM handle, 0 otherwise), "copies_in", "bytes_in",
 * "copies_out", "bytes_out".
 * Errors: NOT_FOUND (no tracked allocation holds @ptr, or unknown field).
 */
kvs_status_t kvs_preload_region_query(const void *ptr, const char *field, uint64_t *value_p);
typedef kvs_status_t (*kvs_preload_region_query_fn)(const void *ptr, const char *field,
                                                    uint64_t *value_p);

/**
 * The shim's libkvshare context, created on first use; the shim owns it, so
 * the caller must not destroy it. Lets a connector share the registrations.
 * Called before any KV allocation, it loads libkvshare (the shim loads it
 * only when needed); a later dlopen of "libkvshare.so.0" returns that copy.
 * Errors: UNSUPPORTED (shim disabled, or libkvshare could not be loaded or
 * its context created: the shim then passes through), INVALID_PARAM.
 */
kvs_status_t kvs_preload_get_ctx(kvs_ctx_h *ctx_p);
typedef kvs_status_t (*kvs_preload_get_ctx_fn)(kvs_ctx_h *ctx_p);

/** 1 when the shim is tracking, 0 when disabled or passed through. */
int kvs_preload_enabled(void);
typedef int (*kvs_preload_enabled_fn)(void);

#ifdef __cplusplus
}
#endif
#endif /* KVS_PRELOAD_H */
