/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Times cuMemAlloc, cuMemFree and cuMemcpyHtoD against the (fake) driver it
 * is linked to, and prints one JSON line of ns per call. `kvshare bench
 * shim` runs it with and without LD_PRELOAD=libkvshare_preload.so.
 *
 * usage: kvshare_shim_bench_helper [calls]
 */
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define KVS_CUDA_DECLARE_PROTOTYPES
#include "kvs_cuda.h"

#define LIVE 64 /* allocations alive at once, freed oldest first */

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static int run(long calls, double *alloc_ns, double *free_ns, double *copy_ns)
{
    static CUdeviceptr p[LIVE];
    unsigned char src[64] = {1};
    CUdeviceptr dst = 0;
    double ta = 0, tf = 0, t0;
    long batches = calls / LIVE;

    for (long b = 0; b < batches; b++) {
        t0 = now_ns();
        for (int i = 0; i < LIVE; i++) {
            if (cuMemAlloc_v2(&p[i], 65536) != CUDA_SUCCESS) {
                return -1;
            }
        }
        ta += now_ns() - t0;
        t0 = now_ns();
        for (int i = 0; i < LIVE; i++) {
            if (cuMemFree_v2(p[i]) != CUDA_SUCCESS) {
                return -1;
            }
        }
        tf += now_ns() - t0;
    }
    if (cuMemAlloc_v2(&dst, 4096) != CUDA_SUCCESS) {
        return -1;
    }
    t0 = now_ns();
    for (long i = 0; i < calls; i++) {
        if (cuMemcpyHtoD_v2(dst + (CUdeviceptr)(i & 63) * 64, src, sizeof(src)) != CUDA_SUCCESS) {
            return -1;
        }
    }
    *copy_ns = (now_ns() - t0) / (double)calls;
    cuMemFree_v2(dst);
    *alloc_ns = ta / (double)(batches * LIVE);
    *free_ns = tf / (double)(batches * LIVE);
    return 0;
}

int main(int argc, char **argv)
{
    long calls = argc > 1 ? strtol(argv[1], NULL, 10) : 100000;
    double a, f, c;

    /* The fake driver allocates with malloc; keep glibc from returning
     * memory to the kernel between batches, or page faults would swamp
     * the few nanoseconds this measures. */
    mallopt(M_MMAP_THRESHOLD, 64 << 20);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
    if (calls < LIVE || cuInit(0) != CUDA_SUCCESS) {
        fprintf(stderr, "kvshare_shim_bench_helper: bad call count or cuInit failed\n");
        return 1;
    }
    /* Warm up: page in the allocator, the driver and the shim's tables. */
    if (run(calls / 10 < LIVE ? LIVE : calls / 10, &a, &f, &c) != 0 ||
        run(calls, &a, &f, &c) != 0) {
        fprintf(stderr, "kvshare_shim_bench_helper: a driver call failed\n");
        return 1;
    }
    printf("{\"cuMemAlloc\":%.2f,\"cuMemFree\":%.2f,\"cuMemcpyHtoD\":%.2f,\"calls\":%ld}\n", a, f,
           c, calls);
    return 0;
}
