/* SPDX-License-Identifier: Apache-2.0 */
/* engine.h - a tiny decoder-only transformer with a paged KV cache that shares its KV through
 * kvshare. */
#ifndef KVS_EXAMPLE_ENGINE_H
#define KVS_EXAMPLE_ENGINE_H

/*
 * The example engine is what a C inference engine looks like to kvshare:
 * weights, a paged KV cache laid out like vLLM's (one buffer per layer of
 * shape (num_blocks, 2, block_tokens, num_kv_heads, head_dim), K then V per
 * block), a block allocator that hands out scattered block ids, and greedy
 * decoding. The math is real (RMSNorm, RoPE, grouped-query attention, SwiGLU)
 * and the weights are random from a fixed seed, so two engines built from the
 * same config compute bit-identical KV and logits.
 *
 * With cfg.tp_size > 1 or cfg.kv_layout HND, what kvshare sees is not that
 * cache but one TP rank's share of it, in a buffer laid out as that rank's
 * memory would hold it (see engine_config_t.tp_rank); the engine still
 * computes the whole model.
 *
 * Every kvshare call lives in engine.c's "kvshare" section and goes through
 * an engine_kvs_t table, which is filled either from the linked library
 * (engine_kvs_linked()) or by dlopen (engine_kvs_dlopen()).
 *
 * Errors are kvs_status_t values (the enum only; no library call is needed
 * to use them). Threading: an engine and its sequences belong to one thread;
 * engine_prefill() and engine_decode() use cfg.threads workers internally.
 */

#include <kvshare.h>
#include <kvshare_dl.h>

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ------------------------------------------------------------------------ */
/* The kvshare functions the engine calls, as a table.                      */
/* ------------------------------------------------------------------------ */

/* The engine's table is the public one from kvshare_dl.h: every exported
 * kvs_<name> as member `name`, typed from kvshare.h's prototypes, so a
 * signature change breaks the build instead of the dlopen'd call. */
typedef kvs_dl_t engine_kvs_t;

/**
 * Fills @api with the functions of the libkvshare this program is linked
 * against. Defined in engine_kvs_linked.c (target kvs_engine_linked), so a
 * program that only dlopens never links libkvshare.
 */
void engine_kvs_linked(engine_kvs_t *api);

/**
 * Fills @api with kvs_dl_open() (dlopen(@path) + dlsym of every function).
 * @path NULL means $KVSHARE_ENGINE_LIB, else "libkvshare.so.0" (found the
 * usual ld.so way).
 * On failure writes one line to @errbuf (the library's dlerror(), or the
 * missing symbol), leaves nothing open and returns KVS_ERR_NOT_FOUND.
 * On success the caller ends it with engine_kvs_close().
 */
kvs_status_t engine_kvs_dlopen(engine_kvs_t *api, const char *path, char *errbuf, size_t errlen);

/** dlclose()s a table filled by engine_kvs_dlopen(); harmless on a linked one. */
void engine_kvs_close(engine_kvs_t *api);

