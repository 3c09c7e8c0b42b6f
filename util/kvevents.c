/* SPDX-License-Identifier: Apache-2.0 */
/* kvevents.c - decodes vLLM KV event batches, positional and map encodings, and
 * encodes them, over msgpack-c. */
#include "kvevents_int.h"
#include "ixalloc_int.h"

#include <msgpack.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Fields of each event, in vLLM's declaration order (= positional slot - 1). One table per
 * event type: the slot numbers and the map names cannot disagree. */
#define KVS_EV_STORED_FIELDS(X)                                                                    \
    X(block_hashes)                                                                                \
    X(parent_block_hash)                                                                           \
    X(token_ids)                                                                                   \
    X(block_size)                                                                                  \
    X(lora_id)                                                                                     \
    X(medium)                                                                                      \
    X(lora_name)                                                                                   \
    X(extra_keys)                                                                                  \
    X(group_idx)                                                                                   \
    X(kv_cache_spec_kind)                                                                          \
    X(kv_cache_spec_sliding_window)
#define KVS_EV_REMOVED_FIELDS(X)                                                                   \
    X(block_hashes)                                                                                \
    X(medium)                                                                                      \
    X(group_idx)

#define KVS_EV_ENUM_ST(name) ST_##name,
#define KVS_EV_ENUM_RM(name) RM_##name,
#define KVS_EV_NAME(name)    #name,
enum { KVS_EV_STORED_FIELDS(KVS_EV_ENUM_ST) ST__COUNT };
enum { KVS_EV_REMOVED_FIELDS(KVS_EV_ENUM_RM) RM__COUNT };
static const char *const stored_names[] = {KVS_EV_STORED_FIELDS(KVS_EV_NAME)};
static const char *const removed_names[] = {KVS_EV_REMOVED_FIELDS(KVS_EV_NAME)};

struct kvs__ev_decoder {
    msgpack_unpacked up;
    kvs__ev_t *events;
    size_t events_cap;
    uint64_t *u64; /* every event's hashes, back to back */
    size_t u64_len, u64_cap;
    uint32_t *u32; /* every event's tokens */
    size_t u32_len, u32_cap;
    size_t *offs; /* per event: start in u64, start in u32 (pointers set once all fit) */
    size_t offs_cap;
};

kvs__ev_decoder_t *kvs__ev_decoder_create(void)
{
    kvs__ev_decoder_t *d = kvs__ix_calloc(1, sizeof(*d));
    if (d != NULL)
        msgpack_unpacked_init(&d->up);
    return d;
}

void kvs__ev_decoder_destroy(kvs__ev_decoder_t *d)
{
    if (d == NULL)
        return;
    msgpack_unpacked_destroy(&d->up);
    free(d->events);
    free(d->u64);
    free(d->u32);
    free(d->offs);
    free(d);
}

uint64_t kvs__ev_hash_from_bytes(const uint8_t *b, size_t n)
{
    size_t from = n > 8 ? n - 8 : 0;
    uint64_t v = 0;
    for (size_t i = from; i < n; i++)
        v = (v << 8) | b[i];
    return v;
}

/* msgpack-c allocates a container's element array when it reads the header, before it
 * knows whether the bytes exist: a 5-byte input claiming 2^32 elements would ask for
 * 64 GiB. This walk (headers only) rejects any input whose claimed elements exceed its
 * remaining bytes (each element takes at least one), bounding msgpack-c's allocation to a
 * small multiple of len. It does not otherwise validate; msgpack-c does. */
