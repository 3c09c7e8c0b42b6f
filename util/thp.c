/* SPDX-License-Identifier: Apache-2.0 */
/* thp.c - whether the kernel backs memfds (shmem) with transparent huge pages.
 *
 * kvshare's same-host memory is memfds (shm.c): arenas, kvs_mem_alloc. The
 * kernel gives shmem huge pages only as its shmem_enabled setting says, and
 * Debian's default is "never" (anonymous memory's "madvise" does not apply).
 * With 4 KiB pages every page a put or a fetch first touches costs a TLB
 * refill, and on a VM with shadow paging an exit: measured here, warm puts
 * into an arena ran at 1.1-2.0 GB/s with "never" and 6.2-6.4 GB/s with
 * "advise" (docs/transport.md). So the node says so, and the benches report it. */
#include "util_int.h"

#include <stdio.h>
#include <string.h>

#define THP_DIR "/sys/kernel/mm/transparent_hugepage"

int kvs__thp_bracketed(const char *text, char *out, size_t out_len)
{
    const char *a = strchr(text, '['), *b = a != NULL ? strchr(a + 1, ']') : NULL;
    if (b == NULL || b == a + 1 || (size_t)(b - a - 1) >= out_len)
        return -1;
    for (const char *p = a + 1; p < b; p++)
        if (!((*p >= 'a' && *p <= 'z') || *p == '_'))
            return -1;
    memcpy(out, a + 1, (size_t)(b - a - 1));
    out[b - a - 1] = '\0';
    return 0;
}

static int read_mode(const char *path, char *out, size_t out_len)
{
    char text[256];
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    size_t n = fread(text, 1, sizeof(text) - 1, f);
    fclose(f);
    text[n] = '\0';
    return kvs__thp_bracketed(text, out, out_len);
}

const char *kvs__shmem_thp(char *out, size_t out_len)
{
    /* Per-size controls (Linux 6.11+) override the global one unless "inherit". */
    if (read_mode(THP_DIR "/hugepages-2048kB/shmem_enabled", out, out_len) == 0 &&
        strcmp(out, "inherit") != 0)
        return out;
    if (read_mode(THP_DIR "/shmem_enabled", out, out_len) == 0)
        return out;
    snprintf(out, out_len, "unknown");
    return out;
}

bool kvs__shmem_thp_off(const char *mode)
{
    return strcmp(mode, "never") == 0 || strcmp(mode, "deny") == 0;
}
