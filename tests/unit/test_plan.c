/* SPDX-License-Identifier: Apache-2.0 */
/* test_plan.c - the planner: every (prefill TP, decode TP) pair, GQA replication, NHD<->HND and
 * block sizes 16<->32, applied to memory whose every element encodes where it belongs. */
#include "kvs_test.h"
#include "plan_int.h"

#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#define LAYERS   2u
#define HEAD_DIM 4u
#define KT       16u /* tokens per key */
#define NKEYS    4u  /* the prompt: 64 tokens */

/* The value of one fp32 element: never 0, unique per (layer, kv, token, head, dim). */
static uint32_t val(uint32_t layer, uint32_t kv, uint32_t tok, uint32_t head, uint32_t dim)
{
    return ((((layer * 2 + kv) * 1024 + tok) * 64 + head) * 64 + dim) + 1;
}

static kvs_layout_t lay(uint32_t total, uint32_t tp, uint32_t rank, kvs_kv_layout_t kl,
                        kvs_kv_order_t ko, uint32_t bt)
{
    kvs_layout_t l = {
        .field_mask = KVS_LAYOUT_FIELD_TOTAL_KV_HEADS | KVS_LAYOUT_FIELD_KEY_TOKENS,
        .model_id = "test/model",
        .dtype = KVS_DTYPE_FP32,
        .block_tokens = bt,
        .num_layers = LAYERS,
        .num_kv_heads = tp <= total ? total / tp : 1,
        .head_dim = HEAD_DIM,
        .tp_rank = rank,
        .tp_size = tp,
        .kv_layout = kl,
        .kv_order = ko,
        .total_kv_heads = total,
        .key_tokens = KT,
    };
    return l;
}

static kvs__view_t view(const kvs_layout_t *l)
{
    kvs__view_t v;
    cr_assert_eq(kvs__view_from_layout(l, &v), KVS_OK);
    return v;
}

static size_t elem_index(const kvs__view_t *v, uint32_t plane, uint32_t t, uint32_t h, uint32_t d)
{
    size_t in = v->kv_layout == KVS_KV_NHD ? ((size_t)t * v->heads + h) * v->head_dim + d
                                           : ((size_t)h * v->block_tokens + t) * v->head_dim + d;
    return (size_t)plane * v->block_tokens * v->heads * v->head_dim + in;
}

/* The holder's blocks for the prompt: block b holds tokens [b*bt, (b+1)*bt). */
static uint32_t *holder_mem(const kvs__view_t *v, size_t *nblocks_p)
{
    size_t nblocks = (NKEYS * KT + v->block_tokens - 1) / v->block_tokens;
    size_t per = kvs__view_block_bytes(v) / 4;
    uint32_t *m = calloc(nblocks * per, 4);
    cr_assert_not_null(m);
    uint32_t hf, hc;
    kvs__view_heads(v, &hf, &hc);
    for (size_t b = 0; b < nblocks; b++)
        for (uint32_t pl = 0; pl < 2 * LAYERS; pl++)
            for (uint32_t t = 0; t < v->block_tokens; t++)
                for (uint32_t h = 0; h < hc; h++)
                    for (uint32_t d = 0; d < HEAD_DIM; d++)
                        m[b * per + elem_index(v, pl, t, h, d)] =
                            val(pl / 2, pl % 2, (uint32_t)b * v->block_tokens + t, hf + h, d);
    *nblocks_p = nblocks;
    return m;
}

/* Copies this long or longer land in place (as on the GET path); the rest
 * through staging. UINT64_MAX: all through staging (the AM path). */
static uint64_t direct_min = UINT64_MAX;

/* What a fetch does, without a transport: the holder ranges of each key's
 * block go into staging, then the copies permute staging into the reader's
 * block; the direct runs go straight across. Returns the bytes brought over. */
