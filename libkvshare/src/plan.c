/* SPDX-License-Identifier: Apache-2.0 */
/* plan.c - views of a model's KV and the pure planner of copies between two views. */
#include "plan_int.h"

#include <stdlib.h>
#include <string.h>

/* Bounds on views from the network: generous, but they keep every offset
 * of a block within 32 bits and every plan's size sane. */
#define MAX_LAYERS   4096u
#define MAX_HEADS    4096u
#define MAX_HEAD_DIM 65536u
#define MAX_TOKENS   (1u << 16)
#define MAX_TP       65536u

static uint32_t elem_of(uint32_t dtype)
{
    return dtype == KVS_DTYPE_FP16 || dtype == KVS_DTYPE_BF16 ? 2 : dtype == KVS_DTYPE_FP32 ? 4 : 1;
}

uint64_t kvs__view_plane_bytes(const kvs__view_t *v)
{
    return (uint64_t)v->block_tokens * v->heads * v->head_dim * v->elem;
}

uint64_t kvs__view_block_bytes(const kvs__view_t *v)
{
    return 2u * (uint64_t)v->num_layers * kvs__view_plane_bytes(v);
}

bool kvs__view_valid(const kvs__view_t *v)
{
    if (v->dtype > KVS_DTYPE_INT8 || v->elem != elem_of(v->dtype) || v->num_layers == 0 ||
        v->num_layers > MAX_LAYERS || v->heads == 0 || v->heads > MAX_HEADS ||
        v->total_heads == 0 || v->total_heads > MAX_HEADS * MAX_TP || v->head_dim == 0 ||
        v->head_dim > MAX_HEAD_DIM || v->tp_size == 0 || v->tp_size > MAX_TP ||
        v->tp_rank >= v->tp_size || v->block_tokens == 0 || v->block_tokens > MAX_TOKENS ||
        v->key_tokens == 0 || v->block_tokens % v->key_tokens != 0 || v->kv_layout > KVS_KV_HND ||
        v->kv_order > KVS_KV_ORDER_BLOCK_OUTER)
        return false;
    if (v->tp_size <= v->total_heads) {
        if (v->total_heads % v->tp_size != 0 || v->heads != v->total_heads / v->tp_size)
            return false;
    } else if (v->tp_size % v->total_heads != 0 || v->heads != 1) {
        return false;
    }
    return kvs__view_block_bytes(v) <= UINT32_MAX;
}

bool kvs__view_same(const kvs__view_t *a, const kvs__view_t *b)
{
    return a->model == b->model && a->dtype == b->dtype && a->num_layers == b->num_layers &&
           a->total_heads == b->total_heads && a->heads == b->heads && a->head_dim == b->head_dim &&
           a->tp_rank == b->tp_rank && a->tp_size == b->tp_size &&
           a->block_tokens == b->block_tokens && a->key_tokens == b->key_tokens &&
           a->kv_layout == b->kv_layout && a->kv_order == b->kv_order;
}

void kvs__view_heads(const kvs__view_t *v, uint32_t *first_p, uint32_t *count_p)
{
    if (v->tp_size <= v->total_heads) {
        uint32_t per = v->total_heads / v->tp_size;
        *first_p = v->tp_rank * per;
        *count_p = per;
    } else {
        *first_p = v->tp_rank / (v->tp_size / v->total_heads);
        *count_p = 1;
    }
}

bool kvs__view_compatible(const kvs__view_t *src, const kvs__view_t *dst, char *why, size_t why_len)
{
    const char *r = NULL;
    if (src->model != dst->model || src->dtype != dst->dtype ||
        src->num_layers != dst->num_layers || src->total_heads != dst->total_heads ||
        src->head_dim != dst->head_dim)
        r = "another model (model id, dtype, layers, KV heads or head dim differ)";
    else if (src->key_tokens != dst->key_tokens)
        r = "keys of another block size";
    if (r != NULL && why != NULL && why_len > 0) {
        size_t n = strlen(r);
        n = n < why_len - 1 ? n : why_len - 1;
        memcpy(why, r, n);
        why[n] = '\0';
    }
    return r == NULL;
}

void kvs__view_overlap(const kvs__view_t *src, const kvs__view_t *dst, uint32_t *first_p,
                       uint32_t *count_p)
{
    uint32_t sf, sc, df, dc;
    kvs__view_heads(src, &sf, &sc);
    kvs__view_heads(dst, &df, &dc);
    uint32_t lo = sf > df ? sf : df;
    uint32_t hi = sf + sc < df + dc ? sf + sc : df + dc;
    *first_p = hi > lo ? lo - df : 0;
    *count_p = hi > lo ? hi - lo : 0;
}

