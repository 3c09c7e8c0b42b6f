/* SPDX-License-Identifier: Apache-2.0 */
/* cuda/: the driver loader and memory-type/dmabuf queries, against the fake driver. */
#include <criterion/criterion.h>
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fakecuda.h"
#include "kvs_cuda.h"

static kvs_cuda_driver_t drv;

static void open_driver(void)
{
    unsetenv("KVSHARE_LIBCUDA");
    cr_assert_eq(kvs_cuda_driver_open(NULL, &drv, NULL, 0), KVS_OK);
    cr_assert_not_null(dlsym(drv.handle, "fakecuda_proc"), "expected the fake libcuda.so.1");
    cr_assert_eq(drv.cuInit(0), CUDA_SUCCESS);
}

static void close_driver(void)
{
    kvs_cuda_driver_close(&drv);
}

TestSuite(cuda, .init = open_driver, .fini = close_driver);

Test(cuda, resolves_every_function)
{
#define CHECK_MEMBER(name, params, args) cr_expect_not_null((void *)(uintptr_t)drv.name, #name);
    KVS_CUDA_ALL_FUNCS(CHECK_MEMBER)
#undef CHECK_MEMBER
    int v = 0;
    cr_expect_eq(drv.cuDriverGetVersion(&v), CUDA_SUCCESS);
    cr_expect_geq(v, 12000);
}

Test(cuda, absent_driver_is_a_clear_status)
{
    kvs_cuda_driver_t d2;
    char err[256] = "";

    memset(&d2, 0x5a, sizeof(d2));
    setenv("KVSHARE_LIBCUDA", "/nonexistent/libcuda.so.1", 1);
    cr_expect_eq(kvs_cuda_driver_open(NULL, &d2, err, sizeof(err)), KVS_ERR_NOT_FOUND);
    cr_expect_not_null(strstr(err, "/nonexistent/libcuda.so.1"), "%s", err);
    cr_expect_null(d2.handle);
    cr_expect_null((void *)(uintptr_t)d2.cuInit);
    kvs_cuda_driver_close(&d2); /* harmless on a failed open */
    kvs_cuda_driver_close(NULL);
    cr_expect_eq(kvs_cuda_driver_open(NULL, NULL, NULL, 0), KVS_ERR_INVALID_PARAM);
}

Test(cuda, memory_types)
{
    CUdeviceptr d = 0;
    kvs_mem_type_t type = KVS_MEM_HOST;
    CUresult res = -1;
    int on_stack = 0;
    void *base = NULL;
    size_t size = 0;

    cr_assert_eq(drv.cuMemAlloc_v2(&d, 1 << 16), CUDA_SUCCESS);
    cr_expect_eq(kvs_cuda_mem_type(&drv, (void *)(uintptr_t)(d + 100), &type, &res), KVS_OK);
    cr_expect_eq(type, KVS_MEM_CUDA);
    cr_expect_eq(res, CUDA_SUCCESS);
    cr_expect_eq(kvs_cuda_mem_type(&drv, &on_stack, &type, &res), KVS_OK);
    cr_expect_eq(type, KVS_MEM_HOST);
    cr_expect_eq(res, CUDA_ERROR_INVALID_VALUE);
    cr_expect_eq(kvs_cuda_mem_range(&drv, (void *)(uintptr_t)(d + 100), &base, &size), KVS_OK);
    cr_expect_eq((uintptr_t)base, (uintptr_t)d);
    cr_expect_eq(size, 1 << 16);
    cr_expect_eq(kvs_cuda_mem_range(&drv, &on_stack, &base, &size), KVS_ERR_NOT_FOUND);
    cr_expect_eq(kvs_cuda_mem_type(&drv, &on_stack, NULL, NULL), KVS_ERR_INVALID_PARAM);
    cr_expect_eq(drv.cuMemFree_v2(d), CUDA_SUCCESS);
}

