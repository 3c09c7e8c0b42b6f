/* SPDX-License-Identifier: Apache-2.0 */
/* gpu_check.h - the GPU tests' two failure macros: CHECK(cond) and CU(driver call), each
 * naming the test (GPU_TEST_NAME, defined before this header) and exiting 1. */
#ifndef KVS_GPU_CHECK_H
#define KVS_GPU_CHECK_H

#include <stdio.h>
#include <stdlib.h>

#ifndef GPU_TEST_NAME
#error "define GPU_TEST_NAME before including gpu_check.h"
#endif

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, GPU_TEST_NAME ": %s:%d: check failed: %s\n", __FILE__, __LINE__,       \
                    #cond);                                                                        \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)
#define CU(call)                                                                                   \
    do {                                                                                           \
        CUresult r_ = (call);                                                                      \
        if (r_ != CUDA_SUCCESS) {                                                                  \
            fprintf(stderr, GPU_TEST_NAME ": %s:%d: %s = %d\n", __FILE__, __LINE__, #call, r_);    \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

#endif
