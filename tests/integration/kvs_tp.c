/* SPDX-License-Identifier: Apache-2.0 */
/* kvs_tp.c - a real process holding or reading one TP rank's KV, for
 * tests/integration/transport/tp.sh.
 *
 *   kvs_tp serve --listen H:P [view]   publish the prompt's KV as this rank holds it, print
 *                                      "ready ADDR", serve until stdin closes
 *   kvs_tp fetch --peer H:P [--peer H:P ...] [view]
 *                                      look the prompt up at each peer in turn and fetch
 *                                      into one pool; check every byte of this rank's
 *                                      heads; print "ok hits=N heads=F+C,... missing=M"
 *                                      (and "kvs_tp: fetched_bytes=B shm_fetched_bytes=S"
 *                                      on stderr: over the transport, from mapped memory)
 * view: --tp T --rank R --layout nhd|hnd --order kv|block --block-tokens B
 *       [--model M] [--zero-copy] [--mem-alloc] [--keys K] [--expect STATUS]
 * --mem-alloc: the pool's memory from kvs_mem_alloc (a memfd same-host readers map; with
 * --zero-copy its blocks are read there, without it the arena's are).
 * The model: 2 layers, 4 KV heads (--heads), head dim 32, fp32; keys cover 16 tokens.
 * Element (layer, K/V, token, head, dim) holds a value that encodes all five, so a byte
 * from the wrong head, token, layer or plane is caught, as is one never written. */
#include "kvshare.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define LAYERS   2u
#define HEAD_DIM 32u
#define KT       16u
#define UNSET    0xDEADBEEFu

typedef struct opts {
    const char *mode, *listen, *peers[8], *model, *expect;
    size_t npeers;
    uint32_t tp, rank, bt, keys, heads;
    kvs_kv_layout_t kv_layout;
    kvs_kv_order_t kv_order;
    bool zero_copy, mem_alloc;
} opts_t;

static uint32_t val(uint32_t layer, uint32_t kv, uint32_t tok, uint32_t head, uint32_t dim)
{
    return ((((layer * 2 + kv) * 4096 + tok) * 64 + head) * 64 + dim) + 1;
}

static kvs_layout_t layout_of(const opts_t *o)
{
    kvs_layout_t l = {.field_mask = KVS_LAYOUT_FIELD_TOTAL_KV_HEADS | KVS_LAYOUT_FIELD_KEY_TOKENS,
                      .model_id = o->model,
                      .dtype = KVS_DTYPE_FP32,
                      .block_tokens = o->bt,
                      .num_layers = LAYERS,
                      .num_kv_heads = o->tp <= o->heads ? o->heads / o->tp : 1,
                      .head_dim = HEAD_DIM,
                      .tp_rank = o->rank,
                      .tp_size = o->tp,
                      .kv_layout = o->kv_layout,
                      .kv_order = o->kv_order,
                      .total_kv_heads = o->heads,
                      .key_tokens = KT};
    return l;
}

/* The engine's memory: per layer one segment (K then V of a block) for
 * --order block, or a K and a V segment for --order kv. */
typedef struct pool {
    kvs_pool_h h;
    uint32_t *mem;
    uint32_t nblocks, heads, first_head;
    size_t plane; /* elements */
} pool_t;

static size_t elem_at(const opts_t *o, const pool_t *p, uint32_t block, uint32_t layer, uint32_t kv,
                      uint32_t t, uint32_t h, uint32_t d)
{
    size_t in = o->kv_layout == KVS_KV_NHD ? ((size_t)t * p->heads + h) * HEAD_DIM + d
                                           : ((size_t)h * o->bt + t) * HEAD_DIM + d;
    if (o->kv_order == KVS_KV_ORDER_BLOCK_OUTER) /* segment l: block b, then K/V */
        return ((size_t)layer * p->nblocks + block) * 2 * p->plane + kv * p->plane + in;
    return (((size_t)layer * 2 + kv) * p->nblocks + block) * p->plane + in;
}