/* ------------------------------------------------------------------------ */
/* Engine                                                                   */
/* ------------------------------------------------------------------------ */
typedef struct engine_config {
    uint32_t n_layers;     /* default 4 */
    uint32_t d_model;      /* default 256 */
    uint32_t n_heads;      /* query heads; default 4 */
    uint32_t n_kv_heads;   /* KV heads (grouped-query attention); default 2 */
    uint32_t head_dim;     /* default 64; even (RoPE rotates pairs) */
    uint32_t ffn_dim;      /* SwiGLU hidden size; default 768 */
    uint32_t vocab;        /* default 4096 */
    uint32_t block_tokens; /* tokens per KV block; default 16 (vLLM's) */
    uint32_t num_blocks;   /* KV blocks per layer; default 1024 (16384 tokens) */
    bool tied_embeddings;  /* lm_head = embedding matrix; default false */
    float rope_theta;      /* default 10000 */
    uint64_t weight_seed;  /* same seed, same weights; default 42 */
    /* Seed of the block allocator's shuffle; 0 hands out ids 0, 1, 2, ...
     * (a contiguous cache, for tests). Default 1. */
    uint64_t alloc_seed;
    unsigned threads;      /* prefill workers; 0 = online CPUs (default) */
    const char *model_id;  /* kvshare model id prefix; default "kvshare-example-tiny" */
    const char *hash_seed; /* PYTHONHASHSEED of the block keys; default "0" */
    /* Tensor parallelism. The engine always computes the whole model, but
     * what it publishes and fetches is one TP rank's share of the KV heads,
     * laid out as that rank's KV memory holds it: heads [r*H/N, (r+1)*H/N)
     * of the H = n_kv_heads for rank r of N; when N > H, heads are
     * replicated (vLLM's rule) and rank r holds head r*H/N alone. H % N == 0
     * (or N % H == 0 when N > H). Defaults: rank 0 of 1, all heads. */
    uint32_t tp_rank;
    uint32_t tp_size;
    /* The memory layout of the rank's share, as kvs_layout_t.kv_layout:
     * KVS_KV_NHD (block, K/V, token, head, dim; the default, which is also
     * how the engine's own cache is laid out) or KVS_KV_HND (block, K/V,
     * head, token, dim). */
    kvs_kv_layout_t kv_layout;
} engine_config_t;

typedef struct engine *engine_h;
typedef struct engine_seq *engine_seq_h;

/** Fills @cfg with the defaults above. */
void engine_config_default(engine_config_t *cfg);

/**
 * The KV heads TP rank @tp_rank of @tp_size holds of @n_kv_heads: the first
 * in *first_p, how many in *count_p. False (nothing written) when the heads
 * do not split over the ranks: n_kv_heads % tp_size != 0 (tp_size <=
 * n_kv_heads) or tp_size % n_kv_heads != 0 (tp_size > n_kv_heads), or
 * tp_rank >= tp_size.
 */
bool engine_tp_heads(uint32_t n_kv_heads, uint32_t tp_rank, uint32_t tp_size, uint32_t *first_p,
                     uint32_t *count_p);

/**
 * The view of the KV cache that config @c's rank gives kvshare: @model_id,
 * the rank's share of the heads (num_kv_heads) and the model's total, TP rank
 * and size, layout. What an engine registers and what a reader plans against.
 * False (nothing written) when the heads do not split (engine_tp_heads()).
 */
bool engine_kvs_layout(const engine_config_t *c, const char *model_id, kvs_layout_t *layout_p);

/**
 * Creates an engine: random weights from cfg->weight_seed and a KV cache of
 * cfg->num_blocks blocks per layer. With @api and @ctx (both borrowed; they
 * must outlive the engine) the KV cache is described to kvshare as a pool
 * and the engine can publish and fetch blocks; with either NULL it runs
 * alone. On success the caller owns *eng_p (engine_destroy()).
 * Errors: KVS_ERR_INVALID_PARAM (a zero or inconsistent size), NO_MEMORY,
 * or the status of kvs_pool_create()/kvs_hasher_create().
 */
kvs_status_t engine_create(const engine_config_t *cfg, const engine_kvs_t *api, kvs_ctx_h ctx,
                           engine_h *eng_p);

/** Destroys @eng; accepts NULL. Its sequences must be destroyed first. */
void engine_destroy(engine_h eng);

/** The kvshare pool of the engine's KV cache, or NULL when running alone. */
kvs_pool_h engine_pool(engine_h eng);

/**
 * Starts a sequence with a copy of @prompt (@n >= 1 tokens, each < vocab).
 * No KV is computed yet. The caller owns *seq_p (engine_seq_destroy()).
 * Errors: KVS_ERR_INVALID_PARAM, NO_MEMORY.
 */
kvs_status_t engine_seq_create(engine_h eng, const uint32_t *prompt, size_t n, engine_seq_h *seq_p);

/**
 * Frees the sequence's blocks (withdrawing any it published zero-copy first)
 * and the sequence; accepts NULL.
 */
void engine_seq_destroy(engine_seq_h seq);

