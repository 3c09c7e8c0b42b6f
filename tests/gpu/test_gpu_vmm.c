/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The same-host CUDA path on a real GPU: a holder process makes a VMM
 * allocation with POSIX_FD export (as an engine would), writes it, exports it
 * with kvs_cuda_vmm_export() and passes the fd over a Unix socket
 * (SCM_RIGHTS, as shm.c does); a reader process imports it with
 * kvs_cuda_vmm_import() (read access only) and copies it out byte-exact, to
 * host memory and (DtoD, beside an HtoD) into device memory. An
 * allocation made without POSIX_FD must refuse export cleanly.
 *
 * Exits 77 (CTest: skipped), saying why, when there is no real driver or GPU.
 * NOTE: written without access to a GPU; on this project's CI it always skips.
 */
#include <dlfcn.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kvs_cuda.h"

#define SKIP 77
#define N    (1u << 20)

#define GPU_TEST_NAME "test_gpu_vmm"
#include "gpu_check.h"

static kvs_cuda_driver_t drv;

static uint8_t pattern(size_t i)
{
    return (uint8_t)((i * 2654435761u) >> 13);
}

/* Opens the driver; false (with the reason printed) when no real GPU is here. */
static bool open_gpu(void)
{
    char err[256] = "";
    int n = 0;
    if (kvs_cuda_driver_open(NULL, &drv, err, sizeof(err)) != KVS_OK) {
        printf("SKIP: no CUDA driver here (%s)\n", err);
        return false;
    }
    if (dlsym(drv.handle, "fakecuda_proc") != NULL) {
        printf("SKIP: libcuda.so.1 is kvshare's fake driver, not a real one\n");
        return false;
    }
    CUresult r = drv.cuInit != NULL ? drv.cuInit(0) : CUDA_ERROR_NOT_SUPPORTED;
    if (r != CUDA_SUCCESS || drv.cuDeviceGetCount(&n) != CUDA_SUCCESS || n == 0) {
        printf("SKIP: no usable GPU (cuInit = %d, %d devices)\n", r, n);
        return false;
    }
    if (drv.cuMemExportToShareableHandle == NULL || drv.cuMemImportFromShareableHandle == NULL) {
        printf("SKIP: this driver has no shareable VMM handles\n");
        return false;
    }
    return true;
}

/* The reader: runs in a child forked before any CUDA call. */
static int reader(int sock)
{
    uint64_t hdr[2];
    int fd = -1;
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } u;
    struct iovec iov = {.iov_base = hdr, .iov_len = sizeof(hdr)};
    struct msghdr mh = {
        .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf, .msg_controllen = sizeof(u.buf)};
    ssize_t got = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC);
    if (got == 0)
        return 0; /* the holder skipped */
    struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
    CHECK(got == (ssize_t)sizeof(hdr) && cm != NULL && cm->cmsg_type == SCM_RIGHTS);
    memcpy(&fd, CMSG_DATA(cm), sizeof(fd));
    CHECK(open_gpu());
    kvs_cuda_vmm_map_t m;
    CUresult res = CUDA_SUCCESS;
    kvs_status_t st = kvs_cuda_vmm_import(&drv, fd, hdr[1], &m, &res);
    if (st != KVS_OK)
        fprintf(stderr, "test_gpu_vmm: import: %s (CUresult %d)\n", kvs_status_string(st), res);
    CHECK(st == KVS_OK);
    close(fd);
    uint8_t *buf = malloc(N);
    CHECK(buf != NULL);
    CU(drv.cuCtxSetCurrent(m.ctx));
    CU(drv.cuMemcpyDtoH_v2(buf, m.va + hdr[0], N));
    for (size_t i = 0; i < N; i++)
        CHECK(buf[i] == pattern(i));
    /* Into a CUDA destination, as shm.c copies into a reader's CUDA pool:
     * DtoD from the read-only mapping and HtoD from pageable host memory
     * (a memfd's part), on a non-blocking stream of the device's primary
     * context, synchronised before the bytes are trusted. */
    CUdeviceptr dst = 0;
    CUstream s = NULL;
    uint8_t *back = malloc(2 * (size_t)N);
    CHECK(back != NULL);
    CU(drv.cuMemAlloc_v2(&dst, 2 * (size_t)N));
    CU(drv.cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
    CU(drv.cuMemcpyDtoDAsync_v2(dst, m.va + hdr[0], N, s));
    CU(drv.cuMemcpyHtoDAsync_v2(dst + N, buf, N, s));
    CU(drv.cuStreamSynchronize(s));
    CU(drv.cuMemcpyDtoH_v2(back, dst, 2 * (size_t)N));
    for (size_t i = 0; i < N; i++)
        CHECK(back[i] == pattern(i) && back[N + i] == pattern(i));
    CU(drv.cuStreamDestroy_v2(s));
    CU(drv.cuMemFree_v2(dst));
    free(back);
    printf("ok: DtoD from the read-only mapping and HtoD from host memory into device memory, "
           "on our stream, %u bytes each right\n",
           N);
    CU(drv.cuCtxSetCurrent(NULL));
    kvs_cuda_vmm_unmap(&drv, &m);
    free(buf);
    printf("ok: the reader imported the holder's allocation and read %u bytes right\n", N);
    return 0;
}