static void put32(uint8_t **p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        (*p)[i] = (uint8_t)(v >> (8 * i));
    *p += 4;
}

static uint32_t get32(const uint8_t **p)
{
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--)
        v = (v << 8) | (*p)[i];
    *p += 4;
    return v;
}

void kvs__view_encode(const kvs__view_t *v, uint8_t out[KVS_VIEW_WIRE_LEN])
{
    uint8_t *p = out;
    put32(&p, (uint32_t)v->model);
    put32(&p, (uint32_t)(v->model >> 32));
    put32(&p, v->dtype);
    put32(&p, v->elem);
    put32(&p, v->num_layers);
    put32(&p, v->total_heads);
    put32(&p, v->heads);
    put32(&p, v->head_dim);
    put32(&p, v->tp_rank);
    put32(&p, v->tp_size);
    put32(&p, v->block_tokens);
    put32(&p, v->key_tokens);
    put32(&p, v->kv_layout);
    put32(&p, v->kv_order);
}

void kvs__view_decode(const uint8_t in[KVS_VIEW_WIRE_LEN], kvs__view_t *v)
{
    const uint8_t *p = in;
    uint64_t lo = get32(&p);
    v->model = lo | (uint64_t)get32(&p) << 32;
    v->dtype = get32(&p);
    v->elem = get32(&p);
    v->num_layers = get32(&p);
    v->total_heads = get32(&p);
    v->heads = get32(&p);
    v->head_dim = get32(&p);
    v->tp_rank = get32(&p);
    v->tp_size = get32(&p);
    v->block_tokens = get32(&p);
    v->key_tokens = get32(&p);
    v->kv_layout = get32(&p);
    v->kv_order = get32(&p);
}

/* --- the planner ---------------------------------------------------------- */
void kvs__plan_init(kvs__plan_t *p)
{
    memset(p, 0, sizeof(*p));
}

void kvs__plan_free(kvs__plan_t *p)
{
    if (p == NULL)
        return;
    kvs__free(p->copies);
    kvs__plan_init(p);
}

/* Byte offset of (token, head) within a plane of @v (heads local to the rank). */
static uint64_t in_plane(const kvs__view_t *v, uint32_t t, uint32_t h)
{
    uint64_t row = (uint64_t)v->head_dim * v->elem;
    if (v->kv_layout == KVS_KV_NHD)
        return ((uint64_t)t * v->heads + h) * row;
    return ((uint64_t)h * v->block_tokens + t) * row;
}

/* Appends one run, merged into the last when both sides continue it and it
 * is of the same plane (copies from @plane_first on). */
static kvs_status_t emit(kvs__plan_t *p, size_t plane_first, uint64_t src, uint64_t dst,
                         uint64_t len)
{
    p->bytes += len;
    if (p->n > plane_first) {
        kvs__copy_t *c = &p->copies[p->n - 1];
        if (c->src + c->len == src && c->dst + c->len == dst) {
            c->len += len;
            return KVS_OK;
        }
    }
    if (p->n == p->cap) {
        size_t cap = p->cap ? 2 * p->cap : 64;
        kvs__copy_t *n = kvs__realloc(p->copies, cap * sizeof(*n));
        if (n == NULL)
            return KVS_ERR_NO_MEMORY;
        p->copies = n;
        p->cap = cap;
    }
    p->copies[p->n++] = (kvs__copy_t){.src = src, .dst = dst, .len = len};
    return KVS_OK;
}

kvs_status_t kvs__plan_key(const kvs__view_t *src, const kvs__view_t *dst, uint64_t key_index,
                           kvs__plan_t *p)
{
    if (!kvs__view_compatible(src, dst, NULL, 0))
        return KVS_ERR_INVALID_PARAM;
    uint32_t kt = dst->key_tokens;
    uint32_t s_tok = (uint32_t)((key_index % (src->block_tokens / kt)) * kt);
    uint32_t d_tok = (uint32_t)((key_index % (dst->block_tokens / kt)) * kt);
    uint32_t sf, sc, df, dc;
    kvs__view_heads(src, &sf, &sc);
    kvs__view_heads(dst, &df, &dc);
    uint32_t lo = sf > df ? sf : df;
    uint32_t hi = sf + sc < df + dc ? sf + sc : df + dc;
    if (hi <= lo)
        return KVS_OK; /* the holder has none of the reader's heads */
    uint64_t row = (uint64_t)dst->head_dim * dst->elem;
    uint64_t sp = kvs__view_plane_bytes(src), dp = kvs__view_plane_bytes(dst);
    bool nhd = dst->kv_layout == KVS_KV_NHD;
    uint32_t outer = nhd ? kt : hi - lo, inner = nhd ? hi - lo : kt;
    for (uint32_t plane = 0; plane < 2 * src->num_layers; plane++) {
        size_t first = p->n;
        for (uint32_t a = 0; a < outer; a++) {
            for (uint32_t b = 0; b < inner; b++) {
                uint32_t t = nhd ? a : b, h = (nhd ? b : a) + lo;
                uint64_t so = plane * sp + in_plane(src, s_tok + t, h - sf);
                uint64_t dof = plane * dp + in_plane(dst, d_tok + t, h - df);
                kvs_status_t st = emit(p, first, so, dof, row);
                if (st != KVS_OK)
                    return st;
            }
        }
    }
    return KVS_OK;
}

