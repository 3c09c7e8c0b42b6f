/* SPDX-License-Identifier: Apache-2.0 */
/* test_engine.c - the example engine: paged attention, and KV fetched through kvshare equal to KV
 * recomputed. */
/*
 * Built twice: test_engine reaches libkvshare through the linked library,
 * test_engine_dlopen (-DKVSE_DLOPEN) through dlopen of the library just
 * built, so every scenario below also proves the dlopen path.
 */
#include "engine.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifdef KVSE_DLOPEN
#include <dlfcn.h>
#endif

#define NDECODE 16

static engine_kvs_t api;

static void api_setup(void)
{
#ifdef KVSE_DLOPEN
    char err[512] = "";
    const char *path = getenv("KVSHARE_ENGINE_LIB");
    cr_assert_eq(engine_kvs_dlopen(&api, path ? path : KVSE_LIBKVSHARE_PATH, err, sizeof(err)),
                 KVS_OK, "%s", err);
#else
    engine_kvs_linked(&api);
#endif
}

static void api_teardown(void)
{
    engine_kvs_close(&api);
}

/* Small enough for a Debug + ASan build, with every feature on: GQA (4 query
 * heads over 2 KV heads), several layers, untied embeddings. */
static engine_config_t small_cfg(uint64_t alloc_seed)
{
    engine_config_t c;
    engine_config_default(&c);
    c.n_layers = 2;
    c.d_model = 64;
    c.n_heads = 4;
    c.n_kv_heads = 2;
    c.head_dim = 16;
    c.ffn_dim = 128;
    c.vocab = 512;
    c.num_blocks = 64;
    c.threads = 2;
    c.alloc_seed = alloc_seed;
    return c;
}

static void make_prompt(uint32_t *p, size_t n, uint64_t seed, uint32_t vocab)
{
    for (size_t i = 0; i < n; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        p[i] = (uint32_t)((seed >> 33) % vocab);
    }
}

static kvs_ctx_h new_ctx(void)
{
    char err[256] = "";
    /* Local store only (no UCX context, no progress thread); the environment
     * must not change what a test sees. */
    kvs_ctx_params_t p = {.field_mask = KVS_CTX_FIELD_NO_ENV | KVS_CTX_FIELD_CAPACITY |
                                        KVS_CTX_FIELD_ERRBUF | KVS_CTX_FIELD_TRANSPORT,
                          .transport = "none",
                          .capacity_bytes = 16u << 20,
                          .errbuf = err,
                          .errbuf_len = sizeof(err)};
    kvs_ctx_h ctx = NULL;
    cr_assert_eq(api.ctx_create(&p, &ctx), KVS_OK, "kvs_ctx_create: %s", err);
    return ctx;
}

/* What a run produced: the logits after prefill and after each decode step,
 * and the tokens. Compared bit for bit. */
typedef struct trace {
    uint32_t vocab;
    float *logits; /* (NDECODE + 1) x vocab */
    uint32_t tokens[NDECODE];
    engine_stats_t stats;
} trace_t;

static void trace_init(trace_t *t, uint32_t vocab)
{
    t->vocab = vocab;
    t->logits = calloc((size_t)(NDECODE + 1) * vocab, sizeof(float));
    cr_assert_not_null(t->logits);
}

/* Prefill (whatever is not cached yet), then decode token by token, keeping
 * every step's logits. */
static void run_rest(engine_seq_h seq, trace_t *t)
{
    cr_assert_eq(engine_prefill(seq), KVS_OK);
    memcpy(t->logits, engine_seq_logits(seq), t->vocab * sizeof(float));
    for (size_t i = 0; i < NDECODE; i++) {
        cr_assert_eq(engine_decode(seq, 1, &t->tokens[i]), KVS_OK);
        memcpy(t->logits + (i + 1) * t->vocab, engine_seq_logits(seq), t->vocab * sizeof(float));
    }
    engine_seq_stats(seq, &t->stats);
}

/* The reference: engine C, no kvshare, computes everything itself. */
static void run_recompute(const engine_config_t *cfg, const uint32_t *prompt, size_t n, trace_t *t)
{
    engine_h e;
    engine_seq_h s;
    trace_init(t, cfg->vocab);
    cr_assert_eq(engine_create(cfg, NULL, NULL, &e), KVS_OK);
    cr_assert_eq(engine_seq_create(e, prompt, n, &s), KVS_OK);
    run_rest(s, t);
    engine_seq_destroy(s);
    engine_destroy(e);
}

static void assert_same(const trace_t *a, const trace_t *b)
{
    for (size_t step = 0; step <= NDECODE; step++)
        cr_assert(memcmp(a->logits + step * a->vocab, b->logits + step * b->vocab,
                         a->vocab * sizeof(float)) == 0,
                  "logits differ at step %zu", step);
    cr_assert(memcmp(a->tokens, b->tokens, sizeof(a->tokens)) == 0, "generated tokens differ");
}

static void trace_free(trace_t *t)
{
    free(t->logits);
}

/* Engine A: prefill @prompt and publish it. */
static void prefill_publish(engine_h a, const uint32_t *prompt, size_t n, unsigned flags,
                            engine_seq_h *seq_p)
{
    size_t published = 0;
    cr_assert_eq(engine_seq_create(a, prompt, n, seq_p), KVS_OK);
    cr_assert_eq(engine_prefill(*seq_p), KVS_OK);
    cr_assert_eq(engine_publish(*seq_p, flags, &published), KVS_OK);
    cr_assert_eq(published, n / 16);
}

/* ------------------------------------------------------------------------ */
TestSuite(attention);

/* Paged attention with scattered block ids equals the same cache stored
 * contiguously (bitwise) and a naive double-precision reference over plain
 * K/V arrays (to rounding). */
