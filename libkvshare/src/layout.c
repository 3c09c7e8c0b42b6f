/* SPDX-License-Identifier: Apache-2.0 */
/* layout.c - the layout id and the model id: fingerprints of a model's KV geometry. */
#include "plan_int.h"

#include <openssl/evp.h>
#include <string.h>

static size_t put_u32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
    return 4;
}

/* SHA-256 of tag | len(model id) | model id | fixed, truncated to 64 bits. */
static kvs_status_t fingerprint(const char *tag, size_t tag_len, const char *model_id,
                                const uint8_t *fixed, size_t n, uint64_t *id_p)
{
    size_t mlen = strlen(model_id);
    uint8_t mlen_le[8];
    for (int i = 0; i < 8; i++)
        mlen_le[i] = (uint8_t)((uint64_t)mlen >> (8 * i));

    uint8_t md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (ctx == NULL)
        return KVS_ERR_NO_MEMORY;
    int ok = EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) && EVP_DigestUpdate(ctx, tag, tag_len) &&
             EVP_DigestUpdate(ctx, mlen_le, sizeof(mlen_le)) &&
             EVP_DigestUpdate(ctx, model_id, mlen) && EVP_DigestUpdate(ctx, fixed, n) &&
             EVP_DigestFinal_ex(ctx, md, &mdlen);
    EVP_MD_CTX_free(ctx);
    if (!ok)
        return KVS_ERR_NO_MEMORY;
    uint64_t id = 0;
    for (int i = 0; i < 8; i++)
        id |= (uint64_t)md[i] << (8 * i);
    *id_p = id;
    return KVS_OK;
}

static uint32_t elem_bytes(kvs_dtype_t d)
{
    switch (d) {
    case KVS_DTYPE_FP16:
    case KVS_DTYPE_BF16:
        return 2;
    case KVS_DTYPE_FP32:
        return 4;
    default:
        return 1;
    }
}

/* The must-match part, from numbers (the model id string is only on this side). */
static kvs_status_t model_fp(const char *model_id, uint32_t dtype, uint32_t layers,
                             uint32_t total_heads, uint32_t head_dim, uint64_t *id_p)
{
    static const char tag[] = "kvshare-model-v1";
    uint8_t fixed[4 * 4];
    size_t n = 0;
    n += put_u32(fixed + n, dtype);
    n += put_u32(fixed + n, layers);
    n += put_u32(fixed + n, total_heads);
    n += put_u32(fixed + n, head_dim);
    return fingerprint(tag, sizeof(tag), model_id, fixed, n, id_p);
}

kvs_status_t kvs__view_from_layout(const kvs_layout_t *l, kvs__view_t *v)
{
    if (l == NULL || v == NULL || l->model_id == NULL || l->model_id[0] == '\0' ||
        l->block_tokens == 0 || l->num_layers == 0 || l->num_kv_heads == 0 || l->head_dim == 0 ||
        l->tp_size == 0 || l->tp_rank >= l->tp_size || (unsigned)l->dtype > KVS_DTYPE_INT8 ||
        (unsigned)l->kv_layout > KVS_KV_HND || (unsigned)l->kv_order > KVS_KV_ORDER_BLOCK_OUTER ||
        (l->field_mask &
         ~(uint64_t)(KVS_LAYOUT_FIELD_TOTAL_KV_HEADS | KVS_LAYOUT_FIELD_KEY_TOKENS)))
        return KVS_ERR_INVALID_PARAM;
    kvs__view_t t = {
        .dtype = (uint32_t)l->dtype,
        .elem = elem_bytes(l->dtype),
        .num_layers = l->num_layers,
        .heads = l->num_kv_heads,
        .head_dim = l->head_dim,
        .tp_rank = l->tp_rank,
        .tp_size = l->tp_size,
        .block_tokens = l->block_tokens,
        .key_tokens = l->block_tokens,
        .kv_layout = (uint32_t)l->kv_layout,
        .kv_order = (uint32_t)l->kv_order,
    };
    uint64_t total = (uint64_t)l->num_kv_heads * l->tp_size;
    if (l->field_mask & KVS_LAYOUT_FIELD_TOTAL_KV_HEADS)
        total = l->total_kv_heads;
    if (total == 0 || total > UINT32_MAX)
        return KVS_ERR_INVALID_PARAM;
    t.total_heads = (uint32_t)total;
    if (l->field_mask & KVS_LAYOUT_FIELD_KEY_TOKENS)
        t.key_tokens = l->key_tokens;
    if (!kvs__view_valid(&t))
        return KVS_ERR_INVALID_PARAM;
    kvs_status_t st =
        model_fp(l->model_id, t.dtype, t.num_layers, t.total_heads, t.head_dim, &t.model);
    if (st != KVS_OK)
        return st;
    *v = t;
    return KVS_OK;
}

