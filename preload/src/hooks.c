/* SPDX-License-Identifier: Apache-2.0 */
/* The hook bodies: forward to the real driver function, then track, count
 * and observe what the driver did; exported under the driver's names. */
#include <errno.h>

#include "shim_int.h"

#define KVS_HOOK_DECL(name, params, args) static CUresult kvs_hook_##name params;
KVS_CUDA_HOOKED_FUNCS(KVS_HOOK_DECL)
#undef KVS_HOOK_DECL

const char *const kvs__hook_names[KVS_H_COUNT] = {
#define KVS_HOOK_NAME(name, params, args) #name,
    KVS_CUDA_HOOKED_FUNCS(KVS_HOOK_NAME)
#undef KVS_HOOK_NAME
};

void *const kvs__hook_addrs[KVS_H_COUNT] = {
#define KVS_HOOK_ADDR(name, params, args) (void *)(uintptr_t)kvs_hook_##name,
    KVS_CUDA_HOOKED_FUNCS(KVS_HOOK_ADDR)
#undef KVS_HOOK_ADDR
};

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
    /* Same-host readers can map a VMM allocation only if it was made
     * exportable as a POSIX fd (libkvshare's shm.c): ask for that too. A
     * driver that refuses the extra capability gets the engine's own call,
     * unchanged, so the engine never sees a failure we caused. */
    res = CUDA_ERROR_NOT_SUPPORTED;
    if (prop != NULL && kvs__shim.vmm_export &&
        !(prop->requestedHandleTypes & CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR)) {
        CUmemAllocationProp exportable = *prop;
        exportable.requestedHandleTypes =
            (CUmemAllocationHandleType)(exportable.requestedHandleTypes |
                                        CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR);
        res = real(handle, size, &exportable, flags);
    }
    if (res != CUDA_SUCCESS) {
        errno = err;
        res = real(handle, size, prop, flags);
    }
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
