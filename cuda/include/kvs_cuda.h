/* SPDX-License-Identifier: Apache-2.0 */
/*
 * kvs_cuda.h - our own declarations of the CUDA driver API subset kvshare
 * uses (types, CUresult codes, function-pointer typedefs), plus the loader
 * that dlopens libcuda.so.1 and the memory-type queries built on it.
 *
 * Nothing here needs the CUDA toolkit: the values and layouts below are the
 * driver's ABI as documented in cuda.h (CUDA 12.x) and never change.
 */
#ifndef KVS_CUDA_H
#define KVS_CUDA_H

#include <stddef.h>
#include <stdint.h>

#include "kvshare.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------ */
/* Driver types (ABI-compatible with cuda.h)                                 */
/* ------------------------------------------------------------------------ */
typedef int CUresult;
typedef unsigned long long CUdeviceptr; /* CUdeviceptr_v2: 64 bits everywhere */
typedef int CUdevice;
typedef struct CUctx_st *CUcontext;
typedef struct CUstream_st *CUstream;
typedef unsigned long long CUmemGenericAllocationHandle;
typedef uint64_t cuuint64_t;

enum {
    CUDA_SUCCESS = 0,
    CUDA_ERROR_INVALID_VALUE = 1,
    CUDA_ERROR_OUT_OF_MEMORY = 2,
    CUDA_ERROR_NOT_INITIALIZED = 3,
    CUDA_ERROR_DEINITIALIZED = 4,
    CUDA_ERROR_NO_DEVICE = 100,
    CUDA_ERROR_INVALID_DEVICE = 101,
    CUDA_ERROR_INVALID_CONTEXT = 201,
    CUDA_ERROR_INVALID_HANDLE = 400,
    CUDA_ERROR_NOT_FOUND = 500,
    CUDA_ERROR_NOT_SUPPORTED = 801,
    CUDA_ERROR_UNKNOWN = 999,
};

/* CUpointer_attribute (subset). */
typedef enum CUpointer_attribute_enum {
    CU_POINTER_ATTRIBUTE_CONTEXT = 1,
    CU_POINTER_ATTRIBUTE_MEMORY_TYPE = 2,
    CU_POINTER_ATTRIBUTE_DEVICE_POINTER = 3,
    CU_POINTER_ATTRIBUTE_HOST_POINTER = 4,
    CU_POINTER_ATTRIBUTE_RANGE_START_ADDR = 11,
    CU_POINTER_ATTRIBUTE_RANGE_SIZE = 12,
    CU_POINTER_ATTRIBUTE_MAPPED = 13,
    CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL = 9,
} CUpointer_attribute;

/* cuStreamCreate flags. */
enum {
    CU_STREAM_DEFAULT = 0,
    CU_STREAM_NON_BLOCKING = 1, /* no implicit ordering with the legacy default stream */
};

/* CUmemorytype. */
typedef enum CUmemorytype_enum {
    CU_MEMORYTYPE_HOST = 1,
    CU_MEMORYTYPE_DEVICE = 2,
    CU_MEMORYTYPE_ARRAY = 3,
    CU_MEMORYTYPE_UNIFIED = 4,
} CUmemorytype;

/* cuGetProcAddress flags and the _v2 query result. */
enum {
    CU_GET_PROC_ADDRESS_DEFAULT = 0,
    CU_GET_PROC_ADDRESS_LEGACY_STREAM = 1,
    CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM = 2,
};
typedef enum CUdriverProcAddressQueryResult_enum {
    CU_GET_PROC_ADDRESS_SUCCESS = 0,
    CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND = 1,
    CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT = 2,
} CUdriverProcAddressQueryResult;

/* Virtual memory management (cuMemCreate & co). */
typedef enum CUmemAllocationType_enum {
    CU_MEM_ALLOCATION_TYPE_INVALID = 0,
    CU_MEM_ALLOCATION_TYPE_PINNED = 1,
} CUmemAllocationType;
typedef enum CUmemAllocationHandleType_enum {
    CU_MEM_HANDLE_TYPE_NONE = 0,
    CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR = 1,
} CUmemAllocationHandleType;
typedef enum CUmemLocationType_enum {
    CU_MEM_LOCATION_TYPE_INVALID = 0,
    CU_MEM_LOCATION_TYPE_DEVICE = 1,
} CUmemLocationType;
typedef enum CUmemAccess_flags_enum {
    CU_MEM_ACCESS_FLAGS_PROT_NONE = 0,
    CU_MEM_ACCESS_FLAGS_PROT_READ = 1,
    CU_MEM_ACCESS_FLAGS_PROT_READWRITE = 3,
} CUmemAccess_flags;
typedef enum CUmemAllocationGranularity_flags_enum {
    CU_MEM_ALLOC_GRANULARITY_MINIMUM = 0,
    CU_MEM_ALLOC_GRANULARITY_RECOMMENDED = 1,
} CUmemAllocationGranularity_flags;

