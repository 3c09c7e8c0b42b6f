/* SPDX-License-Identifier: Apache-2.0 */
/* proto.c - encodes and strictly decodes peer protocol messages. */
#include "proto_int.h"

#include <stdio.h>
#include <string.h>

/* --- little-endian readers over a bounded cursor ---------------------- */
typedef struct rd {
    const uint8_t *p;
    size_t left;
    bool bad;
} rd_t;

static const uint8_t *take(rd_t *r, size_t n)
{
    if (r->bad || n > r->left) {
        r->bad = true;
        return NULL;
    }
    const uint8_t *p = r->p;
    r->p += n;
    r->left -= n;
    return p;
}

static uint64_t le(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static uint8_t rd_u8(rd_t *r)
{
    const uint8_t *p = take(r, 1);
    return p ? p[0] : 0;
}

static uint16_t rd_u16(rd_t *r)
{
    const uint8_t *p = take(r, 2);
    return p ? (uint16_t)le(p, 2) : 0;
}

static uint32_t rd_u32(rd_t *r)
{
    const uint8_t *p = take(r, 4);
    return p ? (uint32_t)le(p, 4) : 0;
}

static uint64_t rd_u64(rd_t *r)
{
    const uint8_t *p = take(r, 8);
    return p ? le(p, 8) : 0;
}

#define REGION_FIXED (4 + 8 + 8 + 4)
#define PIECE_LEN    16
#define BLOCK_FIXED  (4 + 8 + 8 + 2)

/* Every refusal of the parser: KVS_ERR_PROTOCOL with a reason. */
#define bad(why, why_len, ...) kvs__failf(why, why_len, KVS_ERR_PROTOCOL, __VA_ARGS__)

static kvs_status_t decode_regions(rd_t *r, kvs__msg_t *m, char *why, size_t wl)
{
    m->nregions = rd_u32(r);
    if (r->bad || m->nregions > KVS_PROTO_MAX_REGIONS)
        return bad(why, wl, "region count %u invalid or truncated", m->nregions);
    m->regions = r->p;
    for (uint32_t i = 0; i < m->nregions; i++) {
        rd_u32(r);
        rd_u64(r);
        uint64_t length = rd_u64(r);
        uint32_t rkey_len = rd_u32(r);
        if (r->bad)
            return bad(why, wl, "region %u truncated", i);
        if (rkey_len == 0 || rkey_len > KVS_PROTO_MAX_RKEY || length == 0)
            return bad(why, wl, "region %u: rkey length %u or length %llu invalid", i, rkey_len,
                       (unsigned long long)length);
        if (take(r, rkey_len) == NULL)
            return bad(why, wl, "region %u: rkey truncated", i);
    }
    return KVS_OK;
}

/* Chunk sizes of pushed blocks: each at least KVS_PROTO_MIN_CHUNK, and a
 * bounded number of pieces in all, so one message cannot make its receiver
 * post millions of sends. */
static kvs_status_t check_chunks(const uint8_t *chunks, uint16_t n, uint32_t blocks, char *why,
                                 size_t wl)
{
    uint64_t total = 0;
    for (uint16_t k = 0; k < n; k++) {
        uint32_t c = (uint32_t)le(chunks + 4 * (size_t)k, 4);
        if (c < KVS_PROTO_MIN_CHUNK)
            return bad(why, wl, "chunk %u of %u bytes (at least %u)", k, c, KVS_PROTO_MIN_CHUNK);
        total += c;
    }
    if (total > UINT32_MAX)
        return bad(why, wl, "blocks of %llu bytes", (unsigned long long)total);
    if ((uint64_t)blocks * n > KVS_PROTO_MAX_FETCH_PIECES)
        return bad(why, wl, "%u blocks of %u pieces (at most %u pieces)", blocks, n,
                   KVS_PROTO_MAX_FETCH_PIECES);
    return KVS_OK;
}

/* A ranged FETCH's sets and per-block set indices: every count bounded,
 * ranges non-empty, ascending and disjoint within 32 bits, every index
 * naming a set, and pieces in all (blocks x their set's ranges) bounded. */
static kvs_status_t decode_fetch_ranges(rd_t *r, kvs__msg_t *m, char *why, size_t wl)
{
    uint32_t count = m->u.fetch.count;
    m->u.fetch.nsets = rd_u16(r);
    if (!r->bad && (m->u.fetch.nsets == 0 || m->u.fetch.nsets > KVS_PROTO_MAX_SETS))
        return bad(why, wl, "FETCH with %u range sets", m->u.fetch.nsets);
    m->u.fetch.sets = r->p;
    uint16_t nr[KVS_PROTO_MAX_SETS];
    for (uint16_t k = 0; k < m->u.fetch.nsets && !r->bad; k++) {
        nr[k] = rd_u16(r);
        if (!r->bad && nr[k] == 0)
            return bad(why, wl, "FETCH range set %u of %u ranges", k, nr[k]);
        uint64_t end = 0;
        for (uint16_t i = 0; i < nr[k] && !r->bad; i++) {
            uint64_t off = rd_u32(r), len = rd_u32(r);
            if (!r->bad && (len == 0 || off < end || off + len > UINT32_MAX))
                return bad(why, wl,
                           "FETCH range set %u: range %u (%llu+%llu) empty, overlapping "
                           "or out of order",
                           k, i, (unsigned long long)off, (unsigned long long)len);
            end = off + len;
        }
    }
    m->u.fetch.set_of = take(r, (size_t)count * 2);
    if (r->bad)
        return KVS_OK; /* reported as truncated by the caller */
    uint64_t pieces = 0;
    for (uint32_t i = 0; i < count; i++) {
        uint16_t k = (uint16_t)le(m->u.fetch.set_of + 2 * (size_t)i, 2);
        if (k >= m->u.fetch.nsets)
            return bad(why, wl, "FETCH block %u names range set %u of %u", i, k, m->u.fetch.nsets);
        pieces += nr[k];
    }
    if (pieces > KVS_PROTO_MAX_FETCH_PIECES)
        return bad(why, wl, "FETCH of %llu ranges (at most %u)", (unsigned long long)pieces,
                   KVS_PROTO_MAX_FETCH_PIECES);
    return KVS_OK;
}

kvs_status_t kvs__proto_decode_hdr(const void *buf, size_t len, uint32_t max_body, kvs__hdr_t *h,
                                   char *why, size_t wl)
{
    rd_t r = {.p = buf, .left = len};
    memset(h, 0, sizeof(*h));
    if (buf == NULL || len < KVS_PROTO_HDR_LEN)
        return bad(why, wl, "message of %zu bytes is shorter than the %u-byte header", len,
                   KVS_PROTO_HDR_LEN);
    uint32_t magic = rd_u32(&r);
    uint16_t version = rd_u16(&r);
    h->type = rd_u16(&r);
    h->flags = rd_u32(&r);
    h->body_len = rd_u32(&r);
    h->req_id = rd_u64(&r);
    memcpy(h->session, take(&r, KVS_PROTO_SESSION_LEN), KVS_PROTO_SESSION_LEN);
    if (magic != KVS_PROTO_MAGIC)
        return bad(why, wl, "bad magic 0x%08x", magic);
    if (version != KVS_PROTO_VERSION)
        return bad(why, wl, "protocol version %u, expected %u", version, KVS_PROTO_VERSION);
    if (h->type == 0 || h->type > KVS_MSG_TYPE_MAX)
        return bad(why, wl, "unknown message type %u", h->type);
    if (h->flags & ~KVS_PROTO_FLAGS_KNOWN)
        return bad(why, wl, "reserved header bits set");
    if (h->body_len > max_body || h->body_len > KVS_PROTO_MAX_BODY)
        return bad(why, wl, "body of %u bytes exceeds the %u allowed here", h->body_len,
                   max_body < KVS_PROTO_MAX_BODY ? max_body : KVS_PROTO_MAX_BODY);
    return KVS_OK;
}

kvs_status_t kvs__proto_decode(const void *buf, size_t len, kvs__msg_t *m, char *why, size_t wl)
{
    memset(m, 0, sizeof(*m));
    kvs_status_t st = kvs__proto_decode_hdr(buf, len, KVS_PROTO_MAX_BODY, &m->hdr, why, wl);
    if (st != KVS_OK)
        return st;
    if (m->hdr.body_len != len - KVS_PROTO_HDR_LEN)
        return bad(why, wl, "body length %u does not match the %zu bytes received", m->hdr.body_len,
                   len - KVS_PROTO_HDR_LEN);
    rd_t r = {.p = (const uint8_t *)buf + KVS_PROTO_HDR_LEN, .left = len - KVS_PROTO_HDR_LEN};
    bool has_regions = (m->hdr.flags & KVS_PROTO_FLAG_REGIONS) != 0;

    switch ((kvs__msg_type_t)m->hdr.type) {
    case KVS_MSG_HELLO:
        m->u.hello.layout_id = rd_u64(&r);
        m->u.hello.nonce = take(&r, KVS_PROTO_NONCE_LEN);
        m->u.hello.name_len = rd_u16(&r);
        if (m->u.hello.name_len > KVS_PROTO_MAX_NAME)
            return bad(why, wl, "HELLO name of %u bytes", m->u.hello.name_len);
        m->u.hello.name = (const char *)take(&r, m->u.hello.name_len);
        if (m->hdr.flags & KVS_PROTO_FLAG_VIEW)
            m->u.hello.model = rd_u64(&r);
        break;
    case KVS_MSG_CHALLENGE:
        m->u.challenge.nonce = take(&r, KVS_PROTO_NONCE_LEN);
        m->u.challenge.mac = take(&r, KVS_PROTO_MAC_LEN);
        m->u.challenge.auth_required = rd_u8(&r);
        if (m->u.challenge.auth_required > 1)
            return bad(why, wl, "CHALLENGE auth flag %u", m->u.challenge.auth_required);
        break;
    case KVS_MSG_AUTH:
        m->u.auth.mac = take(&r, KVS_PROTO_MAC_LEN);
        m->u.auth.addr_len = rd_u32(&r);
        if (m->u.auth.addr_len > KVS_PROTO_MAX_ADDR)
            return bad(why, wl, "AUTH address of %u bytes", m->u.auth.addr_len);
        m->u.auth.addr = take(&r, m->u.auth.addr_len);
        break;
    case KVS_MSG_HELLO_ACK:
        m->u.hello_ack.addr_len = rd_u32(&r);
        if (m->u.hello_ack.addr_len > KVS_PROTO_MAX_ADDR)
            return bad(why, wl, "HELLO_ACK worker address of %u bytes", m->u.hello_ack.addr_len);
        m->u.hello_ack.addr = take(&r, m->u.hello_ack.addr_len);
        if (m->hdr.flags & KVS_PROTO_FLAG_VIEW) {
            m->u.hello_ack.view = take(&r, KVS_VIEW_WIRE_LEN);
            kvs__view_t v;
            if (m->u.hello_ack.view != NULL) {
                kvs__view_decode(m->u.hello_ack.view, &v);
                if (!kvs__view_valid(&v))
                    return bad(why, wl, "HELLO_ACK with an inconsistent view");
            }
        }
        if (has_regions && (st = decode_regions(&r, m, why, wl)) != KVS_OK)
            return st;
        if (m->hdr.flags & KVS_PROTO_FLAG_SHM) {
            m->u.hello_ack.boot_id = take(&r, KVS_PROTO_BOOT_ID_LEN);
            m->u.hello_ack.shm_path_len = rd_u16(&r);
            if (!r.bad && (m->u.hello_ack.shm_path_len == 0 ||
                           m->u.hello_ack.shm_path_len > KVS_PROTO_MAX_SHM_PATH))
                return bad(why, wl, "HELLO_ACK socket path of %u bytes",
                           m->u.hello_ack.shm_path_len);
            m->u.hello_ack.shm_path = (const char *)take(&r, m->u.hello_ack.shm_path_len);
        }
        break;
    case KVS_MSG_LOOKUP:
        m->u.lookup.layout_id = rd_u64(&r);
        m->u.lookup.lease_ms = rd_u32(&r);
        m->u.lookup.nkeys = rd_u32(&r);
        if (m->u.lookup.nkeys > KVS_PROTO_MAX_KEYS)
            return bad(why, wl, "LOOKUP of %u keys (max %u)", m->u.lookup.nkeys,
                       KVS_PROTO_MAX_KEYS);
        m->u.lookup.keys = take(&r, (size_t)m->u.lookup.nkeys * KVS_KEY_BYTES);
        break;
    case KVS_MSG_LOOKUP_REPLY:
        m->u.lookup_reply.status = (int32_t)rd_u32(&r);
        m->u.lookup_reply.lease_id = rd_u64(&r);
        m->u.lookup_reply.hits = rd_u32(&r);
        if (m->u.lookup_reply.hits > KVS_PROTO_MAX_KEYS)
            return bad(why, wl, "LOOKUP_REPLY with %u hits", m->u.lookup_reply.hits);
        if (has_regions && (st = decode_regions(&r, m, why, wl)) != KVS_OK)
            return st;
        m->u.lookup_reply.blocks = r.p;
        for (uint32_t i = 0; i < m->u.lookup_reply.hits && !r.bad; i++) {
            take(&r, BLOCK_FIXED - 2);
            uint16_t np = rd_u16(&r);
            if (np == 0 || np > KVS_PROTO_MAX_PIECES)
                return bad(why, wl, "block %u has %u pieces", i, np);
            take(&r, (size_t)np * PIECE_LEN);
        }
        m->u.lookup_reply.blocks_len = r.bad ? 0 : (size_t)(r.p - m->u.lookup_reply.blocks);
        break;
    case KVS_MSG_RELEASE:
        m->u.release.lease_id = rd_u64(&r);
        if (m->hdr.flags & KVS_PROTO_FLAG_READERS) {
            m->u.release.readers = rd_u32(&r);
            if (!r.bad &&
                (m->u.release.readers == 0 || m->u.release.readers > KVS_PROTO_MAX_READERS))
                return bad(why, wl, "RELEASE for %u readers (1..%u)", m->u.release.readers,
                           KVS_PROTO_MAX_READERS);
        }
        break;
    case KVS_MSG_READ:
        m->u.read.readers = rd_u32(&r);
        m->u.read.count = rd_u32(&r);
        if (!r.bad && m->u.read.readers > KVS_PROTO_MAX_READERS)
            return bad(why, wl, "READ for %u readers (0..%u)", m->u.read.readers,
                       KVS_PROTO_MAX_READERS);
        if (!r.bad && (m->u.read.count == 0 || m->u.read.count > KVS_PROTO_MAX_KEYS))
            return bad(why, wl, "READ of %u blocks", m->u.read.count);
        m->u.read.refs = take(&r, (size_t)m->u.read.count * KVS_PROTO_READ_REF_LEN);
        break;
    case KVS_MSG_ERROR:
        m->u.error.status = (int32_t)rd_u32(&r);
        m->u.error.text_len = rd_u16(&r);
        if (m->u.error.text_len > KVS_PROTO_MAX_TEXT)
            return bad(why, wl, "ERROR text of %u bytes", m->u.error.text_len);
        m->u.error.text = (const char *)take(&r, m->u.error.text_len);
        break;
    case KVS_MSG_FETCH:
        m->u.fetch.lease_id = rd_u64(&r);
        m->u.fetch.first = rd_u32(&r);
        m->u.fetch.count = rd_u32(&r);
        if (m->u.fetch.count > KVS_PROTO_MAX_KEYS ||
            m->u.fetch.first > KVS_PROTO_MAX_KEYS - m->u.fetch.count)
            return bad(why, wl, "FETCH of blocks %u+%u", m->u.fetch.first, m->u.fetch.count);
        if (m->hdr.flags & KVS_PROTO_FLAG_RANGES) {
            if (!r.bad && (st = decode_fetch_ranges(&r, m, why, wl)) != KVS_OK)
                return st;
            break;
        }
        m->u.fetch.nchunks = rd_u16(&r);
        if (!r.bad && (m->u.fetch.nchunks == 0 || m->u.fetch.nchunks > KVS_PROTO_MAX_PIECES))
            return bad(why, wl, "FETCH with %u chunks per block", m->u.fetch.nchunks);
        m->u.fetch.chunks = take(&r, (size_t)m->u.fetch.nchunks * 4);
        if (!r.bad && (st = check_chunks(m->u.fetch.chunks, m->u.fetch.nchunks, m->u.fetch.count,
                                         why, wl)) != KVS_OK)
            return st;
        break;
    case KVS_MSG_DATA:
        m->u.data.block = rd_u32(&r);
        m->u.data.offset = rd_u32(&r);
        break;
    case KVS_MSG_FETCH_DONE:
        m->u.fetch_done.status = (int32_t)rd_u32(&r);
        m->u.fetch_done.count = rd_u32(&r);
        if (m->u.fetch_done.count > KVS_PROTO_MAX_KEYS)
            return bad(why, wl, "FETCH_DONE of %u blocks", m->u.fetch_done.count);
        m->u.fetch_done.gens = take(&r, (size_t)m->u.fetch_done.count * 8);
        break;
    case KVS_MSG_PUT:
        m->u.put.layout_id = rd_u64(&r);
        m->u.put.nkeys = rd_u32(&r);
        if (m->u.put.nkeys > KVS_PROTO_MAX_KEYS)
            return bad(why, wl, "PUT of %u keys (max %u)", m->u.put.nkeys, KVS_PROTO_MAX_KEYS);
        m->u.put.nchunks = rd_u16(&r);
        if (!r.bad && (m->u.put.nchunks == 0 || m->u.put.nchunks > KVS_PROTO_MAX_PIECES))
            return bad(why, wl, "PUT with %u chunks per block", m->u.put.nchunks);
        m->u.put.chunks = take(&r, (size_t)m->u.put.nchunks * 4);
        if (!r.bad && (st = check_chunks(m->u.put.chunks, m->u.put.nchunks, m->u.put.nkeys, why,
                                         wl)) != KVS_OK)
            return st;
        m->u.put.keys = take(&r, (size_t)m->u.put.nkeys * KVS_KEY_BYTES);
        if (m->hdr.flags & KVS_PROTO_FLAG_PULL) {
            if (!r.bad && (st = decode_regions(&r, m, why, wl)) != KVS_OK)
                return st;
            m->u.put.segs = take(&r, (size_t)m->u.put.nchunks * KVS_PROTO_PUT_SEG_LEN);
            m->u.put.ids = take(&r, (size_t)m->u.put.nkeys * 4);
        }
        break;
    case KVS_MSG_PUT_ACK:
        m->u.put_ack.status = (int32_t)rd_u32(&r);
        m->u.put_ack.count = rd_u32(&r);
        if (m->u.put_ack.count > KVS_PROTO_MAX_KEYS)
            return bad(why, wl, "PUT_ACK of %u blocks", m->u.put_ack.count);
        m->u.put_ack.idx = take(&r, (size_t)m->u.put_ack.count * 4);
        break;
    case KVS_MSG_PUT_DONE:
        m->u.put_done.status = (int32_t)rd_u32(&r);
        m->u.put_done.stored = rd_u32(&r);
        break;
    case KVS_MSG_EVENT:
        return bad(why, wl, "message type %u is not served by this version", m->hdr.type);
    }
    if (r.bad)
        return bad(why, wl, "message type %u truncated", m->hdr.type);
    if (r.left != 0)
        return bad(why, wl, "message type %u has %zu trailing bytes", m->hdr.type, r.left);
    if (m->hdr.type == KVS_MSG_DATA && len != KVS_PROTO_DATA_LEN)
        return bad(why, wl, "DATA header of %zu bytes", len);
    if (has_regions && m->hdr.type != KVS_MSG_HELLO_ACK && m->hdr.type != KVS_MSG_LOOKUP_REPLY)
        return bad(why, wl, "region flag on message type %u", m->hdr.type);
    if ((m->hdr.flags & KVS_PROTO_FLAG_PULL) && m->hdr.type != KVS_MSG_PUT)
        return bad(why, wl, "pull flag on message type %u", m->hdr.type);
    if ((m->hdr.flags & KVS_PROTO_FLAG_VIEW) && m->hdr.type != KVS_MSG_HELLO &&
        m->hdr.type != KVS_MSG_HELLO_ACK)
        return bad(why, wl, "view flag on message type %u", m->hdr.type);
    if ((m->hdr.flags & KVS_PROTO_FLAG_RANGES) && m->hdr.type != KVS_MSG_FETCH)
        return bad(why, wl, "ranges flag on message type %u", m->hdr.type);
    if ((m->hdr.flags & KVS_PROTO_FLAG_SHM) && m->hdr.type != KVS_MSG_HELLO_ACK)
        return bad(why, wl, "shm flag on message type %u", m->hdr.type);
    if ((m->hdr.flags & KVS_PROTO_FLAG_READERS) && m->hdr.type != KVS_MSG_RELEASE)
        return bad(why, wl, "readers flag on message type %u", m->hdr.type);
    return KVS_OK;
}

void kvs__proto_region(const uint8_t **cursor, kvs__region_desc_t *out)
{
    const uint8_t *p = *cursor;
    out->id = (uint32_t)le(p, 4);
    out->base = le(p + 4, 8);
    out->length = le(p + 12, 8);
    out->rkey_len = (uint32_t)le(p + 20, 4);
    out->rkey = p + REGION_FIXED;
    *cursor = p + REGION_FIXED + out->rkey_len;
}

bool kvs__proto_regions_have(const uint8_t *regions, uint32_t n, uint32_t id)
{
    const uint8_t *cur = regions;
    for (uint32_t k = 0; k < n; k++) {
        kvs__region_desc_t d;
        kvs__proto_region(&cur, &d);
        if (d.id == id)
            return true;
    }
    return false;
}

void kvs__proto_block(const uint8_t **cursor, kvs__block_desc_t *out)
{
    const uint8_t *p = *cursor;
    out->gen_region = (uint32_t)le(p, 4);
    out->gen_addr = le(p + 4, 8);
    out->gen = le(p + 12, 8);
    out->npieces = (uint16_t)le(p + 20, 2);
    out->pieces = p + BLOCK_FIXED;
    *cursor = p + BLOCK_FIXED + (size_t)out->npieces * PIECE_LEN;
}

void kvs__proto_piece(const uint8_t *pieces, uint16_t i, kvs__piece_t *out)
{
    const uint8_t *p = pieces + (size_t)i * PIECE_LEN;
    out->region = (uint32_t)le(p, 4);
    out->len = (uint32_t)le(p + 4, 4);
    out->addr = le(p + 8, 8);
}

uint64_t kvs__proto_u64_at(const uint8_t *p, size_t i)
{
    return le(p + 8 * i, 8);
}

uint32_t kvs__proto_u32_at(const uint8_t *p, size_t i)
{
    return (uint32_t)le(p + 4 * i, 4);
}

uint16_t kvs__proto_u16_at(const uint8_t *p, size_t i)
{
    return (uint16_t)le(p + 2 * i, 2);
}

void kvs__proto_fetch_set(const uint8_t *sets, uint16_t k, uint16_t *nranges_p,
                          const uint8_t **ranges_p)
{
    const uint8_t *p = sets;
    for (uint16_t j = 0; j < k; j++)
        p += 2 + 8 * (size_t)le(p, 2);
    *nranges_p = (uint16_t)le(p, 2);
    *ranges_p = p + 2;
}

/* --- encoder ------------------------------------------------------------- */
void kvs__buf_init(kvs__buf_t *b)
{
    memset(b, 0, sizeof(*b));
}

void kvs__buf_free(kvs__buf_t *b)
{
    kvs__free(b->data);
    kvs__buf_init(b);
}

void kvs__buf_put(kvs__buf_t *b, const void *data, size_t len)
{
    if (b->failed)
        return;
    if (b->len + len > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + len)
            cap *= 2;
        uint8_t *nd = kvs__realloc(b->data, cap);
        if (nd == NULL) {
            b->failed = true;
            return;
        }
        b->data = nd;
        b->cap = cap;
    }
    if (len > 0)
        memcpy(b->data + b->len, data, len);
    b->len += len;
}

