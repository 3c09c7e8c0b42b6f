/* SPDX-License-Identifier: Apache-2.0 */
/* Exports VMM allocations as POSIX fds and maps imported ones read-only (the same-host path). */
#include <stdbool.h>
#include <string.h>

#include "kvs_cuda.h"

/* The CUresult of a failed step, for the caller's log line. */
static kvs_status_t refused(CUresult res, CUresult *cu_result_p)
{
    if (cu_result_p != NULL) {
        *cu_result_p = res;
    }
    return KVS_ERR_UNSUPPORTED;
}

kvs_status_t kvs_cuda_vmm_export(const kvs_cuda_driver_t *drv, const void *ptr, size_t len,
                                 int *fd_p, uint64_t *off_p, uint64_t *size_p,
                                 CUresult *cu_result_p)
{
    CUmemGenericAllocationHandle h = 0;
    CUdeviceptr base = 0;
    size_t size = 0;
    int fd = -1;
    CUresult res;

    if (drv == NULL || ptr == NULL || len == 0 || fd_p == NULL || off_p == NULL || size_p == NULL) {
        return KVS_ERR_INVALID_PARAM;
    }
    if (drv->cuMemRetainAllocationHandle == NULL || drv->cuMemExportToShareableHandle == NULL ||
        drv->cuMemRelease == NULL || drv->cuMemGetAddressRange_v2 == NULL) {
        return refused(CUDA_ERROR_NOT_SUPPORTED, cu_result_p);
    }
    /* The mapping that holds ptr: one allocation, mapped at its offset 0
     * (cuMemMap takes no other offset), so ptr - base is the offset in it. */
    res = drv->cuMemGetAddressRange_v2(&base, &size, (CUdeviceptr)(uintptr_t)ptr);
    if (res != CUDA_SUCCESS) {
        return refused(res, cu_result_p);
    }
    const uint64_t off = (uint64_t)((uintptr_t)ptr - base);
    if ((uintptr_t)ptr < base || off > size || len > size - off) {
        return refused(CUDA_ERROR_INVALID_VALUE, cu_result_p); /* spans allocations */
    }
    /* A thread with no context (the holder's handover thread) borrows the
     * primary context of the device that holds ptr for the calls. */
    CUcontext cur = NULL, ctx = NULL;
    CUdevice dev = 0;
    int ordinal = 0;
    bool borrowed = false;
    if (drv->cuCtxGetCurrent != NULL && drv->cuCtxGetCurrent(&cur) == CUDA_SUCCESS && cur == NULL &&
        drv->cuPointerGetAttribute != NULL && drv->cuDeviceGet != NULL &&
        drv->cuDevicePrimaryCtxRetain != NULL && drv->cuCtxSetCurrent != NULL &&
        drv->cuPointerGetAttribute(&ordinal, CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL,
                                   (CUdeviceptr)(uintptr_t)ptr) == CUDA_SUCCESS &&
        drv->cuDeviceGet(&dev, ordinal) == CUDA_SUCCESS &&
        drv->cuDevicePrimaryCtxRetain(&ctx, dev) == CUDA_SUCCESS) {
        borrowed = drv->cuCtxSetCurrent(ctx) == CUDA_SUCCESS;
        if (!borrowed) {
            (void)drv->cuDevicePrimaryCtxRelease_v2(dev);
        }
    }
    res = drv->cuMemRetainAllocationHandle(&h, (void *)(uintptr_t)ptr);
    if (res == CUDA_SUCCESS) {
        res =
            drv->cuMemExportToShareableHandle(&fd, h, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0);
        (void)drv->cuMemRelease(h);
    } /* else: not VMM memory (cuMemAlloc, a memory pool) */
    if (borrowed) {
        (void)drv->cuCtxSetCurrent(NULL);
        (void)drv->cuDevicePrimaryCtxRelease_v2(dev);
    }
    if (res != CUDA_SUCCESS || fd < 0) {
        return refused(res != CUDA_SUCCESS ? res : CUDA_ERROR_UNKNOWN, cu_result_p);
    }
    *fd_p = fd;
    *off_p = off;
    *size_p = size;
    return KVS_OK;
}