/**
 * Starts connecting to @peer ("host:port") in the background, so that the
 * first lookup there finds the connection made (or being made). Returns
 * KVS_OK when connected or connecting; KVS_ERR_UNSUPPORTED without kvshare,
 * or kvs_peer_connect()'s error.
 */
kvs_status_t engine_connect(engine_h eng, const char *peer);

/**
 * Looks up the longest cached prefix of the prompt's full blocks (never the
 * block holding the last prompt token, whose logits are needed) and returns
 * its lease, which the caller passes to engine_fetch(). @params (borrowed,
 * may be NULL) picks sources and peers, as in kvs_lookup().
 * Errors: KVS_ERR_UNSUPPORTED (no kvshare), KVS_ERR_INVALID_PARAM (KV
 * already computed), or kvs_lookup()'s. On error nothing changed.
 */
kvs_status_t engine_lookup(engine_seq_h seq, const kvs_lookup_params_t *params,
                           kvs_lease_h *lease_p);

/**
 * Fetches the lease's hits into freshly allocated blocks of the sequence and
 * releases the lease (always: the call owns @lease from here). On KVS_OK,
 * *hit_tokens_p is the number of prompt tokens whose KV (this TP rank's
 * share of it) was fetched, a multiple of block_tokens; with tp_size 1 that
 * is the KV now in the cache. Until engine_prefill() it may be called again
 * with a lease from another source (e.g. each prefill TP rank whose heads
 * overlap ours): the rank's share then counts as fetched for the shortest
 * of the fetches. A rank with tp_size > 1 holds only some heads: its KV is
 * complete only once the other ranks' shares are added (engine_slice_load());
 * until then engine_prefill() recomputes the whole prompt. On error the
 * sequence holds no KV, so engine_prefill() recomputes the whole prompt: a
 * failed fetch costs time, never correctness. Errors: KVS_ERR_NO_SPACE (out
 * of blocks), or the fetch's (KVS_ERR_STALE when the holder withdrew a block
 * mid-read).
 */
kvs_status_t engine_fetch(engine_seq_h seq, kvs_lease_h lease, size_t *hit_tokens_p);

/** engine_lookup() then engine_fetch(); the same fallback on error. */
kvs_status_t engine_load_prefix(engine_seq_h seq, const kvs_lookup_params_t *params,
                                size_t *hit_tokens_p);

/**
 * Writes to @path (created 0600, replaced if present) this rank's share of
 * the KV engine_fetch() brought in, exactly as the rank's memory holds it
 * (its TP rank and size, heads and kv_layout), with a header naming the
 * model, the geometry and the prompt's tokens. This is how the decode TP
 * ranks of the demo hand their shares to the rank that decodes.
 * Errors: KVS_ERR_INVALID_PARAM (nothing fetched), KVS_ERR_IO.
 */
kvs_status_t engine_slice_save(engine_seq_h seq, const char *path);

/**
 * Adds the share of the KV another TP rank saved with engine_slice_save() to
 * the sequence's cache (before engine_prefill()): the heads it holds count
 * as present for the blocks it holds. The prompt's KV is complete, and
 * engine_prefill() starts after it, for the blocks every head is present in.
 * *blocks_p (may be NULL) gets the number of blocks in the file.
 * Errors: KVS_ERR_IO (unreadable, short), KVS_ERR_INVALID_PARAM (not a slice
 * file, another model, geometry or prompt, or already prefilled),
 * KVS_ERR_NO_SPACE, NO_MEMORY. On error the cache may hold part of the file,
 * but no head counts as present from it.
 */
kvs_status_t engine_slice_load(engine_seq_h seq, const char *path, size_t *blocks_p);

/**
 * Computes the KV of every prompt token not yet in the cache, then the
 * logits of the last prompt token and from them the first generated token
 * (kept for engine_decode()). Errors: KVS_ERR_INVALID_PARAM (already
 * prefilled), KVS_ERR_NO_SPACE (out of blocks), NO_MEMORY.
 */
kvs_status_t engine_prefill(engine_seq_h seq);

