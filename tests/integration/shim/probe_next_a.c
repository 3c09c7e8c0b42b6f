/* SPDX-License-Identifier: Apache-2.0 */
/* First of two libraries defining kvs_probe_fn: asks dlsym(RTLD_NEXT) for the second. */
#include <dlfcn.h>
#include <stddef.h>

__attribute__((visibility("default"))) int kvs_probe_fn(void);
__attribute__((visibility("default"))) int kvs_probe_next_value(void);

int kvs_probe_fn(void)
{
    return 1;
}

/* RTLD_NEXT from this library must find probe_next_b's definition (2), not
 * ours: that only holds if dlsym sees this library as its caller. */
int kvs_probe_next_value(void)
{
    int (*fn)(void) = (int (*)(void))dlsym(RTLD_NEXT, "kvs_probe_fn");
    return fn != NULL ? fn() : -1;
}