kvs_status_t kvs_cuda_vmm_import(const kvs_cuda_driver_t *drv, int fd, uint64_t size,
                                 kvs_cuda_vmm_map_t *m, CUresult *cu_result_p)
{
    CUmemGenericAllocationHandle h = 0;
    CUmemAllocationProp prop;
    CUdevice dev = 0;
    CUcontext ctx = NULL;
    CUdeviceptr va = 0;
    CUresult res;

    if (drv == NULL || fd < 0 || size == 0 || (size_t)size != size || m == NULL) {
        return KVS_ERR_INVALID_PARAM;
    }
    memset(m, 0, sizeof(*m));
    if (drv->cuMemImportFromShareableHandle == NULL || drv->cuMemAddressReserve == NULL ||
        drv->cuMemMap == NULL || drv->cuMemSetAccess == NULL || drv->cuMemUnmap == NULL ||
        drv->cuMemAddressFree == NULL || drv->cuMemRelease == NULL ||
        drv->cuMemGetAllocationPropertiesFromHandle == NULL || drv->cuDeviceGet == NULL ||
        drv->cuDevicePrimaryCtxRetain == NULL || drv->cuDevicePrimaryCtxRelease_v2 == NULL) {
        return refused(CUDA_ERROR_NOT_SUPPORTED, cu_result_p);
    }
    res = drv->cuMemImportFromShareableHandle(&h, (void *)(uintptr_t)fd,
                                              CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR);
    if (res != CUDA_SUCCESS) {
        return refused(res, cu_result_p);
    }
    memset(&prop, 0, sizeof(prop));
    res = drv->cuMemGetAllocationPropertiesFromHandle(&prop, h);
    if (res == CUDA_SUCCESS && prop.location.type != CU_MEM_LOCATION_TYPE_DEVICE) {
        res = CUDA_ERROR_NOT_SUPPORTED;
    }
    if (res == CUDA_SUCCESS) {
        res = drv->cuDeviceGet(&dev, prop.location.id);
    }
    if (res == CUDA_SUCCESS) {
        res = drv->cuDevicePrimaryCtxRetain(&ctx, dev);
    }
    if (res != CUDA_SUCCESS) {
        goto err_release;
    }
    res = drv->cuMemAddressReserve(&va, (size_t)size, 0, 0, 0);
    if (res != CUDA_SUCCESS) {
        goto err_ctx;
    }
    res = drv->cuMemMap(va, (size_t)size, 0, h, 0);
    if (res != CUDA_SUCCESS) {
        goto err_free;
    }
    /* Read access for the device that holds it: the reader copies from
     * this memory and never writes it. */
    const CUmemAccessDesc access = {
        .location = {.type = CU_MEM_LOCATION_TYPE_DEVICE, .id = prop.location.id},
        .flags = CU_MEM_ACCESS_FLAGS_PROT_READ};
    res = drv->cuMemSetAccess(va, (size_t)size, &access, 1);
    if (res != CUDA_SUCCESS) {
        goto err_unmap;
    }
    (void)drv->cuMemRelease(h); /* the mapping keeps the allocation */
    m->va = va;
    m->size = (size_t)size;
    m->device = dev;
    m->ctx = ctx;
    return KVS_OK;
err_unmap:
    (void)drv->cuMemUnmap(va, (size_t)size);
err_free:
    (void)drv->cuMemAddressFree(va, (size_t)size);
err_ctx:
    (void)drv->cuDevicePrimaryCtxRelease_v2(dev);
err_release:
    (void)drv->cuMemRelease(h);
    return refused(res, cu_result_p);
}

void kvs_cuda_vmm_unmap(const kvs_cuda_driver_t *drv, kvs_cuda_vmm_map_t *m)
{
    if (drv == NULL || m == NULL || m->va == 0) {
        return;
    }
    (void)drv->cuMemUnmap(m->va, m->size);
    (void)drv->cuMemAddressFree(m->va, m->size);
    (void)drv->cuDevicePrimaryCtxRelease_v2(m->device);
    memset(m, 0, sizeof(*m));
}