static kvs_status_t make_pool(kvs_ctx_h ctx, const opts_t *o, pool_t *p, bool mem_alloc)
{
    kvs_layout_t l = layout_of(o);
    p->heads = l.num_kv_heads;
    p->first_head = o->tp <= o->heads ? o->rank * p->heads : o->rank / (o->tp / o->heads);
    p->nblocks = (o->keys * KT + o->bt - 1) / o->bt + 3; /* a few spare: ids are offset */
    p->plane = (size_t)o->bt * p->heads * HEAD_DIM;
    size_t total = (size_t)LAYERS * 2 * p->nblocks * p->plane;
    p->mem = NULL;
    if (mem_alloc)
        kvs_mem_alloc(ctx, total * 4, KVS_MEM_HOST, (void **)&p->mem);
    else
        p->mem = malloc(total * 4);
    if (p->mem == NULL)
        return KVS_ERR_NO_MEMORY;
    for (size_t i = 0; i < total; i++)
        p->mem[i] = UNSET;
    kvs_segment_t segs[2 * LAYERS];
    size_t nsegs = 0;
    if (o->kv_order == KVS_KV_ORDER_BLOCK_OUTER) {
        for (uint32_t layer = 0; layer < LAYERS; layer++)
            segs[nsegs++] = (kvs_segment_t){.base = p->mem + elem_at(o, p, 0, layer, 0, 0, 0, 0),
                                            .block_stride = 2 * p->plane * 4,
                                            .block_bytes = 2 * p->plane * 4,
                                            .mem_type = KVS_MEM_HOST};
    } else {
        for (uint32_t layer = 0; layer < LAYERS; layer++)
            for (uint32_t kv = 0; kv < 2; kv++)
                segs[nsegs++] =
                    (kvs_segment_t){.base = p->mem + elem_at(o, p, 0, layer, kv, 0, 0, 0),
                                    .block_stride = p->plane * 4,
                                    .block_bytes = p->plane * 4,
                                    .mem_type = KVS_MEM_HOST};
    }
    kvs_pool_params_t pp = {
        .layout = &l, .segments = segs, .num_segments = nsegs, .num_blocks = p->nblocks};
    return kvs_pool_create(ctx, &pp, &p->h);
}

/* The prompt's block that holds key j sits at block id 2 + j*KT/bt (not 0: ids differ
 * between the processes when their block sizes do). */
static uint32_t block_of(const opts_t *o, uint32_t j)
{
    return 2 + j * KT / o->bt;
}

static kvs_key_t key_of(uint32_t j)
{
    kvs_key_t k;
    memset(&k, 0, sizeof(k));
    snprintf((char *)k.bytes, sizeof(k.bytes), "kvs_tp prompt key %u", j);
    return k;
}

static kvs_ctx_h make_ctx(const char *listen)
{
    char err[512];
    kvs_ctx_params_t cp = {.field_mask = KVS_CTX_FIELD_ERRBUF | KVS_CTX_FIELD_CAPACITY,
                           .errbuf = err,
                           .errbuf_len = sizeof(err),
                           .capacity_bytes = 256u << 20};
    if (listen != NULL) {
        cp.field_mask |= KVS_CTX_FIELD_LISTEN;
        cp.listen = listen;
    }
    kvs_ctx_h ctx = NULL;
    kvs_status_t st = kvs_ctx_create(&cp, &ctx);
    if (st != KVS_OK) {
        fprintf(stderr, "kvs_tp: kvs_ctx_create: %s: %s\n", kvs_status_string(st), err);
        return NULL;
    }
    return ctx;
}