static uint64_t fetch(const kvs__view_t *src, const uint32_t *hmem, const kvs__view_t *dst,
                      uint32_t *rmem)
{
    kvs__xfer_t *x = NULL;
    cr_assert_eq(kvs__xfer_build(src, dst, 0, NKEYS, direct_min, &x), KVS_OK);
    uint8_t *staging = malloc(x->stage_bytes ? x->stage_bytes : 1);
    cr_assert_not_null(staging);
    uint64_t sblock = kvs__view_block_bytes(src), dblock = kvs__view_block_bytes(dst);
    uint64_t sp = kvs__view_plane_bytes(src);
    for (size_t i = 0; i < NKEYS; i++) {
        const kvs__xset_t *s = &x->sets[x->set_of[i]];
        size_t hb = i * KT / src->block_tokens;
        for (size_t r = 0; r < s->nranges; r++) {
            const kvs__range_t *rg = &s->ranges[r];
            cr_assert_leq((uint64_t)rg->off + rg->len, sblock);
            cr_assert_eq(rg->off / sp, (rg->off + rg->len - 1) / sp, "a range crosses planes");
            if (r > 0)
                cr_assert_leq((uint64_t)s->ranges[r - 1].off + s->ranges[r - 1].len, rg->off,
                              "ranges overlap or are out of order");
            size_t r2 = 99;
            cr_assert_eq(kvs__xfer_stage_of(x, i, rg->off, rg->len, &r2),
                         x->stage_at[i] + s->at[r]);
            cr_assert_eq(r2, r);
            cr_assert_eq(kvs__xfer_stage_of(x, i, rg->off, rg->len + 1, NULL), UINT64_MAX);
            memcpy(staging + x->stage_at[i] + s->at[r],
                   (const uint8_t *)hmem + hb * sblock + rg->off, rg->len);
        }
        size_t rb = i * KT / dst->block_tokens;
        for (size_t k = 0; k < s->ndirect; k++) {
            const kvs__copy_t *c = &s->direct[k];
            cr_assert_geq(c->len, direct_min);
            cr_assert_leq(c->src + c->len, sblock);
            cr_assert_leq(c->dst + c->len, dblock);
            cr_assert_eq(c->src / sp, (c->src + c->len - 1) / sp, "a direct run crosses planes");
            memcpy((uint8_t *)rmem + rb * dblock + c->dst,
                   (const uint8_t *)hmem + hb * sblock + c->src, c->len);
        }
        for (size_t k = 0; k < s->ncopies; k++) {
            const kvs__copy_t *c = &s->copies[k];
            cr_assert_leq(c->src + c->len, s->bytes);
            cr_assert_leq(c->dst + c->len, dblock);
            memcpy((uint8_t *)rmem + rb * dblock + c->dst, staging + x->stage_at[i] + c->src,
                   c->len);
        }
    }
    uint64_t moved = x->stage_bytes + x->direct_bytes;
    free(staging);
    kvs__xfer_free(x);
    return moved;
}

/* A decode rank at @dst (TP dtp, rank drank) fetches the prompt from the
 * holders kvs_layout_source_ranks() names; every element of its blocks must
 * be the one it should hold. Returns the bytes it brought over. */
static uint64_t decode_rank(uint32_t total, uint32_t ptp, kvs_kv_layout_t pl, kvs_kv_order_t po,
                            uint32_t pbt, uint32_t dtp, uint32_t drank, kvs_kv_layout_t dl,
                            kvs_kv_order_t dor, uint32_t dbt)
{
    kvs_layout_t rl = lay(total, dtp, drank, dl, dor, dbt);
    kvs__view_t dv = view(&rl);
    size_t dblocks = (NKEYS * KT + dbt - 1) / dbt;
    size_t per = kvs__view_block_bytes(&dv) / 4;
    uint32_t *rmem = calloc(dblocks * per, 4);
    cr_assert_not_null(rmem);
    uint32_t ranks[16];
    size_t nranks = 0;
    cr_assert_eq(kvs_layout_source_ranks(&rl, ptp, ranks, 16, &nranks), KVS_OK);
    uint64_t moved = 0;
    uint32_t covered = 0;
    for (size_t k = 0; k < nranks; k++) {
        kvs_layout_t hl = lay(total, ptp, ranks[k], pl, po, pbt);
        kvs__view_t hv = view(&hl);
        uint32_t of, oc;
        kvs__view_overlap(&hv, &dv, &of, &oc);
        cr_assert_eq(of, covered, "holder ranks must cover the heads in order, once");
        covered += oc;
        size_t hblocks;
        uint32_t *hmem = holder_mem(&hv, &hblocks);
        moved += fetch(&hv, hmem, &dv, rmem);
        free(hmem);
    }
    cr_assert_eq(covered, dv.heads);
    uint32_t hf, hc;
    kvs__view_heads(&dv, &hf, &hc);
    for (size_t b = 0; b < dblocks; b++)
        for (uint32_t p = 0; p < 2 * LAYERS; p++)
            for (uint32_t t = 0; t < dbt; t++)
                for (uint32_t h = 0; h < hc; h++)
                    for (uint32_t d = 0; d < HEAD_DIM; d++) {
                        uint32_t tok = (uint32_t)b * dbt + t;
                        uint32_t want = tok < NKEYS * KT ? val(p / 2, p % 2, tok, hf + h, d) : 0;
                        uint32_t got = rmem[b * per + elem_index(&dv, p, t, h, d)];
                        cr_assert_eq(got, want,
                                     "P_TP %u D_TP %u rank %u: block %zu plane %u token %u head %u "
                                     "dim %u is %u, want %u",
                                     ptp, dtp, drank, b, p, t, h, d, got, want);
                    }
    /* No rank fetches a head it does not own, nor one twice. */
    uint64_t own = (uint64_t)NKEYS * KT * hc * HEAD_DIM * 4 * 2 * LAYERS;
    cr_assert_eq(moved, own, "moved %llu bytes, owns %llu", (unsigned long long)moved,
                 (unsigned long long)own);
    free(rmem);
    return moved;
}

