/* SPDX-License-Identifier: Apache-2.0 */
/* A fake CUDA driver (libcuda.so.1) on host memory, for machines with no GPU. */
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <fcntl.h>

#include "fakecuda.h"

/* Everything in this file is the driver's ABI: export it all. */
#pragma GCC visibility push(default)

#define FAKE_VERSION     12080
#define FAKE_HDR         256u /* header before each allocation; keeps 256-byte alignment */
#define FAKE_MAX_ALLOCS  (1u << 16)
#define FAKE_MAX_VMM     1024u
#define FAKE_GRANULARITY (64u * 1024u)
#define FAKE_ALLOC_MAGIC 0x6b767366616b6563ull
#define FAKE_PRIMARY_CTX ((CUcontext)(uintptr_t)0x1000) /* device 0's, the only one */

/* ---- call counters, errno knob, fault injection ------------------------- */
enum {
#define FAKE_ENUM(name, params, args) FAKE_FN_##name,
    KVS_CUDA_ALL_FUNCS(FAKE_ENUM)
#undef FAKE_ENUM
        FAKE_FN_COUNT
};

static const char *const fake_names[FAKE_FN_COUNT] = {
#define FAKE_NAME(name, params, args) #name,
    KVS_CUDA_ALL_FUNCS(FAKE_NAME)
#undef FAKE_NAME
};

static void *const fake_procs[FAKE_FN_COUNT] = {
#define FAKE_PROC(name, params, args) (void *)(uintptr_t)name,
    KVS_CUDA_ALL_FUNCS(FAKE_PROC)
#undef FAKE_PROC
};

static atomic_ulong fake_counts[FAKE_FN_COUNT];
static atomic_int fake_errno;
static atomic_int fake_fail_fn = -1;
static atomic_int fake_fail_result;
static atomic_int fake_reenter;

static int fake_index(const char *name)
{
    for (int i = 0; i < FAKE_FN_COUNT; i++) {
        if (strcmp(fake_names[i], name) == 0) {
            return i;
        }
    }
    return -1;
}

void *fakecuda_proc(const char *name)
{
    int i = name ? fake_index(name) : -1;
    return i < 0 ? NULL : fake_procs[i];
}

unsigned long fakecuda_calls(const char *name)
{
    int i = name ? fake_index(name) : -1;
    return i < 0 ? 0 : atomic_load(&fake_counts[i]);
}

void fakecuda_set_errno(int err)
{
    atomic_store(&fake_errno, err);
}

void fakecuda_set_reenter(int on)
{
    atomic_store(&fake_reenter, on);
}

void fakecuda_fail_next(const char *name, CUresult result)
{
    atomic_store(&fake_fail_result, result);
    atomic_store(&fake_fail_fn, fake_index(name));
}

