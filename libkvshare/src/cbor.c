/* SPDX-License-Identifier: Apache-2.0 */
/* cbor.c - canonical CBOR strings; the hot integer heads are inline in cbor_int.h.
 *
 * Why not libcbor: the hash input is one fixed shape ([bytes, [uint...],
 * null|[text...]]) encoded millions of times a second, and libcbor builds an
 * allocated item tree per value. Nine lines of head encoding are cheaper
 * and are checked byte for byte against cbor2 by the tests. */
#include "cbor_int.h"

#include <string.h>

size_t kvs__cbor_string(uint8_t *p, unsigned major, const void *data, size_t len)
{
    size_t n = kvs__cbor_head(p, major, len);
    if (len > 0)
        memcpy(p + n, data, len);
    return n + len;
}