Test(attention, paged_scattered_equals_contiguous)
{
    const engine_config_t cfg = small_cfg(0);
    const size_t ntok = 77, hd = cfg.head_dim, kvh = cfg.n_kv_heads, kvdim = kvh * hd;
    const size_t nblk = (ntok + 15) / 16, blk_floats = 2 * 16 * kvdim;
    const uint32_t scattered[5] = {9, 2, 7, 0, 5}, contiguous[5] = {0, 1, 2, 3, 4};
    float *kv_s = calloc(10 * blk_floats, sizeof(float));
    float *kv_c = calloc(10 * blk_floats, sizeof(float));
    float *k = malloc(ntok * kvdim * sizeof(float)), *v = malloc(ntok * kvdim * sizeof(float));
    float q[4 * 64], out_s[4 * 64], out_c[4 * 64], out_1[64], scratch[4 * 2 * 78];
    cr_assert(kv_s && kv_c && k && v && nblk == 5);
    uint64_t rng = 12345;
    for (size_t i = 0; i < ntok * kvdim; i++) {
        rng = rng * 6364136223846793005ull + 1;
        k[i] = (float)((double)(rng >> 11) / 9007199254740992.0 * 2.0 - 1.0);
        rng = rng * 6364136223846793005ull + 1;
        v[i] = (float)((double)(rng >> 11) / 9007199254740992.0 * 2.0 - 1.0);
    }
    for (size_t i = 0; i < 4 * 64; i++) /* 4 query rows x 4 heads x 16 */
        q[i] = (float)(i % 67) / 32.0f - 1.0f;
    /* vLLM's layout: (block, K|V, token in block, kv head, dim). */
    for (size_t t = 0; t < ntok; t++)
        for (size_t p = 0; p < 2; p++) {
            const float *src = (p == 0 ? k : v) + t * kvdim;
            memcpy(kv_s + scattered[t / 16] * blk_floats + (p * 16 + t % 16) * kvdim, src,
                   kvdim * sizeof(float));
            memcpy(kv_c + contiguous[t / 16] * blk_floats + (p * 16 + t % 16) * kvdim, src,
                   kvdim * sizeof(float));
        }
    /* Rows 0..3 are tokens 73..76, attending causally. */
    engine_attention(&cfg, kv_s, scattered, ntok - 4, 4, q, out_s, scratch);
    engine_attention(&cfg, kv_c, contiguous, ntok - 4, 4, q, out_c, scratch);
    cr_assert(memcmp(out_s, out_c, sizeof(out_s)) == 0);
    /* A row computed alone (as in decode) gives the same bits as in a tile. */
    for (size_t r = 0; r < 4; r++) {
        engine_attention(&cfg, kv_s, scattered, ntok - 4 + r, 1, q + r * 64, out_1, scratch);
        cr_assert(memcmp(out_1, out_s + r * 64, sizeof(out_1)) == 0, "row %zu", r);
    }

    /* The last row (token 76) against plain arrays. */
    const float *q3 = q + 3 * 64, *o3 = out_s + 3 * 64;
    for (size_t h = 0; h < cfg.n_heads; h++) {
        const size_t g = h / (cfg.n_heads / kvh);
        double s[77], max = -INFINITY, sum = 0;
        for (size_t t = 0; t < ntok; t++) {
            s[t] = 0;
            for (size_t d = 0; d < hd; d++)
                s[t] += (double)q3[h * hd + d] * k[t * kvdim + g * hd + d];
            s[t] /= sqrt((double)hd);
            max = fmax(max, s[t]);
        }
        for (size_t t = 0; t < ntok; t++)
            sum += exp(s[t] - max);
        for (size_t d = 0; d < hd; d++) {
            double o = 0;
            for (size_t t = 0; t < ntok; t++)
                o += exp(s[t] - max) / sum * v[t * kvdim + g * hd + d];
            cr_assert(fabs(o - o3[h * hd + d]) < 1e-5, "head %zu dim %zu: %g vs %g", h, d, o,
                      (double)o3[h * hd + d]);
        }
    }
    free(kv_s);
    free(kv_c);
    free(k);
    free(v);
}

/* A whole engine over scattered blocks and several threads computes the
 * same bits as one over contiguous blocks and one thread. */
Test(attention, engine_scattered_equals_contiguous)
{
    uint32_t prompt[150];
    make_prompt(prompt, 150, 3, 512);
    engine_config_t c1 = small_cfg(0), c2 = small_cfg(99);
    c1.threads = 1;
    c2.threads = 3;
    trace_t a, b;
    run_recompute(&c1, prompt, 150, &a);
    run_recompute(&c2, prompt, 150, &b);
    assert_same(&a, &b);

    /* And the ids really were scattered, and contiguous ones were not. */
    engine_h e1, e2;
    engine_seq_h s1, s2;
    const uint32_t *ids1, *ids2;
    cr_assert_eq(engine_create(&c1, NULL, NULL, &e1), KVS_OK);
    cr_assert_eq(engine_create(&c2, NULL, NULL, &e2), KVS_OK);
    cr_assert_eq(engine_seq_create(e1, prompt, 150, &s1), KVS_OK);
    cr_assert_eq(engine_seq_create(e2, prompt, 150, &s2), KVS_OK);
    cr_assert_eq(engine_prefill(s1), KVS_OK);
    cr_assert_eq(engine_prefill(s2), KVS_OK);
    const size_t n1 = engine_seq_blocks(s1, &ids1), n2 = engine_seq_blocks(s2, &ids2);
    cr_assert_eq(n1, 10);
    cr_assert_eq(n2, 10);
    size_t in_order = 0;
    for (size_t i = 0; i < n1; i++) {
        cr_assert_eq(ids1[i], i);
        in_order += ids2[i] == i;
    }
    cr_assert_lt(in_order, 5, "alloc_seed 99 should scatter block ids");
    engine_seq_destroy(s1);
    engine_seq_destroy(s2);
    engine_destroy(e1);
    engine_destroy(e2);
    trace_free(&a);
    trace_free(&b);
}