Test(cuda, dmabuf_for_vmm_memory_only)
{
    CUmemAllocationProp prop;
    CUmemGenericAllocationHandle h = 0;
    CUdeviceptr va = 0, d = 0;
    size_t gran = 0;
    int fd = -1;
    struct stat st;

    memset(&prop, 0, sizeof(prop));
    prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    cr_assert_eq(drv.cuMemGetAllocationGranularity(&gran, &prop, 0), CUDA_SUCCESS);
    cr_assert_eq(drv.cuMemCreate(&h, gran, &prop, 0), CUDA_SUCCESS);
    cr_assert_eq(drv.cuMemAddressReserve(&va, gran, 0, 0, 0), CUDA_SUCCESS);
    cr_assert_eq(drv.cuMemMap(va, gran, 0, h, 0), CUDA_SUCCESS);
    cr_expect_eq(kvs_cuda_dmabuf_fd(&drv, (void *)(uintptr_t)va, gran, &fd), KVS_OK);
    cr_expect_geq(fd, 0);
    cr_expect_eq(fstat(fd, &st), 0);
    cr_expect_eq((size_t)st.st_size, gran);
    close(fd);
    cr_expect_eq(kvs_cuda_dmabuf_fd(&drv, (void *)(uintptr_t)va, gran * 2, &fd),
                 KVS_ERR_INVALID_PARAM);
    cr_expect_eq(kvs_cuda_dmabuf_fd(&drv, (void *)(uintptr_t)va, 0, &fd), KVS_ERR_INVALID_PARAM);
    cr_expect_eq(drv.cuMemUnmap(va, gran), CUDA_SUCCESS);
    cr_expect_eq(drv.cuMemRelease(h), CUDA_SUCCESS);
    cr_expect_eq(drv.cuMemAddressFree(va, gran), CUDA_SUCCESS);

    /* Plain cuMemAlloc memory has no dmabuf in the fake: a clean refusal. */
    cr_assert_eq(drv.cuMemAlloc_v2(&d, 4096), CUDA_SUCCESS);
    fd = -7;
    cr_expect_eq(kvs_cuda_dmabuf_fd(&drv, (void *)(uintptr_t)d, 4096, &fd), KVS_ERR_UNSUPPORTED);
    cr_expect_eq(fd, -7);
    cr_expect_eq(drv.cuMemFree_v2(d), CUDA_SUCCESS);
}

/* A driver without the newer entry points (e.g. before CUDA 11.7). */
static void *old_driver(void *handle, const char *name)
{
    if (strcmp(name, "cuMemGetHandleForAddressRange") == 0 ||
        strcmp(name, "cuPointerGetAttribute") == 0 || strcmp(name, "cuGetErrorString") == 0) {
        return NULL;
    }
    return dlsym(handle, name);
}

Test(cuda, missing_entry_points_are_unsupported)
{
    kvs_cuda_driver_t old;
    kvs_mem_type_t type;
    int fd = -1, x = 0;

    cr_assert_eq(kvs_cuda_driver_open(old_driver, &old, NULL, 0), KVS_OK);
    cr_expect_null((void *)(uintptr_t)old.cuMemGetHandleForAddressRange);
    cr_expect_eq(kvs_cuda_mem_type(&old, &x, &type, NULL), KVS_ERR_UNSUPPORTED);
    cr_expect_eq(kvs_cuda_dmabuf_fd(&old, &x, 4, &fd), KVS_ERR_UNSUPPORTED);
    cr_expect_str_eq(kvs_cuda_result_string(&old, CUDA_ERROR_OUT_OF_MEMORY),
                     "CUDA_ERROR_OUT_OF_MEMORY");
    cr_expect_str_eq(kvs_cuda_result_string(&drv, CUDA_ERROR_OUT_OF_MEMORY), "fake driver error");
    kvs_cuda_driver_close(&old);
}

/* A VMM allocation of @size bytes mapped read-write at *va_p. */
static CUmemGenericAllocationHandle vmm_alloc(size_t size, int handle_types, CUdeviceptr *va_p)
{
    CUmemAllocationProp prop;
    CUmemGenericAllocationHandle h = 0;
    memset(&prop, 0, sizeof(prop));
    prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    prop.requestedHandleTypes = (CUmemAllocationHandleType)handle_types;
    cr_assert_eq(drv.cuMemCreate(&h, size, &prop, 0), CUDA_SUCCESS);
    cr_assert_eq(drv.cuMemAddressReserve(va_p, size, 0, 0, 0), CUDA_SUCCESS);
    cr_assert_eq(drv.cuMemMap(*va_p, size, 0, h, 0), CUDA_SUCCESS);
    CUmemAccessDesc rw = {.location = prop.location, .flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE};
    cr_assert_eq(drv.cuMemSetAccess(*va_p, size, &rw, 1), CUDA_SUCCESS);
    return h;
}