static bool mp_bounded(const uint8_t *p, size_t len)
{
    size_t off = 0, pending = 1;
    while (pending > 0) {
        if (off >= len)
            return false;
        pending--;
        uint8_t c = p[off++];
        uint64_t n = 0, skip = 0;
        size_t hdr = 0;
        bool map = false, container = false;
        if (c <= 0x7f || c >= 0xe0 || c == 0xc0 || c == 0xc2 || c == 0xc3) {
            continue;
        } else if (c >= 0x80 && c <= 0x8f) {
            n = c & 0x0fu, map = true, container = true;
        } else if (c >= 0x90 && c <= 0x9f) {
            n = c & 0x0fu, container = true;
        } else if (c >= 0xa0 && c <= 0xbf) {
            skip = c & 0x1fu;
        } else {
            switch (c) {
            case 0xc4:
            case 0xd9:
                hdr = 1;
                break; /* bin8, str8 */
            case 0xc5:
            case 0xda:
                hdr = 2;
                break; /* bin16, str16 */
            case 0xc6:
            case 0xdb:
                hdr = 4;
                break; /* bin32, str32 */
            case 0xc7:
                hdr = 1, skip = 1;
                break; /* ext8 (+type) */
            case 0xc8:
                hdr = 2, skip = 1;
                break;
            case 0xc9:
                hdr = 4, skip = 1;
                break;
            case 0xca:
            case 0xce:
            case 0xd2:
                skip = 4;
                break; /* float32, u32, i32 */
            case 0xcb:
            case 0xcf:
            case 0xd3:
                skip = 8;
                break;
            case 0xcc:
            case 0xd0:
                skip = 1;
                break;
            case 0xcd:
            case 0xd1:
                skip = 2;
                break;
            case 0xd4:
                skip = 2;
                break; /* fixext1 (+type) */
            case 0xd5:
                skip = 3;
                break;
            case 0xd6:
                skip = 5;
                break;
            case 0xd7:
                skip = 9;
                break;
            case 0xd8:
                skip = 17;
                break;
            case 0xdc:
                hdr = 2, container = true;
                break; /* array16 */
            case 0xdd:
                hdr = 4, container = true;
                break;
            case 0xde:
                hdr = 2, container = true, map = true;
                break;
            case 0xdf:
                hdr = 4, container = true, map = true;
                break;
            default:
                return false; /* 0xc1: never used */
            }
            if (hdr > 0) {
                if (len - off < hdr)
                    return false;
                for (size_t i = 0; i < hdr; i++)
                    n = (n << 8) | p[off + i];
                off += hdr;
                if (!container)
                    skip += n;
            }
        }
        if (container) {
            uint64_t items = map ? 2 * n : n;
            if (items > len - off || pending + items > len - off)
                return false;
            pending += (size_t)items;
        } else {
            if (skip > len - off)
                return false;
            off += (size_t)skip;
        }
    }
    return true;
}

static int fail(char *why, size_t why_len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail(char *why, size_t why_len, const char *fmt, ...)
{
    if (why != NULL && why_len > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(why, why_len, fmt, ap);
        va_end(ap);
    }
    return -1;
}

static bool str_is(const msgpack_object *o, const char *s)
{
    size_t n = strlen(s);
    return o->type == MSGPACK_OBJECT_STR && o->via.str.size == n &&
           memcmp(o->via.str.ptr, s, n) == 0;
}

static bool is_nil(const msgpack_object *o)
{
    return o == NULL || o->type == MSGPACK_OBJECT_NIL;
}

static bool get_int(const msgpack_object *o, int64_t min, int64_t max, int64_t *out)
{
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
        if (o->via.u64 > (uint64_t)max)
            return false;
        *out = (int64_t)o->via.u64;
    } else if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
        if (o->via.i64 < min)
            return false;
        *out = o->via.i64;
    } else {
        return false;
    }
    return *out >= min;
}

static bool get_hash(const msgpack_object *o, uint64_t *out)
{
    switch (o->type) {
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        *out = o->via.u64;
        return true;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        *out = (uint64_t)o->via.i64;
        return true;
    case MSGPACK_OBJECT_BIN:
        if (o->via.bin.size == 0)
            return false;
        *out = kvs__ev_hash_from_bytes((const uint8_t *)o->via.bin.ptr, o->via.bin.size);
        return true;
    default:
        return false;
    }
}

/* Optional string: absent or nil gives {NULL, 0}. */
static bool get_opt_str(const msgpack_object *o, kvs__ev_str_t *out)
{
    out->ptr = NULL;
    out->len = 0;
    if (is_nil(o))
        return true;
    if (o->type != MSGPACK_OBJECT_STR)
        return false;
    out->ptr = o->via.str.ptr;
    out->len = o->via.str.size;
    return true;
}

/* Grows the array *pp (any element type; pp is the address of its pointer) to hold need. */
static bool grow(void *pp, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return true;
    size_t nc = *cap ? *cap : 64;
    while (nc < need)
        nc *= 2;
    void *v;
    memcpy(&v, pp, sizeof(v));
    void *nv = kvs__ix_realloc(v, nc * elem);
    if (nv == NULL)
        return false;
    memcpy(pp, &nv, sizeof(nv));
    *cap = nc;
    return true;
}

/* Looks up field i of an event: by slot in a positional event (slot 0 is the tag), by
 * name in a map event. NULL when absent. */