/* The tests below could pass vacuously if the output ignored the KV of
 * earlier tokens; it does not. */
Test(attention, output_depends_on_early_context)
{
    uint32_t p1[100], p2[100];
    make_prompt(p1, 100, 5, 512);
    memcpy(p2, p1, sizeof(p1));
    p2[0] = (p1[0] + 1) % 512;
    const engine_config_t c = small_cfg(1);
    trace_t a, b;
    run_recompute(&c, p1, 100, &a);
    run_recompute(&c, p2, 100, &b);
    cr_assert(memcmp(a.logits, b.logits, 512 * sizeof(float)) != 0);
    trace_free(&a);
    trace_free(&b);
}

/* ------------------------------------------------------------------------ */
TestSuite(share, .init = api_setup, .fini = api_teardown);

/* A prefills 200 tokens and publishes; B (own KV memory, other scattered
 * ids) fetches the prefix and decodes; C recomputes. B == C bit for bit. */
static void fetch_equals_recompute(unsigned publish_flags)
{
    const size_t n = 200;
    uint32_t prompt[200];
    make_prompt(prompt, n, 7, 512);
    kvs_ctx_h ctx = new_ctx();
    const engine_config_t ca = small_cfg(11), cb = small_cfg(22);
    engine_h a, b;
    engine_seq_h sa, sb;
    cr_assert_eq(engine_create(&ca, &api, ctx, &a), KVS_OK);
    cr_assert_eq(engine_create(&cb, &api, ctx, &b), KVS_OK);
    prefill_publish(a, prompt, n, publish_flags, &sa);

    size_t hit = 0;
    cr_assert_eq(engine_seq_create(b, prompt, n, &sb), KVS_OK);
    cr_assert_eq(engine_load_prefix(sb, NULL, &hit), KVS_OK);
    cr_assert_eq(hit, (n / 16) * 16, "hit %zu tokens, want every full block", hit);
    const uint32_t *ida, *idb;
    const size_t na = engine_seq_blocks(sa, &ida), nb = engine_seq_blocks(sb, &idb);
    cr_assert_eq(nb, n / 16);
    size_t same = 0;
    for (size_t i = 0; i < nb && i < na; i++)
        same += ida[i] == idb[i];
    cr_assert_lt(same, nb / 2, "B's block ids should differ from A's");

    trace_t tb, tc;
    trace_init(&tb, cb.vocab);
    run_rest(sb, &tb);
    cr_assert_eq(tb.stats.hit_tokens, 192);
    cr_assert_eq(tb.stats.computed_tokens, 8);
    const engine_config_t cc = small_cfg(33);
    run_recompute(&cc, prompt, n, &tc);
    assert_same(&tb, &tc);

    engine_seq_destroy(sb);
    engine_seq_destroy(sa);
    engine_destroy(b);
    engine_destroy(a);
    api.ctx_destroy(ctx);
    trace_free(&tb);
    trace_free(&tc);
}

Test(share, fetched_prefix_equals_recompute_copy)
{
    fetch_equals_recompute(0);
}

Test(share, fetched_prefix_equals_recompute_zero_copy)
{
    fetch_equals_recompute(ENGINE_PUBLISH_ZERO_COPY);
}

/* A prompt sharing its first 100 tokens with the published one gets exactly
 * the 6 full blocks they share (tokens 0..95), and still decodes right. */
Test(share, shared_prefix_hits_only_shared_full_blocks)
{
    uint32_t p1[200], p2[180];
    make_prompt(p1, 200, 7, 512);
    make_prompt(p2, 180, 8, 512);
    memcpy(p2, p1, 100 * sizeof(uint32_t));
    p2[100] = (p1[100] + 1) % 512; /* make sure block 6 differs */
    kvs_ctx_h ctx = new_ctx();
    const engine_config_t ca = small_cfg(11), cb = small_cfg(22);
    engine_h a, b;
    engine_seq_h sa, sb;
    cr_assert_eq(engine_create(&ca, &api, ctx, &a), KVS_OK);
    cr_assert_eq(engine_create(&cb, &api, ctx, &b), KVS_OK);
    prefill_publish(a, p1, 200, 0, &sa);

    size_t hit = 0;
    cr_assert_eq(engine_seq_create(b, p2, 180, &sb), KVS_OK);
    cr_assert_eq(engine_load_prefix(sb, NULL, &hit), KVS_OK);
    cr_assert_eq(hit, 96);
    trace_t tb, tc;
    trace_init(&tb, cb.vocab);
    run_rest(sb, &tb);
    cr_assert_eq(tb.stats.computed_tokens, 84);
    run_recompute(&cb, p2, 180, &tc);
    assert_same(&tb, &tc);

    engine_seq_destroy(sb);
    engine_seq_destroy(sa);
    engine_destroy(b);
    engine_destroy(a);
    api.ctx_destroy(ctx);
    trace_free(&tb);
    trace_free(&tc);
}

/* A fully cached prompt (a multiple of 16 tokens) still computes its last
 * block: the first generated token needs the last prompt token's logits. */