static void put_le(kvs__buf_t *b, uint64_t v, int n)
{
    uint8_t t[8];
    for (int i = 0; i < n; i++)
        t[i] = (uint8_t)(v >> (8 * i));
    kvs__buf_put(b, t, (size_t)n);
}

void kvs__buf_u8(kvs__buf_t *b, uint8_t v)
{
    kvs__buf_put(b, &v, 1);
}

void kvs__buf_u16(kvs__buf_t *b, uint16_t v)
{
    put_le(b, v, 2);
}

void kvs__buf_u32(kvs__buf_t *b, uint32_t v)
{
    put_le(b, v, 4);
}

void kvs__buf_u64(kvs__buf_t *b, uint64_t v)
{
    put_le(b, v, 8);
}

void kvs__buf_patch_u32(kvs__buf_t *b, size_t off, uint32_t v)
{
    if (b->failed || off + 4 > b->len)
        return;
    for (int i = 0; i < 4; i++)
        b->data[off + (size_t)i] = (uint8_t)(v >> (8 * i));
}

void kvs__proto_begin(kvs__buf_t *b, kvs__msg_type_t type, uint32_t flags, uint64_t req_id,
                      const uint8_t *session)
{
    b->len = 0;
    kvs__buf_u32(b, KVS_PROTO_MAGIC);
    kvs__buf_u16(b, KVS_PROTO_VERSION);
    kvs__buf_u16(b, (uint16_t)type);
    kvs__buf_u32(b, flags);
    kvs__buf_u32(b, 0);
    kvs__buf_u64(b, req_id);
    static const uint8_t none[KVS_PROTO_SESSION_LEN];
    kvs__buf_put(b, session != NULL ? session : none, KVS_PROTO_SESSION_LEN);
}

