/* SPDX-License-Identifier: Apache-2.0 */
/* Symbol resolution: the real dlsym and driver functions, and the routing of
 * dlsym and cuGetProcAddress answers to our hooks. */
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "shim_int.h"

typedef void *(*kvs_dlsym_fn)(void *handle, const char *symbol);

/* Everything here is idempotent and cached lock-free: racing threads find
 * the same answers (a racy one-time init was a HAMi-core bug; an idempotent
 * one is not). */
static struct {
    _Atomic(kvs_dlsym_fn) real_dlsym;
    _Atomic(void *) libcuda;
    _Atomic int missing_logged[KVS_H_COUNT];
    kvs_cuda_driver_t drv; /* for memory-type queries */
    _Atomic int drv_state; /* 0 none, 1 opening, 2 ready, 3 failed */
} g_res;

/* Outside g_res because the hooks read it inline (shim_int.h). */
_Atomic(void *) kvs__real_fns[KVS_H_COUNT];

KVS_NO_SANITIZE static kvs_dlsym_fn kvs__real_dlsym(void)
{
    static const char *const versions[] = {"GLIBC_2.34", "GLIBC_2.2.5", "GLIBC_2.17"};
    kvs_dlsym_fn fn = atomic_load_explicit(&g_res.real_dlsym, memory_order_acquire);

    if (KVS_LIKELY(fn != NULL)) {
        return fn;
    }
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
    atomic_store_explicit(&g_res.real_dlsym, fn, memory_order_release);
    return fn;
}

static void *kvs__libcuda(void)
{
    void *h = atomic_load_explicit(&g_res.libcuda, memory_order_acquire);
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
    if (!atomic_compare_exchange_strong(&g_res.libcuda, &expected, h)) {
        dlclose(h); /* another thread won; drop our extra reference */
        h = expected;
    }
    return h;
}

void *kvs__real_slow(int idx)
{
    int err = errno;
    kvs_dlsym_fn rd = kvs__real_dlsym();
    void *h = kvs__libcuda();
    void *p = (rd != NULL && h != NULL) ? rd(h, kvs__hook_names[idx]) : NULL;

    if (p == kvs__hook_addrs[idx]) {
        p = NULL; /* never call ourselves */
    }
    if (p == NULL) {
        if (h != NULL) {
            /* Only a definite "not in this driver" is cached. */
            atomic_store_explicit(&kvs__real_fns[idx], KVS_REAL_MISSING, memory_order_release);
        }
    } else {
        atomic_store_explicit(&kvs__real_fns[idx], p, memory_order_release);
    }
    errno = err;
    return p;
}

CUresult kvs__missing(int idx)
{
    int expected = 0;

    if (atomic_compare_exchange_strong(&g_res.missing_logged[idx], &expected, 1)) {
        kvs__log(KVS_PL_WARN, "%s: not found in the CUDA driver; returning CUDA_ERROR_NOT_FOUND",
                 kvs__hook_names[idx]);
    }
    return CUDA_ERROR_NOT_FOUND;
}

/* The driver table for memory-type queries; NULL while another thread
 * opens it (the caller then treats the pointer's kind as unknown). */
static const kvs_cuda_driver_t *kvs__driver(void)
{
    int state = atomic_load_explicit(&g_res.drv_state, memory_order_acquire);
    int expected = 0;
    kvs_dlsym_fn rd;

    if (state == 2) {
        return &g_res.drv;
    }
    if (state != 0 || !atomic_compare_exchange_strong(&g_res.drv_state, &expected, 1)) {
        return NULL;
    }
    rd = kvs__real_dlsym();
    if (rd == NULL || kvs_cuda_driver_open(rd, &g_res.drv, NULL, 0) != KVS_OK) {
        atomic_store_explicit(&g_res.drv_state, 3, memory_order_release);
        return NULL;
    }
    atomic_store_explicit(&g_res.drv_state, 2, memory_order_release);
    return &g_res.drv;
}

/* For unified-address copies of memory we do not track (allocated before
 * the shim, or by another process). */
int kvs__is_device(uintptr_t p)
{
    const kvs_cuda_driver_t *drv = kvs__driver();
    kvs_mem_type_t type;

    if (drv == NULL || kvs_cuda_mem_type(drv, (const void *)p, &type, NULL) != KVS_OK) {
        return -1;
    }
    return type == KVS_MEM_CUDA;
}

/* The hook a returned driver pointer stands for, or @p itself. */
static void *kvs__swap_one(int idx, void *p)
{
    if (p == NULL || p == kvs__hook_addrs[idx]) {
        return p;
    }
    if (p == kvs__real(idx)) {
        return kvs__hook_addrs[idx];
    }
    KVS_COUNT(procaddr_unmatched, 1);
    return p;
}

void *kvs__swap_any(void *p)
{
    for (int i = 0; i < KVS_H_COUNT; i++) {
        if (p == kvs__hook_addrs[i]) {
            return p;
        }
        if (p == kvs__real(i)) {
            KVS_COUNT(procaddr_hooked, 1);
            return kvs__hook_addrs[i];
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
        if (strcmp(symbol, kvs__hook_names[i]) == 0) {
            return i;
        }
    }
    return -1;
}

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
    if (handle == RTLD_NEXT || symbol == NULL || kvs__t_guard || symbol[0] != 'c' ||
        symbol[1] != 'u') {
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
    if (p != NULL && p != kvs__hook_addrs[idx]) {
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