static const uint64_t PROMPT_KV = (uint64_t)NKEYS * KT * 4 * HEAD_DIM * 4 * 2 * LAYERS;

static void every_tp_pair(void)
{
    static const uint32_t tps[] = {1, 2, 4};
    static const uint32_t bts[] = {16, 32};
    for (int a = 0; a < 3; a++)
        for (int b = 0; b < 3; b++)
            for (int kl = 0; kl < 4; kl++)
                for (int bs = 0; bs < 4; bs++) {
                    kvs_kv_layout_t pl = (kvs_kv_layout_t)(kl & 1), dl = (kvs_kv_layout_t)(kl >> 1);
                    uint32_t pbt = bts[bs & 1], dbt = bts[bs >> 1];
                    uint64_t total = 0;
                    for (uint32_t r = 0; r < tps[b]; r++)
                        total += decode_rank(4, tps[a], pl, KVS_KV_ORDER_KV_OUTER, pbt, tps[b], r,
                                             dl, KVS_KV_ORDER_BLOCK_OUTER, dbt);
                    cr_assert_eq(total, PROMPT_KV,
                                 "the decode ranks together read the prompt once");
                }
}

Test(plan, every_tp_pair_both_layouts_and_block_sizes)
{
    every_tp_pair(); /* all through staging (AM path) */
    direct_min = 64; /* runs of 4 rows or more in place (GET path, scaled down) */
    every_tp_pair();
    direct_min = 1; /* everything in place */
    every_tp_pair();
    direct_min = UINT64_MAX;
}

Test(plan, gqa_replicated_heads)
{
    /* 2 KV heads, TP 4: ranks 0,1 hold head 0 and ranks 2,3 head 1. */
    kvs_layout_t l = lay(2, 4, 3, KVS_KV_HND, KVS_KV_ORDER_KV_OUTER, 16);
    kvs__view_t v = view(&l);
    uint32_t f, c;
    kvs__view_heads(&v, &f, &c);
    cr_assert(f == 1 && c == 1);
    /* Holders at TP 4, reader at TP 1: each head is read once, from the lowest rank with it. */
    kvs_layout_t r1 = lay(2, 1, 0, KVS_KV_NHD, KVS_KV_ORDER_BLOCK_OUTER, 16);
    uint32_t ranks[4];
    size_t n = 0;
    cr_assert_eq(kvs_layout_source_ranks(&r1, 4, ranks, 4, &n), KVS_OK);
    cr_assert(n == 2 && ranks[0] == 0 && ranks[1] == 2);
    uint64_t moved = decode_rank(2, 4, KVS_KV_HND, KVS_KV_ORDER_KV_OUTER, 16, 1, 0, KVS_KV_NHD,
                                 KVS_KV_ORDER_BLOCK_OUTER, 32);
    cr_assert_eq(moved, PROMPT_KV / 2); /* 2 heads of the 4-head model above */
    /* Holders at TP 1, readers at TP 4: each reader reads its one head; the
     * replicas (ranks 0 and 1) each need their own copy. */
    for (uint32_t r = 0; r < 4; r++)
        decode_rank(2, 1, KVS_KV_NHD, KVS_KV_ORDER_BLOCK_OUTER, 32, 4, r, KVS_KV_HND,
                    KVS_KV_ORDER_KV_OUTER, 16);
    /* Both at TP 4 but another block size: still one head each. */
    for (uint32_t r = 0; r < 4; r++)
        decode_rank(2, 4, KVS_KV_NHD, KVS_KV_ORDER_BLOCK_OUTER, 32, 4, r, KVS_KV_NHD,
                    KVS_KV_ORDER_BLOCK_OUTER, 16);
    /* num_kv_heads must be 1 when replicated, and TP must split the heads. */
    l.num_kv_heads = 2;
    cr_assert_eq(kvs__view_from_layout(&l, &v), KVS_ERR_INVALID_PARAM);
    l = lay(2, 3, 0, KVS_KV_NHD, KVS_KV_ORDER_KV_OUTER, 16);
    cr_assert_eq(kvs__view_from_layout(&l, &v), KVS_ERR_INVALID_PARAM);
}

