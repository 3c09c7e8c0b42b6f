/* SPDX-License-Identifier: Apache-2.0 */
/* fuzz_boot.c - libFuzzer target: the server's half of the bootstrap handshake on a hostile stream.
 *
 * Input: byte 0 picks open/secret mode and how the stream is cut into
 * reads; the rest is what a peer sends before it has authenticated. The
 * handshake must never read or write outside its bounded buffer, never
 * accept an AUTH without the proof (in secret mode), and never ask for
 * more than the pre-auth bound. */
#include "boot_int.h"
#include "proto_int.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    bool open = data[0] & 1;
    size_t chunk = 1 + (size_t)(data[0] >> 1) * 37; /* 1 .. 4700 bytes per read */
    data++;
    size--;
    static const uint8_t secret[] = "fuzz-secret";
    kvs__boot_srv_t *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return 0;
    char why[256];
    size_t off = 0;
    for (int msgs = 0; msgs < 4;) {
        long want = kvs__boot_srv_want(s, why, sizeof(why));
        if (want < 0)
            break;
        if (want > 0) {
            if ((size_t)want > sizeof(s->rx) - s->rx_len)
                abort(); /* asked for more than the bounded buffer holds */
            if (off == size)
                break;
            size_t n = (size_t)want < chunk ? (size_t)want : chunk;
            if (n > size - off)
                n = size - off;
            memcpy(s->rx + s->rx_len, data + off, n);
            s->rx_len += n;
            off += n;
            continue;
        }
        kvs_status_t st = kvs__boot_srv_take(s, secret, sizeof(secret) - 1, open, why, sizeof(why));
        msgs++;
        if (st == KVS_INPROGRESS) {
            memset(s->nonce_s, 0x5a, sizeof(s->nonce_s));
            continue;
        }
        if (st == KVS_OK) {
            if (!open)
                abort(); /* no input can carry the HMAC over our nonce */
            if (s->addr < s->rx || s->addr + s->addr_len > s->rx + s->rx_len || s->addr_len == 0)
                abort();
            why[0] = (char)s->addr[s->addr_len - 1];
        }
        break;
    }
    free(s);
    return 0;
}
