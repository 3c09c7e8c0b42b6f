/* SPDX-License-Identifier: Apache-2.0 */
/* proto_int.h - the peer wire protocol: message layout, encoder and a strict parser.
 *
 * Every message is a 32-byte little-endian header followed by its body:
 *   magic u32 "KVSH" | version u16 | type u16 | flags u32 | body_len u32 |
 *   req_id u64 | session u64
 * `session` is 0 until the handshake completes; afterwards the server's
 * HELLO_ACK names it, and messages on a second (worker-address) endpoint
 * carry it to say which authenticated connection they belong to. See
 * docs/transport.md for why a second endpoint is needed with UCX 1.13.
 * Every count and length is checked against the bytes received before use;
 * the parser is fuzzed (tests/fuzz/fuzz_proto.c). Decoded messages point
 * into the caller's buffer and copy nothing. */
#ifndef KVS_PROTO_INT_H
#define KVS_PROTO_INT_H

#include "kvs_int.h"

#define KVS_PROTO_MAGIC       0x4853564Bu /* "KVSH" little-endian */
#define KVS_PROTO_VERSION     1u
#define KVS_PROTO_HDR_LEN     32u
#define KVS_PROTO_NONCE_LEN   32u
#define KVS_PROTO_MAC_LEN     32u
#define KVS_PROTO_MAX_BODY    (64u << 20)
#define KVS_PROTO_MAX_KEYS    65536u
#define KVS_PROTO_MAX_REGIONS 4096u
#define KVS_PROTO_MAX_RKEY    4096u
#define KVS_PROTO_MAX_PIECES  1024u
#define KVS_PROTO_MAX_NAME    256u
#define KVS_PROTO_MAX_TEXT    1024u
#define KVS_PROTO_MAX_ADDR    65536u

typedef enum kvs__msg_type {
    KVS_MSG_HELLO = 1,        /* c->s: layout id, client nonce, name */
    KVS_MSG_CHALLENGE = 2,    /* s->c: server nonce and server proof */
    KVS_MSG_AUTH = 3,         /* c->s: client proof */
    KVS_MSG_HELLO_ACK = 4,    /* s->c: session, worker address, exposed regions */
    KVS_MSG_LOOKUP = 5,       /* c->s: key chain */
    KVS_MSG_LOOKUP_REPLY = 6, /* s->c: hits, lease, block descriptors */
    KVS_MSG_RELEASE = 7,      /* c->s: end a lease */
    KVS_MSG_ERROR = 8,        /* either way: status and text */
    KVS_MSG_FETCH = 9,        /* c->s: push leased blocks (AM data path) */
    KVS_MSG_DATA = 10,        /* s->c: one piece of a pushed block */
    KVS_MSG_FETCH_DONE = 11,  /* s->c: all pieces sent, with generations */
    KVS_MSG_PUT = 12,         /* c->node: offer blocks (keys and sizes) */
    KVS_MSG_EVENT = 13,       /* reserved: block stored/removed */
    KVS_MSG_PUT_ACK = 14,     /* node->c: which offered blocks it wants */
    KVS_MSG_PUT_DONE = 15,    /* node->c: the wanted blocks are stored */
    KVS_MSG_TYPE_MAX = 15,
} kvs__msg_type_t;

/* Header flag: the LOOKUP_REPLY / HELLO_ACK carries a region table. */
#define KVS_PROTO_FLAG_REGIONS 1u

typedef struct kvs__hdr {
    uint16_t type;
    uint32_t flags;
    uint32_t body_len;
    uint64_t req_id;
    uint64_t session;
} kvs__hdr_t;

/* A memory region a peer exposes, with its packed remote key. */
typedef struct kvs__region_desc {
    uint32_t id;
    uint64_t base;
    uint64_t length;
    uint32_t rkey_len;
    const uint8_t *rkey;
} kvs__region_desc_t;

/* One contiguous piece of a block in a peer's memory. */
typedef struct kvs__piece {
    uint32_t region;
    uint32_t len;
    uint64_t addr;
} kvs__piece_t;

/* A leased block: its pieces, in the order they concatenate, and where its
 * generation lives. */
typedef struct kvs__block_desc {
    uint32_t gen_region;
    uint16_t npieces;
    uint64_t gen_addr;
    uint64_t gen;
    const uint8_t *pieces; /* npieces encoded kvs__piece_t: read with kvs__proto_piece */
} kvs__block_desc_t;