static CUmemGenericAllocationHandle vmm(size_t size, CUmemAllocationHandleType types,
                                        CUdeviceptr *va)
{
    CUmemAllocationProp prop;
    CUmemGenericAllocationHandle h = 0;
    memset(&prop, 0, sizeof(prop));
    prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    prop.location.id = 0;
    prop.requestedHandleTypes = types;
    CU(drv.cuMemCreate(&h, size, &prop, 0));
    CU(drv.cuMemAddressReserve(va, size, 0, 0, 0));
    CU(drv.cuMemMap(*va, size, 0, h, 0));
    const CUmemAccessDesc rw = {.location = prop.location,
                                .flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE};
    CU(drv.cuMemSetAccess(*va, size, &rw, 1));
    return h;
}

int main(void)
{
    int sv[2];
    CHECK(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) == 0);
    fflush(stdout);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        close(sv[0]);
        exit(reader(sv[1]));
    }
    close(sv[1]);
    int status = 0;
    if (!open_gpu()) {
        close(sv[0]);
        waitpid(pid, &status, 0);
        return SKIP;
    }
    CUdevice dev = 0;
    CUcontext ctx = NULL;
    CU(drv.cuDeviceGet(&dev, 0));
    CU(drv.cuDevicePrimaryCtxRetain(&ctx, dev));
    CU(drv.cuCtxSetCurrent(ctx));
    size_t gran = 0;
    CUmemAllocationProp gp;
    memset(&gp, 0, sizeof(gp));
    gp.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    gp.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    gp.requestedHandleTypes = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
    CU(drv.cuMemGetAllocationGranularity(&gran, &gp, CU_MEM_ALLOC_GRANULARITY_MINIMUM));
    const size_t size = ((2 * (size_t)N + gran - 1) / gran) * gran;

    /* Without POSIX_FD: no export, a clean refusal. */
    CUdeviceptr va = 0;
    CUmemGenericAllocationHandle h = vmm(size, CU_MEM_HANDLE_TYPE_NONE, &va);
    int fd = -7;
    uint64_t off = 0, asize = 0;
    CUresult res = CUDA_SUCCESS;
    CHECK(kvs_cuda_vmm_export(&drv, (void *)(uintptr_t)va, N, &fd, &off, &asize, &res) ==
          KVS_ERR_UNSUPPORTED);
    CHECK(fd == -7);
    printf("ok: an allocation without POSIX_FD is refused (CUresult %d)\n", res);
    CU(drv.cuMemUnmap(va, size));
    CU(drv.cuMemAddressFree(va, size));
    CU(drv.cuMemRelease(h));

    /* With it: the reader maps the same bytes. */
    h = vmm(size, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, &va);
    uint8_t *buf = malloc(N);
    CHECK(buf != NULL);
    for (size_t i = 0; i < N; i++)
        buf[i] = pattern(i);
    const size_t at = size - N; /* a region that does not start the allocation */
    CU(drv.cuMemcpyHtoD_v2(va + at, buf, N));
    CU(drv.cuCtxSynchronize());
    kvs_status_t st =
        kvs_cuda_vmm_export(&drv, (void *)(uintptr_t)(va + at), N, &fd, &off, &asize, &res);
    if (st != KVS_OK)
        fprintf(stderr, "test_gpu_vmm: export: %s (CUresult %d)\n", kvs_status_string(st), res);
    CHECK(st == KVS_OK && off == at && asize == size);
    uint64_t hdr[2] = {off, asize};
    union {
        char cbuf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } u;
    memset(&u, 0, sizeof(u));
    struct iovec iov = {.iov_base = hdr, .iov_len = sizeof(hdr)};
    struct msghdr mh = {
        .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.cbuf, .msg_controllen = sizeof(u.cbuf)};
    struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cm), &fd, sizeof(fd));
    CHECK(sendmsg(sv[0], &mh, 0) == (ssize_t)sizeof(hdr));
    close(fd);
    CHECK(waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    CU(drv.cuMemUnmap(va, size));
    CU(drv.cuMemAddressFree(va, size));
    CU(drv.cuMemRelease(h));
    CU(drv.cuDevicePrimaryCtxRelease_v2(dev));
    free(buf);
    close(sv[0]);
    kvs_cuda_driver_close(&drv);
    printf("ok: the same-host CUDA VMM path on a real GPU\n");
    return 0;
}