kvs_status_t kvs__proto_finish(kvs__buf_t *b)
{
    if (b->failed)
        return KVS_ERR_NO_MEMORY;
    if (b->len - KVS_PROTO_HDR_LEN > KVS_PROTO_MAX_BODY)
        return KVS_ERR_INVALID_PARAM;
    kvs__buf_patch_u32(b, 12, (uint32_t)(b->len - KVS_PROTO_HDR_LEN));
    return KVS_OK;
}

void kvs__proto_put_region(kvs__buf_t *b, const kvs__region_desc_t *r)
{
    kvs__buf_u32(b, r->id);
    kvs__buf_u64(b, r->base);
    kvs__buf_u64(b, r->length);
    kvs__buf_u32(b, r->rkey_len);
    kvs__buf_put(b, r->rkey, r->rkey_len);
}

static uint8_t *w_le(uint8_t *p, uint64_t v, int n)
{
    for (int i = 0; i < n; i++)
        p[i] = (uint8_t)(v >> (8 * i));
    return p + n;
}

uint8_t *kvs__proto_write_block(uint8_t *p, const kvs__block_desc_t *d, const kvs__piece_t *pieces)
{
    p = w_le(p, d->gen_region, 4);
    p = w_le(p, d->gen_addr, 8);
    p = w_le(p, d->gen, 8);
    p = w_le(p, d->npieces, 2);
    for (uint16_t i = 0; i < d->npieces; i++) {
        p = w_le(p, pieces[i].region, 4);
        p = w_le(p, pieces[i].len, 4);
        p = w_le(p, pieces[i].addr, 8);
    }
    return p;
}