typedef struct CUmemLocation_st {
    CUmemLocationType type;
    int id;
} CUmemLocation;

typedef struct CUmemAllocationProp_st {
    CUmemAllocationType type;
    CUmemAllocationHandleType requestedHandleTypes;
    CUmemLocation location;
    void *win32HandleMetaData;
    struct {
        unsigned char compressionType;
        unsigned char gpuDirectRDMACapable;
        unsigned short usage;
        unsigned char reserved[4];
    } allocFlags;
} CUmemAllocationProp;

typedef struct CUmemAccessDesc_st {
    CUmemLocation location;
    CUmemAccess_flags flags;
} CUmemAccessDesc;

/* cuMemGetHandleForAddressRange (CUDA 11.7+). */
typedef enum CUmemRangeHandleType_enum {
    CU_MEM_RANGE_HANDLE_TYPE_DMA_BUF_FD = 1,
} CUmemRangeHandleType;

/* ------------------------------------------------------------------------ */
/* The driver functions we use, as an X-macro: X(name, (params), (args)).    */
/* Names are the exported symbols (with their _v2/_ptds/_ptsz suffixes).     */
/* ------------------------------------------------------------------------ */
#define KVS_CUDA_BASE_FUNCS(X)                                                                     \
    X(cuInit, (unsigned int flags), (flags))                                                       \
    X(cuDriverGetVersion, (int *version), (version))                                               \
    X(cuGetErrorString, (CUresult error, const char **str), (error, str))                          \
    X(cuDeviceGet, (CUdevice * dev, int ordinal), (dev, ordinal))                                  \
    X(cuDeviceGetCount, (int *count), (count))                                                     \
    X(cuDevicePrimaryCtxRetain, (CUcontext * pctx, CUdevice dev), (pctx, dev))                     \
    X(cuDevicePrimaryCtxRelease_v2, (CUdevice dev), (dev))                                         \
    X(cuCtxSetCurrent, (CUcontext ctx), (ctx))                                                     \
    X(cuCtxGetCurrent, (CUcontext * pctx), (pctx))                                                 \
    X(cuCtxSynchronize, (void), ())                                                                \
    X(cuStreamSynchronize, (CUstream stream), (stream))                                            \
    X(cuStreamCreate, (CUstream * pstream, unsigned int flags), (pstream, flags))                  \
    X(cuStreamDestroy_v2, (CUstream stream), (stream))                                             \
    X(cuMemcpyPeerAsync,                                                                           \
      (CUdeviceptr dst, CUcontext dst_ctx, CUdeviceptr src, CUcontext src_ctx, size_t n,           \
       CUstream s),                                                                                \
      (dst, dst_ctx, src, src_ctx, n, s))                                                          \
    X(cuPointerGetAttribute, (void *data, CUpointer_attribute attr, CUdeviceptr ptr),              \
      (data, attr, ptr))                                                                           \
    X(cuMemGetAddressRange_v2, (CUdeviceptr * pbase, size_t * psize, CUdeviceptr dptr),            \
      (pbase, psize, dptr))                                                                        \
    X(cuMemGetHandleForAddressRange,                                                               \
      (void *handle, CUdeviceptr dptr, size_t size, CUmemRangeHandleType type,                     \
       unsigned long long flags),                                                                  \
      (handle, dptr, size, type, flags))                                                           \
    X(cuMemSetAccess, (CUdeviceptr ptr, size_t size, const CUmemAccessDesc *desc, size_t count),   \
      (ptr, size, desc, count))                                                                    \
    X(cuMemGetAllocationGranularity,                                                               \
      (size_t * granularity, const CUmemAllocationProp *prop,                                      \
       CUmemAllocationGranularity_flags option),                                                   \
      (granularity, prop, option))                                                                 \
    X(cuMemRetainAllocationHandle, (CUmemGenericAllocationHandle * handle, void *addr),            \
      (handle, addr))                                                                              \
    X(cuMemGetAllocationPropertiesFromHandle,                                                      \
      (CUmemAllocationProp * prop, CUmemGenericAllocationHandle handle), (prop, handle))           \
    X(cuMemExportToShareableHandle,                                                                \
      (void *shareableHandle, CUmemGenericAllocationHandle handle,                                 \
       CUmemAllocationHandleType handleType, unsigned long long flags),                            \
      (shareableHandle, handle, handleType, flags))                                                \
    X(cuMemImportFromShareableHandle,                                                              \
      (CUmemGenericAllocationHandle * handle, void *osHandle,                                      \
       CUmemAllocationHandleType shHandleType),                                                    \
      (handle, osHandle, shHandleType))