typedef struct kvs__msg {
    kvs__hdr_t hdr;
    union {
        struct {
            uint64_t layout_id;
            const uint8_t *nonce;
            uint16_t name_len;
            const char *name;
        } hello;
        struct {
            const uint8_t *nonce;
            const uint8_t *mac;
            uint8_t auth_required;
        } challenge;
        struct {
            const uint8_t *mac;
        } auth;
        struct {
            uint32_t addr_len; /* the server's UCP worker address (may be 0) */
            const uint8_t *addr;
        } hello_ack;
        struct {
            uint64_t layout_id;
            uint32_t lease_ms;
            uint32_t nkeys;
            const uint8_t *keys; /* nkeys * 32 bytes */
        } lookup;
        struct {
            int32_t status;
            uint64_t lease_id;
            uint32_t hits;
            const uint8_t *blocks; /* hits encoded block descriptors */
            size_t blocks_len;
        } lookup_reply;
        struct {
            uint64_t lease_id;
        } release;
        struct {
            int32_t status;
            uint16_t text_len;
            const char *text;
        } error;
        struct {
            uint64_t lease_id;
            uint32_t first;
            uint32_t count;
            uint16_t nchunks;      /* the requester's segment sizes: */
            const uint8_t *chunks; /* each block is pushed as these pieces */
        } fetch;
        struct {
            uint32_t block;  /* index within the fetch */
            uint32_t offset; /* byte offset within the block */
        } data;
        struct {
            int32_t status;
            uint32_t count;
            const uint8_t *gens; /* count u64 */
        } fetch_done;
        struct {
            uint64_t layout_id;
            uint32_t nkeys;
            uint16_t nchunks;      /* the sender's segment sizes: a block is */
            const uint8_t *chunks; /* pushed as these pieces, in order */
            const uint8_t *keys;   /* nkeys * 32 bytes */
        } put;
        struct {
            int32_t status;
            uint32_t count;
            const uint8_t *idx; /* count u32: indices into the PUT's keys */
        } put_ack;
        struct {
            int32_t status;
            uint32_t stored;
        } put_done;
    } u;
    /* Region table, when hdr.flags has KVS_PROTO_FLAG_REGIONS. */
    uint32_t nregions;
    const uint8_t *regions;
} kvs__msg_t;

/* Parses and validates one message of @len bytes. On error returns
 * KVS_ERR_PROTOCOL and writes a reason into @why (if non-NULL). */
kvs_status_t kvs__proto_decode(const void *buf, size_t len, kvs__msg_t *msg, char *why,
                               size_t why_len);

/* Iterators over validated arrays inside a decoded message. */
void kvs__proto_region(const uint8_t **cursor, kvs__region_desc_t *out);
void kvs__proto_block(const uint8_t **cursor, kvs__block_desc_t *out);
void kvs__proto_piece(const uint8_t *pieces, uint16_t i, kvs__piece_t *out);
uint64_t kvs__proto_u64_at(const uint8_t *p, size_t i);
uint32_t kvs__proto_u32_at(const uint8_t *p, size_t i);

/* --- encoding into a growable buffer ---------------------------------- */
typedef struct kvs__buf {
    uint8_t *data;
    size_t len, cap;
    bool failed; /* an allocation failed; the buffer is unusable */
} kvs__buf_t;

void kvs__buf_init(kvs__buf_t *b);
void kvs__buf_free(kvs__buf_t *b);
void kvs__buf_put(kvs__buf_t *b, const void *data, size_t len);
void kvs__buf_u8(kvs__buf_t *b, uint8_t v);
void kvs__buf_u16(kvs__buf_t *b, uint16_t v);
void kvs__buf_u32(kvs__buf_t *b, uint32_t v);
void kvs__buf_u64(kvs__buf_t *b, uint64_t v);
/* Starts a message (writes a header with body_len 0); finish fills it in. */
void kvs__proto_begin(kvs__buf_t *b, kvs__msg_type_t type, uint32_t flags, uint64_t req_id,
                      uint64_t session);
kvs_status_t kvs__proto_finish(kvs__buf_t *b);
void kvs__proto_put_region(kvs__buf_t *b, const kvs__region_desc_t *r);
void kvs__proto_put_block(kvs__buf_t *b, const kvs__block_desc_t *d, const kvs__piece_t *pieces);
/* Patches the u32 at byte @off (e.g. a count written before it was known). */
void kvs__buf_patch_u32(kvs__buf_t *b, size_t off, uint32_t v);

#endif