/** engine_publish() flags. */
enum engine_publish_flags {
    /* Publish straight from the KV cache (kvs KVS_PUBLISH_ZERO_COPY): no
     * copy, but the blocks stay pinned until engine_unpublish() or
     * engine_seq_destroy(). Default: copy into kvshare's arena. */
    ENGINE_PUBLISH_ZERO_COPY = 1u << 0,
};

/**
 * Publishes the sequence's full blocks of computed KV under their block keys
 * so that other engines (in this process, or in another one through this
 * process's KVSHARE_LISTEN port) can fetch them. *published_p (may be NULL)
 * gets the number of blocks newly published; keys already present are not
 * counted.
 * Errors: KVS_ERR_UNSUPPORTED (no kvshare), or kvs_publish()'s.
 */
kvs_status_t engine_publish(engine_seq_h seq, unsigned flags, size_t *published_p);

/**
 * Offloads the sequence's full blocks of computed KV to the cache pool
 * (KVSHARE_POOL) with kvs_put_ex() and waits for the pool node to pull them
 * (until the request's own deadline), so that other replicas can later fetch
 * the prefix from the pool. *blocks_p (may be NULL) gets the number of blocks
 * offered. Errors: KVS_ERR_UNSUPPORTED (no kvshare, no pool configured or no
 * transport), or kvs_put_ex()'s / the request's.
 */
kvs_status_t engine_offload(engine_seq_h seq, size_t *blocks_p);

/**
 * Withdraws blocks published zero-copy. Without @force it fails with
 * KVS_ERR_BUSY while a reader holds a lease; with @force readers get
 * KVS_ERR_STALE instead of data the engine is about to overwrite.
 */
kvs_status_t engine_unpublish(engine_seq_h seq, bool force);

/**
 * Generates @n tokens greedily into @out: the first is the one engine_prefill()
 * chose; each is then fed back to compute the next. Errors:
 * KVS_ERR_INVALID_PARAM (not prefilled), KVS_ERR_NO_SPACE, NO_MEMORY.
 */
kvs_status_t engine_decode(engine_seq_h seq, size_t n, uint32_t *out);

/** The latest logits (cfg.vocab floats): those that chose the next token. */
const float *engine_seq_logits(engine_seq_h seq);

/** The sequence's block table; *ids_p gets the block ids in logical order. */
size_t engine_seq_blocks(engine_seq_h seq, const uint32_t **ids_p);

typedef struct engine_stats {
    size_t prompt_tokens;
    size_t hit_tokens;      /* fetched through kvshare */
    size_t computed_tokens; /* prompt tokens prefilled here */
    size_t decoded_tokens;
    double lookup_s, fetch_s, prefill_s, decode_s;
    /* Time to first token: lookup + fetch + gather + prefill, i.e. all the work
     * between the prompt arriving and the first generated token. */
    double ttft_s;
    /* KV bytes engine_fetch() brought in (hit blocks x layers x the bytes
     * of this TP rank's share of a block), so fetched_bytes / fetch_s is the
     * transfer rate users see. */
    uint64_t fetched_bytes;
    /* engine_slice_load(): time spent adding other TP ranks' shares (part
     * of ttft_s) and the prompt tokens whose KV the shares completed. */
    double gather_s;
    size_t gathered_tokens;
} engine_stats_t;

void engine_seq_stats(engine_seq_h seq, engine_stats_t *stats);

/**
 * Causal attention of @nrows query tokens at positions @pos0 .. pos0+nrows-1
 * over one layer's paged KV buffer @layer_kv, reached through @block_table:
 * row r attends to tokens 0 .. pos0+r, whose K/V must be in the cache. @q
 * and @out hold nrows x n_heads x head_dim floats (@q with RoPE applied).
 * @scratch holds nrows * (n_heads / n_kv_heads) * (pos0 + nrows + 1) floats.
 * Each row's result is bit-identical however the rows are grouped. This is
 * the function prefill and decode use; it is public for tests.
 */
void engine_attention(const engine_config_t *cfg, const float *layer_kv,
                      const uint32_t *block_table, size_t pos0, size_t nrows, const float *q,
                      float *out, float *scratch);

#endif
