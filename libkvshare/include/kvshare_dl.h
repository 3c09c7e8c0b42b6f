/* SPDX-License-Identifier: Apache-2.0 */
/*
 * kvshare_dl.h - libkvshare as a table of function pointers, for programs
 * that dlopen() libkvshare at run time instead of linking it (a C engine
 * that adopts kvshare optionally, the LD_PRELOAD shim).
 *
 * KVS_DL_FUNCS(X) names every function libkvshare.so.0 exports, once. The
 * table's members are typed from kvshare.h's prototypes with __typeof__, so
 * a signature change there breaks the caller's build instead of a call made
 * through a pointer of the old type. tests/unit/abi_exports.sh checks that
 * the list names exactly the library's exported kvs_* symbols.
 *
 *     kvs_dl_t kvs;
 *     char err[256];
 *     if (kvs_dl_open(&kvs, NULL, err, sizeof(err)) != KVS_OK) { ... err ... }
 *     kvs.ctx_create(&params, &ctx);
 *     ...
 *     kvs_dl_close(&kvs);
 *
 * Everything here is static inline and lives in the caller: nothing in this
 * header is part of libkvshare's ABI, and the caller needs -ldl (glibc < 2.34).
 */
#ifndef KVSHARE_DL_H
#define KVSHARE_DL_H

#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>

#include "kvshare.h"

#ifdef __cplusplus
extern "C" {
#define KVS_DL_TYPEOF(x) decltype(x)
#else
#define KVS_DL_TYPEOF(x) __typeof__(x)
#endif

/* One X(name) per exported kvs_<name>. Append new functions at the end, in
 * the order they are added to kvshare.h (the ABI is append-only). */
#define KVS_DL_FUNCS(X)                                                                            \
    X(status_string)                                                                               \
    X(version)                                                                                     \
    X(hasher_create)                                                                               \
    X(hasher_destroy)                                                                              \
    X(hasher_digest_len)                                                                           \
    X(hasher_none_hash)                                                                            \
    X(hasher_chain)                                                                                \
    X(key_to_u64)                                                                                  \
    X(key_to_hex)                                                                                  \
    X(layout_id)                                                                                   \
    X(ctx_create)                                                                                  \
    X(ctx_listen_addr)                                                                             \
    X(ctx_destroy)                                                                                 \
    X(progress)                                                                                    \
    X(mem_register)                                                                                \
    X(mem_deregister)                                                                              \
    X(mem_region_count)                                                                            \
    X(pool_create)                                                                                 \
    X(pool_destroy)                                                                                \
    X(pool_layout_id)                                                                              \
    X(pool_block_bytes)                                                                            \
    X(publish)                                                                                     \
    X(unpublish)                                                                                   \
    X(pool_reads)                                                                                  \
    X(lookup)                                                                                      \
    X(lease_hits)                                                                                  \
    X(lease_source)                                                                                \
    X(lease_release)                                                                               \
    X(fetch)                                                                                       \
    X(put)                                                                                         \
    X(request_test)                                                                                \
    X(request_wait)                                                                                \
    X(request_free)                                                                                \
    X(stats_query)                                                                                 \
    X(peer_connect)                                                                                \
    X(key_format_hex)                                                                              \
    X(progress_ex)                                                                                 \
    X(mem_register_ex)                                                                             \
    X(put_ex)                                                                                      \
    X(model_id)                                                                                    \
    X(layout_source_ranks)                                                                         \
    X(lease_heads)                                                                                 \
    X(mem_alloc)                                                                                   \
    X(mem_free)                                                                                    \
    X(pool_readers)

/** The functions of one loaded libkvshare: member `name` is kvs_<name>. */
typedef struct kvs_dl {
#define KVS_DL_MEMBER(name) KVS_DL_TYPEOF(kvs_##name) * name;
    KVS_DL_FUNCS(KVS_DL_MEMBER)
#undef KVS_DL_MEMBER
    void *handle; /* from dlopen(); NULL for a table filled another way */
} kvs_dl_t;

/** The name kvs_dl_open() loads when given no path: ABI 0, found like any library. */
#define KVS_DL_SONAME "libkvshare.so.0"

/**
 * dlopen()s @path (NULL: KVS_DL_SONAME) with RTLD_NOW | RTLD_LOCAL and looks
 * up every function of KVS_DL_FUNCS before filling @api, so a library that
 * lacks one (an older ABI, or not libkvshare at all) is refused whole and no
 * entry is ever NULL. RTLD_LOCAL keeps kvs_* out of the global namespace,
 * where they could bind to another copy's references.
 * On success *@api owns the handle: end it with kvs_dl_close().
 * Errors: KVS_ERR_NOT_FOUND, with one line in @errbuf (dlerror()'s text, or
 * the missing symbol; @errbuf may be NULL); nothing stays open and *@api is
 * not written.
 */
static inline kvs_status_t kvs_dl_open(kvs_dl_t *api, const char *path, char *errbuf, size_t errlen)
{
    kvs_dl_t t;
    void *sym;
    const char *why;

    if (path == NULL || path[0] == '\0') {
        path = KVS_DL_SONAME;
    }
    t.handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (t.handle == NULL) {
        why = dlerror();
        if (errbuf != NULL && errlen > 0) {
            snprintf(errbuf, errlen, "dlopen(%s): %s", path, why != NULL ? why : "failed");
        }
        return KVS_ERR_NOT_FOUND;
    }
    /* The detour through uintptr_t is the conversion POSIX allows from
     * dlsym()'s void * to a function pointer, without a pedantic warning. */
#define KVS_DL_SYM(name)                                                                           \
    sym = dlsym(t.handle, "kvs_" #name);                                                           \
    if (sym == NULL) {                                                                             \
        if (errbuf != NULL && errlen > 0) {                                                        \
            snprintf(errbuf, errlen, "%s has no symbol kvs_" #name, path);                         \
        }                                                                                          \
        dlclose(t.handle);                                                                         \
        return KVS_ERR_NOT_FOUND;                                                                  \
    }                                                                                              \
    t.name = (KVS_DL_TYPEOF(t.name))(uintptr_t)sym;
    KVS_DL_FUNCS(KVS_DL_SYM)
#undef KVS_DL_SYM
    *api = t;
    return KVS_OK;
}

/** dlclose()s a table kvs_dl_open() filled and clears its handle; accepts NULL. */
static inline void kvs_dl_close(kvs_dl_t *api)
{
    if (api != NULL && api->handle != NULL) {
        dlclose(api->handle);
        api->handle = NULL;
    }
}

#ifdef __cplusplus
}
#endif
#endif /* KVSHARE_DL_H */