void kvs__proto_put_block(kvs__buf_t *b, const kvs__block_desc_t *d, const kvs__piece_t *pieces)
{
    kvs__buf_u32(b, d->gen_region);
    kvs__buf_u64(b, d->gen_addr);
    kvs__buf_u64(b, d->gen);
    kvs__buf_u16(b, d->npieces);
    for (uint16_t i = 0; i < d->npieces; i++) {
        kvs__buf_u32(b, pieces[i].region);
        kvs__buf_u32(b, pieces[i].len);
        kvs__buf_u64(b, pieces[i].addr);
    }
}

/* --- one encoder per message ------------------------------------------- */
static void hello_head(kvs__buf_t *b, uint32_t flags, uint64_t req_id, uint64_t layout_id,
                       const uint8_t *nonce, const char *name)
{
    size_t nl = strlen(name);
    if (nl > KVS_PROTO_MAX_NAME)
        nl = KVS_PROTO_MAX_NAME;
    kvs__proto_begin(b, KVS_MSG_HELLO, flags, req_id, NULL);
    kvs__buf_u64(b, layout_id);
    kvs__buf_put(b, nonce, KVS_PROTO_NONCE_LEN);
    kvs__buf_u16(b, (uint16_t)nl);
    kvs__buf_put(b, name, nl);
}