kvs_status_t kvs_layout_id(const kvs_layout_t *l, uint64_t *layout_id_p)
{
    kvs__view_t v;
    if (layout_id_p == NULL)
        return KVS_ERR_INVALID_PARAM;
    kvs_status_t st = kvs__view_from_layout(l, &v);
    if (st != KVS_OK)
        return st;

    /* A versioned, fixed-width serialisation: any change of a field, or of
     * how fields are laid out, gives another id. Fields added later are
     * appended, tagged, only when they differ from their defaults. */
    static const char tag[] = "kvshare-layout-v1";
    uint8_t fixed[13 * 4];
    size_t n = 0;
    n += put_u32(fixed + n, (uint32_t)l->dtype);
    n += put_u32(fixed + n, l->block_tokens);
    n += put_u32(fixed + n, l->num_layers);
    n += put_u32(fixed + n, l->num_kv_heads);
    n += put_u32(fixed + n, l->head_dim);
    n += put_u32(fixed + n, l->tp_rank);
    n += put_u32(fixed + n, l->tp_size);
    n += put_u32(fixed + n, (uint32_t)l->kv_layout);
    n += put_u32(fixed + n, (uint32_t)l->kv_order);
    if ((uint64_t)v.total_heads != (uint64_t)v.heads * v.tp_size) {
        n += put_u32(fixed + n, 1);
        n += put_u32(fixed + n, v.total_heads);
    }
    if (v.key_tokens != v.block_tokens) {
        n += put_u32(fixed + n, 2);
        n += put_u32(fixed + n, v.key_tokens);
    }
    return fingerprint(tag, sizeof(tag), l->model_id, fixed, n, layout_id_p);
}

kvs_status_t kvs_model_id(const kvs_layout_t *l, uint64_t *model_id_p)
{
    kvs__view_t v;
    if (model_id_p == NULL)
        return KVS_ERR_INVALID_PARAM;
    kvs_status_t st = kvs__view_from_layout(l, &v);
    if (st == KVS_OK)
        *model_id_p = v.model;
    return st;
}

kvs_status_t kvs_layout_source_ranks(const kvs_layout_t *reader, uint32_t holder_tp_size,
                                     uint32_t *ranks, size_t max_ranks, size_t *nranks_p)
{
    kvs__view_t v;
    if (ranks == NULL || nranks_p == NULL || holder_tp_size == 0)
        return KVS_ERR_INVALID_PARAM;
    kvs_status_t st = kvs__view_from_layout(reader, &v);
    if (st != KVS_OK)
        return st;
    uint32_t total = v.total_heads;
    if (holder_tp_size <= total ? total % holder_tp_size != 0 : holder_tp_size % total != 0)
        return KVS_ERR_INVALID_PARAM;
    uint32_t first, count;
    kvs__view_heads(&v, &first, &count);
    uint32_t lo, hi; /* holder ranks lo .. hi, or one per head when replicated */
    size_t n;
    if (holder_tp_size <= total) {
        uint32_t per = total / holder_tp_size;
        lo = first / per;
        hi = (first + count - 1) / per;
        n = (size_t)(hi - lo) + 1;
        if (n > max_ranks)
            return KVS_ERR_INVALID_PARAM;
        for (uint32_t k = lo; k <= hi; k++)
            ranks[k - lo] = k;
    } else {
        uint32_t rep = holder_tp_size / total;
        n = count;
        if (n > max_ranks)
            return KVS_ERR_INVALID_PARAM;
        for (uint32_t h = 0; h < count; h++)
            ranks[h] = (first + h) * rep;
    }
    *nranks_p = n;
    return KVS_OK;
}
