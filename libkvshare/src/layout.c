/* SPDX-License-Identifier: Apache-2.0 */
/* layout.c - the layout id: a fingerprint of a model's KV geometry. */
#include "kvs_int.h"

#include <openssl/evp.h>
#include <string.h>

static size_t put_u32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
    return 4;
}

kvs_status_t kvs_layout_id(const kvs_layout_t *l, uint64_t *layout_id_p)
{
    if (l == NULL || layout_id_p == NULL || l->model_id == NULL || l->model_id[0] == '\0' ||
        l->block_tokens == 0 || l->num_layers == 0 || l->num_kv_heads == 0 || l->head_dim == 0 ||
        l->tp_size == 0 || l->tp_rank >= l->tp_size || (unsigned)l->dtype > KVS_DTYPE_INT8 ||
        (unsigned)l->kv_layout > KVS_KV_HND || (unsigned)l->kv_order > KVS_KV_ORDER_BLOCK_OUTER)
        return KVS_ERR_INVALID_PARAM;

    /* A versioned, fixed-width serialisation: any change of a field, or of
     * how fields are laid out, gives another id. */
    static const char tag[] = "kvshare-layout-v1";
    size_t mlen = strlen(l->model_id);
    uint8_t fixed[9 * 4];
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

    uint8_t mlen_le[8];
    for (int i = 0; i < 8; i++)
        mlen_le[i] = (uint8_t)((uint64_t)mlen >> (8 * i));

    uint8_t md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (ctx == NULL)
        return KVS_ERR_NO_MEMORY;
    int ok = EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) &&
             EVP_DigestUpdate(ctx, tag, sizeof(tag)) &&
             EVP_DigestUpdate(ctx, mlen_le, sizeof(mlen_le)) &&
             EVP_DigestUpdate(ctx, l->model_id, mlen) && EVP_DigestUpdate(ctx, fixed, n) &&
             EVP_DigestFinal_ex(ctx, md, &mdlen);
    EVP_MD_CTX_free(ctx);
    if (!ok)
        return KVS_ERR_NO_MEMORY;
    uint64_t id = 0;
    for (int i = 0; i < 8; i++)
        id |= (uint64_t)md[i] << (8 * i);
    *layout_id_p = id;
    return KVS_OK;
}
