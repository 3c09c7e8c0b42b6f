/* SPDX-License-Identifier: Apache-2.0 */
/* endpoint.c - the one HOST:PORT parser (IPv6 in brackets, port range checked). */
#include "util_int.h"

#include <stdio.h>
#include <string.h>

static int fail(char *why, size_t why_len, const char *msg)
{
    if (why != NULL && why_len > 0)
        snprintf(why, why_len, "%s", msg);
    return -1;
}

int kvs__endpoint_parse(const char *s, unsigned flags, kvs__endpoint_t *ep, char *why,
                        size_t why_len)
{
    kvs__endpoint_t e;
    const char *h, *he, *port = NULL;

    memset(&e, 0, sizeof(e));
    if (s == NULL || s[0] == '\0')
        return fail(why, why_len, "expected HOST:PORT (e.g. 127.0.0.1:9090 or [::1]:9090)");
    if (s[0] == '[') {
        const char *rb = strchr(s, ']');
        if (rb == NULL || rb == s + 1 || memchr(s + 1, '[', (size_t)(rb - s - 1)) != NULL)
            return fail(why, why_len, "an IPv6 address goes in brackets: [ADDR]:PORT");
        h = s + 1;
        he = rb;
        if (rb[1] == ':')
            port = rb + 2;
        else if (rb[1] != '\0')
            return fail(why, why_len, "expected ':PORT' after ']'");
        e.bracketed = true;
    } else {
        const char *colon = strchr(s, ':');
        if (colon != NULL && strchr(colon + 1, ':') != NULL)
            return fail(why, why_len, "an IPv6 address goes in brackets: [ADDR]:PORT");
        h = s;
        he = colon != NULL ? colon : s + strlen(s);
        port = colon != NULL ? colon + 1 : NULL;
        if (memchr(h, ']', (size_t)(he - h)) != NULL)
            return fail(why, why_len, "an IPv6 address goes in brackets: [ADDR]:PORT");
    }
    if (he == h && !(flags & KVS__EP_HOST_OPTIONAL))
        return fail(why, why_len, "expected HOST:PORT (e.g. 127.0.0.1:9090 or [::1]:9090)");
    if ((size_t)(he - h) >= sizeof(e.host))
        return fail(why, why_len, "host name too long");
    memcpy(e.host, h, (size_t)(he - h));
    e.host[he - h] = '\0';
    if (port == NULL) {
        if (!(flags & KVS__EP_PORT_OPTIONAL))
            return fail(why, why_len, "expected HOST:PORT (e.g. 127.0.0.1:9090 or [::1]:9090)");
    } else {
        unsigned long v = 0;
        size_t i;
        for (i = 0; port[i] >= '0' && port[i] <= '9' && v <= 65535; i++)
            v = v * 10 + (unsigned long)(port[i] - '0');
        bool nonzero = (flags & KVS__EP_PORT_NONZERO) != 0;
        if (i == 0 || port[i] != '\0' || v > 65535 || (nonzero && v == 0)) {
            if (why != NULL && why_len > 0)
                snprintf(why, why_len, "port '%.16s%s': expected an integer from %d to 65535", port,
                         strlen(port) > 16 ? "..." : "", nonzero ? 1 : 0);
            return -1;
        }
        e.port_num = (uint16_t)v;
        snprintf(e.port, sizeof(e.port), "%lu", v);
        e.has_port = true;
    }
    *ep = e;
    return 0;
}

int kvs__endpoint_format(char *out, size_t out_len, const char *host, const char *port)
{
    bool v6 = strchr(host, ':') != NULL;
    return snprintf(out, out_len, "%s%s%s:%s", v6 ? "[" : "", host, v6 ? "]" : "", port);
}
