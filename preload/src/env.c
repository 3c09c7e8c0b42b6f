/* SPDX-License-Identifier: Apache-2.0 */
/* Strict parsers for the shim's KVSHARE_* environment variables. */
#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "preload_int.h"

kvs_status_t kvs__preload_parse_bool(const char *s, int *value_p)
{
    static const char *const yes[] = {"1", "true", "yes", "on"};
    static const char *const no[] = {"", "0", "false", "no", "off"};

    if (s == NULL) {
        return KVS_ERR_CONFIG;
    }
    for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *value_p = 1;
            return KVS_OK;
        }
    }
    for (size_t i = 0; i < sizeof(no) / sizeof(no[0]); i++) {
        if (strcasecmp(s, no[i]) == 0) {
            *value_p = 0;
            return KVS_OK;
        }
    }
    return KVS_ERR_CONFIG;
}

kvs_status_t kvs__preload_expand_path(const char *tmpl, long pid, char *out, size_t out_len)
{
    size_t n = 0;

    if (tmpl == NULL || out == NULL || out_len == 0) {
        return KVS_ERR_INVALID_PARAM;
    }
    for (const char *p = tmpl; *p != '\0'; p++) {
        char num[24];
        const char *piece = num;
        size_t plen;

        if (*p != '%') {
            num[0] = *p;
            num[1] = '\0';
        } else if (p[1] == 'p') {
            snprintf(num, sizeof(num), "%ld", pid);
            p++;
        } else if (p[1] == '%') {
            piece = "%";
            p++;
        } else {
            return KVS_ERR_CONFIG;
        }
        plen = strlen(piece);
        if (n + plen >= out_len) {
            return KVS_ERR_NO_SPACE;
        }
        memcpy(out + n, piece, plen);
        n += plen;
    }
    out[n] = '\0';
    return KVS_OK;
}