/* --- a fetch's plan ---------------------------------------------------------- */
static int by_src(const void *a, const void *b)
{
    const kvs__copy_t *x = a, *y = b;
    return x->src < y->src ? -1 : x->src > y->src;
}

static void xset_free(kvs__xset_t *s)
{
    kvs__free(s->direct);
    kvs__free(s->ranges);
    kvs__free(s->at);
    kvs__free(s->copies);
}

void kvs__xfer_free(kvs__xfer_t *x)
{
    if (x == NULL)
        return;
    for (size_t i = 0; x->sets != NULL && i < x->nsets; i++)
        xset_free(&x->sets[i]);
    kvs__free(x->sets);
    kvs__free(x->set_of);
    kvs__free(x->stage_at);
    kvs__free(x);
}

/* Index of the range holding holder byte @off, or nranges. */
static size_t range_of(const kvs__xset_t *s, uint64_t off)
{
    size_t lo = 0, hi = s->nranges;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if ((uint64_t)s->ranges[mid].off + s->ranges[mid].len <= off)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < s->nranges && s->ranges[lo].off <= off ? lo : s->nranges;
}

/* Plans one class: the copies of key @key_index, the holder ranges they
 * read (sorted by offset, merged within a plane) and the copies rebased
 * onto staging. */
static kvs_status_t xset_build(const kvs__view_t *src, const kvs__view_t *dst, uint64_t key_index,
                               uint64_t direct_min, kvs__xset_t *s)
{
    kvs__plan_t p;
    kvs__plan_init(&p);
    kvs_status_t st = kvs__plan_key(src, dst, key_index, &p);
    kvs__copy_t *sorted = NULL;
    if (st != KVS_OK)
        goto out;
    st = KVS_ERR_NO_MEMORY;
    /* The long runs land in place; the rest (kept in order) go through staging. */
    s->direct = kvs__malloc((p.n ? p.n : 1) * sizeof(*s->direct));
    if (s->direct == NULL)
        goto out;
    size_t n = 0;
    for (size_t i = 0; i < p.n; i++) {
        if (p.copies[i].len >= direct_min) {
            s->direct[s->ndirect++] = p.copies[i];
            s->direct_bytes += p.copies[i].len;
        } else {
            p.copies[n++] = p.copies[i];
        }
    }
    sorted = kvs__malloc((n ? n : 1) * sizeof(*sorted));
    s->ranges = kvs__malloc((n ? n : 1) * sizeof(*s->ranges));
    s->at = kvs__malloc((n ? n : 1) * sizeof(*s->at));
    if (sorted == NULL || s->ranges == NULL || s->at == NULL)
        goto out;
    if (n > 0)
        memcpy(sorted, p.copies, n * sizeof(*sorted));
    qsort(sorted, n, sizeof(*sorted), by_src);
    uint64_t sp = kvs__view_plane_bytes(src);
    for (size_t i = 0; i < n; i++) {
        kvs__range_t *last = s->nranges ? &s->ranges[s->nranges - 1] : NULL;
        if (last != NULL && (uint64_t)last->off + last->len == sorted[i].src &&
            last->off / sp == sorted[i].src / sp) {
            last->len += (uint32_t)sorted[i].len;
        } else {
            s->ranges[s->nranges++] =
                (kvs__range_t){.off = (uint32_t)sorted[i].src, .len = (uint32_t)sorted[i].len};
        }
    }
    for (size_t r = 0; r < s->nranges; r++) {
        s->at[r] = s->bytes;
        s->bytes += s->ranges[r].len;
    }
    for (size_t i = 0; i < n; i++) {
        size_t r = range_of(s, p.copies[i].src);
        p.copies[i].src = s->at[r] + (p.copies[i].src - s->ranges[r].off);
    }
    s->copies = p.copies;
    s->ncopies = n;
    p.copies = NULL;
    st = KVS_OK;
out:
    kvs__free(sorted);
    kvs__plan_free(&p);
    return st;
}

