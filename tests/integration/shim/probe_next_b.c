/* SPDX-License-Identifier: Apache-2.0 */
/* Second of two libraries defining kvs_probe_fn (the one RTLD_NEXT must find). */
__attribute__((visibility("default"))) int kvs_probe_fn(void);
__attribute__((visibility("default"))) int kvs_probe_b_marker(void);

int kvs_probe_fn(void)
{
    return 2;
}

/* Referenced by the probe so --as-needed keeps this library loaded. */
int kvs_probe_b_marker(void)
{
    return 42;
}