static void vmm_free(CUmemGenericAllocationHandle h, CUdeviceptr va, size_t size)
{
    cr_expect_eq(drv.cuMemUnmap(va, size), CUDA_SUCCESS);
    cr_expect_eq(drv.cuMemAddressFree(va, size), CUDA_SUCCESS);
    cr_expect_eq(drv.cuMemRelease(h), CUDA_SUCCESS);
}

Test(cuda, vmm_export_import_maps_the_same_bytes_read_only)
{
    size_t gran = 0;
    CUmemAllocationProp prop = {.type = CU_MEM_ALLOCATION_TYPE_PINNED};
    cr_assert_eq(drv.cuMemGetAllocationGranularity(&gran, &prop, 0), CUDA_SUCCESS);
    const size_t size = 4 * gran;
    CUdeviceptr va = 0;
    CUmemGenericAllocationHandle h = vmm_alloc(size, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, &va);
    uint8_t in[256], out[256];
    for (size_t i = 0; i < sizeof(in); i++)
        in[i] = (uint8_t)(i * 7 + 1);
    cr_assert_eq(drv.cuMemcpyHtoD_v2(va + gran + 16, in, sizeof(in)), CUDA_SUCCESS);

    int fd = -1;
    uint64_t off = 0, asize = 0;
    CUresult res = -1;
    cr_assert_eq(
        kvs_cuda_vmm_export(&drv, (void *)(uintptr_t)(va + gran), gran, &fd, &off, &asize, &res),
        KVS_OK, "CUresult %d", res);
    cr_expect_geq(fd, 0);
    cr_expect_eq(off, gran);
    cr_expect_eq(asize, size);
    kvs_cuda_vmm_map_t m;
    cr_assert_eq(kvs_cuda_vmm_import(&drv, fd, asize, &m, &res), KVS_OK, "CUresult %d", res);
    close(fd); /* the mapping does not need it */
    cr_expect_neq(m.va, va, "a new mapping of the same allocation");
    cr_expect_eq(m.size, size);
    cr_assert_eq(drv.cuMemcpyDtoH_v2(out, m.va + off + 16, sizeof(out)), CUDA_SUCCESS);
    cr_expect_eq(memcmp(in, out, sizeof(in)), 0, "the same bytes");
    /* Read access only: a copy into the imported mapping is refused (the
     * fake's pages are read-only; a real GPU would fault). */
    cr_expect_eq(drv.cuMemSetAccess(m.va, m.size,
                                    &(CUmemAccessDesc){.location = {CU_MEM_LOCATION_TYPE_DEVICE, 0},
                                                       .flags = CU_MEM_ACCESS_FLAGS_PROT_READ},
                                    1),
                 CUDA_SUCCESS);
    /* The holder's release does not take the reader's pages. */
    vmm_free(h, va, size);
    memset(out, 0, sizeof(out));
    cr_assert_eq(drv.cuMemcpyDtoH_v2(out, m.va + off + 16, sizeof(out)), CUDA_SUCCESS);
    cr_expect_eq(memcmp(in, out, sizeof(in)), 0);
    unsigned long unmaps = fakecuda_calls("cuMemUnmap");
    kvs_cuda_vmm_unmap(&drv, &m);
    cr_expect_eq(m.va, 0);
    cr_expect_eq(fakecuda_calls("cuMemUnmap"), unmaps + 1);
    kvs_cuda_vmm_unmap(&drv, &m); /* harmless twice */
    cr_expect_eq(fakecuda_calls("cuMemUnmap"), unmaps + 1);
}