/* Counts the call, applies the errno knob, and returns an injected failure. */
#define FAKE_ENTER(name)                                                                           \
    do {                                                                                           \
        int fake_e_ = atomic_load_explicit(&fake_errno, memory_order_relaxed);                     \
        int fake_f_ = FAKE_FN_##name;                                                              \
        atomic_fetch_add_explicit(&fake_counts[FAKE_FN_##name], 1, memory_order_relaxed);          \
        if (fake_e_ != 0) {                                                                        \
            errno = fake_e_;                                                                       \
        }                                                                                          \
        if (atomic_load_explicit(&fake_fail_fn, memory_order_relaxed) == fake_f_ &&                \
            atomic_compare_exchange_strong(&fake_fail_fn, &fake_f_, -1)) {                         \
            return atomic_load(&fake_fail_result);                                                 \
        }                                                                                          \
    } while (0)

/* ---- linear allocations ------------------------------------------------- */
typedef struct fake_hdr {
    uint64_t magic;
    size_t size;
    uint32_t index;
} fake_hdr_t;

typedef struct fake_alloc {
    uintptr_t base;
    size_t size;
} fake_alloc_t;

static pthread_mutex_t fake_lock = PTHREAD_MUTEX_INITIALIZER;
static fake_alloc_t fake_allocs[FAKE_MAX_ALLOCS];
static uint32_t fake_nallocs;

static CUresult fake_alloc(CUdeviceptr *dptr, size_t size)
{
    void *mem = NULL;
    fake_hdr_t *hdr;

    if (dptr == NULL || size == 0) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    if (size > SIZE_MAX - FAKE_HDR || posix_memalign(&mem, FAKE_HDR, FAKE_HDR + size) != 0) {
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    hdr = mem;
    hdr->magic = FAKE_ALLOC_MAGIC;
    hdr->size = size;
    pthread_mutex_lock(&fake_lock);
    if (fake_nallocs == FAKE_MAX_ALLOCS) {
        pthread_mutex_unlock(&fake_lock);
        free(mem);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    hdr->index = fake_nallocs;
    fake_allocs[fake_nallocs].base = (uintptr_t)mem + FAKE_HDR;
    fake_allocs[fake_nallocs].size = size;
    fake_nallocs++;
    pthread_mutex_unlock(&fake_lock);
    *dptr = (CUdeviceptr)((uintptr_t)mem + FAKE_HDR);
    return CUDA_SUCCESS;
}

static CUresult fake_free(CUdeviceptr dptr)
{
    fake_hdr_t *hdr;
    uint32_t last;

    if (dptr == 0) {
        return CUDA_SUCCESS;
    }
    hdr = (fake_hdr_t *)((uintptr_t)dptr - FAKE_HDR);
    pthread_mutex_lock(&fake_lock);
    if (hdr->index >= fake_nallocs || fake_allocs[hdr->index].base != (uintptr_t)dptr ||
        hdr->magic != FAKE_ALLOC_MAGIC) {
        pthread_mutex_unlock(&fake_lock);
        return CUDA_ERROR_INVALID_VALUE;
    }
    last = --fake_nallocs;
    if (hdr->index != last) {
        fake_alloc_t moved = fake_allocs[last];
        fake_hdr_t *mhdr = (fake_hdr_t *)(moved.base - FAKE_HDR);
        fake_allocs[hdr->index] = moved;
        mhdr->index = hdr->index;
    }
    hdr->magic = 0;
    pthread_mutex_unlock(&fake_lock);
    free(hdr);
    return CUDA_SUCCESS;
}

unsigned long fakecuda_live_allocs(void)
{
    unsigned long n;
    pthread_mutex_lock(&fake_lock);
    n = fake_nallocs;
    pthread_mutex_unlock(&fake_lock);
    return n;
}

/* ---- virtual memory management: memfd-backed handles -------------------- */
/* An allocation lives while a handle to it (cuMemCreate, Retain, Import) or
 * a mapping of it remains, as the driver documents; a handle is valid while
 * refs > 0. POSIX_FD export works only for allocations that asked for it. */
typedef struct fake_handle {
    int fd;
    size_t size;
    int used;     /* the slot holds an allocation */
    int refs;     /* handle references */
    int maps;     /* cuMemMap mappings */
    int posix_fd; /* requestedHandleTypes had CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR */
} fake_handle_t;

typedef struct fake_map {
    uintptr_t base;
    size_t size;
    CUmemGenericAllocationHandle handle;
} fake_map_t;

static fake_handle_t fake_handles[FAKE_MAX_VMM];
static fake_map_t fake_maps[FAKE_MAX_VMM];

/* The live handle @h's slot, or NULL (fake_lock held). */
static fake_handle_t *fake_handle(CUmemGenericAllocationHandle h)
{
    if (h == 0 || h > FAKE_MAX_VMM || !fake_handles[h - 1].used || fake_handles[h - 1].refs <= 0) {
        return NULL;
    }
    return &fake_handles[h - 1];
}

/* A slot with no handle and no mapping left frees its memory (fake_lock
 * held); returns the fd to close outside the lock, or -1. */
static int fake_handle_drop(fake_handle_t *fh)
{
    if (fh->refs > 0 || fh->maps > 0) {
        return -1;
    }
    fh->used = 0;
    return fh->fd;
}

/* A new slot for @fd of @size bytes, one handle reference; 0 when full. */
static CUmemGenericAllocationHandle fake_handle_new(int fd, size_t size, int posix_fd)
{
    CUmemGenericAllocationHandle h = 0;
    pthread_mutex_lock(&fake_lock);
    for (uint32_t i = 0; i < FAKE_MAX_VMM && h == 0; i++) {
        if (!fake_handles[i].used) {
            fake_handles[i] = (fake_handle_t){
                .fd = fd, .size = size, .used = 1, .refs = 1, .maps = 0, .posix_fd = posix_fd};
            h = i + 1;
        }
    }
    pthread_mutex_unlock(&fake_lock);
    return h;
}

/* Finds the allocation or mapping holding @p; fills base/size/handle. */
static int fake_find(uintptr_t p, uintptr_t *base_p, size_t *size_p,
                     CUmemGenericAllocationHandle *handle_p)
{
    int found = 0;

    pthread_mutex_lock(&fake_lock);
    for (uint32_t i = 0; i < fake_nallocs && !found; i++) {
        if (p >= fake_allocs[i].base && p - fake_allocs[i].base < fake_allocs[i].size) {
            *base_p = fake_allocs[i].base;
            *size_p = fake_allocs[i].size;
            *handle_p = 0;
            found = 1;
        }
    }
    for (uint32_t i = 0; i < FAKE_MAX_VMM && !found; i++) {
        if (fake_maps[i].size != 0 && p >= fake_maps[i].base &&
            p - fake_maps[i].base < fake_maps[i].size) {
            *base_p = fake_maps[i].base;
            *size_p = fake_maps[i].size;
            *handle_p = fake_maps[i].handle;
            found = 1;
        }
    }
    pthread_mutex_unlock(&fake_lock);
    return found;
}

/* ---- the driver API ------------------------------------------------------ */
CUresult cuInit(unsigned int flags)
{
    FAKE_ENTER(cuInit);
    return flags == 0 ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

CUresult cuDriverGetVersion(int *version)
{
    FAKE_ENTER(cuDriverGetVersion);
    if (version == NULL) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    *version = FAKE_VERSION;
    return CUDA_SUCCESS;
}

CUresult cuGetErrorString(CUresult error, const char **str)
{
    FAKE_ENTER(cuGetErrorString);
    if (str == NULL) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    *str = error == CUDA_SUCCESS ? "no error (fake)" : "fake driver error";
    return CUDA_SUCCESS;
}

CUresult cuDeviceGet(CUdevice *dev, int ordinal)
{
    FAKE_ENTER(cuDeviceGet);
    if (dev == NULL || ordinal != 0) {
        return CUDA_ERROR_INVALID_DEVICE;
    }
    *dev = 0;
    return CUDA_SUCCESS;
}

CUresult cuDeviceGetCount(int *count)
{
    FAKE_ENTER(cuDeviceGetCount);
    if (count == NULL) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    *count = 1;
    return CUDA_SUCCESS;
}

CUresult cuDevicePrimaryCtxRetain(CUcontext *pctx, CUdevice dev)
{
    FAKE_ENTER(cuDevicePrimaryCtxRetain);
    if (pctx == NULL || dev != 0) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    *pctx = FAKE_PRIMARY_CTX;
    return CUDA_SUCCESS;
}

CUresult cuDevicePrimaryCtxRelease_v2(CUdevice dev)
{
    FAKE_ENTER(cuDevicePrimaryCtxRelease_v2);
    return dev == 0 ? CUDA_SUCCESS : CUDA_ERROR_INVALID_DEVICE;
}

static _Thread_local CUcontext fake_current;

CUresult cuCtxSetCurrent(CUcontext ctx)
{
    FAKE_ENTER(cuCtxSetCurrent);
    fake_current = ctx;
    return CUDA_SUCCESS;
}

CUresult cuCtxGetCurrent(CUcontext *pctx)
{
    FAKE_ENTER(cuCtxGetCurrent);
    if (pctx == NULL) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    *pctx = fake_current;
    return CUDA_SUCCESS;
}

CUresult cuCtxSynchronize(void)
{
    FAKE_ENTER(cuCtxSynchronize);
    return CUDA_SUCCESS;
}

/* Streams: each remembers the context current at cuStreamCreate, and an
 * async copy on it must run with that context current, as the driver
 * requires. Its copies are queued and done only at cuStreamSynchronize (or
 * cuStreamDestroy), so code that forgets to synchronise sees the bytes
 * missing, as it could on a device. The NULL stream copies at once. */
#define FAKE_STREAM_MAGIC 0x6b7673737472656dull
typedef struct fake_op {
    uintptr_t dst, src;
    size_t n;
    struct fake_op *next;
} fake_op_t;

typedef struct fake_stream {
    uint64_t magic;
    CUcontext ctx;
    pthread_mutex_t lock;
    fake_op_t *head, **tail;
} fake_stream_t;

static atomic_long fake_nstreams;

/* CUDA_SUCCESS when @s is the NULL stream or a live stream of the current
 * context. */
static CUresult fake_stream_check(CUstream s)
{
    const fake_stream_t *fs = (const fake_stream_t *)s;
    if (fs == NULL) {
        return CUDA_SUCCESS;
    }
    if (fs->magic != FAKE_STREAM_MAGIC) {
        return CUDA_ERROR_INVALID_HANDLE;
    }
    return fs->ctx == fake_current ? CUDA_SUCCESS : CUDA_ERROR_INVALID_CONTEXT;
}

/* Queues a checked copy on @fs; false when out of memory. */
static int fake_stream_push(fake_stream_t *fs, uintptr_t dst, uintptr_t src, size_t n)
{
    fake_op_t *op = malloc(sizeof(*op));
    if (op == NULL) {
        return 0;
    }
    *op = (fake_op_t){.dst = dst, .src = src, .n = n, .next = NULL};
    pthread_mutex_lock(&fs->lock);
    *fs->tail = op;
    fs->tail = &op->next;
    pthread_mutex_unlock(&fs->lock);
    return 1;
}

/* Does the copies queued on @fs, in order. */
static void fake_stream_run(fake_stream_t *fs)
{
    pthread_mutex_lock(&fs->lock);
    fake_op_t *op = fs->head;
    fs->head = NULL;
    fs->tail = &fs->head;
    pthread_mutex_unlock(&fs->lock);
    while (op != NULL) {
        fake_op_t *next = op->next;
        memmove((void *)op->dst, (const void *)op->src, op->n);
        free(op);
        op = next;
    }
}

CUresult cuStreamSynchronize(CUstream stream)
{
    FAKE_ENTER(cuStreamSynchronize);
    fake_stream_t *fs = (fake_stream_t *)stream;
    if (fs != NULL && fs->magic != FAKE_STREAM_MAGIC) {
        return CUDA_ERROR_INVALID_HANDLE;
    }
    if (fs != NULL) {
        fake_stream_run(fs);
    }
    return CUDA_SUCCESS;
}

CUresult cuStreamCreate(CUstream *pstream, unsigned int flags)
{
    FAKE_ENTER(cuStreamCreate);
    if (pstream == NULL || (flags & ~(unsigned int)CU_STREAM_NON_BLOCKING) != 0) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    if (fake_current == NULL) {
        return CUDA_ERROR_INVALID_CONTEXT; /* a stream belongs to the current context */
    }
    fake_stream_t *fs = malloc(sizeof(*fs));
    if (fs == NULL) {
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    fs->magic = FAKE_STREAM_MAGIC;
    fs->ctx = fake_current;
    pthread_mutex_init(&fs->lock, NULL);
    fs->head = NULL;
    fs->tail = &fs->head;
    atomic_fetch_add(&fake_nstreams, 1);
    *pstream = (CUstream)fs;
    return CUDA_SUCCESS;
}

CUresult cuStreamDestroy_v2(CUstream stream)
{
    FAKE_ENTER(cuStreamDestroy_v2);
    fake_stream_t *fs = (fake_stream_t *)stream;
    if (fs == NULL || fs->magic != FAKE_STREAM_MAGIC) {
        return CUDA_ERROR_INVALID_HANDLE;
    }
    fake_stream_run(fs); /* the device finishes what was queued */
    fs->magic = 0;
    pthread_mutex_destroy(&fs->lock);
    free(fs);
    atomic_fetch_sub(&fake_nstreams, 1);
    return CUDA_SUCCESS;
}

long fakecuda_live_streams(void)
{
    return atomic_load(&fake_nstreams);
}

CUresult cuPointerGetAttribute(void *data, CUpointer_attribute attr, CUdeviceptr ptr)
{
    uintptr_t base = 0;
    size_t size = 0;
    CUmemGenericAllocationHandle h = 0;

    FAKE_ENTER(cuPointerGetAttribute);
    if (data == NULL) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    if (!fake_find((uintptr_t)ptr, &base, &size, &h)) {
        return CUDA_ERROR_INVALID_VALUE; /* as the real driver does for host memory */
    }
    switch (attr) {
    case CU_POINTER_ATTRIBUTE_MEMORY_TYPE:
        *(unsigned int *)data = CU_MEMORYTYPE_DEVICE;
        return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_RANGE_START_ADDR:
        *(CUdeviceptr *)data = base;
        return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_RANGE_SIZE:
        *(size_t *)data = size;
        return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL:
        *(int *)data = 0;
        return CUDA_SUCCESS;
    default:
        return CUDA_ERROR_NOT_SUPPORTED;
    }
}

CUresult cuMemGetAddressRange_v2(CUdeviceptr *pbase, size_t *psize, CUdeviceptr dptr)
{
    uintptr_t base = 0;
    size_t size = 0;
    CUmemGenericAllocationHandle h = 0;

    FAKE_ENTER(cuMemGetAddressRange_v2);
    if (!fake_find((uintptr_t)dptr, &base, &size, &h)) {
        return CUDA_ERROR_NOT_FOUND;
    }
    if (pbase != NULL) {
        *pbase = base;
    }
    if (psize != NULL) {
        *psize = size;
    }
    return CUDA_SUCCESS;
}

CUresult cuMemGetHandleForAddressRange(void *handle, CUdeviceptr dptr, size_t size,
                                       CUmemRangeHandleType type, unsigned long long flags)
{
    uintptr_t base = 0;
    size_t msize = 0;
    CUmemGenericAllocationHandle h = 0;
    int fd;

    FAKE_ENTER(cuMemGetHandleForAddressRange);
    if (handle == NULL || type != CU_MEM_RANGE_HANDLE_TYPE_DMA_BUF_FD || flags != 0) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    if (!fake_find((uintptr_t)dptr, &base, &msize, &h) || dptr - base + size > msize) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    /* Only VMM memory has a file behind it in the fake; the real driver
     * refuses some memory too, so callers must cope with NOT_SUPPORTED. */
    if (h == 0 || h > FAKE_MAX_VMM) {
        return CUDA_ERROR_NOT_SUPPORTED;
    }
    pthread_mutex_lock(&fake_lock);
    fd = fake_handles[h - 1].used ? dup(fake_handles[h - 1].fd) : -1;
    pthread_mutex_unlock(&fake_lock);
    if (fd < 0) {
        return CUDA_ERROR_NOT_SUPPORTED;
    }
    *(int *)handle = fd;
    return CUDA_SUCCESS;
}

CUresult cuMemSetAccess(CUdeviceptr ptr, size_t size, const CUmemAccessDesc *desc, size_t count)
{
    int prot;

    FAKE_ENTER(cuMemSetAccess);
    if (desc == NULL || count == 0 || ptr == 0 || size == 0) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    /* The host's page protection stands in for the device's access: a
     * process granted PROT_READ faults on a write, as a kernel would. */
    switch (desc[count - 1].flags) {
    case CU_MEM_ACCESS_FLAGS_PROT_NONE:
        prot = PROT_NONE;
        break;
    case CU_MEM_ACCESS_FLAGS_PROT_READ:
        prot = PROT_READ;
        break;
    case CU_MEM_ACCESS_FLAGS_PROT_READWRITE:
        prot = PROT_READ | PROT_WRITE;
        break;
    default:
        return CUDA_ERROR_INVALID_VALUE;
    }
    return mprotect((void *)(uintptr_t)ptr, size, prot) == 0 ? CUDA_SUCCESS
                                                             : CUDA_ERROR_INVALID_VALUE;
}

CUresult cuMemGetAllocationGranularity(size_t *granularity, const CUmemAllocationProp *prop,
                                       CUmemAllocationGranularity_flags option)
{
    FAKE_ENTER(cuMemGetAllocationGranularity);
    (void)option;
    if (granularity == NULL || prop == NULL) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    *granularity = FAKE_GRANULARITY;
    return CUDA_SUCCESS;
}

/* ---- cuGetProcAddress: versioned names, per-thread-stream variants ------ */
typedef struct fake_sym {
    const char *api;    /* the name callers ask for */
    const char *symbol; /* the exported function it resolves to */
    int min_version;
    int ptds; /* 1: the per-thread-default-stream variant */
} fake_sym_t;

static const fake_sym_t fake_syms[] = {
    {"cuInit", "cuInit", 2000, 0},
    {"cuDriverGetVersion", "cuDriverGetVersion", 2020, 0},
    {"cuGetErrorString", "cuGetErrorString", 6000, 0},
    {"cuDeviceGet", "cuDeviceGet", 2000, 0},
    {"cuDeviceGetCount", "cuDeviceGetCount", 2000, 0},
    {"cuDevicePrimaryCtxRetain", "cuDevicePrimaryCtxRetain", 7000, 0},
    {"cuDevicePrimaryCtxRelease", "cuDevicePrimaryCtxRelease_v2", 11000, 0},
    {"cuCtxSetCurrent", "cuCtxSetCurrent", 4000, 0},
    {"cuCtxGetCurrent", "cuCtxGetCurrent", 4000, 0},
    {"cuCtxSynchronize", "cuCtxSynchronize", 2000, 0},
    {"cuStreamSynchronize", "cuStreamSynchronize", 2000, 0},
    {"cuStreamCreate", "cuStreamCreate", 2000, 0},
    {"cuStreamDestroy", "cuStreamDestroy_v2", 4000, 0},
    {"cuMemcpyPeerAsync", "cuMemcpyPeerAsync", 4000, 0},
    {"cuPointerGetAttribute", "cuPointerGetAttribute", 4000, 0},
    {"cuMemGetAddressRange", "cuMemGetAddressRange_v2", 3020, 0},
    {"cuMemGetHandleForAddressRange", "cuMemGetHandleForAddressRange", 11070, 0},
    {"cuMemSetAccess", "cuMemSetAccess", 10020, 0},
    {"cuMemGetAllocationGranularity", "cuMemGetAllocationGranularity", 10020, 0},
    {"cuMemRetainAllocationHandle", "cuMemRetainAllocationHandle", 11000, 0},
    {"cuMemGetAllocationPropertiesFromHandle", "cuMemGetAllocationPropertiesFromHandle", 10020, 0},
    {"cuMemExportToShareableHandle", "cuMemExportToShareableHandle", 10020, 0},
    {"cuMemImportFromShareableHandle", "cuMemImportFromShareableHandle", 10020, 0},
    {"cuGetProcAddress", "cuGetProcAddress", 11030, 0},
    {"cuGetProcAddress", "cuGetProcAddress_v2", 12000, 0},
    {"cuMemAlloc", "cuMemAlloc_v2", 3020, 0},
    {"cuMemAllocPitch", "cuMemAllocPitch_v2", 3020, 0},
    {"cuMemAllocAsync", "cuMemAllocAsync", 11020, 0},
    {"cuMemAllocAsync", "cuMemAllocAsync_ptsz", 11020, 1},
    {"cuMemFree", "cuMemFree_v2", 3020, 0},
    {"cuMemFreeAsync", "cuMemFreeAsync", 11020, 0},
    {"cuMemFreeAsync", "cuMemFreeAsync_ptsz", 11020, 1},
    {"cuMemCreate", "cuMemCreate", 10020, 0},
    {"cuMemRelease", "cuMemRelease", 10020, 0},
    {"cuMemAddressReserve", "cuMemAddressReserve", 10020, 0},
    {"cuMemAddressFree", "cuMemAddressFree", 10020, 0},
    {"cuMemMap", "cuMemMap", 10020, 0},
    {"cuMemUnmap", "cuMemUnmap", 10020, 0},
    {"cuMemcpy", "cuMemcpy", 4000, 0},
    {"cuMemcpy", "cuMemcpy_ptds", 7000, 1},
    {"cuMemcpyAsync", "cuMemcpyAsync", 4000, 0},
    {"cuMemcpyAsync", "cuMemcpyAsync_ptsz", 7000, 1},
    {"cuMemcpyHtoD", "cuMemcpyHtoD_v2", 3020, 0},
    {"cuMemcpyHtoD", "cuMemcpyHtoD_v2_ptds", 7000, 1},
    {"cuMemcpyDtoH", "cuMemcpyDtoH_v2", 3020, 0},
    {"cuMemcpyDtoH", "cuMemcpyDtoH_v2_ptds", 7000, 1},
    {"cuMemcpyDtoD", "cuMemcpyDtoD_v2", 3020, 0},
    {"cuMemcpyDtoD", "cuMemcpyDtoD_v2_ptds", 7000, 1},
    {"cuMemcpyHtoDAsync", "cuMemcpyHtoDAsync_v2", 3020, 0},
    {"cuMemcpyHtoDAsync", "cuMemcpyHtoDAsync_v2_ptsz", 7000, 1},
    {"cuMemcpyDtoHAsync", "cuMemcpyDtoHAsync_v2", 3020, 0},
    {"cuMemcpyDtoHAsync", "cuMemcpyDtoHAsync_v2_ptsz", 7000, 1},
    {"cuMemcpyDtoDAsync", "cuMemcpyDtoDAsync_v2", 3020, 0},
    {"cuMemcpyDtoDAsync", "cuMemcpyDtoDAsync_v2_ptsz", 7000, 1},
};

static CUresult fake_get_proc(const char *symbol, void **pfn, int version, cuuint64_t flags,
                              CUdriverProcAddressQueryResult *status)
{
    const fake_sym_t *best = NULL;
    int known = 0;
    int want_ptds = (flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM) != 0;

    if (symbol == NULL || pfn == NULL) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    *pfn = NULL;
    for (size_t i = 0; i < sizeof(fake_syms) / sizeof(fake_syms[0]); i++) {
        const fake_sym_t *s = &fake_syms[i];
        if (strcmp(s->api, symbol) != 0) {
            continue;
        }
        known = 1;
        if (s->min_version > version || (s->ptds && !want_ptds)) {
            continue;
        }
        /* The ptds variant wins when asked for; then the newest version. */
        if (best == NULL || s->ptds > best->ptds ||
            (s->ptds == best->ptds && s->min_version > best->min_version)) {
            best = s;
        }
    }
    if (best == NULL) {
        if (status != NULL) {
            *status = known ? CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT
                            : CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
        }
        return CUDA_ERROR_NOT_FOUND;
    }
    *pfn = fakecuda_proc(best->symbol);
    if (status != NULL) {
        *status = CU_GET_PROC_ADDRESS_SUCCESS;
    }
    return CUDA_SUCCESS;
}

CUresult cuGetProcAddress(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags)
{
    FAKE_ENTER(cuGetProcAddress);
    return fake_get_proc(symbol, pfn, cudaVersion, flags, NULL);
}

CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags,
                             CUdriverProcAddressQueryResult *symbolStatus)
{
    FAKE_ENTER(cuGetProcAddress_v2);
    return fake_get_proc(symbol, pfn, cudaVersion, flags, symbolStatus);
}

/* ---- allocation ---------------------------------------------------------- */
CUresult cuMemAlloc_v2(CUdeviceptr *dptr, size_t bytesize)
{
    FAKE_ENTER(cuMemAlloc_v2);
    return fake_alloc(dptr, bytesize);
}

CUresult cuMemAllocPitch_v2(CUdeviceptr *dptr, size_t *pPitch, size_t WidthInBytes, size_t Height,
                            unsigned int ElementSizeBytes)
{
    size_t pitch;

    FAKE_ENTER(cuMemAllocPitch_v2);
    if (pPitch == NULL || WidthInBytes == 0 || Height == 0 ||
        (ElementSizeBytes != 4 && ElementSizeBytes != 8 && ElementSizeBytes != 16)) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    pitch = (WidthInBytes + 511u) & ~(size_t)511u;
    if (Height > SIZE_MAX / pitch) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    *pPitch = pitch;
    return fake_alloc(dptr, pitch * Height);
}

CUresult cuMemAllocAsync(CUdeviceptr *dptr, size_t bytesize, CUstream hStream)
{
    FAKE_ENTER(cuMemAllocAsync);
    (void)hStream;
    return fake_alloc(dptr, bytesize);
}

CUresult cuMemAllocAsync_ptsz(CUdeviceptr *dptr, size_t bytesize, CUstream hStream)
{
    FAKE_ENTER(cuMemAllocAsync_ptsz);
    (void)hStream;
    return fake_alloc(dptr, bytesize);
}

CUresult cuMemFree_v2(CUdeviceptr dptr)
{
    FAKE_ENTER(cuMemFree_v2);
    return fake_free(dptr);
}

CUresult cuMemFreeAsync(CUdeviceptr dptr, CUstream hStream)
{
    FAKE_ENTER(cuMemFreeAsync);
    (void)hStream;
    return fake_free(dptr);
}

CUresult cuMemFreeAsync_ptsz(CUdeviceptr dptr, CUstream hStream)
{
    FAKE_ENTER(cuMemFreeAsync_ptsz);
    (void)hStream;
    return fake_free(dptr);
}

/* ---- VMM ----------------------------------------------------------------- */
CUresult cuMemCreate(CUmemGenericAllocationHandle *handle, size_t size,
                     const CUmemAllocationProp *prop, unsigned long long flags)
{
    int fd;

    FAKE_ENTER(cuMemCreate);
    if (handle == NULL || prop == NULL || flags != 0 || size == 0 || size % FAKE_GRANULARITY) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    fd = memfd_create("fakecuda", MFD_CLOEXEC);
    if (fd < 0) {
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    if (ftruncate(fd, (off_t)size) != 0) {
        close(fd);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    *handle = fake_handle_new(
        fd, size, (prop->requestedHandleTypes & CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR) != 0);
    if (*handle == 0) {
        close(fd);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    return CUDA_SUCCESS;
}

CUresult cuMemRelease(CUmemGenericAllocationHandle handle)
{
    int fd = -1;

    FAKE_ENTER(cuMemRelease);
    if (handle == 0 || handle > FAKE_MAX_VMM) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    pthread_mutex_lock(&fake_lock);
    fake_handle_t *fh = fake_handle(handle);
    if (fh == NULL) {
        pthread_mutex_unlock(&fake_lock);
        return CUDA_ERROR_INVALID_VALUE;
    }
    fh->refs--;
    fd = fake_handle_drop(fh); /* existing mappings keep it, as with the real driver */
    pthread_mutex_unlock(&fake_lock);
    if (fd >= 0) {
        close(fd);
    }
    return CUDA_SUCCESS;
}

CUresult cuMemRetainAllocationHandle(CUmemGenericAllocationHandle *handle, void *addr)
{
    CUresult res = CUDA_ERROR_INVALID_VALUE;

    FAKE_ENTER(cuMemRetainAllocationHandle);
    if (handle == NULL) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    pthread_mutex_lock(&fake_lock);
    for (uint32_t i = 0; i < FAKE_MAX_VMM; i++) {
        if (fake_maps[i].size != 0 && (uintptr_t)addr >= fake_maps[i].base &&
            (uintptr_t)addr - fake_maps[i].base < fake_maps[i].size) {
            fake_handles[fake_maps[i].handle - 1].refs++;
            *handle = fake_maps[i].handle;
            res = CUDA_SUCCESS;
            break;
        }
    }
    pthread_mutex_unlock(&fake_lock);
    return res; /* not mapped VMM memory (cuMemAlloc memory too) */
}

CUresult cuMemGetAllocationPropertiesFromHandle(CUmemAllocationProp *prop,
                                                CUmemGenericAllocationHandle handle)
{
    FAKE_ENTER(cuMemGetAllocationPropertiesFromHandle);
    if (prop == NULL) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    pthread_mutex_lock(&fake_lock);
    fake_handle_t *fh = fake_handle(handle);
    int posix_fd = fh != NULL && fh->posix_fd;
    pthread_mutex_unlock(&fake_lock);
    if (fh == NULL) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    memset(prop, 0, sizeof(*prop));
    prop->type = CU_MEM_ALLOCATION_TYPE_PINNED;
    prop->location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    prop->location.id = 0;
    prop->requestedHandleTypes =
        posix_fd ? CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR : CU_MEM_HANDLE_TYPE_NONE;
    return CUDA_SUCCESS;
}

CUresult cuMemExportToShareableHandle(void *shareableHandle, CUmemGenericAllocationHandle handle,
                                      CUmemAllocationHandleType handleType,
                                      unsigned long long flags)
{
    int fd = -1;
    CUresult res = CUDA_SUCCESS;

    FAKE_ENTER(cuMemExportToShareableHandle);
    if (shareableHandle == NULL || flags != 0 ||
        handleType != CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR) {
        return CUDA_ERROR_INVALID_VALUE; /* the fake knows no other handle type */
    }
    pthread_mutex_lock(&fake_lock);
    fake_handle_t *fh = fake_handle(handle);
    if (fh == NULL) {
        res = CUDA_ERROR_INVALID_VALUE;
    } else if (!fh->posix_fd) {
        res = CUDA_ERROR_NOT_SUPPORTED; /* not requested at cuMemCreate */
    } else {
        fd = fcntl(fh->fd, F_DUPFD_CLOEXEC, 0);
        res = fd >= 0 ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
    }
    pthread_mutex_unlock(&fake_lock);
    if (res == CUDA_SUCCESS) {
        *(int *)shareableHandle = fd;
    }
    return res;
}

CUresult cuMemImportFromShareableHandle(CUmemGenericAllocationHandle *handle, void *osHandle,
                                        CUmemAllocationHandleType shHandleType)
{
    char link[64], target[128];
    struct stat st;
    int fd = (int)(intptr_t)osHandle;

    FAKE_ENTER(cuMemImportFromShareableHandle);
    if (handle == NULL || shHandleType != CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR || fd < 0) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    /* Only what some fake driver exported: a "fakecuda" memfd. */
    snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, target, sizeof(target) - 1);
    if (n < 0 || fstat(fd, &st) != 0 || st.st_size <= 0) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    target[n] = '\0';
    if (strncmp(target, "/memfd:fakecuda ", 16) != 0) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    int own = fcntl(fd, F_DUPFD_CLOEXEC, 0); /* the caller keeps (and closes) osHandle */
    if (own < 0) {
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    *handle = fake_handle_new(own, (size_t)st.st_size, 1);
    if (*handle == 0) {
        close(own);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    return CUDA_SUCCESS;
}

CUresult cuMemAddressReserve(CUdeviceptr *ptr, size_t size, size_t alignment, CUdeviceptr addr,
                             unsigned long long flags)
{
    void *p;

    FAKE_ENTER(cuMemAddressReserve);
    (void)alignment;
    if (ptr == NULL || size == 0 || flags != 0 || size % FAKE_GRANULARITY) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    p = mmap((void *)(uintptr_t)addr, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
             -1, 0);
    if (p == MAP_FAILED) {
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    *ptr = (CUdeviceptr)(uintptr_t)p;
    return CUDA_SUCCESS;
}

CUresult cuMemAddressFree(CUdeviceptr ptr, size_t size)
{
    FAKE_ENTER(cuMemAddressFree);
    if (ptr == 0 || size == 0) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    return munmap((void *)(uintptr_t)ptr, size) == 0 ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

CUresult cuMemMap(CUdeviceptr ptr, size_t size, size_t offset, CUmemGenericAllocationHandle handle,
                  unsigned long long flags)
{
    void *p;
    int fd = -1;

    FAKE_ENTER(cuMemMap);
    if (ptr == 0 || size == 0 || flags != 0 || handle == 0 || handle > FAKE_MAX_VMM) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    pthread_mutex_lock(&fake_lock);
    if (fake_handle(handle) != NULL && offset + size <= fake_handles[handle - 1].size) {
        fd = fake_handles[handle - 1].fd;
    }
    pthread_mutex_unlock(&fake_lock);
    if (fd < 0) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    p = mmap((void *)(uintptr_t)ptr, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd,
             (off_t)offset);
    if (p == MAP_FAILED) {
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    pthread_mutex_lock(&fake_lock);
    for (uint32_t i = 0; i < FAKE_MAX_VMM; i++) {
        if (fake_maps[i].size == 0) {
            fake_maps[i].base = (uintptr_t)ptr;
            fake_maps[i].size = size;
            fake_maps[i].handle = handle;
            fake_handles[handle - 1].maps++;
            break;
        }
    }
    pthread_mutex_unlock(&fake_lock);
    return CUDA_SUCCESS;
}

CUresult cuMemUnmap(CUdeviceptr ptr, size_t size)
{
    void *p;

    FAKE_ENTER(cuMemUnmap);
    if (ptr == 0 || size == 0) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    /* Back to reserved-but-inaccessible, as after cuMemAddressReserve. */
    p = mmap((void *)(uintptr_t)ptr, size, PROT_NONE,
             MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
    if (p == MAP_FAILED) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    int fds[FAKE_MAX_VMM];
    uint32_t nfds = 0;
    pthread_mutex_lock(&fake_lock);
    for (uint32_t i = 0; i < FAKE_MAX_VMM; i++) {
        if (fake_maps[i].size != 0 && fake_maps[i].base >= (uintptr_t)ptr &&
            fake_maps[i].base < (uintptr_t)ptr + size) {
            fake_handle_t *fh = &fake_handles[fake_maps[i].handle - 1];
            fake_maps[i].size = 0;
            fh->maps--;
            int fd = fake_handle_drop(fh);
            if (fd >= 0) {
                fds[nfds++] = fd;
            }
        }
    }
    pthread_mutex_unlock(&fake_lock);
    for (uint32_t i = 0; i < nfds; i++) {
        close(fds[i]);
    }
    return CUDA_SUCCESS;
}

/* ---- copies -------------------------------------------------------------- */
/* Whether [p, p + n) lies in one allocation or mapping of the fake: device
 * memory. The driver refuses a typed copy whose device side is not (host
 * memory passed as a device pointer): CUDA_ERROR_INVALID_VALUE. */
static int fake_is_dev(uintptr_t p, size_t n)
{
    uintptr_t base = 0;
    size_t size = 0;
    CUmemGenericAllocationHandle h = 0;
    return fake_find(p, &base, &size, &h) && n <= size - (p - base);
}

/* A copy of @n bytes; @dst_dev/@src_dev: that side must be device memory
 * (cuMemcpy and cuMemcpyAsync, unified, take either). On a stream of ours
 * (@s non-NULL) it is queued until the stream is synchronised. */
static CUresult fake_copy_on(uintptr_t dst, uintptr_t src, size_t n, int dst_dev, int src_dev,
                             CUstream s)
{
    if ((dst == 0 || src == 0) && n != 0) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    if (n != 0 && ((dst_dev && !fake_is_dev(dst, n)) || (src_dev && !fake_is_dev(src, n)))) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    if (n != 0 && s != NULL) {
        return fake_stream_push((fake_stream_t *)s, dst, src, n) ? CUDA_SUCCESS
                                                                 : CUDA_ERROR_OUT_OF_MEMORY;
    }
    if (n != 0) {
        memmove((void *)dst, (const void *)src, n);
    }
    return CUDA_SUCCESS;
}

static CUresult fake_copy(uintptr_t dst, uintptr_t src, size_t n, int dst_dev, int src_dev)
{
    return fake_copy_on(dst, src, n, dst_dev, src_dev, NULL);
}

#define FAKE_COPY_D(name, dst, src, n, dd, sd)                                                     \
    do {                                                                                           \
        FAKE_ENTER(name);                                                                          \
        return fake_copy((uintptr_t)(dst), (uintptr_t)(src), (n), (dd), (sd));                     \
    } while (0)

/* The same on stream @s, which must be NULL or a stream of the current context. */
#define FAKE_COPY_S(name, dst, src, n, dd, sd, s)                                                  \
    do {                                                                                           \
        FAKE_ENTER(name);                                                                          \
        CUresult fake_r_ = fake_stream_check(s);                                                   \
        if (fake_r_ != CUDA_SUCCESS) {                                                             \
            return fake_r_;                                                                        \
        }                                                                                          \
        return fake_copy_on((uintptr_t)(dst), (uintptr_t)(src), (n), (dd), (sd), (s));             \
    } while (0)

CUresult cuMemcpy(CUdeviceptr dst, CUdeviceptr src, size_t n)
{
    if (atomic_load(&fake_reenter)) {
        kvs_pfn_cuMemcpyHtoD_v2 exported =
            (kvs_pfn_cuMemcpyHtoD_v2)(uintptr_t)dlsym(RTLD_DEFAULT, "cuMemcpyHtoD_v2");
        FAKE_ENTER(cuMemcpy);
        return exported != NULL ? exported(dst, (const void *)(uintptr_t)src, n)
                                : CUDA_ERROR_UNKNOWN;
    }
    FAKE_COPY_D(cuMemcpy, dst, src, n, 0, 0);
}
CUresult cuMemcpy_ptds(CUdeviceptr dst, CUdeviceptr src, size_t n)
{
    FAKE_COPY_D(cuMemcpy_ptds, dst, src, n, 0, 0);
}
CUresult cuMemcpyAsync(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s)
{
    FAKE_COPY_S(cuMemcpyAsync, dst, src, n, 0, 0, s);
}
CUresult cuMemcpyAsync_ptsz(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s)
{
    FAKE_COPY_S(cuMemcpyAsync_ptsz, dst, src, n, 0, 0, s);
}
CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void *src, size_t n)
{
    FAKE_COPY_D(cuMemcpyHtoD_v2, dst, src, n, 1, 0);
}
CUresult cuMemcpyHtoD_v2_ptds(CUdeviceptr dst, const void *src, size_t n)
{
    FAKE_COPY_D(cuMemcpyHtoD_v2_ptds, dst, src, n, 1, 0);
}
CUresult cuMemcpyDtoH_v2(void *dst, CUdeviceptr src, size_t n)
{
    FAKE_COPY_D(cuMemcpyDtoH_v2, dst, src, n, 0, 1);
}
CUresult cuMemcpyDtoH_v2_ptds(void *dst, CUdeviceptr src, size_t n)
{
    FAKE_COPY_D(cuMemcpyDtoH_v2_ptds, dst, src, n, 0, 1);
}
CUresult cuMemcpyDtoD_v2(CUdeviceptr dst, CUdeviceptr src, size_t n)
{
    FAKE_COPY_D(cuMemcpyDtoD_v2, dst, src, n, 1, 1);
}
CUresult cuMemcpyDtoD_v2_ptds(CUdeviceptr dst, CUdeviceptr src, size_t n)
{
    FAKE_COPY_D(cuMemcpyDtoD_v2_ptds, dst, src, n, 1, 1);
}
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void *src, size_t n, CUstream s)
{
    FAKE_COPY_S(cuMemcpyHtoDAsync_v2, dst, src, n, 1, 0, s);
}
CUresult cuMemcpyHtoDAsync_v2_ptsz(CUdeviceptr dst, const void *src, size_t n, CUstream s)
{
    FAKE_COPY_S(cuMemcpyHtoDAsync_v2_ptsz, dst, src, n, 1, 0, s);
}
CUresult cuMemcpyDtoHAsync_v2(void *dst, CUdeviceptr src, size_t n, CUstream s)
{
    FAKE_COPY_S(cuMemcpyDtoHAsync_v2, dst, src, n, 0, 1, s);
}
CUresult cuMemcpyDtoHAsync_v2_ptsz(void *dst, CUdeviceptr src, size_t n, CUstream s)
{
    FAKE_COPY_S(cuMemcpyDtoHAsync_v2_ptsz, dst, src, n, 0, 1, s);
}
CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s)
{
    FAKE_COPY_S(cuMemcpyDtoDAsync_v2, dst, src, n, 1, 1, s);
}
CUresult cuMemcpyDtoDAsync_v2_ptsz(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s)
{
    FAKE_COPY_S(cuMemcpyDtoDAsync_v2_ptsz, dst, src, n, 1, 1, s);
}
/* Between two contexts: both must be contexts the fake handed out (its one
 * device's primary context) and both sides device memory. */
CUresult cuMemcpyPeerAsync(CUdeviceptr dst, CUcontext dst_ctx, CUdeviceptr src, CUcontext src_ctx,
                           size_t n, CUstream s)
{
    if (dst_ctx != FAKE_PRIMARY_CTX || src_ctx != FAKE_PRIMARY_CTX) {
        FAKE_ENTER(cuMemcpyPeerAsync);
        return CUDA_ERROR_INVALID_CONTEXT;
    }
    FAKE_COPY_S(cuMemcpyPeerAsync, dst, src, n, 1, 1, s);
}

#pragma GCC visibility pop