Test(plan, same_view_is_one_copy_per_block)
{
    kvs_layout_t l = lay(4, 2, 1, KVS_KV_HND, KVS_KV_ORDER_KV_OUTER, 16);
    kvs__view_t v = view(&l);
    kvs__plan_t p;
    kvs__plan_init(&p);
    cr_assert_eq(kvs__plan_key(&v, &v, 0, &p), KVS_OK);
    /* One run per plane (planes are never merged: they may be apart in memory). */
    cr_assert_eq(p.n, 2 * LAYERS);
    cr_assert_eq(p.bytes, kvs__view_block_bytes(&v));
    kvs__plan_free(&p);
}

Test(plan, hnd_slice_is_contiguous_nhd_is_per_token)
{
    /* TP 1 holder, TP 2 reader, both HND: the reader's heads are one run per plane. */
    kvs_layout_t h = lay(4, 1, 0, KVS_KV_HND, KVS_KV_ORDER_KV_OUTER, 16);
    kvs_layout_t r = lay(4, 2, 1, KVS_KV_HND, KVS_KV_ORDER_BLOCK_OUTER, 16);
    kvs__view_t hv = view(&h), rv = view(&r);
    kvs__plan_t p;
    kvs__plan_init(&p);
    cr_assert_eq(kvs__plan_key(&hv, &rv, 0, &p), KVS_OK);
    cr_assert_eq(p.n, 2 * LAYERS);
    kvs__plan_free(&p);
    /* Both NHD: one run per token per plane. */
    h.kv_layout = r.kv_layout = KVS_KV_NHD;
    hv = view(&h), rv = view(&r);
    cr_assert_eq(kvs__plan_key(&hv, &rv, 0, &p), KVS_OK);
    cr_assert_eq(p.n, 2 * LAYERS * KT);
    kvs__plan_free(&p);
}

Test(plan, another_model_is_refused)
{
    kvs_layout_t a = lay(4, 1, 0, KVS_KV_NHD, KVS_KV_ORDER_KV_OUTER, 16);
    kvs_layout_t b = a;
    b.model_id = "test/other";
    kvs__view_t av = view(&a), bv = view(&b);
    char why[128] = "";
    cr_assert(!kvs__view_compatible(&av, &bv, why, sizeof(why)));
    cr_assert(strstr(why, "model") != NULL);
    kvs__xfer_t *x = NULL;
    cr_assert_eq(kvs__xfer_build(&av, &bv, 0, 1, UINT64_MAX, &x), KVS_ERR_INVALID_PARAM);
    cr_assert_null(x);
    /* Another key size is another chain of keys: refused too. */
    b = a;
    b.key_tokens = 32, b.block_tokens = 32;
    bv = view(&b);
    cr_assert(!kvs__view_compatible(&av, &bv, NULL, 0));
    /* The model id ignores the view, the layout id does not. */
    uint64_t ma, mb, la, lb;
    b = lay(4, 2, 1, KVS_KV_HND, KVS_KV_ORDER_BLOCK_OUTER, 32);
    cr_assert_eq(kvs_model_id(&a, &ma), KVS_OK);
    cr_assert_eq(kvs_model_id(&b, &mb), KVS_OK);
    cr_assert_eq(ma, mb);
    cr_assert_eq(kvs_layout_id(&a, &la), KVS_OK);
    cr_assert_eq(kvs_layout_id(&b, &lb), KVS_OK);
    cr_assert_neq(la, lb);
    b.head_dim = 8;
    cr_assert_eq(kvs_model_id(&b, &mb), KVS_OK);
    cr_assert_neq(ma, mb);
}