static const msgpack_object *field(const msgpack_object *ev, const char *const *names, int i)
{
    if (ev->type == MSGPACK_OBJECT_ARRAY) {
        uint32_t slot = (uint32_t)i + 1;
        return slot < ev->via.array.size ? &ev->via.array.ptr[slot] : NULL;
    }
    for (uint32_t k = 0; k < ev->via.map.size; k++)
        if (str_is(&ev->via.map.ptr[k].key, names[i]))
            return &ev->via.map.ptr[k].val;
    return NULL;
}

static int decode_hashes(kvs__ev_decoder_t *d, const msgpack_object *o, const char *what,
                         size_t *n_p, char *why, size_t wl)
{
    if (o == NULL || o->type != MSGPACK_OBJECT_ARRAY)
        return fail(why, wl, "%s: block_hashes missing or not a list", what);
    uint32_t n = o->via.array.size;
    if (!grow(&d->u64, &d->u64_cap, d->u64_len + n, sizeof(uint64_t)))
        return fail(why, wl, "out of memory");
    for (uint32_t i = 0; i < n; i++)
        if (!get_hash(&o->via.array.ptr[i], &d->u64[d->u64_len + i]))
            return fail(why, wl, "%s: block_hashes[%u] is neither an int nor bytes", what, i);
    d->u64_len += n;
    *n_p = n;
    return 0;
}

static int decode_stored(kvs__ev_decoder_t *d, const msgpack_object *ev, kvs__ev_t *e, char *why,
                         size_t wl)
{
    const char *const *nm = stored_names;
    if (decode_hashes(d, field(ev, nm, ST_block_hashes), "BlockStored", &e->nhashes, why, wl))
        return -1;
    const msgpack_object *o = field(ev, nm, ST_parent_block_hash);
    if (!is_nil(o)) {
        if (!get_hash(o, &e->parent))
            return fail(why, wl, "BlockStored: parent_block_hash is neither an int nor bytes");
        e->has_parent = true;
    }
    o = field(ev, nm, ST_token_ids);
    if (!is_nil(o)) {
        if (o->type != MSGPACK_OBJECT_ARRAY)
            return fail(why, wl, "BlockStored: token_ids is not a list");
        uint32_t n = o->via.array.size;
        if (!grow(&d->u32, &d->u32_cap, d->u32_len + n, sizeof(uint32_t)))
            return fail(why, wl, "out of memory");
        for (uint32_t i = 0; i < n; i++) {
            int64_t t;
            if (!get_int(&o->via.array.ptr[i], 0, UINT32_MAX, &t))
                return fail(why, wl, "BlockStored: token_ids[%u] is not a token id", i);
            d->u32[d->u32_len + i] = (uint32_t)t;
        }
        d->u32_len += n;
        e->ntokens = n;
    }
    int64_t v;
    o = field(ev, nm, ST_block_size);
    if (!is_nil(o)) {
        if (!get_int(o, 0, UINT32_MAX, &v))
            return fail(why, wl, "BlockStored: block_size is not a size");
        e->block_size = (uint32_t)v;
    }
    o = field(ev, nm, ST_lora_id);
    if (!is_nil(o) && !get_int(o, INT64_MIN, INT64_MAX, &v))
        return fail(why, wl, "BlockStored: lora_id is not an int");
    if (!get_opt_str(field(ev, nm, ST_medium), &e->medium))
        return fail(why, wl, "BlockStored: medium is not a string");
    if (!get_opt_str(field(ev, nm, ST_lora_name), &e->lora_name))
        return fail(why, wl, "BlockStored: lora_name is not a string");
    o = field(ev, nm, ST_extra_keys);
    if (!is_nil(o)) {
        /* One entry per block: a tuple (msgpack array) or None. Its contents are what vLLM
         * hashed (LoRA name, cache salt, multimodal hashes); our keys recompute them. */
        if (o->type != MSGPACK_OBJECT_ARRAY)
            return fail(why, wl, "BlockStored: extra_keys is not a list");
        for (uint32_t i = 0; i < o->via.array.size; i++) {
            const msgpack_object *x = &o->via.array.ptr[i];
            if (is_nil(x))
                continue;
            if (x->type != MSGPACK_OBJECT_ARRAY)
                return fail(why, wl, "BlockStored: extra_keys[%u] is neither a tuple nor None", i);
            for (uint32_t k = 0; k < x->via.array.size; k++) {
                const msgpack_object *y = &x->via.array.ptr[k];
                bool is_str = y->type == MSGPACK_OBJECT_STR;
                if (is_str && e->lora_name.ptr != NULL && y->via.str.size == e->lora_name.len &&
                    memcmp(y->via.str.ptr, e->lora_name.ptr, e->lora_name.len) == 0)
                    continue;
                if (is_str && i == 0 && e->salt.ptr == NULL) {
                    e->salt.ptr = y->via.str.ptr;
                    e->salt.len = y->via.str.size;
                    continue;
                }
                e->extra_other = true;
            }
        }
        e->nextra_keys = o->via.array.size;
    }
    o = field(ev, nm, ST_group_idx);
    if (!is_nil(o)) {
        if (!get_int(o, INT64_MIN, INT64_MAX, &e->group_idx))
            return fail(why, wl, "BlockStored: group_idx is not an int");
        e->has_group = true;
    }
    if (!get_opt_str(field(ev, nm, ST_kv_cache_spec_kind), &e->spec_kind))
        return fail(why, wl, "BlockStored: kv_cache_spec_kind is not a string");
    o = field(ev, nm, ST_kv_cache_spec_sliding_window);
    if (!is_nil(o) && !get_int(o, INT64_MIN, INT64_MAX, &v))
        return fail(why, wl, "BlockStored: kv_cache_spec_sliding_window is not an int");
    return 0;
}