/* The functions the LD_PRELOAD shim interposes. */
#define KVS_CUDA_HOOKED_FUNCS(X)                                                                   \
    X(cuGetProcAddress, (const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags),       \
      (symbol, pfn, cudaVersion, flags))                                                           \
    X(cuGetProcAddress_v2,                                                                         \
      (const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags,                          \
       CUdriverProcAddressQueryResult *symbolStatus),                                              \
      (symbol, pfn, cudaVersion, flags, symbolStatus))                                             \
    X(cuMemAlloc_v2, (CUdeviceptr * dptr, size_t bytesize), (dptr, bytesize))                      \
    X(cuMemAllocPitch_v2,                                                                          \
      (CUdeviceptr * dptr, size_t * pPitch, size_t WidthInBytes, size_t Height,                    \
       unsigned int ElementSizeBytes),                                                             \
      (dptr, pPitch, WidthInBytes, Height, ElementSizeBytes))                                      \
    X(cuMemAllocAsync, (CUdeviceptr * dptr, size_t bytesize, CUstream hStream),                    \
      (dptr, bytesize, hStream))                                                                   \
    X(cuMemAllocAsync_ptsz, (CUdeviceptr * dptr, size_t bytesize, CUstream hStream),               \
      (dptr, bytesize, hStream))                                                                   \
    X(cuMemFree_v2, (CUdeviceptr dptr), (dptr))                                                    \
    X(cuMemFreeAsync, (CUdeviceptr dptr, CUstream hStream), (dptr, hStream))                       \
    X(cuMemFreeAsync_ptsz, (CUdeviceptr dptr, CUstream hStream), (dptr, hStream))                  \
    X(cuMemCreate,                                                                                 \
      (CUmemGenericAllocationHandle * handle, size_t size, const CUmemAllocationProp *prop,        \
       unsigned long long flags),                                                                  \
      (handle, size, prop, flags))                                                                 \
    X(cuMemRelease, (CUmemGenericAllocationHandle handle), (handle))                               \
    X(cuMemAddressReserve,                                                                         \
      (CUdeviceptr * ptr, size_t size, size_t alignment, CUdeviceptr addr,                         \
       unsigned long long flags),                                                                  \
      (ptr, size, alignment, addr, flags))                                                         \
    X(cuMemAddressFree, (CUdeviceptr ptr, size_t size), (ptr, size))                               \
    X(cuMemMap,                                                                                    \
      (CUdeviceptr ptr, size_t size, size_t offset, CUmemGenericAllocationHandle handle,           \
       unsigned long long flags),                                                                  \
      (ptr, size, offset, handle, flags))                                                          \
    X(cuMemUnmap, (CUdeviceptr ptr, size_t size), (ptr, size))                                     \
    X(cuMemcpy, (CUdeviceptr dst, CUdeviceptr src, size_t n), (dst, src, n))                       \
    X(cuMemcpy_ptds, (CUdeviceptr dst, CUdeviceptr src, size_t n), (dst, src, n))                  \
    X(cuMemcpyAsync, (CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s), (dst, src, n, s))   \
    X(cuMemcpyAsync_ptsz, (CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s),                \
      (dst, src, n, s))                                                                            \
    X(cuMemcpyHtoD_v2, (CUdeviceptr dst, const void *src, size_t n), (dst, src, n))                \
    X(cuMemcpyHtoD_v2_ptds, (CUdeviceptr dst, const void *src, size_t n), (dst, src, n))           \
    X(cuMemcpyDtoH_v2, (void *dst, CUdeviceptr src, size_t n), (dst, src, n))                      \
    X(cuMemcpyDtoH_v2_ptds, (void *dst, CUdeviceptr src, size_t n), (dst, src, n))                 \
    X(cuMemcpyDtoD_v2, (CUdeviceptr dst, CUdeviceptr src, size_t n), (dst, src, n))                \
    X(cuMemcpyDtoD_v2_ptds, (CUdeviceptr dst, CUdeviceptr src, size_t n), (dst, src, n))           \
    X(cuMemcpyHtoDAsync_v2, (CUdeviceptr dst, const void *src, size_t n, CUstream s),              \
      (dst, src, n, s))                                                                            \
    X(cuMemcpyHtoDAsync_v2_ptsz, (CUdeviceptr dst, const void *src, size_t n, CUstream s),         \
      (dst, src, n, s))                                                                            \
    X(cuMemcpyDtoHAsync_v2, (void *dst, CUdeviceptr src, size_t n, CUstream s), (dst, src, n, s))  \
    X(cuMemcpyDtoHAsync_v2_ptsz, (void *dst, CUdeviceptr src, size_t n, CUstream s),               \
      (dst, src, n, s))                                                                            \
    X(cuMemcpyDtoDAsync_v2, (CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s),              \
      (dst, src, n, s))                                                                            \
    X(cuMemcpyDtoDAsync_v2_ptsz, (CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s),         \
      (dst, src, n, s))

