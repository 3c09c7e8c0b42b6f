/* SPDX-License-Identifier: Apache-2.0 */
/* Kubernetes name grammars shared by the webhook and the reconciler: Secret keys (Secret names
 * are DNS-1123 subdomains: kvs__dns_subdomain, util/dnsname.c). */
#include "controller_int.h"

#include <string.h>

int kvsc_valid_secret_key(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 253 || strcmp(s, ".") == 0 || strcmp(s, "..") == 0) {
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '.' || c == '_')) {
            return 0;
        }
    }
    return 1;
}

int kvsc_valid_host_dir(const char *d)
{
    size_t n = strlen(d);
    if (n < 2 || n > 200 || d[0] != '/' || strstr(d, "..") != NULL) {
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        char c = d[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '/' || c == '.' || c == '_' || c == '-')) {
            return 0;
        }
    }
    return 1;
}