Test(share, fully_cached_prompt_recomputes_last_block)
{
    uint32_t p[192];
    make_prompt(p, 192, 9, 512);
    kvs_ctx_h ctx = new_ctx();
    const engine_config_t ca = small_cfg(11), cb = small_cfg(22);
    engine_h a, b;
    engine_seq_h sa, sb;
    cr_assert_eq(engine_create(&ca, &api, ctx, &a), KVS_OK);
    cr_assert_eq(engine_create(&cb, &api, ctx, &b), KVS_OK);
    prefill_publish(a, p, 192, 0, &sa);
    size_t hit = 0;
    cr_assert_eq(engine_seq_create(b, p, 192, &sb), KVS_OK);
    cr_assert_eq(engine_load_prefix(sb, NULL, &hit), KVS_OK);
    cr_assert_eq(hit, 176);
    trace_t tb, tc;
    trace_init(&tb, cb.vocab);
    run_rest(sb, &tb);
    run_recompute(&cb, p, 192, &tc);
    assert_same(&tb, &tc);
    engine_seq_destroy(sb);
    engine_seq_destroy(sa);
    engine_destroy(b);
    engine_destroy(a);
    api.ctx_destroy(ctx);
    trace_free(&tb);
    trace_free(&tc);
}

/* Nothing published: zero hits, a full prefill, the same result. */
Test(share, no_hits_falls_back_to_full_recompute)
{
    uint32_t p[120];
    make_prompt(p, 120, 10, 512);
    kvs_ctx_h ctx = new_ctx();
    const engine_config_t cb = small_cfg(22);
    engine_h b;
    engine_seq_h sb;
    cr_assert_eq(engine_create(&cb, &api, ctx, &b), KVS_OK);
    size_t hit = 99;
    cr_assert_eq(engine_seq_create(b, p, 120, &sb), KVS_OK);
    cr_assert_eq(engine_load_prefix(sb, NULL, &hit), KVS_OK);
    cr_assert_eq(hit, 0);
    trace_t tb, tc;
    trace_init(&tb, cb.vocab);
    run_rest(sb, &tb);
    cr_assert_eq(tb.stats.computed_tokens, 120);
    run_recompute(&cb, p, 120, &tc);
    assert_same(&tb, &tc);
    engine_seq_destroy(sb);
    engine_destroy(b);
    api.ctx_destroy(ctx);
    trace_free(&tb);
    trace_free(&tc);
}

/* Other weights mean other KV: a model id that differs only in its weight
 * seed is another layout, so the lookup misses instead of serving wrong KV. */
Test(share, other_weights_never_hit)
{
    uint32_t p[100];
    make_prompt(p, 100, 12, 512);
    kvs_ctx_h ctx = new_ctx();
    engine_config_t ca = small_cfg(11), cb = small_cfg(22);
    cb.weight_seed = ca.weight_seed + 1;
    engine_h a, b;
    engine_seq_h sa, sb;
    cr_assert_eq(engine_create(&ca, &api, ctx, &a), KVS_OK);
    cr_assert_eq(engine_create(&cb, &api, ctx, &b), KVS_OK);
    prefill_publish(a, p, 100, 0, &sa);
    size_t hit = 99;
    cr_assert_eq(engine_seq_create(b, p, 100, &sb), KVS_OK);
    cr_assert_eq(engine_load_prefix(sb, NULL, &hit), KVS_OK);
    cr_assert_eq(hit, 0);
    engine_seq_destroy(sb);
    engine_seq_destroy(sa);
    engine_destroy(b);
    engine_destroy(a);
    api.ctx_destroy(ctx);
}

/* A zero-copy holder that withdraws its blocks (forced) between B's lookup
 * and fetch: the fetch fails with KVS_ERR_STALE, B recomputes everything and
 * still produces C's tokens. */
Test(share, stale_fetch_falls_back_to_recompute)
{
    const size_t n = 200;
    uint32_t prompt[200];
    make_prompt(prompt, n, 7, 512);
    kvs_ctx_h ctx = new_ctx();
    const engine_config_t ca = small_cfg(11), cb = small_cfg(22);
    engine_h a, b;
    engine_seq_h sa, sb;
    cr_assert_eq(engine_create(&ca, &api, ctx, &a), KVS_OK);
    cr_assert_eq(engine_create(&cb, &api, ctx, &b), KVS_OK);
    prefill_publish(a, prompt, n, ENGINE_PUBLISH_ZERO_COPY, &sa);

    kvs_lease_h lease;
    cr_assert_eq(engine_seq_create(b, prompt, n, &sb), KVS_OK);
    cr_assert_eq(engine_lookup(sb, NULL, &lease), KVS_OK);
    cr_assert_eq(api.lease_hits(lease), 12);
    /* Leased: a polite unpublish is refused, a forced one goes through. */
    cr_assert_eq(engine_unpublish(sa, false), KVS_ERR_BUSY);
    cr_assert_eq(engine_unpublish(sa, true), KVS_OK);
    size_t hit = 99;
    cr_assert_eq(engine_fetch(sb, lease, &hit), KVS_ERR_STALE);
    cr_assert_eq(hit, 99, "a failed fetch writes no output");

    trace_t tb, tc;
    trace_init(&tb, cb.vocab);
    run_rest(sb, &tb);
    cr_assert_eq(tb.stats.hit_tokens, 0);
    cr_assert_eq(tb.stats.computed_tokens, n);
    run_recompute(&cb, prompt, n, &tc);
    assert_same(&tb, &tc);

    engine_seq_destroy(sb);
    engine_seq_destroy(sa);
    engine_destroy(b);
    engine_destroy(a);
    api.ctx_destroy(ctx);
    trace_free(&tb);
    trace_free(&tc);
}

