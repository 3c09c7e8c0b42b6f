/* SPDX-License-Identifier: Apache-2.0 */
/* dnsname.c - the one check of Kubernetes DNS names (RFC 1123 labels and subdomains, RFC 1035). */
#include "util_int.h"

#include <string.h>

static bool label_ok(const char *s, size_t n, size_t max, unsigned flags)
{
    if (n == 0 || n > max || s[0] == '-' || s[n - 1] == '-')
        return false;
    if ((flags & KVS__DNS_1035) && !(s[0] >= 'a' && s[0] <= 'z'))
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-'))
            return false;
    }
    return true;
}

bool kvs__dns_label(const char *s, size_t max, unsigned flags)
{
    return s != NULL && label_ok(s, strlen(s), max < 63 ? max : 63, flags);
}

bool kvs__dns_subdomain(const char *s)
{
    if (s == NULL)
        return false;
    size_t n = strlen(s);
    if (n == 0 || n > 253)
        return false;
    /* Kubernetes limits only the whole name (253), not each label. */
    for (const char *p = s;;) {
        const char *dot = strchr(p, '.');
        size_t len = dot != NULL ? (size_t)(dot - p) : strlen(p);
        if (!label_ok(p, len, 253, 0))
            return false;
        if (dot == NULL)
            return true;
        p = dot + 1;
    }
}