static int decode_removed(kvs__ev_decoder_t *d, const msgpack_object *ev, kvs__ev_t *e, char *why,
                          size_t wl)
{
    const char *const *nm = removed_names;
    if (decode_hashes(d, field(ev, nm, RM_block_hashes), "BlockRemoved", &e->nhashes, why, wl))
        return -1;
    if (!get_opt_str(field(ev, nm, RM_medium), &e->medium))
        return fail(why, wl, "BlockRemoved: medium is not a string");
    const msgpack_object *o = field(ev, nm, RM_group_idx);
    if (!is_nil(o)) {
        if (!get_int(o, INT64_MIN, INT64_MAX, &e->group_idx))
            return fail(why, wl, "BlockRemoved: group_idx is not an int");
        e->has_group = true;
    }
    return 0;
}

int kvs__ev_decode(kvs__ev_decoder_t *d, const void *buf, size_t len, kvs__ev_batch_t *batch,
                   size_t *skipped_p, char *why, size_t wl)
{
    size_t skipped = 0;
    if (buf == NULL || len == 0)
        return fail(why, wl, "empty payload");
    if (!mp_bounded(buf, len))
        return fail(why, wl, "not msgpack (truncated, or a length beyond the payload)");
    size_t off = 0;
    msgpack_unpack_return r = msgpack_unpack_next(&d->up, buf, len, &off);
    if (r != MSGPACK_UNPACK_SUCCESS)
        return fail(why, wl, "not msgpack (unpack error %d)", (int)r);
    if (off != len)
        return fail(why, wl, "%zu trailing bytes after the batch", len - off);
    const msgpack_object *b = &d->up.data;
    if (b->type != MSGPACK_OBJECT_ARRAY || b->via.array.size < 2)
        return fail(why, wl, "batch is not [ts, events, dp_rank?]");
    const msgpack_object *ts = &b->via.array.ptr[0], *evs = &b->via.array.ptr[1];
    double tsv;
    if (ts->type == MSGPACK_OBJECT_FLOAT64 || ts->type == MSGPACK_OBJECT_FLOAT32)
        tsv = ts->via.f64;
    else if (ts->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
        tsv = (double)ts->via.u64;
    else if (ts->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
        tsv = (double)ts->via.i64;
    else
        return fail(why, wl, "batch ts is not a number");
    if (evs->type != MSGPACK_OBJECT_ARRAY)
        return fail(why, wl, "batch events is not a list");
    bool has_rank = false;
    int64_t rank = 0;
    if (b->via.array.size >= 3 && !is_nil(&b->via.array.ptr[2])) {
        if (!get_int(&b->via.array.ptr[2], INT64_MIN, INT64_MAX, &rank))
            return fail(why, wl, "batch data_parallel_rank is not an int");
        has_rank = true;
    }
    uint32_t n = evs->via.array.size;
    if (!grow(&d->events, &d->events_cap, n ? n : 1, sizeof(kvs__ev_t)) ||
        !grow(&d->offs, &d->offs_cap, 2 * (size_t)(n ? n : 1), sizeof(size_t)))
        return fail(why, wl, "out of memory");
    d->u64_len = d->u32_len = 0;
    size_t ne = 0;
    for (uint32_t i = 0; i < n; i++) {
        const msgpack_object *ev = &evs->via.array.ptr[i];
        const msgpack_object *tag = NULL;
        if (ev->type == MSGPACK_OBJECT_ARRAY && ev->via.array.size >= 1) {
            tag = &ev->via.array.ptr[0];
        } else if (ev->type == MSGPACK_OBJECT_MAP) {
            for (uint32_t k = 0; k < ev->via.map.size; k++)
                if (str_is(&ev->via.map.ptr[k].key, "type"))
                    tag = &ev->via.map.ptr[k].val;
        }
        if (tag == NULL || tag->type != MSGPACK_OBJECT_STR)
            return fail(why, wl, "event %u: neither [tag, ...] nor {\"type\": tag, ...}", i);
        kvs__ev_t *e = &d->events[ne];
        memset(e, 0, sizeof(*e));
        d->offs[2 * ne] = d->u64_len;
        d->offs[2 * ne + 1] = d->u32_len;
        int rc;
        if (str_is(tag, "BlockStored")) {
            e->type = KVS__EV_STORED;
            rc = decode_stored(d, ev, e, why, wl);
        } else if (str_is(tag, "BlockRemoved")) {
            e->type = KVS__EV_REMOVED;
            rc = decode_removed(d, ev, e, why, wl);
        } else if (str_is(tag, "AllBlocksCleared")) {
            e->type = KVS__EV_CLEARED;
            rc = 0;
        } else {
            skipped++; /* a newer vLLM's event type: not ours to guess at */
            continue;
        }
        if (rc != 0)
            return -1;
        ne++;
    }
    for (size_t i = 0; i < ne; i++) {
        d->events[i].hashes = d->events[i].nhashes ? d->u64 + d->offs[2 * i] : NULL;
        d->events[i].tokens = d->events[i].ntokens ? d->u32 + d->offs[2 * i + 1] : NULL;
    }
    batch->ts = tsv;
    batch->has_dp_rank = has_rank;
    batch->dp_rank = rank;
    batch->events = d->events;
    batch->nevents = ne;
    if (skipped_p != NULL)
        *skipped_p = skipped;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Encoding                                                                   */
/* ------------------------------------------------------------------------ */

static int pack_str(msgpack_packer *pk, const char *s)
{
    size_t n = strlen(s);
    return msgpack_pack_str(pk, n) || msgpack_pack_str_body(pk, s, n);
}

static int pack_hashes(msgpack_packer *pk, const kvs__ev_out_t *e)
{
    int rc = pack_str(pk, "block_hashes") || msgpack_pack_array(pk, e->nhashes);
    for (size_t i = 0; rc == 0 && i < e->nhashes; i++)
        rc = msgpack_pack_uint64(pk, e->hashes[i]);
    return rc;
}

static int pack_medium(msgpack_packer *pk, const kvs__ev_out_t *e)
{
    return pack_str(pk, "medium") || (e->medium ? pack_str(pk, e->medium) : msgpack_pack_nil(pk));
}

int kvs__ev_encode(const kvs__ev_out_t *evs, size_t n, double ts, char **buf, size_t *len)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    /* Each pack returns non-zero only when the buffer could not grow. */
    int rc =
        msgpack_pack_array(&pk, 3) || msgpack_pack_double(&pk, ts) || msgpack_pack_array(&pk, n);
    for (size_t i = 0; rc == 0 && i < n; i++) {
        const kvs__ev_out_t *e = &evs[i];
        switch (e->type) {
        case KVS__EV_STORED:
            rc = msgpack_pack_map(&pk, 8) || pack_str(&pk, "type") ||
                 pack_str(&pk, "BlockStored") || pack_hashes(&pk, e) ||
                 pack_str(&pk, "parent_block_hash") || msgpack_pack_nil(&pk) ||
                 pack_str(&pk, "token_ids") || msgpack_pack_array(&pk, 0) ||
                 pack_str(&pk, "block_size") || msgpack_pack_uint32(&pk, 0) ||
                 pack_str(&pk, "lora_id") || msgpack_pack_nil(&pk) || pack_medium(&pk, e) ||
                 pack_str(&pk, "lora_name") || msgpack_pack_nil(&pk);
            break;
        case KVS__EV_REMOVED:
            rc = msgpack_pack_map(&pk, 3) || pack_str(&pk, "type") ||
                 pack_str(&pk, "BlockRemoved") || pack_hashes(&pk, e) || pack_medium(&pk, e);
            break;
        case KVS__EV_CLEARED:
            rc = msgpack_pack_map(&pk, 1) || pack_str(&pk, "type") ||
                 pack_str(&pk, "AllBlocksCleared");
            break;
        }
    }
    rc = rc || msgpack_pack_nil(&pk);
    if (rc != 0) {
        msgpack_sbuffer_destroy(&sb);
        return -1;
    }
    *len = sb.size;
    *buf = msgpack_sbuffer_release(&sb);
    return 0;
}