#define KVS_CUDA_ALL_FUNCS(X) KVS_CUDA_BASE_FUNCS(X) KVS_CUDA_HOOKED_FUNCS(X)

/* kvs_pfn_<name>: a pointer to the driver function <name>. */
#define KVS_CUDA_PFN_TYPEDEF(name, params, args) typedef CUresult(*kvs_pfn_##name) params;
KVS_CUDA_ALL_FUNCS(KVS_CUDA_PFN_TYPEDEF)
#undef KVS_CUDA_PFN_TYPEDEF

/* Prototypes of the exported driver symbols, for code that defines them
 * (the fake driver, the shim's hooks) or links to them directly (tests). */
#ifdef KVS_CUDA_DECLARE_PROTOTYPES
#define KVS_CUDA_PROTO(name, params, args) CUresult name params;
KVS_CUDA_ALL_FUNCS(KVS_CUDA_PROTO)
#undef KVS_CUDA_PROTO
#endif

/* ------------------------------------------------------------------------ */
/* Loader                                                                    */
/* ------------------------------------------------------------------------ */
/** A dlsym-like resolver; the shim passes the real dlsym, others plain dlsym. */
typedef void *(*kvs_cuda_resolve_fn)(void *handle, const char *symbol);

/**
 * The driver entry points found in one libcuda. A member is NULL when the
 * driver lacks it (older drivers have no cuMemGetHandleForAddressRange);
 * callers check before calling.
 */
typedef struct kvs_cuda_driver {
    void *handle; /* from dlopen; owned by kvs_cuda_driver_close() */
#define KVS_CUDA_MEMBER(name, params, args) kvs_pfn_##name name;
    KVS_CUDA_ALL_FUNCS(KVS_CUDA_MEMBER)
#undef KVS_CUDA_MEMBER
} kvs_cuda_driver_t;

/**
 * Opens the CUDA driver: dlopen("libcuda.so.1") or the file named by
 * $KVSHARE_LIBCUDA, then resolves every function above with @resolve
 * (when NULL: glibc's own dlsym, found with dlvsym, so that the driver's
 * functions and not kvshare's shim hooks are found even under LD_PRELOAD).
 * Does no CUDA call (not even cuInit), so it is safe to call from inside
 * driver hooks. @drv is the caller's; on failure it is left zeroed.
 * Errors: KVS_ERR_NOT_FOUND (no driver library; @errbuf, if given, gets
 * dlerror()'s text), KVS_ERR_INVALID_PARAM.
 */
kvs_status_t kvs_cuda_driver_open(kvs_cuda_resolve_fn resolve, kvs_cuda_driver_t *drv, char *errbuf,
                                  size_t errbuf_len);

/** Drops the dlopen reference taken by kvs_cuda_driver_open(); accepts NULL. */
void kvs_cuda_driver_close(kvs_cuda_driver_t *drv);

/** Text for a CUresult (the driver's own when it has cuGetErrorString). */
const char *kvs_cuda_result_string(const kvs_cuda_driver_t *drv, CUresult result);