kvs_status_t kvs__enc_hello(kvs__buf_t *b, uint64_t req_id, uint64_t layout_id,
                            const uint8_t *nonce, const char *name)
{
    hello_head(b, 0, req_id, layout_id, nonce, name);
    return kvs__proto_finish(b);
}

kvs_status_t kvs__enc_hello_model(kvs__buf_t *b, uint64_t req_id, uint64_t layout_id,
                                  const uint8_t *nonce, const char *name, uint64_t model)
{
    hello_head(b, KVS_PROTO_FLAG_VIEW, req_id, layout_id, nonce, name);
    kvs__buf_u64(b, model);
    return kvs__proto_finish(b);
}

kvs_status_t kvs__enc_challenge(kvs__buf_t *b, uint64_t req_id, const uint8_t *nonce,
                                const uint8_t *mac, bool auth_required)
{
    kvs__proto_begin(b, KVS_MSG_CHALLENGE, KVS_PROTO_FLAG_FROM_SERVER, req_id, NULL);
    kvs__buf_put(b, nonce, KVS_PROTO_NONCE_LEN);
    kvs__buf_put(b, mac, KVS_PROTO_MAC_LEN);
    kvs__buf_u8(b, auth_required ? 1 : 0);
    return kvs__proto_finish(b);
}