/* The default geometry (4 layers, d_model 256, vocab 4096) works end to end. */
Test(share, default_config_short_prompt)
{
    uint32_t p[40];
    make_prompt(p, 40, 13, 4096);
    kvs_ctx_h ctx = new_ctx();
    engine_config_t ca, cb;
    engine_config_default(&ca);
    ca.num_blocks = 8;
    cb = ca;
    cb.alloc_seed = 5;
    engine_h a, b;
    engine_seq_h sa, sb;
    cr_assert_eq(engine_create(&ca, &api, ctx, &a), KVS_OK);
    cr_assert_eq(engine_create(&cb, &api, ctx, &b), KVS_OK);
    prefill_publish(a, p, 40, 0, &sa);
    size_t hit = 0;
    cr_assert_eq(engine_seq_create(b, p, 40, &sb), KVS_OK);
    cr_assert_eq(engine_load_prefix(sb, NULL, &hit), KVS_OK);
    cr_assert_eq(hit, 32);
    cr_assert_eq(engine_prefill(sb), KVS_OK);
    cr_assert(memcmp(engine_seq_logits(sa), engine_seq_logits(sb), 4096 * sizeof(float)) == 0);
    uint32_t ta[4], tb[4];
    cr_assert_eq(engine_decode(sa, 4, ta), KVS_OK);
    cr_assert_eq(engine_decode(sb, 4, tb), KVS_OK);
    cr_assert(memcmp(ta, tb, sizeof(ta)) == 0);
    engine_seq_destroy(sb);
    engine_seq_destroy(sa);
    engine_destroy(b);
    engine_destroy(a);
    api.ctx_destroy(ctx);
}

/* ------------------------------------------------------------------------ */
/* Tensor parallelism: each engine publishes and fetches one TP rank's share */
/* of the KV heads, in its own layout; decode rank 0 gathers the others'    */
/* shares (engine_slice_save/load) and must decode exactly as a recompute.  */
/* ------------------------------------------------------------------------ */
TestSuite(tp, .init = api_setup, .fini = api_teardown);

static engine_config_t tp_cfg(uint64_t alloc_seed, uint32_t rank, uint32_t size,
                              kvs_kv_layout_t layout)
{
    engine_config_t c = small_cfg(alloc_seed);
    c.tp_rank = rank;
    c.tp_size = size;
    c.kv_layout = layout;
    return c;
}

#define TP_MAX 4

/* A context on the in-process "loop" transport (the handshake over TCP on
 * 127.0.0.1, data copied in process), listening when @listen, with the
 * shared token in @token. This is how ranks in different processes talk,
 * without UCX. */
static kvs_ctx_h new_loop_ctx(const char *token, bool listen)
{
    char err[256] = "";
    kvs_ctx_params_t p = {.field_mask = KVS_CTX_FIELD_NO_ENV | KVS_CTX_FIELD_CAPACITY |
                                        KVS_CTX_FIELD_ERRBUF | KVS_CTX_FIELD_TRANSPORT |
                                        KVS_CTX_FIELD_AUTH_TOKEN_FILE | KVS_CTX_FIELD_FETCH_TIMEOUT,
                          .transport = "loop",
                          .capacity_bytes = 16u << 20,
                          .auth_token_file = token,
                          .fetch_timeout_ms = 10000,
                          .errbuf = err,
                          .errbuf_len = sizeof(err)};
    if (listen) {
        p.field_mask |= KVS_CTX_FIELD_LISTEN;
        p.listen = "127.0.0.1:0";
    }
    kvs_ctx_h ctx = NULL;
    cr_assert_eq(api.ctx_create(&p, &ctx), KVS_OK, "kvs_ctx_create: %s", err);
    return ctx;
}

/* The view an engine of config @c describes to kvshare (as engine.c does):
 * what kvs_layout_source_ranks() needs to name the holders to ask. */
static kvs_layout_t tp_view(const engine_config_t *c)
{
    kvs_layout_t l;
    cr_assert(engine_kvs_layout(c, "kvshare-example-tiny", &l));
    return l;
}

/* @np prefill ranks in layout @lp publish their shares; @nd decode ranks in
 * layout @ld fetch theirs. With @over_peers (needed when the views differ:
 * plans across views are made between peers) every prefill rank has its own
 * listening context, every decode rank its own, and each decode rank fetches
 * from the holders kvs_layout_source_ranks() names, over the loop
 * transport; otherwise all share one context's local store. */
