/* SPDX-License-Identifier: Apache-2.0 */
/* streamcopy.c - a memcpy whose stores go around the CPU's caches.
 *
 * A KV block copied into a node's arena is not read again by that node, and
 * one copied into an engine's KV cache goes to its GPU or is read once:
 * neither is worth the cache lines memcpy's stores fill. Ordinary stores
 * also read every destination line in before writing it (a read for
 * ownership), so a copy into memory not in cache moves each byte three
 * times. Non-temporal stores write whole lines and skip both. glibc's
 * memcpy makes that choice itself, but per call and only past a threshold
 * sized from the cache (about 99 MiB here): a job of many 16-64 KiB pieces
 * never reaches it. Measured on the 2-core VM (one thread, 16-64 KiB pieces
 * from a 10 MiB source into 4-192 MiB of destination written before):
 * memcpy 7.2-8.8 GB/s, these stores 12.0-14.8 GB/s. */
#include "util_int.h"

#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && defined(__SSE2__)
#include <emmintrin.h>
#define KVS_STREAM_STORES 1
#endif

void kvs__copy_stream(void *dst, const void *src, size_t len)
{
#ifdef KVS_STREAM_STORES
    if (len < KVS__STREAM_MIN_BYTES) {
        memcpy(dst, src, len);
        return;
    }
    uint8_t *d = dst;
    const uint8_t *s = src;
    /* Up to the destination's next 16-byte boundary as memcpy does: the
     * stores below need it aligned (the loads do not). */
    size_t head = (size_t)(-(uintptr_t)d & 15u);
    memcpy(d, s, head);
    d += head;
    s += head;
    len -= head;
    size_t body = len & ~(size_t)63;
    for (size_t i = 0; i < body; i += 64) {
        __m128i a = _mm_loadu_si128((const __m128i *)(const void *)(s + i));
        __m128i b = _mm_loadu_si128((const __m128i *)(const void *)(s + i + 16));
        __m128i c = _mm_loadu_si128((const __m128i *)(const void *)(s + i + 32));
        __m128i e = _mm_loadu_si128((const __m128i *)(const void *)(s + i + 48));
        _mm_stream_si128((__m128i *)(void *)(d + i), a);
        _mm_stream_si128((__m128i *)(void *)(d + i + 16), b);
        _mm_stream_si128((__m128i *)(void *)(d + i + 32), c);
        _mm_stream_si128((__m128i *)(void *)(d + i + 48), e);
    }
    memcpy(d + body, s + body, len - body);
    /* Non-temporal stores are not ordered with later ones: whoever is told
     * the copy is done (a lock, a flag, a published slot) must see it all. */
    _mm_sfence();
#else
    memcpy(dst, src, len);
#endif
}
