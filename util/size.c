/* SPDX-License-Identifier: Apache-2.0 */
/* size.c - the one byte-size grammar (README "Configuration"): every unit a power of 1024. */
#include "util_int.h"

#include <stdio.h>
#include <strings.h>

static int fail(char *why, size_t why_len)
{
    if (why != NULL && why_len > 0)
        snprintf(why, why_len, "expected %s", KVS__SIZE_GRAMMAR);
    return -1;
}

int kvs__size_parse(const char *s, uint64_t *bytes_p, char *why, size_t why_len)
{
    static const struct {
        const char *unit;
        unsigned shift;
    } units[] = {
        {"", 0},     {"B", 0},  {"K", 10},  {"KB", 10},  {"KiB", 10}, {"M", 20},  {"MB", 20},
        {"MiB", 20}, {"G", 30}, {"GB", 30}, {"GiB", 30}, {"T", 40},   {"TB", 40}, {"TiB", 40},
    };
    uint64_t whole = 0;
    const char *p = s, *frac = NULL;
    size_t nfrac = 0;

    if (s == NULL || !(*p >= '0' && *p <= '9'))
        return fail(why, why_len);
    for (; *p >= '0' && *p <= '9'; p++) {
        uint64_t d = (uint64_t)(*p - '0');
        if (whole > (UINT64_MAX - d) / 10)
            return fail(why, why_len);
        whole = whole * 10 + d;
    }
    if (*p == '.') {
        frac = ++p;
        for (; *p >= '0' && *p <= '9'; p++)
            nfrac++;
        if (nfrac == 0)
            return fail(why, why_len);
    }
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
        if (strcasecmp(p, units[i].unit) != 0)
            continue;
        unsigned sh = units[i].shift;
        if (frac != NULL && sh == 0)
            return fail(why, why_len); /* a fraction of a byte */
        if (sh != 0 && whole > (UINT64_MAX >> sh))
            return fail(why, why_len);
        uint64_t v = whole << sh, part = 0, scale = 1, q = 0;
        /* The fraction's first 18 digits times the unit, rounded down, by long division
         * (exact, no floating point; part < scale <= 10^18 < 2^60, so 2 * r fits). */
        for (size_t k = 0; k < nfrac && k < 18; k++) {
            part = part * 10 + (uint64_t)(frac[k] - '0');
            scale *= 10;
        }
        for (unsigned b = 0; b < sh; b++) {
            part <<= 1;
            q <<= 1;
            if (part >= scale) {
                part -= scale;
                q |= 1;
            }
        }
        if (v > UINT64_MAX - q)
            return fail(why, why_len);
        v += q;
        *bytes_p = v;
        return 0;
    }
    return fail(why, why_len);
}