Test(plan, old_layouts_keep_their_ids)
{
    /* Setting the new fields to their defaults gives the id of a layout without them. */
    kvs_layout_t a = lay(4, 2, 0, KVS_KV_NHD, KVS_KV_ORDER_KV_OUTER, 16);
    kvs_layout_t b = a;
    b.field_mask = 0;
    uint64_t ia, ib;
    cr_assert_eq(kvs_layout_id(&a, &ia), KVS_OK);
    cr_assert_eq(kvs_layout_id(&b, &ib), KVS_OK);
    cr_assert_eq(ia, ib);
    b.field_mask = 1u << 7; /* unknown bit */
    cr_assert_eq(kvs_layout_id(&b, &ib), KVS_ERR_INVALID_PARAM);
    b = a;
    b.key_tokens = 5; /* does not divide 16 */
    cr_assert_eq(kvs_layout_id(&b, &ib), KVS_ERR_INVALID_PARAM);
}

Test(plan, view_wire_round_trip_and_hostile_views)
{
    kvs_layout_t a = lay(2, 4, 2, KVS_KV_HND, KVS_KV_ORDER_BLOCK_OUTER, 32);
    kvs__view_t v = view(&a), w;
    uint8_t buf[KVS_VIEW_WIRE_LEN];
    kvs__view_encode(&v, buf);
    kvs__view_decode(buf, &w);
    cr_assert(kvs__view_same(&v, &w));
    cr_assert(kvs__view_valid(&w));
    w.heads = 2; /* replicated ranks hold one head */
    cr_assert(!kvs__view_valid(&w));
    w = v, w.elem = 3;
    cr_assert(!kvs__view_valid(&w));
    w = v, w.key_tokens = 0;
    cr_assert(!kvs__view_valid(&w));
    w = v, w.num_layers = 4000, w.head_dim = 65536; /* a block beyond 4 GiB */
    cr_assert(!kvs__view_valid(&w));
    w = v, w.tp_rank = w.tp_size;
    cr_assert(!kvs__view_valid(&w));
}

Test(plan, source_ranks_bad_input)
{
    kvs_layout_t r = lay(4, 1, 0, KVS_KV_NHD, KVS_KV_ORDER_KV_OUTER, 16);
    uint32_t ranks[4];
    size_t n = 7;
    cr_assert_eq(kvs_layout_source_ranks(&r, 3, ranks, 4, &n), KVS_ERR_INVALID_PARAM);
    cr_assert_eq(kvs_layout_source_ranks(&r, 4, ranks, 2, &n), KVS_ERR_INVALID_PARAM);
    cr_assert_eq(n, 7);
    cr_assert_eq(kvs_layout_source_ranks(&r, 4, ranks, 4, &n), KVS_OK);
    cr_assert(n == 4 && ranks[0] == 0 && ranks[3] == 3);
}

Test(plan, every_allocation_failure_is_clean)
{
    kvs_layout_t h = lay(4, 1, 0, KVS_KV_NHD, KVS_KV_ORDER_KV_OUTER, 32);
    kvs_layout_t r = lay(4, 2, 1, KVS_KV_HND, KVS_KV_ORDER_BLOCK_OUTER, 16);
    kvs__view_t hv = view(&h), rv = view(&r);
    kvs_status_t st = KVS_ERR_NO_MEMORY;
    long n = 0;
    for (; st != KVS_OK; n++) {
        kvs__xfer_t *x = NULL;
        kvs__alloc_fail_after(n, false);
        st = kvs__xfer_build(&hv, &rv, 1, 5, 64, &x);
        kvs__alloc_fail_after(-1, false);
        if (st == KVS_OK) {
            cr_assert_not_null(x);
            kvs__xfer_free(x);
        } else {
            cr_assert_eq(st, KVS_ERR_NO_MEMORY, "site %ld: %s", n, kvs_status_string(st));
            cr_assert_null(x, "a failing build wrote its output");
        }
    }
    cr_assert_gt(n, 3, "the walk reached only %ld sites", n);
}