kvs_status_t kvs__enc_auth(kvs__buf_t *b, uint64_t req_id, const uint8_t *mac, const void *addr,
                           size_t addr_len)
{
    if (addr_len > KVS_PROTO_MAX_ADDR)
        return KVS_ERR_INVALID_PARAM;
    kvs__proto_begin(b, KVS_MSG_AUTH, 0, req_id, NULL);
    kvs__buf_put(b, mac, KVS_PROTO_MAC_LEN);
    kvs__buf_u32(b, (uint32_t)addr_len);
    kvs__buf_put(b, addr, addr_len);
    return kvs__proto_finish(b);
}

kvs_status_t kvs__enc_error(kvs__buf_t *b, uint64_t req_id, uint32_t flags, const uint8_t *session,
                            kvs_status_t status, const char *text)
{
    size_t n = strlen(text);
    if (n > KVS_PROTO_MAX_TEXT)
        n = KVS_PROTO_MAX_TEXT;
    kvs__proto_begin(b, KVS_MSG_ERROR, flags, req_id, session);
    kvs__buf_u32(b, (uint32_t)status);
    kvs__buf_u16(b, (uint16_t)n);
    kvs__buf_put(b, text, n);
    return kvs__proto_finish(b);
}

kvs_status_t kvs__enc_lookup(kvs__buf_t *b, uint64_t req_id, const uint8_t *session,
                             uint64_t layout_id, uint32_t lease_ms, const kvs_key_t *keys, size_t n)
{
    if (n > KVS_PROTO_MAX_KEYS)
        return KVS_ERR_INVALID_PARAM;
    kvs__proto_begin(b, KVS_MSG_LOOKUP, 0, req_id, session);
    kvs__buf_u64(b, layout_id);
    kvs__buf_u32(b, lease_ms);
    kvs__buf_u32(b, (uint32_t)n);
    kvs__buf_put(b, keys, n * KVS_KEY_BYTES);
    return kvs__proto_finish(b);
}

kvs_status_t kvs__enc_read(kvs__buf_t *b, uint64_t req_id, const uint8_t *session, uint32_t readers,
                           const uint32_t *idx, const uint64_t *serial, uint32_t count)
{
    if (readers > KVS_PROTO_MAX_READERS || count == 0 || count > KVS_PROTO_MAX_KEYS)
        return KVS_ERR_INVALID_PARAM;
    kvs__proto_begin(b, KVS_MSG_READ, 0, req_id, session);
    kvs__buf_u32(b, readers);
    kvs__buf_u32(b, count);
    for (uint32_t i = 0; i < count; i++) {
        kvs__buf_u32(b, idx[i]);
        kvs__buf_u64(b, serial[i]);
    }
    return kvs__proto_finish(b);
}

void kvs__proto_read_ref(const uint8_t *refs, uint32_t i, uint32_t *idx_p, uint64_t *serial_p)
{
    const uint8_t *p = refs + (size_t)i * KVS_PROTO_READ_REF_LEN;
    *idx_p = (uint32_t)le(p, 4);
    *serial_p = le(p + 4, 8);
}

kvs_status_t kvs__enc_release(kvs__buf_t *b, uint64_t req_id, const uint8_t *session,
                              uint64_t lease_id, uint32_t readers)
{
    if (readers > KVS_PROTO_MAX_READERS)
        return KVS_ERR_INVALID_PARAM;
    kvs__proto_begin(b, KVS_MSG_RELEASE, readers > 0 ? KVS_PROTO_FLAG_READERS : 0, req_id, session);
    kvs__buf_u64(b, lease_id);
    if (readers > 0)
        kvs__buf_u32(b, readers);
    return kvs__proto_finish(b);
}

kvs_status_t kvs__enc_fetch(kvs__buf_t *b, uint64_t req_id, const uint8_t *session,
                            uint64_t lease_id, uint32_t first, uint32_t count,
                            const uint32_t *chunks, uint16_t nchunks)
{
    kvs__proto_begin(b, KVS_MSG_FETCH, 0, req_id, session);
    kvs__buf_u64(b, lease_id);
    kvs__buf_u32(b, first);
    kvs__buf_u32(b, count);
    kvs__buf_u16(b, nchunks);
    for (uint16_t k = 0; k < nchunks; k++)
        kvs__buf_u32(b, chunks[k]);
    return kvs__proto_finish(b);
}

kvs_status_t kvs__enc_fetch_ranges(kvs__buf_t *b, uint64_t req_id, const uint8_t *session,
                                   uint64_t lease_id, uint32_t first, uint32_t count,
                                   uint16_t nsets, const uint16_t *nranges,
                                   const kvs__range_t *const *ranges, const uint16_t *set_of)
{
    kvs__proto_begin(b, KVS_MSG_FETCH, KVS_PROTO_FLAG_RANGES, req_id, session);
    kvs__buf_u64(b, lease_id);
    kvs__buf_u32(b, first);
    kvs__buf_u32(b, count);
    kvs__buf_u16(b, nsets);
    for (uint16_t k = 0; k < nsets; k++) {
        kvs__buf_u16(b, nranges[k]);
        for (size_t i = 0; i < nranges[k]; i++) {
            kvs__buf_u32(b, ranges[k][i].off);
            kvs__buf_u32(b, ranges[k][i].len);
        }
    }
    for (uint32_t i = 0; i < count; i++)
        kvs__buf_u16(b, set_of[i]);
    return kvs__proto_finish(b);
}

