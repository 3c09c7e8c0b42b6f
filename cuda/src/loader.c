/* SPDX-License-Identifier: Apache-2.0 */
/* Opens libcuda.so.1 with dlopen and answers memory-type and dmabuf queries. */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvs_cuda.h"

#define KVS_CUDA_DEFAULT_LIB "libcuda.so.1"

/* glibc's own dlsym, found by version: under kvshare's LD_PRELOAD shim the
 * unversioned name is the shim's, which answers cu* lookups with its hooks.
 * libkvshare's own driver calls (the same-host VMM path) must reach the
 * driver itself, not be tracked as the engine's. Plain dlsym when no
 * versioned one is found (another libc). */
static void *libc_dlsym(void *handle, const char *symbol)
{
    static const char *const versions[] = {"GLIBC_2.34", "GLIBC_2.2.5", "GLIBC_2.17"};
    for (size_t i = 0; i < sizeof(versions) / sizeof(versions[0]); i++) {
        void *p = dlvsym(RTLD_DEFAULT, "dlsym", versions[i]);
        if (p != NULL) {
            return ((kvs_cuda_resolve_fn)(uintptr_t)p)(handle, symbol);
        }
    }
    return dlsym(handle, symbol);
}

kvs_status_t kvs_cuda_driver_open(kvs_cuda_resolve_fn resolve, kvs_cuda_driver_t *drv, char *errbuf,
                                  size_t errbuf_len)
{
    const char *path;
    void *handle;

    if (drv == NULL) {
        return KVS_ERR_INVALID_PARAM;
    }
    memset(drv, 0, sizeof(*drv));
    if (resolve == NULL) {
        resolve = libc_dlsym;
    }
    path = getenv("KVSHARE_LIBCUDA");
    if (path == NULL || path[0] == '\0') {
        path = KVS_CUDA_DEFAULT_LIB;
    }
    /* RTLD_LOCAL: we must not change which symbols the application sees. */
    handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (handle == NULL) {
        if (errbuf != NULL && errbuf_len > 0) {
            const char *err = dlerror();
            snprintf(errbuf, errbuf_len, "dlopen(%s): %s", path, err ? err : "unknown error");
        }
        return KVS_ERR_NOT_FOUND;
    }
    drv->handle = handle;
#define KVS_CUDA_RESOLVE(name, params, args)                                                       \
    drv->name = (kvs_pfn_##name)(uintptr_t)resolve(handle, #name);
    KVS_CUDA_ALL_FUNCS(KVS_CUDA_RESOLVE)
#undef KVS_CUDA_RESOLVE
    return KVS_OK;
}

void kvs_cuda_driver_close(kvs_cuda_driver_t *drv)
{
    if (drv == NULL || drv->handle == NULL) {
        return;
    }
    dlclose(drv->handle);
    memset(drv, 0, sizeof(*drv));
}

const char *kvs_cuda_result_string(const kvs_cuda_driver_t *drv, CUresult result)
{
    const char *str = NULL;

    if (drv != NULL && drv->cuGetErrorString != NULL &&
        drv->cuGetErrorString(result, &str) == CUDA_SUCCESS && str != NULL) {
        return str;
    }
    switch (result) {
    case CUDA_SUCCESS:
        return "CUDA_SUCCESS";
    case CUDA_ERROR_INVALID_VALUE:
        return "CUDA_ERROR_INVALID_VALUE";
    case CUDA_ERROR_OUT_OF_MEMORY:
        return "CUDA_ERROR_OUT_OF_MEMORY";
    case CUDA_ERROR_NOT_INITIALIZED:
        return "CUDA_ERROR_NOT_INITIALIZED";
    case CUDA_ERROR_NO_DEVICE:
        return "CUDA_ERROR_NO_DEVICE";
    case CUDA_ERROR_NOT_FOUND:
        return "CUDA_ERROR_NOT_FOUND";
    case CUDA_ERROR_NOT_SUPPORTED:
        return "CUDA_ERROR_NOT_SUPPORTED";
    default:
        return "CUDA error";
    }
}

kvs_status_t kvs_cuda_mem_type(const kvs_cuda_driver_t *drv, const void *ptr,
                               kvs_mem_type_t *type_p, CUresult *cu_result_p)
{
    unsigned int memtype = 0;
    CUresult res;

    if (drv == NULL || type_p == NULL) {
        return KVS_ERR_INVALID_PARAM;
    }
    if (drv->cuPointerGetAttribute == NULL) {
        return KVS_ERR_UNSUPPORTED;
    }
    res = drv->cuPointerGetAttribute(&memtype, CU_POINTER_ATTRIBUTE_MEMORY_TYPE,
                                     (CUdeviceptr)(uintptr_t)ptr);
    if (cu_result_p != NULL) {
        *cu_result_p = res;
    }
    /* Plain malloc'd memory is unknown to the driver: that is host memory. */
    if (res == CUDA_ERROR_INVALID_VALUE) {
        *type_p = KVS_MEM_HOST;
        return KVS_OK;
    }
    if (res != CUDA_SUCCESS) {
        return KVS_ERR_TRANSPORT;
    }
    *type_p = (memtype == CU_MEMORYTYPE_DEVICE || memtype == CU_MEMORYTYPE_UNIFIED ||
               memtype == CU_MEMORYTYPE_ARRAY)
                  ? KVS_MEM_CUDA
                  : KVS_MEM_HOST;
    return KVS_OK;
}

kvs_status_t kvs_cuda_mem_range(const kvs_cuda_driver_t *drv, const void *ptr, void **base_p,
                                size_t *size_p)
{
    CUdeviceptr base = 0;
    size_t size = 0;

    if (drv == NULL || base_p == NULL || size_p == NULL) {
        return KVS_ERR_INVALID_PARAM;
    }
    if (drv->cuMemGetAddressRange_v2 == NULL) {
        return KVS_ERR_UNSUPPORTED;
    }
    if (drv->cuMemGetAddressRange_v2(&base, &size, (CUdeviceptr)(uintptr_t)ptr) != CUDA_SUCCESS) {
        return KVS_ERR_NOT_FOUND;
    }
    *base_p = (void *)(uintptr_t)base;
    *size_p = size;
    return KVS_OK;
}

kvs_status_t kvs_cuda_dmabuf_fd(const kvs_cuda_driver_t *drv, const void *ptr, size_t len,
                                int *fd_p)
{
    int fd = -1;
    CUresult res;

    if (drv == NULL || ptr == NULL || len == 0 || fd_p == NULL) {
        return KVS_ERR_INVALID_PARAM;
    }
    if (drv->cuMemGetHandleForAddressRange == NULL) {
        return KVS_ERR_UNSUPPORTED; /* drivers before CUDA 11.7 */
    }
    res = drv->cuMemGetHandleForAddressRange(&fd, (CUdeviceptr)(uintptr_t)ptr, len,
                                             CU_MEM_RANGE_HANDLE_TYPE_DMA_BUF_FD, 0);
    if (res == CUDA_ERROR_INVALID_VALUE) {
        return KVS_ERR_INVALID_PARAM;
    }
    if (res != CUDA_SUCCESS || fd < 0) {
        /* e.g. no dmabuf support in this kernel/driver combination */
        return KVS_ERR_UNSUPPORTED;
    }
    *fd_p = fd;
    return KVS_OK;
}