static void tp_case(uint32_t np, kvs_kv_layout_t lp, uint32_t nd, kvs_kv_layout_t ld,
                    bool over_peers)
{
    const size_t n = 200, hits = 192; /* 12 full blocks fetched, 8 tokens computed */
    uint32_t prompt[200];
    make_prompt(prompt, n, 7, 512);
    kvs_ctx_h pctx[TP_MAX] = {NULL}, dctx[TP_MAX] = {NULL}, shared = NULL;
    char addr[TP_MAX][300];
    if (over_peers) {
        /* The token is read when a context is created: removed at once, so
         * no test outcome leaves it behind. */
        char token[] = "/tmp/kvse-tok-XXXXXX";
        const int fd = mkstemp(token);
        cr_assert(fd >= 0);
        cr_assert_eq(write(fd, "tp-secret", 9), 9);
        close(fd);
        for (uint32_t p = 0; p < np; p++) {
            pctx[p] = new_loop_ctx(token, true);
            cr_assert_eq(api.ctx_listen_addr(pctx[p], addr[p], sizeof(addr[p])), KVS_OK);
        }
        for (uint32_t k = 0; k < nd; k++)
            dctx[k] = new_loop_ctx(token, false);
        unlink(token);
    } else {
        shared = new_ctx();
        for (uint32_t i = 0; i < TP_MAX; i++)
            pctx[i] = dctx[i] = shared;
    }
    engine_h pe[TP_MAX], de[TP_MAX];
    engine_seq_h ps[TP_MAX], ds[TP_MAX];
    char paths[TP_MAX][64];
    for (uint32_t p = 0; p < np; p++) {
        const engine_config_t c = tp_cfg(11 + p, p, np, lp);
        cr_assert_eq(engine_create(&c, &api, pctx[p], &pe[p]), KVS_OK);
        prefill_publish(pe[p], prompt, n, 0, &ps[p]);
    }
    uint64_t total = 0;
    for (uint32_t k = nd; k-- > 0;) {
        const engine_config_t c = tp_cfg(40 + k, k, nd, ld);
        cr_assert_eq(engine_create(&c, &api, dctx[k], &de[k]), KVS_OK);
        cr_assert_eq(engine_seq_create(de[k], prompt, n, &ds[k]), KVS_OK);
        uint32_t h0, nh;
        cr_assert(engine_tp_heads(2, k, nd, &h0, &nh));
        if (over_peers) {
            /* One lookup and fetch per holder the library names; between
             * them their leases fill each of our heads exactly once. */
            const kvs_layout_t view = tp_view(&c);
            uint32_t ranks[TP_MAX];
            size_t nr = 0;
            cr_assert_eq(api.layout_source_ranks(&view, np, ranks, TP_MAX, &nr), KVS_OK);
            cr_assert(nr >= 1 && nr <= np, "%zu holders", nr);
            uint32_t filled = 0;
            for (size_t i = 0; i < nr; i++) {
                kvs_lookup_params_t lkp = {.field_mask =
                                               KVS_LOOKUP_FIELD_SOURCES | KVS_LOOKUP_FIELD_PEER,
                                           .sources = KVS_SOURCE_PEER,
                                           .peer = addr[ranks[i]]};
                kvs_lease_h lease = NULL;
                cr_assert_eq(engine_lookup(ds[k], &lkp, &lease), KVS_OK, "rank %u from %u", k,
                             ranks[i]);
                cr_assert_eq(api.lease_source(lease), KVS_SOURCE_PEER);
                uint32_t f0 = 99, fn = 99;
                cr_assert_eq(api.lease_heads(lease, &f0, &fn), KVS_OK);
                cr_assert(fn > 0 && f0 == filled && f0 + fn <= nh,
                          "rank %u: holder %u fills heads %u+%u after %u of %u", k, ranks[i], f0,
                          fn, filled, nh);
                filled += fn;
                size_t hit = 0;
                cr_assert_eq(engine_fetch(ds[k], lease, &hit), KVS_OK);
                cr_assert_eq(hit, hits, "rank %u fetched %zu tokens' share from %u, want %zu", k,
                             hit, ranks[i], hits);
            }
            cr_assert_eq(filled, nh, "rank %u: the holders filled %u of %u heads", k, filled, nh);
        } else {
            size_t hit = 0;
            cr_assert_eq(engine_load_prefix(ds[k], NULL, &hit), KVS_OK);
            cr_assert_eq(hit, hits, "rank %u fetched %zu tokens' share, want %zu", k, hit, hits);
        }
        engine_stats_t st;
        engine_seq_stats(ds[k], &st);
        total += st.fetched_bytes;
        if (k > 0) {
            snprintf(paths[k], sizeof(paths[k]), "/tmp/kvse-slice-%d-%u.kv", (int)getpid(), k);
            cr_assert_eq(engine_slice_save(ds[k], paths[k]), KVS_OK);
        }
    }
    /* The shares add up to the prompt's KV once per replica of a head. */
    const uint64_t once = hits / 16 * 2 /* layers */ * (2 * 16 * 2 * 16 * 4);
    cr_assert_eq(total, once * (nd > 2 ? nd / 2 : 1), "fetched %llu bytes in all",
                 (unsigned long long)total);
    for (uint32_t k = 1; k < nd; k++) {
        size_t blocks = 0;
        cr_assert_eq(engine_slice_load(ds[0], paths[k], &blocks), KVS_OK);
        cr_assert_eq(blocks, hits / 16);
        unlink(paths[k]);
    }
    trace_t tb, tc;
    trace_init(&tb, 512);
    run_rest(ds[0], &tb);
    cr_assert_eq(tb.stats.computed_tokens, n - hits, "rank 0 computed %zu tokens",
                 tb.stats.computed_tokens);
    const engine_config_t cc = small_cfg(33);
    run_recompute(&cc, prompt, n, &tc);
    assert_same(&tb, &tc);
    trace_free(&tb);
    trace_free(&tc);
    for (uint32_t k = 0; k < nd; k++) {
        engine_seq_destroy(ds[k]);
        engine_destroy(de[k]);
    }
    for (uint32_t p = 0; p < np; p++) {
        engine_seq_destroy(ps[p]);
        engine_destroy(pe[p]);
    }
    if (over_peers) {
        for (uint32_t k = 0; k < nd; k++)
            api.ctx_destroy(dctx[k]);
        for (uint32_t p = 0; p < np; p++)
            api.ctx_destroy(pctx[p]);
    } else {
        api.ctx_destroy(shared);
    }
}