kvs_status_t kvs__enc_fetch_done(kvs__buf_t *b, uint64_t req_id, const uint8_t *session,
                                 kvs_status_t status, const uint64_t *gens, uint32_t count)
{
    kvs__proto_begin(b, KVS_MSG_FETCH_DONE, KVS_PROTO_FLAG_FROM_SERVER, req_id, session);
    kvs__buf_u32(b, (uint32_t)status);
    kvs__buf_u32(b, count);
    for (uint32_t i = 0; i < count; i++)
        kvs__buf_u64(b, gens != NULL ? gens[i] : 0);
    return kvs__proto_finish(b);
}

/* The part of a PUT both paths share: layout, block count, chunk sizes, keys. */
static void put_head(kvs__buf_t *b, uint32_t flags, uint64_t req_id, const uint8_t *session,
                     uint64_t layout_id, const uint32_t *chunks, uint16_t nchunks,
                     const kvs_key_t *keys, uint32_t n)
{
    kvs__proto_begin(b, KVS_MSG_PUT, flags, req_id, session);
    kvs__buf_u64(b, layout_id);
    kvs__buf_u32(b, n);
    kvs__buf_u16(b, nchunks);
    for (uint16_t k = 0; k < nchunks; k++)
        kvs__buf_u32(b, chunks[k]);
    kvs__buf_put(b, keys, (size_t)n * KVS_KEY_BYTES);
}

kvs_status_t kvs__enc_put(kvs__buf_t *b, uint64_t req_id, const uint8_t *session,
                          uint64_t layout_id, const uint32_t *chunks, uint16_t nchunks,
                          const kvs_key_t *keys, uint32_t n)
{
    put_head(b, 0, req_id, session, layout_id, chunks, nchunks, keys, n);
    return kvs__proto_finish(b);
}

kvs_status_t kvs__enc_put_pull(kvs__buf_t *b, uint64_t req_id, const uint8_t *session,
                               uint64_t layout_id, const uint32_t *chunks, uint16_t nchunks,
                               const kvs_key_t *keys, uint32_t n, const kvs__region_desc_t *regions,
                               uint32_t nregions, const kvs__put_seg_t *segs, const uint32_t *ids)
{
    put_head(b, KVS_PROTO_FLAG_PULL, req_id, session, layout_id, chunks, nchunks, keys, n);
    kvs__buf_u32(b, nregions);
    for (uint32_t i = 0; i < nregions; i++)
        kvs__proto_put_region(b, &regions[i]);
    for (uint16_t k = 0; k < nchunks; k++) {
        kvs__buf_u32(b, segs[k].region);
        kvs__buf_u64(b, segs[k].base);
        kvs__buf_u64(b, segs[k].stride);
    }
    for (uint32_t i = 0; i < n; i++)
        kvs__buf_u32(b, ids[i]);
    return kvs__proto_finish(b);
}

void kvs__proto_put_seg(const uint8_t *segs, uint16_t k, kvs__put_seg_t *out)
{
    const uint8_t *p = segs + (size_t)k * KVS_PROTO_PUT_SEG_LEN;
    out->region = (uint32_t)le(p, 4);
    out->base = le(p + 4, 8);
    out->stride = le(p + 12, 8);
}

kvs_status_t kvs__enc_put_ack(kvs__buf_t *b, uint64_t req_id, const uint8_t *session,
                              const uint32_t *idx, uint32_t n)
{
    kvs__proto_begin(b, KVS_MSG_PUT_ACK, KVS_PROTO_FLAG_FROM_SERVER, req_id, session);
    kvs__buf_u32(b, (uint32_t)KVS_OK);
    kvs__buf_u32(b, n);
    for (uint32_t i = 0; i < n; i++)
        kvs__buf_u32(b, idx[i]);
    return kvs__proto_finish(b);
}

kvs_status_t kvs__enc_put_done(kvs__buf_t *b, uint64_t req_id, const uint8_t *session,
                               kvs_status_t status, uint32_t stored)
{
    kvs__proto_begin(b, KVS_MSG_PUT_DONE, KVS_PROTO_FLAG_FROM_SERVER, req_id, session);
    kvs__buf_u32(b, (uint32_t)status);
    kvs__buf_u32(b, stored);
    return kvs__proto_finish(b);
}

void kvs__enc_data(uint8_t *out, uint64_t req_id, uint32_t flags, const uint8_t *session,
                   uint32_t block, uint32_t offset)
{
    kvs__buf_t b = {.data = out, .cap = KVS_PROTO_DATA_LEN};
    kvs__proto_begin(&b, KVS_MSG_DATA, flags, req_id, session);
    kvs__buf_u32(&b, block);
    kvs__buf_u32(&b, offset);
    kvs__proto_finish(&b);
}

/* ---------------------------------------------------------------------- */
/* The same-host handover's answer                                          */
/* ---------------------------------------------------------------------- */
void kvs__shm_put_entry(uint8_t *out, const kvs__shm_entry_t *e)
{
    kvs__buf_t b = {.data = out, .cap = KVS_SHM_ENTRY_LEN};
    kvs__buf_u32(&b, (uint32_t)e->status);
    kvs__buf_u32(&b, e->kind);
    kvs__buf_u64(&b, e->base);
    kvs__buf_u64(&b, e->len);
    kvs__buf_u64(&b, e->off);
    kvs__buf_u64(&b, e->size);
}