Test(cuda, vmm_export_refuses_what_the_driver_refuses)
{
    size_t gran = 0;
    CUmemAllocationProp prop = {.type = CU_MEM_ALLOCATION_TYPE_PINNED};
    cr_assert_eq(drv.cuMemGetAllocationGranularity(&gran, &prop, 0), CUDA_SUCCESS);
    CUdeviceptr va = 0, d = 0;
    int fd = -7;
    uint64_t off = 0, size = 0;
    CUresult res = CUDA_SUCCESS;

    /* Made without POSIX_FD in requestedHandleTypes: the driver's NOT_SUPPORTED. */
    CUmemGenericAllocationHandle h = vmm_alloc(gran, CU_MEM_HANDLE_TYPE_NONE, &va);
    cr_expect_eq(kvs_cuda_vmm_export(&drv, (void *)(uintptr_t)va, gran, &fd, &off, &size, &res),
                 KVS_ERR_UNSUPPORTED);
    cr_expect_eq(res, CUDA_ERROR_NOT_SUPPORTED);
    cr_expect_eq(fd, -7, "a failing call writes no output");
    int raw = -1;
    cr_expect_eq(
        drv.cuMemExportToShareableHandle(&raw, h, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0),
        CUDA_ERROR_NOT_SUPPORTED);
    /* Bad handle types and flags, on either side. */
    cr_expect_eq(drv.cuMemExportToShareableHandle(&raw, h, (CUmemAllocationHandleType)2, 0),
                 CUDA_ERROR_INVALID_VALUE);
    cr_expect_eq(drv.cuMemExportToShareableHandle(&raw, h, CU_MEM_HANDLE_TYPE_NONE, 0),
                 CUDA_ERROR_INVALID_VALUE);
    CUmemGenericAllocationHandle imp = 0;
    cr_expect_eq(
        drv.cuMemImportFromShareableHandle(&imp, (void *)(uintptr_t)0, CU_MEM_HANDLE_TYPE_NONE),
        CUDA_ERROR_INVALID_VALUE);
    /* An fd no driver exported (a plain file) is not an allocation. */
    cr_expect_eq(drv.cuMemImportFromShareableHandle(&imp, (void *)(uintptr_t)0,
                                                    CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR),
                 CUDA_ERROR_INVALID_VALUE);
    /* The range past the allocation. */
    cr_expect_eq(kvs_cuda_vmm_export(&drv, (void *)(uintptr_t)va, gran + 1, &fd, &off, &size, &res),
                 KVS_ERR_UNSUPPORTED);
    vmm_free(h, va, gran);
    /* cuMemAlloc memory has no allocation handle. */
    cr_assert_eq(drv.cuMemAlloc_v2(&d, 4096), CUDA_SUCCESS);
    cr_expect_eq(kvs_cuda_vmm_export(&drv, (void *)(uintptr_t)d, 4096, &fd, &off, &size, &res),
                 KVS_ERR_UNSUPPORTED);
    cr_expect_eq(fd, -7);
    cr_expect_eq(drv.cuMemFree_v2(d), CUDA_SUCCESS);
    cr_expect_eq(kvs_cuda_vmm_export(&drv, NULL, 1, &fd, &off, &size, &res), KVS_ERR_INVALID_PARAM);
    kvs_cuda_vmm_map_t m;
    cr_expect_eq(kvs_cuda_vmm_import(&drv, -1, gran, &m, &res), KVS_ERR_INVALID_PARAM);
}

Test(cuda, vmm_handles_are_counted_like_the_drivers)
{
    size_t gran = 0;
    CUmemAllocationProp prop = {.type = CU_MEM_ALLOCATION_TYPE_PINNED};
    cr_assert_eq(drv.cuMemGetAllocationGranularity(&gran, &prop, 0), CUDA_SUCCESS);
    CUdeviceptr va = 0;
    CUmemGenericAllocationHandle h = vmm_alloc(gran, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, &va);
    CUmemGenericAllocationHandle r = 0;
    cr_assert_eq(drv.cuMemRetainAllocationHandle(&r, (void *)(uintptr_t)(va + 100)), CUDA_SUCCESS);
    cr_expect_eq(r, h, "the same handle, one more reference");
    cr_expect_eq(drv.cuMemRelease(r), CUDA_SUCCESS);
    cr_expect_eq(drv.cuMemRelease(h), CUDA_SUCCESS);
    cr_expect_eq(drv.cuMemRelease(h), CUDA_ERROR_INVALID_VALUE, "no reference left");
    /* The mapping keeps the memory: still readable and writable. */
    uint8_t b = 9, c = 0;
    cr_expect_eq(drv.cuMemcpyHtoD_v2(va, &b, 1), CUDA_SUCCESS);
    cr_expect_eq(drv.cuMemcpyDtoH_v2(&c, va, 1), CUDA_SUCCESS);
    cr_expect_eq(c, 9);
    cr_expect_eq(drv.cuMemUnmap(va, gran), CUDA_SUCCESS);
    cr_expect_eq(drv.cuMemRetainAllocationHandle(&r, (void *)(uintptr_t)va),
                 CUDA_ERROR_INVALID_VALUE);
    cr_expect_eq(drv.cuMemAddressFree(va, gran), CUDA_SUCCESS);
}