static int serve(const opts_t *o)
{
    kvs_ctx_h ctx = make_ctx(o->listen);
    pool_t p;
    if (ctx == NULL || make_pool(ctx, o, &p, o->mem_alloc) != KVS_OK) {
        fprintf(stderr, "kvs_tp: serve: no context or pool\n");
        return 1;
    }
    uint32_t nb = (o->keys * KT + o->bt - 1) / o->bt;
    for (uint32_t b = 0; b < nb; b++)
        for (uint32_t layer = 0; layer < LAYERS; layer++)
            for (uint32_t kv = 0; kv < 2; kv++)
                for (uint32_t t = 0; t < o->bt; t++)
                    for (uint32_t h = 0; h < p.heads; h++)
                        for (uint32_t d = 0; d < HEAD_DIM; d++)
                            p.mem[elem_at(o, &p, 2 + b, layer, kv, t, h, d)] =
                                val(layer, kv, b * o->bt + t, p.first_head + h, d);
    kvs_key_t *keys = calloc(o->keys, sizeof(*keys));
    uint32_t *ids = calloc(o->keys, sizeof(*ids));
    for (uint32_t j = 0; j < o->keys; j++) {
        keys[j] = key_of(j);
        ids[j] = block_of(o, j);
    }
    size_t published = 0;
    kvs_status_t st =
        kvs_publish(p.h, keys, ids, o->keys, o->zero_copy ? KVS_PUBLISH_ZERO_COPY : 0, &published);
    char addr[300];
    if (st != KVS_OK || kvs_ctx_listen_addr(ctx, addr, sizeof(addr)) != KVS_OK) {
        fprintf(stderr, "kvs_tp: publish: %s\n", kvs_status_string(st));
        return 1;
    }
    printf("ready %s published=%zu\n", addr, published);
    fflush(stdout);
    char buf[64];
    while (read(0, buf, sizeof(buf)) > 0)
        ;
    kvs_pool_destroy(p.h);
    if (o->mem_alloc)
        kvs_mem_free(ctx, p.mem);
    else
        free(p.mem);
    kvs_ctx_destroy(ctx);
    free(keys);
    free(ids);
    return 0;
}

static int fetch(const opts_t *o)
{
    kvs_ctx_h ctx = make_ctx(NULL);
    pool_t p;
    if (ctx == NULL || make_pool(ctx, o, &p, false) != KVS_OK) {
        fprintf(stderr, "kvs_tp: fetch: no context or pool\n");
        return 1;
    }
    kvs_layout_t l = layout_of(o);
    uint64_t lid = 0;
    kvs_layout_id(&l, &lid);
    kvs_key_t *keys = calloc(o->keys, sizeof(*keys));
    uint32_t *ids = calloc(o->keys, sizeof(*ids));
    for (uint32_t j = 0; j < o->keys; j++) {
        keys[j] = key_of(j);
        ids[j] = block_of(o, j);
    }
    bool *have = calloc(p.heads, sizeof(*have));
    char heads[256] = "";
    size_t hits = o->keys;
    kvs_status_t st = KVS_OK;
    for (size_t k = 0; k < o->npeers && st == KVS_OK; k++) {
        kvs_lookup_params_t lp = {.field_mask = KVS_LOOKUP_FIELD_SOURCES | KVS_LOOKUP_FIELD_PEER,
                                  .sources = KVS_SOURCE_PEER,
                                  .peer = o->peers[k]};
        kvs_lease_h lease = NULL;
        st = kvs_lookup(ctx, lid, keys, o->keys, &lp, &lease);
        if (st != KVS_OK)
            break;
        uint32_t first = 0, count = 0;
        kvs_lease_heads(lease, &first, &count);
        size_t n = strlen(heads);
        snprintf(heads + n, sizeof(heads) - n, "%s%u+%u", k ? "," : "", first, count);
        for (uint32_t h = first; h < first + count && h < p.heads; h++)
            have[h] = true;
        size_t got = kvs_lease_hits(lease);
        hits = got < hits ? got : hits;
        kvs_request_h req = NULL;
        st = kvs_fetch(lease, p.h, ids, got, NULL, &req);
        if (st == KVS_OK)
            st = kvs_request_wait(req, -1);
        kvs_request_free(req);
        kvs_lease_release(lease);
    }
    uint32_t missing = 0, bad = 0;
    for (uint32_t h = 0; h < p.heads; h++)
        missing += !have[h];
    /* Every byte: this rank's heads it was told it has hold the prompt's KV; the
     * rest of its memory (other heads, blocks past the hits) is untouched. */
    for (uint32_t b = 0; st == KVS_OK && b < p.nblocks; b++)
        for (uint32_t layer = 0; layer < LAYERS; layer++)
            for (uint32_t kv = 0; kv < 2; kv++)
                for (uint32_t t = 0; t < o->bt; t++)
                    for (uint32_t h = 0; h < p.heads; h++)
                        for (uint32_t d = 0; d < HEAD_DIM; d++) {
                            uint32_t tok = (b - 2) * o->bt + t;
                            bool in = b >= 2 && tok < hits * KT && have[h];
                            uint32_t want = in ? val(layer, kv, tok, p.first_head + h, d) : UNSET;
                            uint32_t got = p.mem[elem_at(o, &p, b, layer, kv, t, h, d)];
                            if (got != want && bad++ < 5)
                                fprintf(stderr,
                                        "kvs_tp: block %u layer %u %c token %u head %u dim %u: "
                                        "%08x, want %08x\n",
                                        b, layer, kv ? 'V' : 'K', t, h, d, got, want);
                        }
    kvs_stats_t stats = {.field_mask = KVS_STATS_FIELD_SHM};
    kvs_stats_query(ctx, &stats);
    const char *status = kvs_status_string(st);
    if (st == KVS_OK && bad > 0)
        status = "WRONG BYTES";
    printf("%s hits=%zu heads=%s missing=%u status=%s\n", st == KVS_OK && bad == 0 ? "ok" : "done",
           hits, heads, missing, status);
    fprintf(stderr, "kvs_tp: fetched_bytes=%llu shm_fetched_bytes=%llu\n",
            (unsigned long long)stats.fetched_bytes, (unsigned long long)stats.shm_fetched_bytes);
    kvs_pool_destroy(p.h);
    kvs_ctx_destroy(ctx);
    free(keys);
    free(ids);
    free(have);
    free(p.mem);
    if (bad > 0)
        return 1;
    if (o->expect != NULL)
        return strcmp(o->expect, kvs_status_string(st)) == 0 ? 0 : 1;
    return st == KVS_OK ? 0 : 1;
}