/**
 * Memory type of @ptr by cuPointerGetAttribute(MEMORY_TYPE): KVS_MEM_CUDA for
 * device (and managed) memory, KVS_MEM_HOST for host memory, including
 * pointers the driver does not know (CUDA_ERROR_INVALID_VALUE).
 * Errors: KVS_ERR_UNSUPPORTED (driver lacks the call), KVS_ERR_TRANSPORT
 * (any other driver error; the CUresult goes to *cu_result_p if non-NULL).
 */
kvs_status_t kvs_cuda_mem_type(const kvs_cuda_driver_t *drv, const void *ptr,
                               kvs_mem_type_t *type_p, CUresult *cu_result_p);

/**
 * The allocation containing device pointer @ptr: its base and size, by
 * cuMemGetAddressRange. Errors: KVS_ERR_UNSUPPORTED, KVS_ERR_NOT_FOUND.
 */
kvs_status_t kvs_cuda_mem_range(const kvs_cuda_driver_t *drv, const void *ptr, void **base_p,
                                size_t *size_p);

/**
 * A dmabuf fd for [ptr, ptr+len) by cuMemGetHandleForAddressRange
 * (DMA_BUF_FD), for ibv_reg_dmabuf_mr. The caller owns *fd_p and closes it.
 * Errors: KVS_ERR_UNSUPPORTED (no such call in this driver, or the driver
 * refuses this range/platform), KVS_ERR_INVALID_PARAM.
 */
kvs_status_t kvs_cuda_dmabuf_fd(const kvs_cuda_driver_t *drv, const void *ptr, size_t len,
                                int *fd_p);

/* ------------------------------------------------------------------------ */
/* VMM allocations shared between processes of one host (POSIX fds)          */
/* ------------------------------------------------------------------------ */
/**
 * Exports the VMM allocation (cuMemCreate + cuMemMap) that holds all of
 * [ptr, ptr+len) as a POSIX file descriptor: cuMemRetainAllocationHandle,
 * cuMemExportToShareableHandle(CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR),
 * cuMemRelease. Only allocations created with POSIX_FILE_DESCRIPTOR in
 * requestedHandleTypes export. On success the caller owns *fd_p; *off_p is
 * ptr's offset in the allocation and *size_p the allocation's size (what the
 * importer maps). Errors: KVS_ERR_UNSUPPORTED (the driver lacks the calls,
 * the memory is not a VMM allocation, the range spans several, or the
 * driver refuses the export: the CUresult goes to *cu_result_p if non-NULL),
 * KVS_ERR_INVALID_PARAM. Needs the allocation's context current (or any
 * context of the process: VMM handles are process-wide).
 */
kvs_status_t kvs_cuda_vmm_export(const kvs_cuda_driver_t *drv, const void *ptr, size_t len,
                                 int *fd_p, uint64_t *off_p, uint64_t *size_p,
                                 CUresult *cu_result_p);

/** An imported allocation mapped read-only into this process. */
typedef struct kvs_cuda_vmm_map {
    CUdeviceptr va; /* where the allocation starts here; 0 when nothing is mapped */
    size_t size;    /* the reserved and mapped length */
    int device;     /* the device that holds the memory (this process's ordinal) */
    CUcontext ctx;  /* that device's primary context, retained for the copies */
} kvs_cuda_vmm_map_t;

/**
 * Imports @fd (cuMemImportFromShareableHandle; @fd stays the caller's),
 * reserves @size bytes of address space, maps the allocation there, grants
 * the device that holds it read access (never write) and releases the
 * handle (the mapping keeps the memory). *m is the caller's. Errors:
 * KVS_ERR_UNSUPPORTED (driver lacks the calls or refuses one: the CUresult
 * goes to *cu_result_p), KVS_ERR_INVALID_PARAM. Nothing stays mapped or
 * retained on failure.
 */
kvs_status_t kvs_cuda_vmm_import(const kvs_cuda_driver_t *drv, int fd, uint64_t size,
                                 kvs_cuda_vmm_map_t *m, CUresult *cu_result_p);

/** Unmaps what kvs_cuda_vmm_import() mapped; accepts an unmapped *m. */
void kvs_cuda_vmm_unmap(const kvs_cuda_driver_t *drv, kvs_cuda_vmm_map_t *m);

#ifdef __cplusplus
}
#endif
#endif /* KVS_CUDA_H */