static uint64_t gcd64(uint64_t a, uint64_t b)
{
    while (b != 0) {
        uint64_t t = a % b;
        a = b;
        b = t;
    }
    return a;
}

kvs_status_t kvs__xfer_build(const kvs__view_t *src, const kvs__view_t *dst, size_t first,
                             size_t count, uint64_t direct_min, kvs__xfer_t **x_p)
{
    if (!kvs__view_compatible(src, dst, NULL, 0))
        return KVS_ERR_INVALID_PARAM;
    uint64_t ns = src->block_tokens / src->key_tokens, nd = dst->block_tokens / dst->key_tokens;
    uint64_t classes = ns / gcd64(ns, nd) * nd;
    if (classes > KVS_PLAN_MAX_SETS)
        return KVS_ERR_UNSUPPORTED;
    kvs__xfer_t *x = kvs__calloc(1, sizeof(*x));
    if (x == NULL)
        return KVS_ERR_NO_MEMORY;
    kvs_status_t st = KVS_ERR_NO_MEMORY;
    x->count = count;
    x->sets = kvs__calloc((size_t)classes, sizeof(*x->sets));
    x->set_of = kvs__malloc((count ? count : 1) * sizeof(*x->set_of));
    x->stage_at = kvs__malloc((count ? count : 1) * sizeof(*x->stage_at));
    if (x->sets == NULL || x->set_of == NULL || x->stage_at == NULL)
        goto fail;
    x->nsets = (size_t)classes;
    for (size_t c = 0; c < classes; c++) {
        st = xset_build(src, dst, c, direct_min, &x->sets[c]);
        if (st != KVS_OK)
            goto fail;
    }
    for (size_t i = 0; i < count; i++) {
        x->set_of[i] = (uint16_t)((first + i) % classes);
        x->stage_at[i] = x->stage_bytes;
        x->stage_bytes += x->sets[x->set_of[i]].bytes;
        x->direct_bytes += x->sets[x->set_of[i]].direct_bytes;
    }
    *x_p = x;
    return KVS_OK;
fail:
    kvs__xfer_free(x);
    return st;
}

uint64_t kvs__xfer_stage_of(const kvs__xfer_t *x, size_t i, uint64_t off, uint64_t len,
                            size_t *range_p)
{
    if (i >= x->count)
        return UINT64_MAX;
    const kvs__xset_t *s = &x->sets[x->set_of[i]];
    size_t r = range_of(s, off);
    if (r == s->nranges || s->ranges[r].off != off || s->ranges[r].len != len)
        return UINT64_MAX;
    if (range_p != NULL)
        *range_p = r;
    return x->stage_at[i] + s->at[r];
}

uint8_t *kvs__xfer_dst_at(const kvs_segment_t *segs, size_t nsegs, uint32_t block_id, uint64_t off,
                          uint64_t len)
{
    uint64_t base = 0;
    for (size_t k = 0; k < nsegs; k++) {
        if (off < base + segs[k].block_bytes)
            return off + len <= base + segs[k].block_bytes
                       ? (uint8_t *)segs[k].base + (size_t)block_id * segs[k].block_stride +
                             (off - base)
                       : NULL;
        base += segs[k].block_bytes;
    }
    return NULL;
}

kvs_status_t kvs__xfer_apply(const kvs__xfer_t *x, size_t i, const uint8_t *staging,
                             const kvs_segment_t *segs, size_t nsegs, uint32_t block_id)
{
    const kvs__xset_t *s = &x->sets[x->set_of[i]];
    const uint8_t *from = staging + x->stage_at[i];
    size_t seg = 0;
    uint64_t seg_off = 0; /* offset of segment seg within the block */
    for (size_t k = 0; k < s->ncopies; k++) {
        const kvs__copy_t *c = &s->copies[k];
        /* Copies ascend in the reader's block, so the segment only moves on. */
        while (seg < nsegs && c->dst >= seg_off + segs[seg].block_bytes)
            seg_off += segs[seg++].block_bytes;
        if (seg == nsegs || c->dst < seg_off || c->dst + c->len > seg_off + segs[seg].block_bytes ||
            c->src + c->len > s->bytes)
            return KVS_ERR_LAYOUT_MISMATCH;
        uint8_t *to = (uint8_t *)segs[seg].base + (size_t)block_id * segs[seg].block_stride +
                      (c->dst - seg_off);
        memcpy(to, from + c->src, c->len);
    }
    return KVS_OK;
}
