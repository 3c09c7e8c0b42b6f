/* SPDX-License-Identifier: Apache-2.0 */
/* fuzz_proto.c - libFuzzer target: the peer message parser on arbitrary bytes.
 *
 * Decoding must never read outside the input; when it accepts a message,
 * walking every array it validated must stay inside the input too. */
#include "proto_int.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* A private copy of exactly `size` bytes: ASan flags any overread. */
    uint8_t *buf = malloc(size ? size : 1);
    if (buf == NULL)
        return 0;
    if (size)
        memcpy(buf, data, size);
    kvs__msg_t m;
    char why[256];
    if (kvs__proto_decode(buf, size, &m, why, sizeof(why)) == KVS_OK) {
        const uint8_t *cur = m.regions;
        for (uint32_t i = 0; i < m.nregions; i++) {
            kvs__region_desc_t r;
            kvs__proto_region(&cur, &r);
            if (r.rkey_len > 0 && (r.rkey[0] == 0xff) && (r.rkey[r.rkey_len - 1] == 0xfe))
                why[0] = 'r'; /* touch both ends of the rkey */
        }
        if (m.hdr.type == KVS_MSG_LOOKUP_REPLY) {
            cur = m.u.lookup_reply.blocks;
            for (uint32_t i = 0; i < m.u.lookup_reply.hits; i++) {
                kvs__block_desc_t d;
                kvs__proto_block(&cur, &d);
                for (uint16_t p = 0; p < d.npieces; p++) {
                    kvs__piece_t pc;
                    kvs__proto_piece(d.pieces, p, &pc);
                    why[1] = (char)pc.len;
                }
            }
            if (cur != m.u.lookup_reply.blocks + m.u.lookup_reply.blocks_len)
                abort(); /* the walk must end where validation ended */
        }
        if (m.hdr.type == KVS_MSG_FETCH && (m.hdr.flags & KVS_PROTO_FLAG_RANGES)) {
            for (uint16_t k = 0; k < m.u.fetch.nsets; k++) {
                uint16_t n;
                const uint8_t *r;
                kvs__proto_fetch_set(m.u.fetch.sets, k, &n, &r);
                why[3] = (char)kvs__proto_u32_at(r, 2 * (size_t)n - 1); /* the last length */
            }
            if (m.u.fetch.count > 0)
                why[4] = (char)kvs__proto_u16_at(m.u.fetch.set_of, m.u.fetch.count - 1);
        }
        if (m.hdr.type == KVS_MSG_HELLO_ACK && m.u.hello_ack.view != NULL) {
            kvs__view_t v;
            kvs__view_decode(m.u.hello_ack.view, &v);
            why[5] = (char)v.kv_order;
        }
        if (m.hdr.type == KVS_MSG_FETCH_DONE && m.u.fetch_done.count > 0)
            why[2] = (char)kvs__proto_u64_at(m.u.fetch_done.gens, m.u.fetch_done.count - 1);
    }
    free(buf);
    return 0;
}
