/* SPDX-License-Identifier: Apache-2.0 */
/* cuda/: the driver loader and memory-type/dmabuf queries, against the fake driver. */
#include <criterion/criterion.h>
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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
