/* SPDX-License-Identifier: Apache-2.0 */
/* engine.c - the example engine: transformer math over a paged KV cache, and its kvshare calls. */
#include "engine.h"

#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Prefill runs this many tokens at a time: activations of a chunk stay in
 * cache, and a 16k-token prompt needs no 16k-row buffers. The chunk size does
 * not change any result: every row is computed on its own, in the same order. */
#define CHUNK    64
#define ROW_TILE 4 /* rows that share one pass over a weight matrix */
#define RMS_EPS  1e-5f
#define MAX_SEGS 256

typedef struct layer_weights {
    float *attn_norm, *wq, *wk, *wv, *wo; /* projections are [in][out] */
    float *mlp_norm, *w_gate, *w_up, *w_down;
} layer_weights_t;

struct engine {
    engine_config_t cfg;
    unsigned threads;
    size_t qdim, kvdim;  /* n_heads * head_dim, n_kv_heads * head_dim */
    size_t block_floats; /* one block of one layer: K and V planes */
    float *weights;      /* one allocation, carved below */
    float *embed;        /* [vocab][d_model] */
    float *lm_head;      /* [vocab][d_model]; == embed when tied */
    float *final_norm;
    layer_weights_t *layers;
    float *inv_freq; /* RoPE frequencies, head_dim / 2 */
    float **kv;      /* per layer: (num_blocks, 2, block_tokens, kv_heads, head_dim) */
    /* The TP rank's view of the cache: what kvshare sees. It is e->kv itself
     * when the rank holds every head in NHD (tp_size 1, the default); else
     * per layer (num_blocks, 2, block_tokens, view_heads, head_dim) (NHD) or
     * (num_blocks, 2, view_heads, block_tokens, head_dim) (HND), kept in
     * step with e->kv by view_pack() / view_unpack(). */
    float **view;
    bool own_view; /* e->view is its own memory, not e->kv */
    uint32_t head0, view_heads;
    size_t view_block_floats;
    uint32_t *free_ids;
    uint32_t nfree;

    /* kvshare: NULL when the engine runs alone. */
    const engine_kvs_t *kvs;
    kvs_ctx_h ctx;
    kvs_pool_h pool;
    kvs_hasher_h hasher;
    uint64_t layout_id;
    char model_id[192];
};

