/* SPDX-License-Identifier: Apache-2.0 */
/* Test controls of the fake libcuda.so.1 (host memory stands in for the GPU). */
#ifndef KVS_FAKECUDA_H
#define KVS_FAKECUDA_H

#ifndef KVS_CUDA_DECLARE_PROTOTYPES
#define KVS_CUDA_DECLARE_PROTOTYPES
#endif
#include "kvs_cuda.h"

/* The fake's own address of driver function @name (not an interposer's):
 * what dlsym would return without the shim. NULL for unknown names. */
void *fakecuda_proc(const char *name);

/* How many times the fake's @name ran (0 for unknown names). */
unsigned long fakecuda_calls(const char *name);

/* Every later driver call sets errno to @err first (0: leave errno alone). */
void fakecuda_set_errno(int err);

/* The next call of @name returns @result without doing anything. */
void fakecuda_fail_next(const char *name, CUresult result);

/* When on, cuMemcpy calls the exported cuMemcpyHtoD_v2 (whatever
 * dlsym(RTLD_DEFAULT) finds: an interposer's hook) to do its work, the way
 * a driver may call its own entry points. Tests the shim's recursion guard. */
void fakecuda_set_reenter(int on);

/* Live allocations (cuMemAlloc family) in the fake. */
unsigned long fakecuda_live_allocs(void);

/* Live streams (cuStreamCreate not yet destroyed) in the fake. */
long fakecuda_live_streams(void);

#endif /* KVS_FAKECUDA_H */