Test(tp, heads_per_rank)
{
    uint32_t h0 = 99, nh = 99;
    cr_assert(engine_tp_heads(8, 3, 4, &h0, &nh) && h0 == 6 && nh == 2);
    cr_assert(engine_tp_heads(2, 3, 4, &h0, &nh) && h0 == 1 && nh == 1, "GQA replication");
    cr_assert(engine_tp_heads(2, 0, 1, &h0, &nh) && h0 == 0 && nh == 2);
    cr_assert(!engine_tp_heads(2, 2, 2, &h0, &nh), "rank >= size");
    cr_assert(!engine_tp_heads(4, 0, 3, &h0, &nh), "4 heads over 3 ranks");
    cr_assert(!engine_tp_heads(2, 0, 3, &h0, &nh), "3 ranks over 2 heads");
    engine_config_t c = tp_cfg(1, 0, 3, KVS_KV_NHD);
    engine_h e = NULL;
    cr_assert_eq(engine_create(&c, NULL, NULL, &e), KVS_ERR_INVALID_PARAM);
    c = tp_cfg(1, 0, 1, (kvs_kv_layout_t)7);
    cr_assert_eq(engine_create(&c, NULL, NULL, &e), KVS_ERR_INVALID_PARAM);
    cr_assert_null(e);
}

Test(tp, same_tp_2_nhd)
{
    tp_case(2, KVS_KV_NHD, 2, KVS_KV_NHD, false);
}

Test(tp, same_tp_1_hnd)
{
    tp_case(1, KVS_KV_HND, 1, KVS_KV_HND, false);
}

Test(tp, same_tp_2_hnd)
{
    tp_case(2, KVS_KV_HND, 2, KVS_KV_HND, false);
}

/* 4 ranks over 2 KV heads: each head on two ranks (vLLM's replication). */
Test(tp, same_tp_4_replicated_heads)
{
    tp_case(4, KVS_KV_NHD, 4, KVS_KV_NHD, false);
}

/* The same split over the loop transport: one context per rank. */
Test(tp, same_tp_2_hnd_over_peers)
{
    tp_case(2, KVS_KV_HND, 2, KVS_KV_HND, true);
}

/* Mixed TP sizes or layouts: the reader plans head slices from each holder's
 * view to its own, which the library does between peers (issue 13). */
Test(tp, mixed_2_to_1)
{
    tp_case(2, KVS_KV_NHD, 1, KVS_KV_NHD, true);
}

Test(tp, mixed_1_to_2_hnd)
{
    tp_case(1, KVS_KV_NHD, 2, KVS_KV_HND, true);
}

Test(tp, mixed_layout_nhd_to_hnd)
{
    tp_case(1, KVS_KV_NHD, 1, KVS_KV_HND, true);
}

Test(tp, mixed_2_hnd_to_4_nhd)
{
    tp_case(2, KVS_KV_HND, 4, KVS_KV_NHD, true);
}

/* A share is only taken for its own model and prompt, before prefill. */
Test(tp, slice_of_another_prompt_or_model_is_refused)
{
    const size_t n = 100;
    uint32_t prompt[100], other[100];
    make_prompt(prompt, n, 7, 512);
    make_prompt(other, n, 8, 512);
    kvs_ctx_h ctx = new_ctx();
    engine_config_t c0 = tp_cfg(11, 0, 2, KVS_KV_NHD), c1 = tp_cfg(12, 1, 2, KVS_KV_HND);
    engine_h a, b;
    engine_seq_h sa, sb, sc;
    cr_assert_eq(engine_create(&c1, &api, ctx, &a), KVS_OK);
    prefill_publish(a, prompt, n, 0, &sa);
    c1.alloc_seed = 5;
    engine_h a2;
    cr_assert_eq(engine_create(&c1, &api, ctx, &a2), KVS_OK);
    cr_assert_eq(engine_seq_create(a2, prompt, n, &sb), KVS_OK);
    cr_assert_eq(engine_slice_save(sb, "/tmp/kvse-never.kv"), KVS_ERR_INVALID_PARAM,
                 "nothing fetched yet");
    size_t hit = 0;
    cr_assert_eq(engine_load_prefix(sb, NULL, &hit), KVS_OK);
    cr_assert_eq(hit, 96);
    char path[64];
    snprintf(path, sizeof(path), "/tmp/kvse-slice-%d-x.kv", (int)getpid());
    cr_assert_eq(engine_slice_save(sb, path), KVS_OK);

    cr_assert_eq(engine_create(&c0, &api, ctx, &b), KVS_OK);
    cr_assert_eq(engine_seq_create(b, other, n, &sc), KVS_OK);
    cr_assert_eq(engine_slice_load(sc, path, NULL), KVS_ERR_INVALID_PARAM, "another prompt");
    engine_seq_destroy(sc);
    cr_assert_eq(engine_seq_create(b, prompt, n, &sc), KVS_OK);
    cr_assert_eq(engine_slice_load(sc, "/nonexistent/x.kv", NULL), KVS_ERR_IO);
    size_t blocks = 0;
    cr_assert_eq(engine_slice_load(sc, path, &blocks), KVS_OK);
    cr_assert_eq(blocks, 6);
    /* Only head 1 is present: rank 0's own share is missing, so the whole
     * prompt is computed, never attended over half a cache. */
    cr_assert_eq(engine_prefill(sc), KVS_OK);
    engine_stats_t st;
    engine_seq_stats(sc, &st);
    cr_assert_eq(st.computed_tokens, n);
    cr_assert_eq(engine_slice_load(sc, path, NULL), KVS_ERR_INVALID_PARAM, "after prefill");
    engine_seq_destroy(sc);
    engine_destroy(b);

    engine_config_t cw = c0;
    cw.weight_seed = 43;
    cr_assert_eq(engine_create(&cw, &api, ctx, &b), KVS_OK);
    cr_assert_eq(engine_seq_create(b, prompt, n, &sc), KVS_OK);
    cr_assert_eq(engine_slice_load(sc, path, NULL), KVS_ERR_INVALID_PARAM, "other weights");
    unlink(path);
    engine_seq_destroy(sc);
    engine_destroy(b);
    engine_seq_destroy(sb);
    engine_destroy(a2);
    engine_seq_destroy(sa);
    engine_destroy(a);
    api.ctx_destroy(ctx);
}