struct engine_seq {
    engine_h eng;
    uint32_t *tokens; /* prompt, then generated tokens fed back */
    size_t ntok, cap_tok, prompt_len;
    size_t n_computed; /* tokens whose KV is in the cache */
    uint32_t *blocks;  /* block table: logical block i -> block id */
    size_t nblocks, cap_blocks;
    size_t zc_published; /* leading blocks published zero-copy */
    size_t packed;       /* leading blocks copied into the TP view */
    /* Fetching and gathering, before the first forward pass: the blocks of
     * the rank's own share engine_fetch() brought in (the shortest fetch),
     * and per KV head the leading blocks present in the cache. */
    bool forwarded, fetched;
    size_t view_hits;
    size_t *head_hits;
    float *logits;
    uint32_t next; /* chosen, not yet returned by engine_decode() */
    bool prefilled;
    engine_stats_t stats;
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ------------------------------------------------------------------------ */
/* Weights: splitmix64 -> uniform floats, one fixed order.                   */
/* ------------------------------------------------------------------------ */
static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Uniform in [-scale, scale): 24 random bits, exact in a float. */
static void fill_uniform(float *w, size_t n, float scale, uint64_t *rng)
{
    for (size_t i = 0; i < n; i++) {
        float u = (float)(splitmix64(rng) >> 40) * (1.0f / 16777216.0f);
        w[i] = (2.0f * u - 1.0f) * scale;
    }
}

static void fill_ones(float *w, size_t n)
{
    for (size_t i = 0; i < n; i++)
        w[i] = 1.0f;
}

/* ------------------------------------------------------------------------ */
/* Kernels. Every reduction runs in a fixed order, so a row's result never   */
/* depends on the chunk, tile, thread or vector width that computed it: a    */
/* token's KV is bit-identical however the prompt was split.                 */
/* ------------------------------------------------------------------------ */

/* Eight independent partial sums, combined in a fixed tree: the compiler can
 * vectorise the lanes without reassociating anything. */
static float dot(const float *restrict a, const float *restrict b, size_t n)
{
    float acc[8] = {0};
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (size_t l = 0; l < 8; l++)
            acc[l] += a[i + l] * b[i + l];
    for (; i < n; i++)
        acc[0] += a[i] * b[i];
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

/* out[r][j] = sum_k x[r][k] * w[k][j] for @rows (<= ROW_TILE) rows. The j loop
 * is innermost, so it vectorises, and each row of w is read once per tile. */
static void matmul_tile(float *restrict out, const float *restrict x, const float *restrict w,
                        size_t rows, size_t in, size_t outd)
{
    memset(out, 0, rows * outd * sizeof(*out));
    for (size_t k = 0; k < in; k++) {
        const float *restrict wk = w + k * outd;
        for (size_t r = 0; r < rows; r++) {
            const float a = x[r * in + k];
            float *restrict o = out + r * outd;
            for (size_t j = 0; j < outd; j++)
                o[j] += a * wk[j];
        }
    }
}

static void rmsnorm(float *restrict y, const float *restrict x, const float *restrict w, size_t n)
{
    const float inv = 1.0f / sqrtf(dot(x, x, n) / (float)n + RMS_EPS);
    for (size_t i = 0; i < n; i++)
        y[i] = x[i] * inv * w[i];
}

/* Rotary embedding, rotate-half (Llama/NeoX) pairing: (i, i + half). */
static void rope(float *v, size_t nheads, size_t head_dim, const float *cs, const float *sn)
{
    const size_t half = head_dim / 2;
    for (size_t h = 0; h < nheads; h++) {
        float *p = v + h * head_dim;
        for (size_t i = 0; i < half; i++) {
            const float x0 = p[i], x1 = p[i + half];
            p[i] = x0 * cs[i] - x1 * sn[i];
            p[i + half] = x0 * sn[i] + x1 * cs[i];
        }
    }
}

/* Where token @t's K (plane 0) or V (plane 1) for kv head @g lives in one
 * layer's buffer: block table lookup, then vLLM's (2, block, head, dim). */
static inline size_t kv_offset(const engine_config_t *cfg, const uint32_t *table, size_t t,
                               unsigned plane, size_t g)
{
    const size_t bt = cfg->block_tokens, kvdim = (size_t)cfg->n_kv_heads * cfg->head_dim;
    return (size_t)table[t / bt] * 2 * bt * kvdim + (plane * bt + t % bt) * kvdim +
           g * cfg->head_dim;
}

void engine_attention(const engine_config_t *cfg, const float *layer_kv,
                      const uint32_t *block_table, size_t pos0, size_t nrows, const float *q,
                      float *out, float *scratch)
{
    const size_t hd = cfg->head_dim, group = cfg->n_heads / cfg->n_kv_heads;
    const size_t bt = cfg->block_tokens, kvdim = (size_t)cfg->n_kv_heads * hd;
    const size_t qdim = (size_t)cfg->n_heads * hd, ntok = pos0 + nrows;
    const float scale = 1.0f / sqrtf((float)hd);
    /* scores[(r * group + j) * ntok + t]: row r, j-th query head of the group. */
    float *scores = scratch, *inv = scratch + nrows * group * ntok;
    /* One KV head at a time, for all its query heads (GQA) and all rows at
     * once: each K and V row is read from memory once per tile, not once per
     * query. The block table is walked a block at a time: bt consecutive
     * tokens, K plane then V plane, wherever the allocator put the block. */
    for (size_t g = 0; g < cfg->n_kv_heads; g++) {
        for (size_t t0 = 0; t0 < ntok; t0 += bt) {
            const float *k = layer_kv + kv_offset(cfg, block_table, t0, 0, g);
            const size_t n = ntok - t0 < bt ? ntok - t0 : bt;
            for (size_t i = 0; i < n; i++)
                for (size_t r = 0; r < nrows; r++) {
                    if (t0 + i > pos0 + r)
                        continue; /* causal: row r sees tokens 0 .. pos0 + r */
                    for (size_t j = 0; j < group; j++)
                        scores[(r * group + j) * ntok + t0 + i] =
                            dot(q + r * qdim + (g * group + j) * hd, k + i * kvdim, hd) * scale;
                }
        }
        /* Softmax weights in place; the sum runs in token order. */
        for (size_t r = 0; r < nrows; r++)
            for (size_t j = 0; j < group; j++) {
                float *sc = scores + (r * group + j) * ntok, max = -INFINITY, sum = 0.0f;
                for (size_t t = 0; t <= pos0 + r; t++)
                    max = sc[t] > max ? sc[t] : max;
                for (size_t t = 0; t <= pos0 + r; t++) {
                    sc[t] = expf(sc[t] - max);
                    sum += sc[t];
                }
                inv[r * group + j] = 1.0f / sum;
                memset(out + r * qdim + (g * group + j) * hd, 0, hd * sizeof(float));
            }
        for (size_t t0 = 0; t0 < ntok; t0 += bt) {
            const float *v = layer_kv + kv_offset(cfg, block_table, t0, 1, g);
            const size_t n = ntok - t0 < bt ? ntok - t0 : bt;
            for (size_t i = 0; i < n; i++)
                for (size_t r = 0; r < nrows; r++) {
                    if (t0 + i > pos0 + r)
                        continue;
                    for (size_t j = 0; j < group; j++) {
                        const float p = scores[(r * group + j) * ntok + t0 + i];
                        const float *restrict vi = v + i * kvdim;
                        float *restrict o = out + r * qdim + (g * group + j) * hd;
                        for (size_t d = 0; d < hd; d++)
                            o[d] += p * vi[d];
                    }
                }
        }
        for (size_t r = 0; r < nrows; r++)
            for (size_t j = 0; j < group; j++) {
                float *o = out + r * qdim + (g * group + j) * hd;
                for (size_t d = 0; d < hd; d++)
                    o[d] *= inv[r * group + j];
            }
    }
}

/* ------------------------------------------------------------------------ */
/* Forward pass over a range of tokens, chunked, split across threads.       */
/* ------------------------------------------------------------------------ */
typedef struct fwd {
    engine_h eng;
    const uint32_t *tokens;
    const uint32_t *table;
    size_t start, end; /* token positions to compute */
    pthread_barrier_t barrier;
    pthread_mutex_t gate_mu;
    pthread_cond_t gate_cv;
    bool go;
    /* Chunk buffers, CHUNK rows each. */
    float *x, *xn, *q, *k, *v, *att, *gate, *up;
    float *scores; /* per thread: engine_attention()'s scratch */
    size_t scores_per_thread;
    float *rot; /* per thread: cos and sin, head_dim floats */
} fwd_t;

typedef struct fwd_arg {
    fwd_t *f;
    unsigned tid, nthreads;
} fwd_arg_t;

static void sync_threads(fwd_arg_t *a)
{
    if (a->nthreads > 1)
        pthread_barrier_wait(&a->f->barrier);
}

/* Rows of a chunk are dealt to threads in tiles of ROW_TILE: thread i takes
 * tiles i, i + nthreads, ... Returns the tile's row count, 0 past the end. */
static size_t tile_rows(const fwd_arg_t *a, size_t rows, size_t tile, size_t *r0_p)
{
    const size_t r0 = ((size_t)a->tid + tile * a->nthreads) * ROW_TILE;
    *r0_p = r0;
    return r0 >= rows ? 0 : rows - r0 < ROW_TILE ? rows - r0 : ROW_TILE;
}

static void *fwd_worker(void *arg)
{
    fwd_arg_t *a = arg;
    fwd_t *f = a->f;
    pthread_mutex_lock(&f->gate_mu);
    while (!f->go)
        pthread_cond_wait(&f->gate_cv, &f->gate_mu);
    pthread_mutex_unlock(&f->gate_mu);
    engine_h e = f->eng;
    const engine_config_t *c = &e->cfg;
    const size_t d = c->d_model, hd = c->head_dim, half = hd / 2, ffn = c->ffn_dim;
    float *scores = f->scores + (size_t)a->tid * f->scores_per_thread;
    float *cs = f->rot + (size_t)a->tid * hd, *sn = cs + half;

    for (size_t c0 = f->start; c0 < f->end; c0 += CHUNK) {
        const size_t rows = f->end - c0 < CHUNK ? f->end - c0 : CHUNK;
        for (size_t tile = 0, r0, nr; (nr = tile_rows(a, rows, tile, &r0)) > 0; tile++) {
            for (size_t r = r0; r < r0 + nr; r++)
                memcpy(f->x + r * d, e->embed + (size_t)f->tokens[c0 + r] * d, d * sizeof(float));
        }
        for (uint32_t l = 0; l < c->n_layers; l++) {
            const layer_weights_t *w = &e->layers[l];
            float *kv = e->kv[l];
            /* Phase 1: Q, K, V of this thread's rows; K and V go to the cache. */
            for (size_t tile = 0, r0, nr; (nr = tile_rows(a, rows, tile, &r0)) > 0; tile++) {
                for (size_t r = r0; r < r0 + nr; r++)
                    rmsnorm(f->xn + r * d, f->x + r * d, w->attn_norm, d);
                matmul_tile(f->q + r0 * e->qdim, f->xn + r0 * d, w->wq, nr, d, e->qdim);
                matmul_tile(f->k + r0 * e->kvdim, f->xn + r0 * d, w->wk, nr, d, e->kvdim);
                matmul_tile(f->v + r0 * e->kvdim, f->xn + r0 * d, w->wv, nr, d, e->kvdim);
                for (size_t r = r0; r < r0 + nr; r++) {
                    const size_t pos = c0 + r;
                    for (size_t i = 0; i < half; i++) {
                        const float ang = (float)pos * e->inv_freq[i];
                        cs[i] = cosf(ang);
                        sn[i] = sinf(ang);
                    }
                    rope(f->q + r * e->qdim, c->n_heads, hd, cs, sn);
                    rope(f->k + r * e->kvdim, c->n_kv_heads, hd, cs, sn);
                    for (size_t g = 0; g < c->n_kv_heads; g++) {
                        memcpy(kv + kv_offset(c, f->table, pos, 0, g), f->k + r * e->kvdim + g * hd,
                               hd * sizeof(float));
                        memcpy(kv + kv_offset(c, f->table, pos, 1, g), f->v + r * e->kvdim + g * hd,
                               hd * sizeof(float));
                    }
                }
            }
            /* Every row's K/V must be in the cache before any row attends. */
            sync_threads(a);
            /* Phase 2: causal attention over the cache, output projection,
             * residual, then the SwiGLU MLP and its residual. */
            for (size_t tile = 0, r0, nr; (nr = tile_rows(a, rows, tile, &r0)) > 0; tile++) {
                engine_attention(c, kv, f->table, c0 + r0, nr, f->q + r0 * e->qdim,
                                 f->att + r0 * e->qdim, scores);
                matmul_tile(f->xn + r0 * d, f->att + r0 * e->qdim, w->wo, nr, e->qdim, d);
                for (size_t i = 0; i < nr * d; i++)
                    f->x[r0 * d + i] += f->xn[r0 * d + i];
                for (size_t r = r0; r < r0 + nr; r++)
                    rmsnorm(f->xn + r * d, f->x + r * d, w->mlp_norm, d);
                matmul_tile(f->gate + r0 * ffn, f->xn + r0 * d, w->w_gate, nr, d, ffn);
                matmul_tile(f->up + r0 * ffn, f->xn + r0 * d, w->w_up, nr, d, ffn);
                for (size_t i = r0 * ffn; i < (r0 + nr) * ffn; i++) {
                    const float g = f->gate[i];
                    f->gate[i] = g / (1.0f + expf(-g)) * f->up[i]; /* SiLU(gate) * up */
                }
                matmul_tile(f->xn + r0 * d, f->gate + r0 * ffn, w->w_down, nr, ffn, d);
                for (size_t i = 0; i < nr * d; i++)
                    f->x[r0 * d + i] += f->xn[r0 * d + i];
            }
            /* The next layer's phase 1 overwrites q/k/v/xn of other rows'
             * tiles only after this phase is done everywhere. */
            sync_threads(a);
        }
    }
    return NULL;
}

/* Grows the block table to cover @ntok tokens, popping ids off the shuffled
 * free list. */
static kvs_status_t seq_reserve(engine_seq_h s, size_t ntok)
{
    engine_h e = s->eng;
    const size_t need = (ntok + e->cfg.block_tokens - 1) / e->cfg.block_tokens;
    if (need <= s->nblocks)
        return KVS_OK;
    if (need - s->nblocks > e->nfree)
        return KVS_ERR_NO_SPACE;
    if (need > s->cap_blocks) {
        size_t cap = s->cap_blocks ? s->cap_blocks : 16;
        while (cap < need)
            cap *= 2;
        uint32_t *nb = realloc(s->blocks, cap * sizeof(*nb));
        if (nb == NULL)
            return KVS_ERR_NO_MEMORY;
        s->blocks = nb;
        s->cap_blocks = cap;
    }
    while (s->nblocks < need)
        s->blocks[s->nblocks++] = e->free_ids[--e->nfree];
    return KVS_OK;
}

/* Computes KV for tokens [n_computed, ntok) and the logits of the last. */
static kvs_status_t seq_forward(engine_seq_h s)
{
    engine_h e = s->eng;
    const engine_config_t *c = &e->cfg;
    const size_t d = c->d_model, start = s->n_computed, end = s->ntok;
    kvs_status_t status = seq_reserve(s, end);
    if (status != KVS_OK)
        return status;
    s->forwarded = true; /* no more fetches or shares: they would overwrite this KV */
    const size_t rows = end - start < CHUNK ? end - start : CHUNK;
    unsigned nt = e->threads;
    if (nt > (rows + ROW_TILE - 1) / ROW_TILE)
        nt = (unsigned)((rows + ROW_TILE - 1) / ROW_TILE); /* decode: one token, one thread */

    fwd_t f = {.eng = e, .tokens = s->tokens, .table = s->blocks, .start = start, .end = end};
    const size_t per_chunk = CHUNK * (2 * d + 2 * e->qdim + 2 * e->kvdim + 2 * (size_t)c->ffn_dim);
    f.scores_per_thread = ROW_TILE * (size_t)(c->n_heads / c->n_kv_heads) * (end + 1);
    float *buf =
        malloc((per_chunk + (size_t)nt * (f.scores_per_thread + c->head_dim)) * sizeof(float));
    if (buf == NULL)
        return KVS_ERR_NO_MEMORY;
    float *p = buf;
    f.x = p, p += CHUNK * d;
    f.xn = p, p += CHUNK * d;
    f.q = p, p += CHUNK * e->qdim;
    f.att = p, p += CHUNK * e->qdim;
    f.k = p, p += CHUNK * e->kvdim;
    f.v = p, p += CHUNK * e->kvdim;
    f.gate = p, p += CHUNK * c->ffn_dim;
    f.up = p, p += CHUNK * c->ffn_dim;
    f.scores = p, p += (size_t)nt * f.scores_per_thread;
    f.rot = p;

    /* Workers wait at a gate until the team is complete, so that if a
     * thread cannot be started the barrier is sized for those that were. */
    fwd_arg_t args[64];
    pthread_t tids[64];
    unsigned started = 1;
    pthread_mutex_init(&f.gate_mu, NULL);
    pthread_cond_init(&f.gate_cv, NULL);
    for (unsigned i = 0; i < nt; i++)
        args[i] = (fwd_arg_t){.f = &f, .tid = i};
    for (; started < nt; started++)
        if (pthread_create(&tids[started], NULL, fwd_worker, &args[started]) != 0)
            break;
    for (unsigned i = 0; i < started; i++)
        args[i].nthreads = started;
    pthread_barrier_init(&f.barrier, NULL, started);
    pthread_mutex_lock(&f.gate_mu);
    f.go = true;
    pthread_cond_broadcast(&f.gate_cv);
    pthread_mutex_unlock(&f.gate_mu);
    fwd_worker(&args[0]);
    for (unsigned i = 1; i < started; i++)
        pthread_join(tids[i], NULL);
    pthread_barrier_destroy(&f.barrier);
    pthread_cond_destroy(&f.gate_cv);
    pthread_mutex_destroy(&f.gate_mu);

    /* Logits of the last token only: that is all greedy decoding needs. */
    const size_t last = (end - start - 1) % CHUNK;
    rmsnorm(f.xn, f.x + last * d, e->final_norm, d);
    for (size_t vtok = 0; vtok < c->vocab; vtok++)
        s->logits[vtok] = dot(f.xn, e->lm_head + vtok * d, d);
    uint32_t best = 0;
    for (uint32_t vtok = 1; vtok < c->vocab; vtok++)
        if (s->logits[vtok] > s->logits[best])
            best = vtok; /* ties go to the lowest id, deterministically */
    s->next = best;
    s->n_computed = end;
    free(buf);
    return KVS_OK;
}

/* ------------------------------------------------------------------------ */
/* Engine life cycle                                                        */
/* ------------------------------------------------------------------------ */
void engine_config_default(engine_config_t *cfg)
{
    *cfg = (engine_config_t){.n_layers = 4,
                             .d_model = 256,
                             .n_heads = 4,
                             .n_kv_heads = 2,
                             .head_dim = 64,
                             .ffn_dim = 768,
                             .vocab = 4096,
                             .block_tokens = 16,
                             .num_blocks = 1024,
                             .tied_embeddings = false,
                             .rope_theta = 10000.0f,
                             .weight_seed = 42,
                             .alloc_seed = 1,
                             .threads = 0,
                             .model_id = "kvshare-example-tiny",
                             .hash_seed = "0",
                             .tp_rank = 0,
                             .tp_size = 1,
                             .kv_layout = KVS_KV_NHD};
}

bool engine_tp_heads(uint32_t n_kv_heads, uint32_t tp_rank, uint32_t tp_size, uint32_t *first_p,
                     uint32_t *count_p)
{
    if (n_kv_heads == 0 || tp_size == 0 || tp_rank >= tp_size)
        return false;
    if (tp_size <= n_kv_heads) {
        if (n_kv_heads % tp_size != 0)
            return false;
        *count_p = n_kv_heads / tp_size;
        *first_p = tp_rank * *count_p;
    } else {
        /* More ranks than heads: each head on tp_size / n_kv_heads ranks. */
        if (tp_size % n_kv_heads != 0)
            return false;
        *count_p = 1;
        *first_p = (uint32_t)((uint64_t)tp_rank * n_kv_heads / tp_size);
    }
    return true;
}

static bool config_ok(const engine_config_t *c)
{
    uint32_t h0, nh;
    return c->n_layers > 0 && c->n_layers <= MAX_SEGS && c->d_model > 0 && c->n_heads > 0 &&
           c->n_kv_heads > 0 && c->n_heads % c->n_kv_heads == 0 && c->head_dim > 0 &&
           c->head_dim % 2 == 0 && c->ffn_dim > 0 && c->vocab > 0 && c->block_tokens > 0 &&
           c->num_blocks > 0 && c->model_id != NULL && c->hash_seed != NULL &&
           engine_tp_heads(c->n_kv_heads, c->tp_rank, c->tp_size, &h0, &nh) &&
           (c->kv_layout == KVS_KV_NHD || c->kv_layout == KVS_KV_HND);
}

/* Copies heads [head0, head0 + nheads) of one block of one layer between the
 * engine's cache (@cache: 2, block_tokens, n_kv_heads, head_dim) and a TP
 * rank's share of it (@slice, in @layout), in the direction @to_slice says. */
static void slice_copy(const engine_config_t *c, float *cache, float *slice, uint32_t head0,
                       uint32_t nheads, kvs_kv_layout_t layout, bool to_slice)
{
    const size_t bt = c->block_tokens, hd = c->head_dim, kvdim = (size_t)c->n_kv_heads * hd;
    for (size_t p = 0; p < 2; p++)
        for (size_t t = 0; t < bt; t++)
            for (size_t j = 0; j < nheads; j++) {
                float *a = cache + (p * bt + t) * kvdim + (head0 + j) * hd;
                float *b = slice + (layout == KVS_KV_NHD ? (p * bt + t) * nheads * hd + j * hd
                                                         : (p * nheads + j) * bt * hd + t * hd);
                if (to_slice)
                    memcpy(b, a, hd * sizeof(float));
                else
                    memcpy(a, b, hd * sizeof(float));
            }
}

/* Copies the sequence's leading @nblocks blocks from the cache into the TP
 * view (blocks already copied are skipped: a full block's KV never changes). */
static void view_pack(engine_seq_h s, size_t nblocks)
{
    engine_h e = s->eng;
    if (!e->own_view)
        return;
    for (size_t i = s->packed; i < nblocks; i++)
        for (uint32_t l = 0; l < e->cfg.n_layers; l++)
            slice_copy(&e->cfg, e->kv[l] + (size_t)s->blocks[i] * e->block_floats,
                       e->view[l] + (size_t)s->blocks[i] * e->view_block_floats, e->head0,
                       e->view_heads, e->cfg.kv_layout, true);
    if (nblocks > s->packed)
        s->packed = nblocks;
}

/* Copies the sequence's leading @nblocks blocks from the TP view (where
 * fetches land) into the cache, for the heads the view holds. */
static void view_unpack(engine_seq_h s, size_t nblocks)
{
    engine_h e = s->eng;
    if (!e->own_view)
        return;
    for (size_t i = 0; i < nblocks; i++)
        for (uint32_t l = 0; l < e->cfg.n_layers; l++)
            slice_copy(&e->cfg, e->kv[l] + (size_t)s->blocks[i] * e->block_floats,
                       e->view[l] + (size_t)s->blocks[i] * e->view_block_floats, e->head0,
                       e->view_heads, e->cfg.kv_layout, false);
}

/* The prompt's KV is in the cache for the blocks every head is present in. */
static void seq_update_computed(engine_seq_h s)
{
    engine_h e = s->eng;
    size_t n = SIZE_MAX;
    for (uint32_t g = 0; g < e->cfg.n_kv_heads; g++)
        n = s->head_hits[g] < n ? s->head_hits[g] : n;
    s->n_computed = n * e->cfg.block_tokens;
}

bool engine_kvs_layout(const engine_config_t *c, const char *model_id, kvs_layout_t *layout_p)
{
    uint32_t h0, nh;
    if (!engine_tp_heads(c->n_kv_heads, c->tp_rank, c->tp_size, &h0, &nh))
        return false;
    *layout_p = (kvs_layout_t){.field_mask = KVS_LAYOUT_FIELD_TOTAL_KV_HEADS,
                               .model_id = model_id,
                               .dtype = KVS_DTYPE_FP32,
                               .block_tokens = c->block_tokens,
                               .num_layers = c->n_layers,
                               .num_kv_heads = nh,
                               .head_dim = c->head_dim,
                               .tp_rank = c->tp_rank,
                               .tp_size = c->tp_size,
                               .kv_layout = c->kv_layout,
                               .total_kv_heads = c->n_kv_heads,
                               .kv_order = KVS_KV_ORDER_BLOCK_OUTER};
    return true;
}

/* Describes the KV cache to kvshare. */
static kvs_status_t engine_kvs_attach(engine_h e)
{
    const engine_config_t *c = &e->cfg;
    /* The layout id is what keeps peers from exchanging KV that does not fit.
     * It covers geometry and dtype; the model id (engine_create()) must name
     * everything else that changes the KV values, such as the weights. */
    /* num_kv_heads is the rank's share (as vLLM's tensor holds it) and
     * total_kv_heads the model's: together with tp_rank/tp_size they say
     * which heads this rank holds, so a reader at another TP size can plan
     * its slices (issue 13). */
    kvs_layout_t layout;
    if (!engine_kvs_layout(c, e->model_id, &layout))
        return KVS_ERR_INVALID_PARAM; /* engine_create() checked the split */
    /* One segment per layer, exactly as vLLM allocates them: block id b is
     * the same slot in every layer, so a block moves as n_layers pieces.
     * kvshare sees the TP rank's view: its heads, in its layout. */
    kvs_segment_t segs[MAX_SEGS];
    const size_t block_bytes = e->view_block_floats * sizeof(float);
    for (uint32_t l = 0; l < c->n_layers; l++)
        segs[l] = (kvs_segment_t){.base = e->view[l],
                                  .block_stride = block_bytes,
                                  .block_bytes = block_bytes,
                                  .mem_type = KVS_MEM_HOST};
    const kvs_pool_params_t pp = {.field_mask = KVS_POOL_FIELD_NAME,
                                  .layout = &layout,
                                  .segments = segs,
                                  .num_segments = c->n_layers,
                                  .num_blocks = c->num_blocks,
                                  .name = "example-engine"};
    kvs_status_t status = e->kvs->pool_create(e->ctx, &pp, &e->pool);
    if (status != KVS_OK)
        return status;
    e->layout_id = e->kvs->pool_layout_id(e->pool);
    /* Block keys exactly as vLLM computes them (sha256_cbor under
     * PYTHONHASHSEED), so our keys and a vLLM replica's name the same KV. */
    const kvs_hasher_params_t hp = {.field_mask = KVS_HASHER_FIELD_ALGO | KVS_HASHER_FIELD_SEED |
                                                  KVS_HASHER_FIELD_BLOCK_TOKENS,
                                    .algo = KVS_HASH_SHA256_CBOR,
                                    .seed = c->hash_seed,
                                    .block_tokens = c->block_tokens};
    status = e->kvs->hasher_create(&hp, &e->hasher);
    if (status != KVS_OK) {
        e->kvs->pool_destroy(e->pool);
        e->pool = NULL;
    }
    return status;
}

kvs_status_t engine_create(const engine_config_t *cfg, const engine_kvs_t *api, kvs_ctx_h ctx,
                           engine_h *eng_p)
{
    kvs_status_t status = KVS_ERR_NO_MEMORY;
    if (cfg == NULL || eng_p == NULL || !config_ok(cfg))
        return KVS_ERR_INVALID_PARAM;
    engine_h e = calloc(1, sizeof(*e));
    if (e == NULL)
        return KVS_ERR_NO_MEMORY;
    e->cfg = *cfg;
    const engine_config_t *c = &e->cfg;
    const size_t d = c->d_model, ffn = c->ffn_dim, L = c->n_layers;
    e->qdim = (size_t)c->n_heads * c->head_dim;
    e->kvdim = (size_t)c->n_kv_heads * c->head_dim;
    e->block_floats = 2 * (size_t)c->block_tokens * e->kvdim;
    engine_tp_heads(c->n_kv_heads, c->tp_rank, c->tp_size, &e->head0, &e->view_heads);
    e->view_block_floats = 2 * (size_t)c->block_tokens * e->view_heads * c->head_dim;
    snprintf(e->model_id, sizeof(e->model_id), "%s/d%u-h%u-ffn%u-v%u-%s-rope%g-seed%llu",
             c->model_id, c->d_model, c->n_heads, c->ffn_dim, c->vocab,
             c->tied_embeddings ? "tied" : "untied", (double)c->rope_theta,
             (unsigned long long)c->weight_seed);
    /* The cache itself is the rank's view when it holds every head in NHD. */
    e->own_view = e->view_heads != c->n_kv_heads || c->kv_layout != KVS_KV_NHD;
    if (c->threads > 0)
        e->threads = c->threads;
    else {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        e->threads = n > 0 ? (unsigned)n : 1;
    }
    if (e->threads > 64)
        e->threads = 64;

    const size_t per_layer = 2 * d + 2 * d * e->qdim + 2 * d * e->kvdim + 3 * d * ffn;
    const size_t embeds = (c->tied_embeddings ? 1 : 2) * (size_t)c->vocab * d;
    e->weights = malloc((embeds + d + L * per_layer) * sizeof(float));
    e->layers = calloc(L, sizeof(*e->layers));
    e->inv_freq = malloc(c->head_dim / 2 * sizeof(float));
    e->kv = calloc(L, sizeof(*e->kv));
    e->view = e->own_view ? calloc(L, sizeof(*e->view)) : e->kv;
    e->free_ids = malloc((size_t)c->num_blocks * sizeof(*e->free_ids));
    if (e->weights == NULL || e->layers == NULL || e->inv_freq == NULL || e->kv == NULL ||
        e->view == NULL || e->free_ids == NULL)
        goto err_free;
    for (size_t l = 0; l < L; l++) {
        /* calloc: a fresh cache reads as zeros, never as garbage. */
        const size_t kv_bytes = (size_t)c->num_blocks * e->block_floats * sizeof(float);
        e->kv[l] = calloc(1, kv_bytes);
        if (e->kv[l] == NULL)
            goto err_free;
        /* Fault every page in now, as an engine that zeroes its KV cache at
         * start does: a fetch into untouched pages takes a page fault per 4
         * KiB inside the transport (measured: 60-70 of a cold 80 ms fetch of
         * 16 MiB here), which belongs to start-up, not to a request. */
        for (size_t off = 0; off < kv_bytes; off += 4096)
            ((volatile uint8_t *)e->kv[l])[off] = 0;
        if (e->own_view && api != NULL && ctx != NULL) {
            const size_t view_bytes = (size_t)c->num_blocks * e->view_block_floats * sizeof(float);
            e->view[l] = calloc(1, view_bytes);
            if (e->view[l] == NULL)
                goto err_free;
            for (size_t off = 0; off < view_bytes; off += 4096)
                ((volatile uint8_t *)e->view[l])[off] = 0;
        }
    }

    /* Weights in one fixed order from one stream: same seed, same model. */
    uint64_t rng = c->weight_seed;
    float *p = e->weights;
    e->embed = p, p += (size_t)c->vocab * d;
    fill_uniform(e->embed, (size_t)c->vocab * d, 1.0f, &rng);
    const float s_d = 1.0f / sqrtf((float)d), s_q = 1.0f / sqrtf((float)e->qdim),
                s_f = 1.0f / sqrtf((float)ffn);
    for (size_t l = 0; l < L; l++) {
        layer_weights_t *w = &e->layers[l];
        w->attn_norm = p, p += d;
        fill_ones(w->attn_norm, d);
        w->wq = p, p += d * e->qdim;
        fill_uniform(w->wq, d * e->qdim, s_d, &rng);
        w->wk = p, p += d * e->kvdim;
        fill_uniform(w->wk, d * e->kvdim, s_d, &rng);
        w->wv = p, p += d * e->kvdim;
        fill_uniform(w->wv, d * e->kvdim, s_d, &rng);
        w->wo = p, p += e->qdim * d;
        fill_uniform(w->wo, e->qdim * d, s_q, &rng);
        w->mlp_norm = p, p += d;
        fill_ones(w->mlp_norm, d);
        w->w_gate = p, p += d * ffn;
        fill_uniform(w->w_gate, d * ffn, s_d, &rng);
        w->w_up = p, p += d * ffn;
        fill_uniform(w->w_up, d * ffn, s_d, &rng);
        w->w_down = p, p += ffn * d;
        fill_uniform(w->w_down, ffn * d, s_f, &rng);
    }
    e->final_norm = p, p += d;
    fill_ones(e->final_norm, d);
    if (c->tied_embeddings) {
        e->lm_head = e->embed;
    } else {
        e->lm_head = p;
        fill_uniform(e->lm_head, (size_t)c->vocab * d, 1.0f, &rng);
    }
    for (size_t i = 0; i < c->head_dim / 2; i++)
        e->inv_freq[i] = powf(c->rope_theta, -(float)(2 * i) / (float)c->head_dim);

    /* The free list is a stack popped from the end: ids come out 0, 1, 2, ...
     * unless shuffled. Real engines hand out scattered ids once blocks have
     * been freed and reused, so by default we scatter them from the start. */
    for (uint32_t i = 0; i < c->num_blocks; i++)
        e->free_ids[i] = c->num_blocks - 1 - i;
    e->nfree = c->num_blocks;
    if (c->alloc_seed != 0) {
        uint64_t arng = c->alloc_seed;
        for (uint32_t i = c->num_blocks - 1; i > 0; i--) {
            const uint32_t j = (uint32_t)(splitmix64(&arng) % ((uint64_t)i + 1));
            const uint32_t t = e->free_ids[i];
            e->free_ids[i] = e->free_ids[j];
            e->free_ids[j] = t;
        }
    }

    if (api != NULL && ctx != NULL) {
        e->kvs = api;
        e->ctx = ctx;
        status = engine_kvs_attach(e);
        if (status != KVS_OK)
            goto err_free;
    }
    *eng_p = e;
    return KVS_OK;

err_free:
    e->kvs = NULL; /* nothing of kvshare's to undo */
    engine_destroy(e);
    return status;
}

void engine_destroy(engine_h e)
{
    if (e == NULL)
        return;
    if (e->kvs != NULL) {
        /* Unpublishes what is left; waits for leases readers still hold. */
        e->kvs->pool_destroy(e->pool);
        e->kvs->hasher_destroy(e->hasher);
    }
    if (e->own_view && e->view != NULL) {
        for (size_t l = 0; l < e->cfg.n_layers; l++)
            free(e->view[l]);
        free(e->view);
    }
    if (e->kv != NULL)
        for (size_t l = 0; l < e->cfg.n_layers; l++)
            free(e->kv[l]);
    free(e->kv);
    free(e->free_ids);
    free(e->inv_freq);
    free(e->layers);
    free(e->weights);
    free(e);
}

kvs_pool_h engine_pool(engine_h eng)
{
    return eng->pool;
}

/* ------------------------------------------------------------------------ */
/* Sequences                                                                */
/* ------------------------------------------------------------------------ */
kvs_status_t engine_seq_create(engine_h eng, const uint32_t *prompt, size_t n, engine_seq_h *seq_p)
{
    if (eng == NULL || prompt == NULL || n == 0 || seq_p == NULL)
        return KVS_ERR_INVALID_PARAM;
    for (size_t i = 0; i < n; i++)
        if (prompt[i] >= eng->cfg.vocab)
            return KVS_ERR_INVALID_PARAM;
    engine_seq_h s = calloc(1, sizeof(*s));
    if (s == NULL)
        return KVS_ERR_NO_MEMORY;
    s->eng = eng;
    s->cap_tok = n + 64;
    s->tokens = malloc(s->cap_tok * sizeof(*s->tokens));
    s->logits = calloc(eng->cfg.vocab, sizeof(*s->logits));
    s->head_hits = calloc(eng->cfg.n_kv_heads, sizeof(*s->head_hits));
    if (s->tokens == NULL || s->logits == NULL || s->head_hits == NULL) {
        engine_seq_destroy(s);
        return KVS_ERR_NO_MEMORY;
    }
    memcpy(s->tokens, prompt, n * sizeof(*prompt));
    s->ntok = s->prompt_len = n;
    s->stats.prompt_tokens = n;
    *seq_p = s;
    return KVS_OK;
}

/* Returns every block to the free list. Blocks published zero-copy are
 * withdrawn first: kvshare may hand them to readers until then. */
static void seq_free_blocks(engine_seq_h s)
{
    engine_h e = s->eng;
    if (s->zc_published > 0)
        engine_unpublish(s, true);
    for (size_t i = s->nblocks; i-- > 0;)
        e->free_ids[e->nfree++] = s->blocks[i];
    s->nblocks = 0;
    s->n_computed = 0;
    s->packed = 0;
}

void engine_seq_destroy(engine_seq_h s)
{
    if (s == NULL)
        return;
    seq_free_blocks(s);
    free(s->blocks);
    free(s->tokens);
    free(s->logits);
    free(s->head_hits);
    free(s);
}

const float *engine_seq_logits(engine_seq_h seq)
{
    return seq->logits;
}

size_t engine_seq_blocks(engine_seq_h seq, const uint32_t **ids_p)
{
    *ids_p = seq->blocks;
    return seq->nblocks;
}

void engine_seq_stats(engine_seq_h seq, engine_stats_t *stats)
{
    *stats = seq->stats;
    stats->ttft_s =
        seq->stats.lookup_s + seq->stats.fetch_s + seq->stats.gather_s + seq->stats.prefill_s;
}

kvs_status_t engine_prefill(engine_seq_h s)
{
    if (s == NULL || s->prefilled || s->n_computed >= s->prompt_len)
        return KVS_ERR_INVALID_PARAM;
    const double t0 = now_s();
    const size_t from = s->n_computed;
    kvs_status_t status = seq_forward(s);
    if (status != KVS_OK)
        return status;
    s->prefilled = true;
    s->stats.computed_tokens = s->prompt_len - from;
    s->stats.prefill_s = now_s() - t0;
    return KVS_OK;
}

kvs_status_t engine_decode(engine_seq_h s, size_t n, uint32_t *out)
{
    if (s == NULL || !s->prefilled || (n > 0 && out == NULL))
        return KVS_ERR_INVALID_PARAM;
    const double t0 = now_s();
    for (size_t i = 0; i < n; i++) {
        if (s->ntok == s->cap_tok) {
            uint32_t *nt = realloc(s->tokens, 2 * s->cap_tok * sizeof(*nt));
            if (nt == NULL)
                return KVS_ERR_NO_MEMORY;
            s->tokens = nt;
            s->cap_tok *= 2;
        }
        /* Emit the chosen token, then feed it back: its KV joins the cache
         * and its logits choose the next one. */
        out[i] = s->next;
        s->tokens[s->ntok++] = s->next;
        kvs_status_t status = seq_forward(s);
        if (status != KVS_OK) {
            s->ntok--;
            return status;
        }
        s->stats.decoded_tokens++;
    }
    s->stats.decode_s += now_s() - t0;
    return KVS_OK;
}

/* ------------------------------------------------------------------------ */
/* kvshare: every call the engine makes to the library is below.            */
/* ------------------------------------------------------------------------ */

/* The keys of the first @nblocks full blocks of the sequence. The chain is
 * hashed from the tokens alone, so any engine that sees the same prompt
 * (prefill pod, decode pod, another replica) derives the same keys. */
static kvs_status_t seq_keys(engine_seq_h s, size_t nblocks, kvs_key_t **keys_p)
{
    engine_h e = s->eng;
    kvs_key_t *keys = malloc((nblocks ? nblocks : 1) * sizeof(*keys));
    if (keys == NULL)
        return KVS_ERR_NO_MEMORY;
    size_t nkeys = 0;
    kvs_status_t status = e->kvs->hasher_chain(
        e->hasher, NULL, s->tokens, nblocks * e->cfg.block_tokens, keys, nblocks, &nkeys);
    if (status != KVS_OK || nkeys != nblocks) {
        free(keys);
        return status != KVS_OK ? status : KVS_ERR_INVALID_PARAM;
    }
    *keys_p = keys;
    return KVS_OK;
}

kvs_status_t engine_publish(engine_seq_h s, unsigned flags, size_t *published_p)
{
    if (s == NULL)
        return KVS_ERR_INVALID_PARAM;
    engine_h e = s->eng;
    if (e->kvs == NULL)
        return KVS_ERR_UNSUPPORTED;
    /* Only blocks whose every token's KV is computed: a partial block's
     * key would name tokens that are not in it yet. */
    const size_t nfull = s->n_computed / e->cfg.block_tokens;
    const bool zcopy = (flags & ENGINE_PUBLISH_ZERO_COPY) != 0;
    view_pack(s, nfull);
    kvs_key_t *keys;
    kvs_status_t status = seq_keys(s, nfull, &keys);
    if (status != KVS_OK)
        return status;
    /* Copy mode (default) lets the engine reuse its blocks at once. Zero-copy
     * saves the copy but pins the blocks: the engine must withdraw them
     * (engine_unpublish) before it frees or overwrites them. */
    size_t published = 0;
    status = e->kvs->publish(e->pool, keys, s->blocks, nfull, zcopy ? KVS_PUBLISH_ZERO_COPY : 0,
                             &published);
    free(keys);
    if (status != KVS_OK)
        return status;
    if (zcopy && nfull > s->zc_published)
        s->zc_published = nfull;
    if (published_p != NULL)
        *published_p = published;
    return KVS_OK;
}

kvs_status_t engine_offload(engine_seq_h s, size_t *blocks_p)
{
    if (s == NULL)
        return KVS_ERR_INVALID_PARAM;
    engine_h e = s->eng;
    if (e->kvs == NULL)
        return KVS_ERR_UNSUPPORTED;
    const size_t nfull = s->n_computed / e->cfg.block_tokens;
    view_pack(s, nfull);
    kvs_key_t *keys;
    kvs_status_t status = seq_keys(s, nfull, &keys);
    if (status != KVS_OK)
        return status;
    /* The pool node pulls the blocks straight from our KV cache, so they
     * must not change until the request completes: wait for it here rather
     * than let the engine reuse them under the node's reads. */
    kvs_request_h req = NULL;
    status = nfull > 0 ? e->kvs->put_ex(e->pool, keys, s->blocks, nfull, NULL, &req) : KVS_OK;
    if (req != NULL) {
        status = e->kvs->request_wait(req, -1);
        e->kvs->request_free(req);
    }
    free(keys);
    if (status == KVS_OK && blocks_p != NULL)
        *blocks_p = nfull;
    return status;
}

kvs_status_t engine_unpublish(engine_seq_h s, bool force)
{
    if (s == NULL)
        return KVS_ERR_INVALID_PARAM;
    engine_h e = s->eng;
    if (e->kvs == NULL)
        return KVS_ERR_UNSUPPORTED;
    /* Forcing bumps each block's generation: a reader mid-copy then gets
     * KVS_ERR_STALE and recomputes, instead of KV we are about to overwrite. */
    kvs_status_t status =
        e->kvs->unpublish(e->pool, s->blocks, s->zc_published, force ? KVS_UNPUBLISH_FORCE : 0);
    if (status == KVS_OK)
        s->zc_published = 0;
    return status;
}

kvs_status_t engine_connect(engine_h e, const char *peer)
{
    if (e == NULL || peer == NULL)
        return KVS_ERR_INVALID_PARAM;
    if (e->kvs == NULL)
        return KVS_ERR_UNSUPPORTED;
    const kvs_connect_params_t cp = {.field_mask = KVS_CONNECT_FIELD_FLAGS,
                                     .flags = KVS_CONNECT_BACKGROUND};
    kvs_status_t status = e->kvs->peer_connect(e->ctx, e->layout_id, peer, &cp);
    return status == KVS_INPROGRESS ? KVS_OK : status;
}

kvs_status_t engine_lookup(engine_seq_h s, const kvs_lookup_params_t *params, kvs_lease_h *lease_p)
{
    if (s == NULL || lease_p == NULL || s->forwarded || s->prefilled)
        return KVS_ERR_INVALID_PARAM;
    engine_h e = s->eng;
    if (e->kvs == NULL)
        return KVS_ERR_UNSUPPORTED;
    /* Ask only for blocks that end before the last prompt token: its logits
     * pick the first generated token, so at least it must be computed here
     * (vLLM does the same when a prompt is fully cached). */
    const size_t nkeys = (s->prompt_len - 1) / e->cfg.block_tokens;
    const double t0 = now_s();
    kvs_key_t *keys;
    kvs_status_t status = seq_keys(s, nkeys, &keys);
    if (status != KVS_OK)
        return status;
    /* The lookup leases the longest cached prefix: until we release it, the
     * holder will not evict or reuse those blocks, so the fetch below cannot
     * read KV that changed under it. */
    status = e->kvs->lookup(e->ctx, e->layout_id, keys, nkeys, params, lease_p);
    free(keys);
    s->stats.lookup_s += now_s() - t0;
    return status;
}

kvs_status_t engine_fetch(engine_seq_h s, kvs_lease_h lease, size_t *hit_tokens_p)
{
    if (s == NULL || lease == NULL || hit_tokens_p == NULL || s->forwarded || s->prefilled)
        return KVS_ERR_INVALID_PARAM;
    engine_h e = s->eng;
    if (e->kvs == NULL)
        return KVS_ERR_UNSUPPORTED;
    const double t0 = now_s();
    const size_t hits = e->kvs->lease_hits(lease);
    /* Fresh blocks from our own allocator: scattered ids, like any other
     * allocation. kvshare copies block i of the lease into blocks[i]. */
    kvs_status_t status = seq_reserve(s, hits * e->cfg.block_tokens);
    kvs_request_h req = NULL;
    if (status == KVS_OK && hits > 0)
        status = e->kvs->fetch(lease, e->pool, s->blocks, hits, NULL, &req);
    if (req != NULL) {
        /* The fetch is asynchronous (from a peer or pool node, a GET or push
         * over the transport); -1 waits until the request's own deadline,
         * which always exists. A changed block fails
         * the whole request with KVS_ERR_STALE: never wrong KV. */
        status = e->kvs->request_wait(req, -1);
        e->kvs->request_free(req);
    }
    /* Released only now: the holder may reuse the blocks once we have them. */
    e->kvs->lease_release(lease);
    s->stats.fetch_s += now_s() - t0;
    if (status != KVS_OK) {
        /* Nothing counts as fetched, from this source or any before it:
         * engine_prefill() recomputes all. */
        s->fetched = false;
        s->view_hits = 0;
        memset(s->head_hits, 0, e->cfg.n_kv_heads * sizeof(*s->head_hits));
        s->n_computed = 0;
        s->stats.hit_tokens = 0;
        s->stats.fetched_bytes = 0;
        return status;
    }
    /* Another source of the same share (e.g. the next prefill rank whose
     * heads overlap ours) counts only for the blocks both brought. */
    s->view_hits = s->fetched && s->view_hits < hits ? s->view_hits : hits;
    s->fetched = true;
    /* The share lands in the rank's view; the math reads the cache. */
    view_unpack(s, s->view_hits);
    for (uint32_t j = 0; j < e->view_heads; j++)
        s->head_hits[e->head0 + j] = s->view_hits;
    seq_update_computed(s);
    s->stats.hit_tokens = s->view_hits * e->cfg.block_tokens;
    s->stats.fetched_bytes =
        (uint64_t)s->view_hits * e->cfg.n_layers * (uint64_t)(e->view_block_floats * sizeof(float));
    *hit_tokens_p = s->stats.hit_tokens;
    return KVS_OK;
}

kvs_status_t engine_load_prefix(engine_seq_h s, const kvs_lookup_params_t *params,
                                size_t *hit_tokens_p)
{
    kvs_lease_h lease;
    kvs_status_t status = engine_lookup(s, params, &lease);
    if (status != KVS_OK)
        return status;
    return engine_fetch(s, lease, hit_tokens_p);
}

/* ------------------------------------------------------------------------ */
/* TP shares in files: how decode ranks hand their fetched KV to the one    */
/* that decodes. Not kvshare: the demo's stand-in for an all-gather.        */
/* ------------------------------------------------------------------------ */
#define SLICE_MAGIC   "KVSSLICE"
#define SLICE_VERSION 1u

typedef struct slice_hdr {
    char magic[8];
    uint32_t version, tp_rank, tp_size, kv_layout;
    uint32_t n_layers, block_tokens, n_kv_heads, head_dim;
    uint64_t nblocks;
    uint64_t tokens_hash; /* FNV-1a of the nblocks * block_tokens tokens */
    char model_id[192];
} slice_hdr_t;

static uint64_t tokens_hash(const uint32_t *t, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++)
        for (unsigned b = 0; b < 4; b++) {
            h ^= (t[i] >> (8 * b)) & 0xffu;
            h *= 0x100000001b3ull;
        }
    return h;
}

kvs_status_t engine_slice_save(engine_seq_h s, const char *path)
{
    if (s == NULL || path == NULL || !s->fetched || s->view_hits == 0)
        return KVS_ERR_INVALID_PARAM;
    engine_h e = s->eng;
    const engine_config_t *c = &e->cfg;
    slice_hdr_t h = {.version = SLICE_VERSION,
                     .tp_rank = c->tp_rank,
                     .tp_size = c->tp_size,
                     .kv_layout = (uint32_t)c->kv_layout,
                     .n_layers = c->n_layers,
                     .block_tokens = c->block_tokens,
                     .n_kv_heads = c->n_kv_heads,
                     .head_dim = c->head_dim,
                     .nblocks = s->view_hits,
                     .tokens_hash = tokens_hash(s->tokens, s->view_hits * c->block_tokens)};
    memcpy(h.magic, SLICE_MAGIC, sizeof(h.magic));
    snprintf(h.model_id, sizeof(h.model_id), "%s", e->model_id);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return KVS_ERR_IO;
    FILE *f = fdopen(fd, "wb");
    if (f == NULL) {
        close(fd);
        return KVS_ERR_IO;
    }
    /* Exactly the bytes the fetch put in the rank's view, block by block. */
    bool ok = fwrite(&h, sizeof(h), 1, f) == 1;
    for (size_t i = 0; ok && i < s->view_hits; i++)
        for (uint32_t l = 0; ok && l < c->n_layers; l++)
            ok = fwrite(e->view[l] + (size_t)s->blocks[i] * e->view_block_floats, sizeof(float),
                        e->view_block_floats, f) == e->view_block_floats;
    if (fclose(f) != 0)
        ok = false;
    return ok ? KVS_OK : KVS_ERR_IO;
}

kvs_status_t engine_slice_load(engine_seq_h s, const char *path, size_t *blocks_p)
{
    if (s == NULL || path == NULL || s->forwarded || s->prefilled)
        return KVS_ERR_INVALID_PARAM;
    engine_h e = s->eng;
    const engine_config_t *c = &e->cfg;
    const double t0 = now_s();
    FILE *f = fopen(path, "rbe");
    if (f == NULL)
        return KVS_ERR_IO;
    slice_hdr_t h;
    kvs_status_t status = KVS_OK;
    uint32_t head0 = 0, nheads = 0;
    size_t floats = 0;
    float *buf = NULL;
    if (fread(&h, sizeof(h), 1, f) != 1) {
        status = KVS_ERR_IO;
        goto out;
    }
    h.model_id[sizeof(h.model_id) - 1] = '\0';
    /* Only a share of this model's KV, of this prompt, in a layout we know. */
    if (memcmp(h.magic, SLICE_MAGIC, sizeof(h.magic)) != 0 || h.version != SLICE_VERSION ||
        strcmp(h.model_id, e->model_id) != 0 || h.n_layers != c->n_layers ||
        h.block_tokens != c->block_tokens || h.n_kv_heads != c->n_kv_heads ||
        h.head_dim != c->head_dim || (h.kv_layout != KVS_KV_NHD && h.kv_layout != KVS_KV_HND) ||
        !engine_tp_heads(h.n_kv_heads, h.tp_rank, h.tp_size, &head0, &nheads) || h.nblocks == 0 ||
        h.nblocks > (s->prompt_len - 1) / c->block_tokens ||
        h.tokens_hash != tokens_hash(s->tokens, h.nblocks * c->block_tokens)) {
        status = KVS_ERR_INVALID_PARAM;
        goto out;
    }
    status = seq_reserve(s, h.nblocks * c->block_tokens);
    if (status != KVS_OK)
        goto out;
    floats = 2 * (size_t)c->block_tokens * nheads * c->head_dim;
    buf = malloc(floats * sizeof(float));
    if (buf == NULL) {
        status = KVS_ERR_NO_MEMORY;
        goto out;
    }
    for (size_t i = 0; i < h.nblocks; i++)
        for (uint32_t l = 0; l < c->n_layers; l++) {
            if (fread(buf, sizeof(float), floats, f) != floats) {
                status = KVS_ERR_IO;
                goto out;
            }
            slice_copy(c, e->kv[l] + (size_t)s->blocks[i] * e->block_floats, buf, head0, nheads,
                       (kvs_kv_layout_t)h.kv_layout, false);
        }
    for (uint32_t j = 0; j < nheads; j++)
        if (s->head_hits[head0 + j] < h.nblocks)
            s->head_hits[head0 + j] = h.nblocks;
    seq_update_computed(s);
    s->stats.gathered_tokens = s->n_computed;
    if (blocks_p != NULL)
        *blocks_p = h.nblocks;
out:
    free(buf);
    fclose(f);
    s->stats.gather_s += now_s() - t0;
    return status;
}
