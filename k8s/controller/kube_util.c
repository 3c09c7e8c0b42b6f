/* SPDX-License-Identifier: Apache-2.0 */
/* Pure helpers of the API client: the watch-stream line splitter and retry backoff. */
#include "controller_int.h"

#include <stdlib.h>
#include <string.h>

int kvsc_lines_feed(kvsc_lines_t *lines, const char *data, size_t len, kvsc_line_cb cb, void *ud)
{
    size_t max = lines->max != 0 ? lines->max : KVSC_MAX_BODY * 4;
    while (len > 0) {
        const char *nl = memchr(data, '\n', len);
        size_t take = nl != NULL ? (size_t)(nl - data) : len;
        if (lines->len + take > max) {
            /* A watch event is one object; anything this long is a broken stream. */
            lines->len = 0;
            return -2;
        }
        if (lines->len + take + 1 > lines->cap) {
            size_t cap = lines->cap != 0 ? lines->cap : 4096;
            while (cap < lines->len + take + 1) {
                cap *= 2;
            }
            char *b = realloc(lines->buf, cap);
            if (b == NULL) {
                return -1;
            }
            lines->buf = b;
            lines->cap = cap;
        }
        memcpy(lines->buf + lines->len, data, take);
        lines->len += take;
        if (nl == NULL) {
            return 0;
        }
        data += take + 1;
        len -= take + 1;
        size_t n = lines->len;
        lines->len = 0;
        if (n > 0 && lines->buf[n - 1] == '\r') {
            n--;
        }
        if (n == 0) {
            continue;
        }
        lines->buf[n] = '\0';
        int rc = cb(ud, lines->buf, n);
        if (rc != 0) {
            return rc;
        }
    }
    return 0;
}

void kvsc_lines_free(kvsc_lines_t *lines)
{
    if (lines == NULL) {
        return;
    }
    free(lines->buf);
    lines->buf = NULL;
    lines->len = lines->cap = 0;
}

uint64_t kvsc_backoff_ms(unsigned attempt, uint64_t base_ms, uint64_t cap_ms, uint64_t rand)
{
    uint64_t d = base_ms;
    for (unsigned i = 0; i < attempt && d < cap_ms; i++) {
        d *= 2;
    }
    if (d > cap_ms) {
        d = cap_ms;
    }
    /* Equal jitter: half fixed, half random, so many controllers restarted together do not
     * retry in lockstep, yet no retry comes sooner than half the nominal delay. */
    uint64_t half = d / 2;
    return half + rand % (d - half + 1);
}