/* ------------------------------------------------------------------------ */
TestSuite(errors, .init = api_setup, .fini = api_teardown);

Test(errors, without_kvshare_share_calls_are_unsupported)
{
    uint32_t p[40];
    make_prompt(p, 40, 1, 512);
    const engine_config_t c = small_cfg(1);
    engine_h e;
    engine_seq_h s;
    kvs_lease_h lease = NULL;
    size_t hit = 99;
    cr_assert_eq(engine_create(&c, NULL, NULL, &e), KVS_OK);
    cr_assert_null(engine_pool(e));
    cr_assert_eq(engine_seq_create(e, p, 40, &s), KVS_OK);
    cr_assert_eq(engine_lookup(s, NULL, &lease), KVS_ERR_UNSUPPORTED);
    cr_assert_eq(engine_load_prefix(s, NULL, &hit), KVS_ERR_UNSUPPORTED);
    cr_assert_eq(hit, 99);
    cr_assert_eq(engine_prefill(s), KVS_OK);
    cr_assert_eq(engine_publish(s, 0, NULL), KVS_ERR_UNSUPPORTED);
    cr_assert_eq(engine_prefill(s), KVS_ERR_INVALID_PARAM, "prefill twice");
    engine_seq_destroy(s);
    engine_destroy(e);
}

Test(errors, bad_arguments)
{
    engine_config_t c = small_cfg(1);
    engine_h e = NULL;
    engine_seq_h s = NULL;
    uint32_t out[2], p[2] = {1, 600};
    c.n_kv_heads = 3; /* 4 query heads cannot share 3 KV heads */
    cr_assert_eq(engine_create(&c, NULL, NULL, &e), KVS_ERR_INVALID_PARAM);
    cr_assert_null(e);
    c = small_cfg(1);
    c.head_dim = 15; /* RoPE rotates pairs */
    cr_assert_eq(engine_create(&c, NULL, NULL, &e), KVS_ERR_INVALID_PARAM);
    c = small_cfg(1);
    cr_assert_eq(engine_create(&c, NULL, NULL, &e), KVS_OK);
    cr_assert_eq(engine_seq_create(e, p, 2, &s), KVS_ERR_INVALID_PARAM, "token >= vocab");
    cr_assert_null(s);
    cr_assert_eq(engine_seq_create(e, p, 0, &s), KVS_ERR_INVALID_PARAM);
    cr_assert_eq(engine_seq_create(e, p, 1, &s), KVS_OK);
    cr_assert_eq(engine_decode(s, 2, out), KVS_ERR_INVALID_PARAM, "decode before prefill");
    engine_seq_destroy(s);
    engine_destroy(e);
    engine_destroy(NULL);
    engine_seq_destroy(NULL);
}

/* Out of KV blocks is an error the caller sees, and the blocks come back. */
Test(errors, out_of_blocks)
{
    engine_config_t c = small_cfg(1);
    c.num_blocks = 4; /* 64 tokens */
    uint32_t p[80];
    make_prompt(p, 80, 2, 512);
    engine_h e;
    engine_seq_h s1, s2;
    uint32_t out[8];
    cr_assert_eq(engine_create(&c, NULL, NULL, &e), KVS_OK);
    cr_assert_eq(engine_seq_create(e, p, 80, &s1), KVS_OK);
    cr_assert_eq(engine_prefill(s1), KVS_ERR_NO_SPACE);
    engine_seq_destroy(s1);
    cr_assert_eq(engine_seq_create(e, p, 60, &s2), KVS_OK);
    cr_assert_eq(engine_prefill(s2), KVS_OK);
    cr_assert_eq(engine_decode(s2, 8, out), KVS_ERR_NO_SPACE, "token 65 needs a 5th block");
    engine_seq_destroy(s2);
    engine_destroy(e);
}

#ifdef KVSE_DLOPEN
/* ------------------------------------------------------------------------ */
TestSuite(dlopen);

/* This binary does not link libkvshare: every kvs_* call above went through
 * the dlopen'd table. */
Test(dlopen, binary_does_not_link_libkvshare)
{
    cr_assert_null(dlsym(RTLD_DEFAULT, "kvs_ctx_create"));
}

Test(dlopen, missing_library_is_a_clear_error)
{
    engine_kvs_t t;
    memset(&t, 0xab, sizeof(t));
    const engine_kvs_t before = t;
    char err[512] = "";
    cr_assert_eq(engine_kvs_dlopen(&t, "/nonexistent/libkvshare.so.0", err, sizeof(err)),
                 KVS_ERR_NOT_FOUND);
    cr_assert(strstr(err, "dlopen(/nonexistent/libkvshare.so.0)") != NULL, "%s", err);
    cr_assert(memcmp(&t, &before, sizeof(t)) == 0, "a failed load writes nothing");
}

Test(dlopen, missing_symbol_is_a_clear_error)
{
    engine_kvs_t t;
    char err[512] = "";
    cr_assert_eq(engine_kvs_dlopen(&t, "libm.so.6", err, sizeof(err)), KVS_ERR_NOT_FOUND);
    cr_assert(strstr(err, "has no symbol kvs_status_string") != NULL, "%s", err);
}

Test(dlopen, env_names_the_library)
{
    engine_kvs_t t;
    char err[512] = "";
    setenv("KVSHARE_ENGINE_LIB", "/nonexistent/from-env.so", 1);
    cr_assert_eq(engine_kvs_dlopen(&t, NULL, err, sizeof(err)), KVS_ERR_NOT_FOUND);
    cr_assert(strstr(err, "/nonexistent/from-env.so") != NULL, "%s", err);
    unsetenv("KVSHARE_ENGINE_LIB");
}
#endif