/* The fake refuses what the driver refuses, so code under test that copies
 * the wrong way, into host memory or on a stream of another context fails
 * here as it would on a GPU; copies on a stream land only once it is
 * synchronised. */
Test(cuda, copies_check_direction_context_and_stream)
{
    CUdeviceptr d = 0, d2 = 0;
    uint8_t host[64], back[64];
    memset(host, 7, sizeof(host));
    cr_assert_eq(drv.cuMemAlloc_v2(&d, sizeof(host)), CUDA_SUCCESS);
    cr_assert_eq(drv.cuMemAlloc_v2(&d2, sizeof(host)), CUDA_SUCCESS);
    /* Host memory where device memory is due; a copy past the allocation. */
    cr_expect_eq(drv.cuMemcpyHtoD_v2((CUdeviceptr)(uintptr_t)back, host, sizeof(host)),
                 CUDA_ERROR_INVALID_VALUE);
    cr_expect_eq(drv.cuMemcpyDtoH_v2(back, (CUdeviceptr)(uintptr_t)host, sizeof(host)),
                 CUDA_ERROR_INVALID_VALUE);
    cr_expect_eq(drv.cuMemcpyDtoD_v2(d, (CUdeviceptr)(uintptr_t)host, sizeof(host)),
                 CUDA_ERROR_INVALID_VALUE);
    cr_expect_eq(drv.cuMemcpyHtoD_v2(d + 1, host, sizeof(host)), CUDA_ERROR_INVALID_VALUE);
    /* A stream needs a current context, and its copies that context. */
    CUstream s = NULL;
    CUcontext ctx = NULL;
    CUdevice dev = 0;
    cr_assert_eq(drv.cuCtxSetCurrent(NULL), CUDA_SUCCESS);
    cr_expect_eq(drv.cuStreamCreate(&s, CU_STREAM_NON_BLOCKING), CUDA_ERROR_INVALID_CONTEXT);
    cr_assert_eq(drv.cuDeviceGet(&dev, 0), CUDA_SUCCESS);
    cr_assert_eq(drv.cuDevicePrimaryCtxRetain(&ctx, dev), CUDA_SUCCESS);
    cr_assert_eq(drv.cuCtxSetCurrent(ctx), CUDA_SUCCESS);
    cr_assert_eq(drv.cuStreamCreate(&s, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
    cr_assert_eq(drv.cuMemcpyHtoDAsync_v2(d, host, sizeof(host), s), CUDA_SUCCESS);
    cr_assert_eq(drv.cuMemcpyDtoDAsync_v2(d2, d, sizeof(host), s), CUDA_SUCCESS);
    memset(back, 0, sizeof(back));
    cr_assert_eq(drv.cuMemcpyDtoH_v2(back, d2, sizeof(back)), CUDA_SUCCESS);
    cr_expect_neq(back[0], 7, "a copy on a stream landed before the stream was synchronised");
    cr_assert_eq(drv.cuStreamSynchronize(s), CUDA_SUCCESS);
    cr_assert_eq(drv.cuMemcpyDtoH_v2(back, d2, sizeof(back)), CUDA_SUCCESS);
    cr_expect_eq(memcmp(back, host, sizeof(host)), 0);
    /* Peer copies name both contexts, which must be real ones. */
    cr_expect_eq(drv.cuMemcpyPeerAsync(d2, ctx, d, NULL, sizeof(host), s),
                 CUDA_ERROR_INVALID_CONTEXT);
    cr_expect_eq(drv.cuMemcpyPeerAsync(d2, ctx, d, ctx, sizeof(host), s), CUDA_SUCCESS);
    cr_assert_eq(drv.cuCtxSetCurrent(NULL), CUDA_SUCCESS);
    cr_expect_eq(drv.cuMemcpyHtoDAsync_v2(d, host, sizeof(host), s), CUDA_ERROR_INVALID_CONTEXT,
                 "a stream used without its context current");
    cr_expect_eq(drv.cuStreamDestroy_v2(s), CUDA_SUCCESS);
    cr_expect_eq(drv.cuDevicePrimaryCtxRelease_v2(dev), CUDA_SUCCESS);
    cr_expect_eq(drv.cuMemFree_v2(d), CUDA_SUCCESS);
    cr_expect_eq(drv.cuMemFree_v2(d2), CUDA_SUCCESS);
}