int main(int argc, char **argv)
{
    opts_t o = {.model = "test/tp-model", .tp = 1, .bt = 16, .keys = 8, .heads = 4};
    if (argc < 2) {
        fprintf(stderr, "usage: kvs_tp serve|fetch [options]\n");
        return 2;
    }
    o.mode = argv[1];
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--zero-copy") == 0 || strcmp(a, "--mem-alloc") == 0) {
            *(a[2] == 'z' ? &o.zero_copy : &o.mem_alloc) = true;
            continue;
        }
        if (v == NULL) {
            fprintf(stderr, "kvs_tp: %s needs a value\n", a);
            return 2;
        }
        i++;
        if (strcmp(a, "--listen") == 0)
            o.listen = v;
        else if (strcmp(a, "--peer") == 0 && o.npeers < 8)
            o.peers[o.npeers++] = v;
        else if (strcmp(a, "--model") == 0)
            o.model = v;
        else if (strcmp(a, "--expect") == 0)
            o.expect = v;
        else if (strcmp(a, "--tp") == 0)
            o.tp = (uint32_t)atoi(v);
        else if (strcmp(a, "--rank") == 0)
            o.rank = (uint32_t)atoi(v);
        else if (strcmp(a, "--heads") == 0)
            o.heads = (uint32_t)atoi(v);
        else if (strcmp(a, "--block-tokens") == 0)
            o.bt = (uint32_t)atoi(v);
        else if (strcmp(a, "--keys") == 0)
            o.keys = (uint32_t)atoi(v);
        else if (strcmp(a, "--layout") == 0)
            o.kv_layout = strcmp(v, "hnd") == 0 ? KVS_KV_HND : KVS_KV_NHD;
        else if (strcmp(a, "--order") == 0)
            o.kv_order = strcmp(v, "block") == 0 ? KVS_KV_ORDER_BLOCK_OUTER : KVS_KV_ORDER_KV_OUTER;
        else {
            fprintf(stderr, "kvs_tp: unknown option %s\n", a);
            return 2;
        }
    }
    if (o.tp == 0 || o.rank >= o.tp || o.bt == 0 || o.bt % KT != 0 || o.keys == 0 || o.heads == 0) {
        fprintf(stderr, "kvs_tp: bad view\n");
        return 2;
    }
    if (strcmp(o.mode, "serve") == 0 && o.listen != NULL)
        return serve(&o);
    if (strcmp(o.mode, "fetch") == 0 && o.npeers > 0)
        return fetch(&o);
    fprintf(stderr, "kvs_tp: serve needs --listen, fetch --peer\n");
    return 2;
}