kvs_status_t kvs__shm_parse_reply(const uint8_t *rep, size_t len, uint32_t n, uint32_t nfds,
                                  kvs__shm_entry_t *out, const char **why)
{
    const char *bad = NULL;
    rd_t r = {.p = rep, .left = len};
    uint32_t withfd = 0;
    /* n = 0: the answer to an identify request (no regions, no descriptor). */
    if (n > KVS_SHM_MAX_IDS || len != 8 + (size_t)KVS_SHM_ENTRY_LEN * n) {
        bad = "wrong length";
        goto out;
    }
    const uint32_t magic = rd_u32(&r), count = rd_u32(&r);
    if (magic != KVS_SHM_MAGIC || count != n) {
        bad = "wrong magic or count";
        goto out;
    }
    for (uint32_t i = 0; i < n; i++) {
        kvs__shm_entry_t *e = &out[i];
        e->status = (int32_t)rd_u32(&r);
        e->kind = rd_u32(&r);
        e->base = rd_u64(&r);
        e->len = rd_u64(&r);
        e->off = rd_u64(&r);
        e->size = rd_u64(&r);
        if (e->status != 0) {
            if (e->kind != 0) {
                bad = "an entry without a descriptor names a kind";
                goto out;
            }
            continue;
        }
        if (e->kind != KVS_SHM_KIND_MEMFD && e->kind != KVS_SHM_KIND_CUDA_VMM) {
            bad = "unknown kind";
            goto out;
        }
        if (e->len == 0 || e->base + e->len < e->base || e->off > e->size ||
            e->len > e->size - e->off) {
            bad = "a region outside its object";
            goto out;
        }
        withfd++;
    }
    if (withfd != nfds)
        bad = "descriptors do not match the entries";
out:
    if (why != NULL)
        *why = bad;
    return bad == NULL ? KVS_OK : KVS_ERR_PROTOCOL;
}

void kvs__shm_put_offer(uint8_t *out, const uint8_t *session, const uint8_t *mac,
                        const kvs__shm_offer_t *e, uint32_t n)
{
    kvs__buf_t b = {.data = out, .cap = KVS_SHM_OFFER_FIXED + (size_t)KVS_SHM_OFFER_ENTRY_LEN * n};
    kvs__buf_u32(&b, KVS_SHM_OFFER_MAGIC);
    memcpy(out + 4, session, KVS_PROTO_SESSION_LEN);
    memcpy(out + 4 + KVS_PROTO_SESSION_LEN, mac, KVS_PROTO_MAC_LEN);
    b.len = KVS_SHM_OFFER_FIXED - 4;
    kvs__buf_u32(&b, n);
    for (uint32_t i = 0; i < n; i++) {
        kvs__buf_u32(&b, e[i].id);
        kvs__buf_u32(&b, e[i].kind);
        kvs__buf_u64(&b, e[i].base);
        kvs__buf_u64(&b, e[i].len);
        kvs__buf_u64(&b, e[i].off);
        kvs__buf_u64(&b, e[i].size);
    }
}

kvs_status_t kvs__shm_parse_offer(const uint8_t *req, size_t len, uint32_t nfds,
                                  const uint8_t **session_p, const uint8_t **mac_p,
                                  kvs__shm_offer_t *out, uint32_t *n_p, const char **why)
{
    const char *bad = NULL;
    rd_t r = {.p = req, .left = len};
    uint32_t n = 0;
    if (len < KVS_SHM_OFFER_FIXED) {
        bad = "wrong length";
        goto out;
    }
    if (rd_u32(&r) != KVS_SHM_OFFER_MAGIC) {
        bad = "wrong magic";
        goto out;
    }
    const uint8_t *session = take(&r, KVS_PROTO_SESSION_LEN), *mac = take(&r, KVS_PROTO_MAC_LEN);
    n = rd_u32(&r);
    if (n > KVS_SHM_MAX_IDS || len != KVS_SHM_OFFER_FIXED + (size_t)KVS_SHM_OFFER_ENTRY_LEN * n) {
        bad = "wrong length or count";
        goto out;
    }
    uint32_t want_fds = 0;
    for (uint32_t i = 0; i < n; i++) {
        kvs__shm_offer_t *e = &out[i];
        e->id = rd_u32(&r);
        e->kind = rd_u32(&r);
        e->base = rd_u64(&r);
        e->len = rd_u64(&r);
        e->off = rd_u64(&r);
        e->size = rd_u64(&r);
        if (e->kind == KVS_SHM_KIND_WITHDRAW) {
            if (e->base != 0 || e->len != 0 || e->off != 0 || e->size != 0) {
                bad = "a withdrawal that describes a region";
                goto out;
            }
        } else if (e->kind != KVS_SHM_KIND_MEMFD && e->kind != KVS_SHM_KIND_CUDA_VMM) {
            bad = "unknown kind";
            goto out;
        } else if (e->len == 0 || e->base + e->len < e->base || e->off > e->size ||
                   e->len > e->size - e->off) {
            bad = "a region with no bytes, wrapping, or outside its object";
            goto out;
        } else {
            want_fds++;
        }
        for (uint32_t k = 0; k < i; k++)
            if (out[k].id == e->id) {
                bad = "a region named twice";
                goto out;
            }
    }
    if (nfds != want_fds) {
        bad = "descriptors do not match the entries";
        goto out;
    }
    *session_p = session;
    *mac_p = mac;
out:
    *n_p = bad == NULL ? n : 0;
    if (why != NULL)
        *why = bad;
    return bad == NULL ? KVS_OK : KVS_ERR_PROTOCOL;
}

kvs_status_t kvs__shm_parse_offer_reply(const uint8_t *rep, size_t len, uint32_t n, int32_t *status,
                                        const char **why)
{
    const char *bad = NULL;
    rd_t r = {.p = rep, .left = len};
    if (n > KVS_SHM_MAX_IDS || len != 8 + 4 * (size_t)n) {
        bad = "wrong length";
    } else if (rd_u32(&r) != KVS_SHM_MAGIC || rd_u32(&r) != n) {
        bad = "wrong magic or count";
    } else {
        for (uint32_t i = 0; i < n; i++)
            status[i] = (int32_t)rd_u32(&r);
    }
    if (why != NULL)
        *why = bad;
    return bad == NULL ? KVS_OK : KVS_ERR_PROTOCOL;
}
