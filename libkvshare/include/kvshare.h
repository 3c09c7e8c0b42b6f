/* SPDX-License-Identifier: Apache-2.0 */
/*
 * kvshare.h - the one public header of libkvshare: move LLM KV-cache blocks
 * between inference processes and cache-pool nodes.
 *
 * Conventions (see STYLE.md):
 *  - Every object is an opaque handle (kvs_ctx_h, kvs_pool_h, ...).
 *  - Every call returns kvs_status_t: KVS_OK (0), KVS_INPROGRESS (1) for
 *    requests still running, or a negative error. A failing call writes none
 *    of its *_p outputs.
 *  - Parameter structs begin with `field_mask`; a field is read only when its
 *    bit is set, so new fields can be appended without breaking callers.
 *  - "Owns" in a doc comment says who frees what.
 *
 * Threading model
 * ---------------
 *  - A kvs_ctx_h may be shared by all threads of a process.
 *  - kvs_lookup(), kvs_fetch() and kvs_stats_query() may run on any number
 *    of threads at once, concurrently with one thread that publishes,
 *    unpublishes and evicts. Publishing from several threads is also safe
 *    (it serialises on the catalog's writer lock), but the intended shape is
 *    one writer. Lookups take the lock shared and touch entries only through
 *    atomics; a copy-mode kvs_publish() holds it exclusively while it copies
 *    its batch into the arena, so lookups wait for at most one batch.
 *  - A lease (kvs_lease_h) and a request (kvs_request_h) belong to the thread
 *    that holds them; pass them between threads only with your own
 *    synchronisation.
 *  - Leased blocks are never evicted or reused until kvs_lease_release() or
 *    the lease's deadline, whichever comes first.
 *  - Remote transfers progress either on a library-owned progress thread
 *    (KVSHARE_PROGRESS=thread, the default) or when the caller calls
 *    kvs_progress_ex()/kvs_request_wait() (KVSHARE_PROGRESS=poll). With a
 *    progress thread, a call waiting for a peer's reply (kvs_lookup, a
 *    kvs_request_wait) may poll for up to KVSHARE_POLL_US (default 100 us)
 *    before it sleeps, using its CPU for that long (only while such polling
 *    has been catching replies).
 *
 * ABI: what has shipped is append-only. A function superseded by one with a
 * better contract (a kvs_status_t return, a params struct, an output length)
 * stays exported and working, marked "Deprecated" here; new code calls the
 * replacement (the *_ex or kvs_key_format_hex functions).
 */
#ifndef KVSHARE_H
#define KVSHARE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define KVS_API __attribute__((visibility("default")))
#else
#define KVS_API
#endif

#define KVS_VERSION_MAJOR 0
#define KVS_VERSION_MINOR 1
#define KVS_VERSION_PATCH 0

/* ------------------------------------------------------------------------ */
/* Status codes. Append only: never renumber or remove one.                 */
/* ------------------------------------------------------------------------ */
typedef enum kvs_status {
    KVS_INPROGRESS = 1, /* request still running */
    KVS_OK = 0,
    KVS_ERR_INVALID_PARAM = -1,   /* a NULL, zero or out-of-range argument */
    KVS_ERR_NO_MEMORY = -2,       /* an allocation failed */
    KVS_ERR_NOT_FOUND = -3,       /* no such key, block, peer or file */
    KVS_ERR_NO_SPACE = -4,        /* the store is full of leased blocks */
    KVS_ERR_BUSY = -5,            /* the block is leased, or the peer is at a limit; retry */
    KVS_ERR_TIMED_OUT = -6,       /* a deadline passed */
    KVS_ERR_PEER_FAILED = -7,     /* the remote side died or closed */
    KVS_ERR_LAYOUT_MISMATCH = -8, /* peers or blocks of different layouts */
    KVS_ERR_PROTOCOL = -9,        /* a malformed or unexpected message */
    KVS_ERR_AUTH = -10,           /* the peer failed authentication */
    KVS_ERR_UNSUPPORTED = -11,    /* not available in this build/config */
    KVS_ERR_CONFIG = -12,         /* a bad KVSHARE_* value or config file */
    KVS_ERR_IO = -13,             /* a system call failed */
    KVS_ERR_STALE = -14,          /* block generation changed under a read */
    KVS_ERR_CANCELED = -15,       /* the request was cancelled */
    KVS_ERR_TRANSPORT = -16,      /* the transport reported an error */
} kvs_status_t;

/** Static English text for a status; never NULL, even for unknown codes. */
KVS_API const char *kvs_status_string(kvs_status_t status);

/** Library version as "MAJOR.MINOR.PATCH"; a static string. */
KVS_API const char *kvs_version(void);

/* ------------------------------------------------------------------------ */
/* Logging                                                                  */
/* ------------------------------------------------------------------------ */
typedef enum kvs_log_level {
    KVS_LOG_OFF = 0,
    KVS_LOG_ERROR,
    KVS_LOG_WARN,
    KVS_LOG_INFO,
    KVS_LOG_DEBUG,
    KVS_LOG_TRACE,
} kvs_log_level_t;

/**
 * A log sink. @msg is one formatted line without a trailing newline; it is
 * valid only during the call. Called from any library thread, so the sink
 * must be thread-safe. It must not call back into kvshare.
 */
typedef void (*kvs_log_fn)(void *arg, kvs_log_level_t level, const char *msg);

/* ------------------------------------------------------------------------ */
/* Block keys: chained hashes identical to vLLM's prefix-caching hashes.     */
/* ------------------------------------------------------------------------ */
typedef enum kvs_hash_algo {
    KVS_HASH_SHA256_CBOR = 0, /* vLLM sha256_cbor: 32-byte digest */
    KVS_HASH_XXHASH_CBOR = 1, /* vLLM xxhash_cbor: xxh3-128, 16 bytes */
} kvs_hash_algo_t;

#define KVS_KEY_BYTES 32

/**
 * A block key. Digests shorter than 32 bytes (xxhash_cbor) are stored in the
 * first bytes and zero-padded; the padding is never hashed.
 */
typedef struct kvs_key {
    uint8_t bytes[KVS_KEY_BYTES];
} kvs_key_t;

typedef struct kvs_hasher *kvs_hasher_h;

enum kvs_hasher_field {
    KVS_HASHER_FIELD_ALGO = 1u << 0,
    KVS_HASHER_FIELD_SEED = 1u << 1,
    KVS_HASHER_FIELD_BLOCK_TOKENS = 1u << 2,
};

typedef struct kvs_hasher_params {
    uint64_t field_mask;
    kvs_hash_algo_t algo; /* default KVS_HASH_SHA256_CBOR */
    /* The PYTHONHASHSEED string vLLM runs with; NONE_HASH = H(CBOR(seed)).
     * Default: $PYTHONHASHSEED, else "0". Copied. */
    const char *seed;
    uint32_t block_tokens; /* tokens per block; default 16 */
} kvs_hasher_params_t;

/**
 * Creates a hasher. @params may be NULL (all defaults). On success the caller
 * owns *hasher_p and frees it with kvs_hasher_destroy(). A hasher is immutable
 * and may be used from many threads at once.
 * Errors: KVS_ERR_INVALID_PARAM (unknown algo, block_tokens 0), NO_MEMORY.
 */
KVS_API kvs_status_t kvs_hasher_create(const kvs_hasher_params_t *params, kvs_hasher_h *hasher_p);
KVS_API void kvs_hasher_destroy(kvs_hasher_h hasher);

/** Digest length in bytes of the hasher's algorithm (32 or 16). */
KVS_API size_t kvs_hasher_digest_len(kvs_hasher_h hasher);

/** Writes NONE_HASH (the parent of a chain's first block) to *key_p. */
KVS_API void kvs_hasher_none_hash(kvs_hasher_h hasher, kvs_key_t *key_p);

enum kvs_chain_field {
    KVS_CHAIN_FIELD_PARENT = 1u << 0,
    KVS_CHAIN_FIELD_CACHE_SALT = 1u << 1,
    KVS_CHAIN_FIELD_LORA_NAME = 1u << 2,
};

/** Extra inputs of a chain; the pointers are borrowed for the call only. */
typedef struct kvs_chain_params {
    uint64_t field_mask;
    /* Continue an existing chain from this key instead of NONE_HASH. The
     * first block is then not the prompt's first, so no cache salt applies. */
    const kvs_key_t *parent;
    const char *cache_salt; /* vLLM cache_salt: first block only */
    const char *lora_name;  /* vLLM LoRA adapter name: every block */
} kvs_chain_params_t;

/**
 * Hashes the full blocks of @tokens into @keys (capacity @max_keys).
 * Only full blocks are hashed; a partial tail is ignored. *nkeys_p receives
 * the number of keys written = min(ntokens / block_tokens, max_keys).
 * @params may be NULL. Errors: KVS_ERR_INVALID_PARAM, KVS_ERR_NO_MEMORY.
 * On an error *nkeys_p is untouched and @keys may hold some keys already
 * written: treat its contents as undefined.
 */
KVS_API kvs_status_t kvs_hasher_chain(kvs_hasher_h hasher, const kvs_chain_params_t *params,
                                      const uint32_t *tokens, size_t ntokens, kvs_key_t *keys,
                                      size_t max_keys, size_t *nkeys_p);

/**
 * The 64-bit view of a key that vLLM's KV events carry: the digest's last
 * 8 bytes read big-endian. @digest_len is kvs_hasher_digest_len().
 */
KVS_API uint64_t kvs_key_to_u64(const kvs_key_t *key, size_t digest_len);

/**
 * Deprecated: use kvs_key_format_hex(), which is told @out's size. Writes
 * 2*digest_len hex digits and a NUL to @out (size >= 2*len+1); a
 * @digest_len over KVS_KEY_BYTES is taken as KVS_KEY_BYTES. Kept for the ABI.
 */
KVS_API void kvs_key_to_hex(const kvs_key_t *key, size_t digest_len, char *out);

/**
 * Writes the first @digest_len bytes of @key as 2*digest_len lowercase hex
 * digits and a NUL to @out, which holds @out_len bytes. @digest_len is
 * kvs_hasher_digest_len() (1..KVS_KEY_BYTES).
 * Errors: KVS_ERR_INVALID_PARAM (NULL, @digest_len 0 or over KVS_KEY_BYTES,
 * @out_len < 2*digest_len+1); @out is then not written.
 */
KVS_API kvs_status_t kvs_key_format_hex(const kvs_key_t *key, size_t digest_len, char *out,
                                        size_t out_len);

/* ------------------------------------------------------------------------ */
/* Layouts: the model's KV geometry, fingerprinted into a 64-bit layout id.  */
/* ------------------------------------------------------------------------ */
typedef enum kvs_dtype {
    KVS_DTYPE_FP16 = 0,
    KVS_DTYPE_BF16,
    KVS_DTYPE_FP32,
    KVS_DTYPE_FP8_E4M3,
    KVS_DTYPE_FP8_E5M2,
    KVS_DTYPE_INT8,
} kvs_dtype_t;

typedef enum kvs_kv_layout {
    KVS_KV_NHD = 0, /* block, token, head, dim (vLLM FlashAttention) */
    KVS_KV_HND,     /* block, head, token, dim */
} kvs_kv_layout_t;

typedef enum kvs_kv_order {
    KVS_KV_ORDER_KV_OUTER = 0, /* (2, num_blocks, ...): K and V planes apart */
    KVS_KV_ORDER_BLOCK_OUTER,  /* (num_blocks, 2, ...): K then V per block */
} kvs_kv_order_t;

enum kvs_layout_field {
    KVS_LAYOUT_FIELD_TOTAL_KV_HEADS = 1u << 0, /* total_kv_heads */
    KVS_LAYOUT_FIELD_KEY_TOKENS = 1u << 1,     /* key_tokens */
};

/**
 * A model's KV geometry as one TP rank holds it.
 *
 * What must match between two peers, and what may differ (issue 13):
 *  - The model: model_id, dtype, num_layers, the TOTAL number of KV heads
 *    and head_dim (kvs_model_id()). Peers of different models never
 *    exchange a block: the lookup is a miss and the reason is logged.
 *  - Each peer's view, which may differ: tp_rank/tp_size (which KV heads it
 *    holds), kv_layout (NHD/HND), kv_order and block_tokens. The reader of
 *    a remote lease plans the copies from the holder's view to its own
 *    (kvs_lease_heads(), kvs_fetch()), so the caller never slices.
 *
 * num_kv_heads is the number of KV heads in THIS rank's tensors (per rank:
 * what vLLM's per-layer KV tensor has in its head dimension), as it always
 * was. The heads of rank r are, with H the total and T = tp_size:
 *  - T <= H: heads [r*H/T, (r+1)*H/T) (H must be a multiple of T);
 *  - T > H (GQA with more ranks than KV heads; vLLM replicates): head
 *    r / (T/H) only, and num_kv_heads is 1 (T must be a multiple of H).
 * total_kv_heads (KVS_LAYOUT_FIELD_TOTAL_KV_HEADS) gives H; without it H is
 * num_kv_heads * tp_size, which is right unless heads are replicated.
 *
 * Memory: block b of layer l is, in the order of the pool's segments, K
 * then V of layer 0, then of layer 1, ...; each of K and V is block_tokens
 * x num_kv_heads x head_dim elements in kv_layout order. kv_order says how
 * the engine's tensor interleaves them (one segment per layer holding K
 * then V, or a K and a V segment per layer); either way the concatenation
 * of a block's segments is the same bytes. A pool whose segments are cut
 * otherwise still exchanges blocks with peers of its exact layout id.
 *
 * key_tokens (KVS_LAYOUT_FIELD_KEY_TOKENS): tokens per block key, vLLM's
 * hash block size; default block_tokens. It must divide block_tokens. Two
 * views with different block_tokens exchange KV only when they share
 * key_tokens (e.g. both hash 16-token blocks, one engine stores 32). A
 * holder whose blocks hold several keys publishes each key with its block
 * id in copy mode: zero-copy keeps one key per block id.
 *
 * A holder process serves readers of another view of its model from the
 * first pool of that model it has (one pool per TP rank is the intended
 * shape). Fetches into CUDA memory (a pool with a KVS_MEM_CUDA segment)
 * work from a same-host holder only, over its mapped memory (views may
 * cross there too); the transport takes no CUDA destinations.
 *
 * ABI: fields are appended at the end only, each behind a field_mask bit.
 */
typedef struct kvs_layout {
    uint64_t field_mask;  /* KVS_LAYOUT_FIELD_* bits of the fields after kv_order */
    const char *model_id; /* e.g. "meta-llama/Llama-3.1-8B-Instruct" */
    kvs_dtype_t dtype;
    uint32_t block_tokens;
    uint32_t num_layers;
    uint32_t num_kv_heads; /* in this rank's tensors (see above) */
    uint32_t head_dim;
    uint32_t tp_rank;
    uint32_t tp_size;
    kvs_kv_layout_t kv_layout;
    kvs_kv_order_t kv_order;
    uint32_t total_kv_heads; /* KVS_LAYOUT_FIELD_TOTAL_KV_HEADS: the model's KV heads */
    uint32_t key_tokens;     /* KVS_LAYOUT_FIELD_KEY_TOKENS: tokens per block key */
} kvs_layout_t;

/**
 * Fingerprints @layout into *layout_id_p. Every field takes part, the model
 * id by its bytes; total_kv_heads and key_tokens only when set to other
 * than their defaults, so the ids of layouts from before they existed do
 * not change. Peers of one layout id exchange blocks byte for byte; peers
 * of different ids but one kvs_model_id() exchange them through a plan
 * (see kvs_layout_t).
 * Errors: KVS_ERR_INVALID_PARAM (NULL model id, zero geometry, rank >= size,
 * an unknown field_mask bit, total_kv_heads that do not split over tp_size
 * as described above, key_tokens that do not divide block_tokens).
 */
KVS_API kvs_status_t kvs_layout_id(const kvs_layout_t *layout, uint64_t *layout_id_p);

/**
 * Fingerprints the part of @layout that must match for two peers to
 * exchange KV: model id, dtype, num_layers, total KV heads and head_dim
 * (not the TP rank/size, NHD/HND, K/V order or block size).
 * Errors: as kvs_layout_id().
 */
KVS_API kvs_status_t kvs_model_id(const kvs_layout_t *layout, uint64_t *model_id_p);

/**
 * The holder ranks a reader of @reader's view must fetch from when the
 * holders run at tensor-parallel size @holder_tp_size (same model): the
 * fewest ranks whose heads cover the reader's heads, each head read once
 * (of replicated holders, the lowest rank that has it). Written to
 * @ranks in ascending order (capacity @max_ranks); *nranks_p gets the
 * count. A reader fetches each of its blocks from every listed rank's
 * lease (kvs_lease_heads() says which heads each one fills).
 * Errors: KVS_ERR_INVALID_PARAM (an invalid layout, holder_tp_size 0 or not
 * splitting the heads, @max_ranks too small).
 */
KVS_API kvs_status_t kvs_layout_source_ranks(const kvs_layout_t *reader, uint32_t holder_tp_size,
                                             uint32_t *ranks, size_t max_ranks, size_t *nranks_p);

/* ------------------------------------------------------------------------ */
/* Context                                                                  */
/* ------------------------------------------------------------------------ */
typedef struct kvs_ctx *kvs_ctx_h;
typedef struct kvs_pool *kvs_pool_h;
typedef struct kvs_lease *kvs_lease_h;
typedef struct kvs_request *kvs_request_h;

typedef enum kvs_strategy {
    KVS_STRATEGY_LRU = 0,
    KVS_STRATEGY_LFU,
} kvs_strategy_t;

typedef enum kvs_progress_mode {
    KVS_PROGRESS_THREAD = 0, /* a library thread drives transfers */
    KVS_PROGRESS_POLL,       /* the caller drives them: kvs_progress_ex() */
} kvs_progress_mode_t;

enum kvs_ctx_field {
    KVS_CTX_FIELD_LOG_FN = 1u << 0, /* log_fn + log_arg */
    KVS_CTX_FIELD_LOG_LEVEL = 1u << 1,
    KVS_CTX_FIELD_CONFIG_FILE = 1u << 2,
    KVS_CTX_FIELD_CAPACITY = 1u << 3,
    KVS_CTX_FIELD_SLOT_BYTES = 1u << 4,
    KVS_CTX_FIELD_STRATEGY = 1u << 5,
    KVS_CTX_FIELD_WATERMARKS = 1u << 6, /* high_watermark + low_watermark */
    KVS_CTX_FIELD_LISTEN = 1u << 7,
    KVS_CTX_FIELD_PROGRESS = 1u << 8,
    KVS_CTX_FIELD_FETCH_TIMEOUT = 1u << 9,
    KVS_CTX_FIELD_LEASE_TIMEOUT = 1u << 10,
    KVS_CTX_FIELD_AUTH_TOKEN_FILE = 1u << 11,
    KVS_CTX_FIELD_POOL = 1u << 12,
    KVS_CTX_FIELD_ERRBUF = 1u << 13, /* errbuf + errbuf_len */
    KVS_CTX_FIELD_NO_ENV = 1u << 14, /* ignore KVSHARE_* env vars */
    KVS_CTX_FIELD_TRANSPORT = 1u << 15,
    KVS_CTX_FIELD_POOL_NODE = 1u << 16,
    KVS_CTX_FIELD_AUTH = 1u << 17,
    KVS_CTX_FIELD_BLOCK_EVENTS = 1u << 18, /* block_event_fn + block_event_arg */
};

typedef enum kvs_block_event_type {
    KVS_BLOCK_EVENT_STORED = 1,  /* a block became readable from this context's store */
    KVS_BLOCK_EVENT_REMOVED = 2, /* it left the store (evicted, unpublished, replaced) */
} kvs_block_event_type_t;

/** One change of a context's store: what an index needs to see this store as a tier. */
typedef struct kvs_block_event {
    kvs_block_event_type_t type;
    uint64_t layout_id;
    kvs_key_t key;
} kvs_block_event_t;

/**
 * Observer of a context's store. It is called with the store's lock held, by whichever
 * thread stored or removed the block (a peer's PUT, an eviction, kvs_publish), so it must
 * return at once: copy the event (the pointer is valid for the call only), never block,
 * never call back into kvshare. A queue that drops when full is the intended use.
 */
typedef void (*kvs_block_event_fn)(void *arg, const kvs_block_event_t *event);

/**
 * Context parameters. Each setting is taken, in order of precedence, from
 * this struct (when its bit is set), the KVSHARE_* environment, the JSON
 * file named by config_file or KVSHARE_CONFIG, and the documented default.
 * Strings are copied.
 */
typedef struct kvs_ctx_params {
    uint64_t field_mask;
    kvs_log_fn log_fn; /* default: stderr, at KVSHARE_LOG's level */
    void *log_arg;
    kvs_log_level_t log_level;    /* KVSHARE_LOG; default off */
    const char *config_file;      /* KVSHARE_CONFIG; default none */
    uint64_t capacity_bytes;      /* KVSHARE_CAPACITY; default 1 GiB */
    uint64_t slot_bytes;          /* KVSHARE_SLOT_BYTES: round slot sizes up to it; default 0 */
    kvs_strategy_t strategy;      /* KVSHARE_STRATEGY; default lru */
    double high_watermark;        /* KVSHARE_HIGH_WATERMARK; default 0.9 */
    double low_watermark;         /* KVSHARE_LOW_WATERMARK; default 0.8 */
    const char *listen;           /* KVSHARE_LISTEN host:port; default none */
    kvs_progress_mode_t progress; /* KVSHARE_PROGRESS; default thread */
    uint32_t fetch_timeout_ms;    /* KVSHARE_FETCH_TIMEOUT_MS; default 5000 */
    uint32_t lease_timeout_ms;    /* KVSHARE_LEASE_TIMEOUT_MS; default 30000 */
    const char *auth_token_file;  /* KVSHARE_AUTH_TOKEN_FILE; required unless auth is none */
    const char *pool;             /* KVSHARE_POOL: DNS name or host:port list */
    /* When set, a failing kvs_ctx_create() writes one line naming the cause
     * here (e.g. the bad variable and its accepted values). */
    char *errbuf;
    size_t errbuf_len;
    /* KVSHARE_TRANSPORT: "auto" (default: UCX when built in), "ucx" or
     * "none" (local only; no UCX context, no progress thread). Copied. */
    const char *transport;
    /* Non-zero: this context is a cache-pool node (`kvshare serve`): it
     * serves blocks of any layout and stores blocks that peers kvs_put(). */
    int pool_node;
    /* KVSHARE_AUTH: "token" (default: peers prove the secret in
     * auth_token_file / KVSHARE_AUTH_TOKEN_FILE, which must then be set) or
     * "none" (explicitly open: anyone who reaches the port may read and
     * write blocks). Copied. */
    const char *auth;
    /* Observer of every block stored in or removed from this context's store (see
     * kvs_block_event_fn); none by default. `kvshare serve --events` publishes them as
     * vLLM KV events. */
    kvs_block_event_fn block_event_fn;
    void *block_event_arg;
} kvs_ctx_params_t;

/**
 * Creates a context. @params may be NULL. On success the caller owns *ctx_p
 * and frees it with kvs_ctx_destroy().
 * Errors: KVS_ERR_CONFIG (a bad setting; the message names it), NO_MEMORY,
 * KVS_ERR_IO (config file unreadable), KVS_ERR_UNSUPPORTED (a listener or
 * pool was asked for but no transport is built in).
 */
KVS_API kvs_status_t kvs_ctx_create(const kvs_ctx_params_t *params, kvs_ctx_h *ctx_p);

/**
 * Writes the address peers reach this context at ("host:port", with the
 * port the listener actually bound when KVSHARE_LISTEN asked for port 0).
 * Errors: KVS_ERR_NOT_FOUND (no listener), KVS_ERR_INVALID_PARAM (buffer).
 */
KVS_API kvs_status_t kvs_ctx_listen_addr(kvs_ctx_h ctx, char *buf, size_t len);

/** Destroys @ctx; accepts NULL. All pools, leases and requests must be gone. */
KVS_API void kvs_ctx_destroy(kvs_ctx_h ctx);

/**
 * Deprecated: use kvs_progress_ex(), which returns a kvs_status_t. Drives
 * outstanding transfers once without blocking (poll mode). Returns the
 * number of events handled, or a negative status. Kept for the ABI.
 */
KVS_API int kvs_progress(kvs_ctx_h ctx);

/**
 * Drives outstanding transfers once without blocking (poll mode); harmless
 * in thread mode. On KVS_OK, *events_p (may be NULL) receives the number of
 * events handled (0: nothing was pending).
 * Errors: KVS_ERR_INVALID_PARAM (NULL @ctx), the transport's error; *events_p
 * is then not written.
 */
KVS_API kvs_status_t kvs_progress_ex(kvs_ctx_h ctx, unsigned *events_p);

/* ------------------------------------------------------------------------ */
/* Pools: the engine's KV memory, described once.                            */
/* ------------------------------------------------------------------------ */
typedef enum kvs_mem_type {
    KVS_MEM_HOST = 0,
    KVS_MEM_CUDA = 1,
} kvs_mem_type_t;

/**
 * One segment of a pool, e.g. one layer's KV tensor. Block b of the segment
 * lives at base + b * block_stride and is block_bytes long. A block id names
 * the same slot in every segment.
 */
typedef struct kvs_segment {
    void *base;
    size_t block_stride; /* >= block_bytes */
    size_t block_bytes;
    kvs_mem_type_t mem_type;
} kvs_segment_t;

typedef struct kvs_region *kvs_region_h;

/**
 * Deprecated: use kvs_mem_register_ex(). Kept for the ABI.
 * Registers a memory range with the context (and its transport, once), ahead
 * of or apart from any pool: the LD_PRELOAD shim registers the engine's KV
 * allocations as it sees them. Pools whose segments fall inside a registered
 * region reuse its registration. The memory stays the caller's. On success
 * the caller owns *region_p and ends it with kvs_mem_deregister(), before
 * freeing the memory.
 * Errors: KVS_ERR_INVALID_PARAM (NULL/empty, overlaps a registered region),
 * NO_MEMORY, KVS_ERR_TRANSPORT.
 */
KVS_API kvs_status_t kvs_mem_register(kvs_ctx_h ctx, void *base, size_t length,
                                      kvs_mem_type_t mem_type, kvs_region_h *region_p);

enum kvs_mem_register_field {
    KVS_MEM_REGISTER_FIELD_MEM_TYPE = 1u << 0,
};

typedef struct kvs_mem_register_params {
    uint64_t field_mask;
    kvs_mem_type_t mem_type; /* default KVS_MEM_HOST */
} kvs_mem_register_params_t;

/**
 * kvs_mem_register() with a params struct (@params may be NULL: host
 * memory); kvs_mem_register() is deprecated in its favour and kept for the
 * ABI. Same ownership: on success the caller owns *region_p and ends it with
 * kvs_mem_deregister() before freeing the memory.
 * Errors: KVS_ERR_INVALID_PARAM (NULL/empty, an unknown mem_type, overlaps a
 * registered region), NO_MEMORY, KVS_ERR_TRANSPORT; *region_p is then not
 * written.
 */
KVS_API kvs_status_t kvs_mem_register_ex(kvs_ctx_h ctx, void *base, size_t length,
                                         const kvs_mem_register_params_t *params,
                                         kvs_region_h *region_p);

/**
 * Ends a registration; accepts NULL. A same-host pool node that mapped the
 * region for this context's puts is told to unmap it before this returns
 * (socket I/O on this thread: well under a millisecond; a node that does
 * not answer is given up on after a second or two, logged, and not asked
 * again), so the memory is really free once the caller frees it.
 */
KVS_API void kvs_mem_deregister(kvs_region_h region);

/** Number of regions registered now (for stats and tests). */
KVS_API size_t kvs_mem_region_count(kvs_ctx_h ctx);

/**
 * Allocates @length bytes of host memory for the engine's KV cache, zeroed
 * and page-aligned, in a sealed memfd: pools whose segments lie in it are
 * readable by same-host peers through shared memory (they map it read-only
 * and copy it themselves, instead of the transport's cross-process copy).
 * Where memfds are unavailable it is ordinary anonymous memory. On success
 * the caller owns *ptr_p and frees it with kvs_mem_free() after destroying
 * every pool and region in it. Only KVS_MEM_HOST is supported.
 * Errors: KVS_ERR_INVALID_PARAM (NULL ctx/ptr_p, zero length),
 * KVS_ERR_UNSUPPORTED (KVS_MEM_CUDA), KVS_ERR_NO_MEMORY.
 */
KVS_API kvs_status_t kvs_mem_alloc(kvs_ctx_h ctx, size_t length, kvs_mem_type_t mem_type,
                                   void **ptr_p);

/** Frees memory from kvs_mem_alloc(); accepts NULL. @ctx may be NULL. */
KVS_API void kvs_mem_free(kvs_ctx_h ctx, void *ptr);

enum kvs_pool_field {
    KVS_POOL_FIELD_NAME = 1u << 0,
};

typedef struct kvs_pool_params {
    uint64_t field_mask;
    const kvs_layout_t *layout;    /* required; fingerprinted at creation */
    const kvs_segment_t *segments; /* required; copied */
    size_t num_segments;
    uint32_t num_blocks; /* block ids are 0 .. num_blocks-1 */
    const char *name;    /* for logs and stats; copied */
} kvs_pool_params_t;

/**
 * Describes the engine's KV memory to the library (and registers it with the
 * transport, once). The memory stays owned by the caller and must outlive the
 * pool. On success the caller owns *pool_p (kvs_pool_destroy()).
 * Errors: KVS_ERR_INVALID_PARAM (no segments, a NULL base, a stride smaller
 * than the block, zero blocks, an invalid layout), NO_MEMORY,
 * KVS_ERR_TRANSPORT (registration failed).
 */
KVS_API kvs_status_t kvs_pool_create(kvs_ctx_h ctx, const kvs_pool_params_t *params,
                                     kvs_pool_h *pool_p);

/**
 * Unpublishes every block of the pool and destroys it; accepts NULL.
 * Blocks still under lease make this wait for their leases to end (at most
 * the lease timeout), because remote readers may be reading them.
 */
KVS_API void kvs_pool_destroy(kvs_pool_h pool);

/** The pool's layout id. */
KVS_API uint64_t kvs_pool_layout_id(kvs_pool_h pool);

/** Total bytes of one block across all segments. */
KVS_API size_t kvs_pool_block_bytes(kvs_pool_h pool);

/* ------------------------------------------------------------------------ */
/* Publish: make blocks readable by lookups (local and remote).              */
/* ------------------------------------------------------------------------ */
enum kvs_publish_flags {
    /* Zero-copy: readers read the pool's memory directly. The caller promises
     * not to overwrite a published block until kvs_unpublish() succeeds for
     * it (which fails with KVS_ERR_BUSY while the block is leased). Without
     * this flag the blocks are copied into the library's arena and the
     * caller may reuse its blocks as soon as kvs_publish() returns. */
    KVS_PUBLISH_ZERO_COPY = 1u << 0,
};

/**
 * Publishes @count blocks: key[i] is held by block_ids[i] of @pool. Keys
 * already present under the pool's layout are skipped (content-addressed),
 * counted in *published_p as not published. Copy mode may evict unleased
 * blocks (by strategy, from the high to the low watermark).
 * @published_p may be NULL; it is written only on KVS_OK.
 * Errors: KVS_ERR_INVALID_PARAM (block id out of range), KVS_ERR_NO_SPACE
 * (the store is full of leased blocks; the blocks before the first that did
 * not fit were published, and a lookup finds them), NO_MEMORY.
 */
KVS_API kvs_status_t kvs_publish(kvs_pool_h pool, const kvs_key_t *keys, const uint32_t *block_ids,
                                 size_t count, unsigned flags, size_t *published_p);

enum kvs_unpublish_flags {
    /* Unpublish even leased blocks: their generation is bumped, so a reader
     * mid-transfer sees KVS_ERR_STALE instead of wrong data. */
    KVS_UNPUBLISH_FORCE = 1u << 0,
};

/**
 * Withdraws zero-copy blocks the engine wants to reuse, bumping each block's
 * generation. Without KVS_UNPUBLISH_FORCE it fails with KVS_ERR_BUSY, changing
 * nothing, when any of the blocks is leased. Blocks not published are ignored.
 */
KVS_API kvs_status_t kvs_unpublish(kvs_pool_h pool, const uint32_t *block_ids, size_t count,
                                   unsigned flags);

/**
 * For each of @count blocks of @pool, writes to reads[i] how many remote
 * readers have released a lease on the block (RELEASE after their fetch,
 * not expiry or disconnect) since it was last published; 0 for blocks not
 * published. A producer handing KV to a known number of consumers (P/D)
 * frees its blocks once each has read, instead of waiting out the lease.
 * Errors: KVS_ERR_INVALID_PARAM (NULL arrays, block id out of range).
 */
KVS_API kvs_status_t kvs_pool_reads(kvs_pool_h pool, const uint32_t *block_ids, size_t count,
                                    uint32_t *reads);

/**
 * kvs_pool_reads(), and for each block also expected[i]: the largest reader
 * count those readers announced (kvs_lookup_params_t.readers) since the
 * block was last published; 0 when none announced one (count that as 1).
 * A producer whose block several consumers read (P/D with more decode TP
 * ranks than prefill ranks) frees it once reads[i] reaches expected[i]:
 * each reader says how many read, the first RELEASE already carries it.
 * The count is a maximum, never lowered before the block is republished,
 * so a mix of consumers that disagree only waits longer (until the lease
 * ends), never frees early. @expected may be NULL (then this is
 * kvs_pool_reads()); both arrays are written only on KVS_OK.
 * Errors: KVS_ERR_INVALID_PARAM (NULL pool or arrays, id out of range).
 */
KVS_API kvs_status_t kvs_pool_readers(kvs_pool_h pool, const uint32_t *block_ids, size_t count,
                                      uint32_t *reads, uint32_t *expected);

/* ------------------------------------------------------------------------ */
/* Lookup, fetch and release.                                               */
/* ------------------------------------------------------------------------ */
typedef enum kvs_source {
    KVS_SOURCE_LOCAL = 1u << 0, /* this context's store */
    KVS_SOURCE_PEER = 1u << 1,  /* a named peer (P/D: the prefill engine) */
    KVS_SOURCE_POOL = 1u << 2,  /* the KVCachePool (KVSHARE_POOL) */
} kvs_source_t;

enum kvs_lookup_field {
    KVS_LOOKUP_FIELD_SOURCES = 1u << 0,
    KVS_LOOKUP_FIELD_PEER = 1u << 1,
    KVS_LOOKUP_FIELD_LEASE_MS = 1u << 2,
    KVS_LOOKUP_FIELD_TIMEOUT_MS = 1u << 3,
    KVS_LOOKUP_FIELD_NO_LEASE = 1u << 4, /* probe only: count hits, hold nothing */
    KVS_LOOKUP_FIELD_READERS = 1u << 5,
};

/* The most readers a lookup may announce (kvs_lookup_params_t.readers). */
#define KVS_LOOKUP_MAX_READERS 4096u

typedef struct kvs_lookup_params {
    uint64_t field_mask;
    unsigned sources;    /* kvs_source_t mask; default LOCAL|POOL, plus PEER if set */
    const char *peer;    /* "host:port" of the peer to ask */
    uint32_t lease_ms;   /* default: the context's lease timeout */
    uint32_t timeout_ms; /* remote round-trip deadline; default fetch timeout */
    /* How many readers, this one included, will read these blocks from a
     * remote holder before it may free them (1..KVS_LOOKUP_MAX_READERS; 0:
     * not said). Sent with the lease's RELEASE; the holder's producer sees
     * it in kvs_pool_readers(). P/D with decode TP > prefill TP: the
     * decode ranks that read one prefill rank (the inverse of
     * kvs_layout_source_ranks()) each announce their number. */
    uint32_t readers;
} kvs_lookup_params_t;

/**
 * Finds the longest prefix of @keys (a chain, in order) available under
 * @layout_id, trying sources from cheapest to dearest, and leases it.
 * Always returns a lease handle on KVS_OK, even for 0 hits; the caller owns
 * it and ends it with kvs_lease_release(). A layout mismatch is a miss.
 * A holder on this host whose memory is mapped here (docs/transport.md)
 * also maps its block index to us (KVSHARE_SHM_INDEX=auto): the lookup
 * then reads that index and sends the holder nothing, and takes no lease.
 * A block the holder evicts or withdraws before the fetch has copied it
 * fails the fetch with KVS_ERR_STALE (each block's generation is checked
 * before and after the copy), never hands over other bytes; look it up
 * again. kvs_lease_release() then tells the holder what was read (its
 * kvs_pool_reads() counts it, with the readers announced). The first
 * lookup of a connection, and the first after the holder registered or
 * let go of memory, ask the holder as before.
 * Errors: KVS_ERR_INVALID_PARAM (also readers over KVS_LOOKUP_MAX_READERS),
 * NO_MEMORY, TIMED_OUT, PEER_FAILED.
 */
KVS_API kvs_status_t kvs_lookup(kvs_ctx_h ctx, uint64_t layout_id, const kvs_key_t *keys,
                                size_t nkeys, const kvs_lookup_params_t *params,
                                kvs_lease_h *lease_p);

enum kvs_connect_field {
    KVS_CONNECT_FIELD_TIMEOUT_MS = 1u << 0,
    KVS_CONNECT_FIELD_FLAGS = 1u << 1,
};

enum kvs_connect_flags {
    /* Return at once; a library thread connects. A lookup, fetch or put to
     * the same peer meanwhile waits for that connection instead of making
     * a second one. */
    KVS_CONNECT_BACKGROUND = 1u << 0,
};

typedef struct kvs_connect_params {
    uint64_t field_mask;
    uint32_t timeout_ms; /* default: the context's fetch timeout */
    unsigned flags;      /* kvs_connect_flags */
} kvs_connect_params_t;

/**
 * Connects to the peer or pool node @peer ("host:port") for blocks of
 * @layout_id before the first lookup needs it: the bootstrap handshake,
 * transport endpoints and the peer's memory keys. Call it as soon as a peer
 * is named (for P/D, when the request's transfer parameters arrive), so
 * that first contact is off the request's critical path. Connections stay
 * open and are reused by every later request; this call is never needed
 * for correctness. @params may be NULL. @peer is copied.
 * Returns KVS_OK once connected (or already connected), KVS_INPROGRESS with
 * KVS_CONNECT_BACKGROUND (the outcome shows at the next request). A
 * background connect still running when the context is destroyed is waited
 * for, at most its timeout.
 * Errors: KVS_ERR_INVALID_PARAM, UNSUPPORTED (no transport), AUTH,
 * PEER_FAILED, TIMED_OUT, BUSY (too many background connects), NO_MEMORY.
 */
KVS_API kvs_status_t kvs_peer_connect(kvs_ctx_h ctx, uint64_t layout_id, const char *peer,
                                      const kvs_connect_params_t *params);

/** Number of leading keys the lease covers (the hit length in blocks). */
KVS_API size_t kvs_lease_hits(kvs_lease_h lease);

/** Where the leased blocks are (one kvs_source_t bit; 0 for no hits). */
KVS_API kvs_source_t kvs_lease_source(kvs_lease_h lease);

/**
 * Which of the reader's own KV heads (indices 0 .. num_kv_heads-1 of the
 * layout the lookup was made under) a kvs_fetch() from @lease fills:
 * *first_p .. *first_p + *count_p - 1. All of them for a local lease or a
 * holder of the same TP split; fewer when the holder ran at a smaller TP
 * rank span (e.g. a TP=1 reader and one of two TP=2 holders: half). The
 * rest of each block is left as it was: fetch it from the other holders
 * (kvs_layout_source_ranks()), each lease into the same destination block
 * ids; the fetches write disjoint bytes. *count_p is 0 for no hits.
 * Errors: KVS_ERR_INVALID_PARAM (NULL).
 */
KVS_API kvs_status_t kvs_lease_heads(kvs_lease_h lease, uint32_t *first_p, uint32_t *count_p);

/**
 * Ends the lease (the holder may evict or reuse the blocks again) and frees
 * the handle; accepts NULL. A request fetching from the lease must be
 * complete or freed first.
 */
KVS_API void kvs_lease_release(kvs_lease_h lease);

enum kvs_fetch_field {
    KVS_FETCH_FIELD_TIMEOUT_MS = 1u << 0,
    KVS_FETCH_FIELD_FIRST = 1u << 1, /* start at hit index `first` */
};

typedef struct kvs_fetch_params {
    uint64_t field_mask;
    uint32_t timeout_ms; /* default: the context's fetch timeout */
    size_t first;        /* skip the first hits (already in the pool) */
} kvs_fetch_params_t;

/**
 * Starts copying @count leased blocks (hits first .. first+count-1) into
 * @dst_block_ids of @dst (the layout the lookup was made under). Adjacent
 * block ids are coalesced.
 * Across views (a remote holder of the same model with another TP split,
 * NHD/HND, K/V order or block size; see kvs_layout_t) the library plans the
 * copies: only the heads both hold move (kvs_lease_heads()), each byte
 * once. Short runs go through a staging buffer that is permuted into @dst
 * only after the generations checked out; runs of 4 KiB or more are read in
 * place over native RMA or, from a same-host holder, copied from its mapped
 * memory, as same-layout fetches are (a changed block then
 * fails the request with KVS_ERR_STALE: its bytes in @dst are not KV). A
 * lease whose holder has none of the reader's heads fetches nothing. The
 * staging buffer is allocated per request (up to the bytes it moves):
 * fetch long prompts across views in batches of blocks. Hit j then covers tokens
 * [j*key_tokens, (j+1)*key_tokens) of the chain, within dst block dst_block_ids[j] at token
 * (j*key_tokens) % block_tokens: so the lookup's first key must start a block in both views (a
 * prompt's first key does), and with blocks larger than keys several hits name the same destination
 * block. On KVS_OK the caller owns *req_p: poll it with kvs_request_test() or kvs_request_wait(),
 * then kvs_request_free(). Each block's generation is checked after its data lands; a changed block
 * fails the request with KVS_ERR_STALE rather than deliver wrong KV. From a same-host holder into
 * host memory, the copy from the holder's mapped memory runs on the first thread of this context
 * that waits: kvs_request_test()/kvs_request_wait() on this request, kvs_progress_ex(), or a
 * kvs_lookup() waiting for its reply, so a caller that looks its next batch up before it waits
 * for this one overlaps the copy with that lookup's round trip; a copy of 256 KiB or more is
 * shared with the context's copy helper threads (KVSHARE_COPY_THREADS). A @dst in CUDA memory is
 * filled only from a same-host holder's mapped memory (docs/transport.md); when that path is off
 * (KVSHARE_SHM=off), the holder is on another host or its memory cannot be mapped, the fetch
 * fails UNSUPPORTED at start. Errors at start: INVALID_PARAM (count beyond the hits, bad block id),
 * LAYOUT_MISMATCH, NO_MEMORY, UNSUPPORTED (no transport to a remote source, or a CUDA @dst the
 * mapped path cannot fill).
 */
KVS_API kvs_status_t kvs_fetch(kvs_lease_h lease, kvs_pool_h dst, const uint32_t *dst_block_ids,
                               size_t count, const kvs_fetch_params_t *params,
                               kvs_request_h *req_p);

/**
 * Deprecated: use kvs_put_ex(). Kept for the ABI.
 * Offloads blocks of @pool to the cache pool (KVSHARE_POOL). keys must be a
 * chain from the prompt's first block (keys[0] places the chain: a prompt
 * and every prompt sharing its first block live on one node, chosen by
 * rendezvous hashing over the pool's nodes). The node keeps the blocks it
 * does not have yet. On KVS_OK the caller owns *req_p and must keep the
 * blocks unchanged until the request completes.
 * Errors: KVS_ERR_UNSUPPORTED (no KVSHARE_POOL or no transport),
 * KVS_ERR_PEER_FAILED, KVS_ERR_TIMED_OUT, KVS_ERR_LAYOUT_MISMATCH.
 */
KVS_API kvs_status_t kvs_put(kvs_pool_h pool, const kvs_key_t *keys, const uint32_t *block_ids,
                             size_t count, kvs_request_h *req_p);

enum kvs_put_field {
    KVS_PUT_FIELD_TIMEOUT_MS = 1u << 0,
};

typedef struct kvs_put_params {
    uint64_t field_mask;
    uint32_t timeout_ms; /* the request's deadline; default: the context's fetch timeout */
} kvs_put_params_t;

/**
 * kvs_put() with a params struct (@params may be NULL: all defaults);
 * kvs_put() is deprecated in its favour and kept for the ABI. Same contract:
 * on KVS_OK the caller owns *req_p and must keep the blocks unchanged until
 * the request completes. A pool in CUDA memory offloads only to a node on
 * this host that maps its allocations (cuMemCreate with
 * CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, KVSHARE_SHM=auto): the transport
 * takes no CUDA memory; otherwise KVS_ERR_UNSUPPORTED.
 * Any number of puts may be in flight: a node takes 16 batches (of at most
 * 128 blocks or 8 MiB) at once from a context, and the rest wait in the
 * library for room, each within its own deadline (where the node cannot
 * read the blocks itself, over TCP, kvs_put_ex waits for room before it
 * returns).
 * Errors: KVS_ERR_INVALID_PARAM, UNSUPPORTED, PEER_FAILED, TIMED_OUT,
 * LAYOUT_MISMATCH, NO_MEMORY; *req_p is then not written.
 */
KVS_API kvs_status_t kvs_put_ex(kvs_pool_h pool, const kvs_key_t *keys, const uint32_t *block_ids,
                                size_t count, const kvs_put_params_t *params, kvs_request_h *req_p);

/** KVS_INPROGRESS while running, else the request's final status. */
KVS_API kvs_status_t kvs_request_test(kvs_request_h req);

/**
 * Waits up to @timeout_ms (< 0: until the request's own deadline, which
 * always exists) and returns kvs_request_test()'s answer.
 */
KVS_API kvs_status_t kvs_request_wait(kvs_request_h req, int timeout_ms);

/** Cancels the request if running, waits for it to stop, frees it; accepts NULL. */
KVS_API void kvs_request_free(kvs_request_h req);

/* ------------------------------------------------------------------------ */
/* Statistics                                                               */
/* ------------------------------------------------------------------------ */
enum kvs_stats_field {
    KVS_STATS_FIELD_PEERS = 1u << 0, /* fill `peers` (a later field) */
    KVS_STATS_FIELD_SHM = 1u << 1,   /* fill `shm_fetched_bytes` */
    KVS_STATS_FIELD_PUTS = 1u << 2,  /* fill `put_pulled_blocks` .. `put_fallbacks` */
    KVS_STATS_FIELD_COPY = 1u << 3,  /* fill `shm_helper_bytes` */
    KVS_STATS_FIELD_CTL = 1u << 4,   /* fill `ctl_messages` */
    KVS_STATS_FIELD_INDEX = 1u << 5, /* fill `index_lookups` .. `index_put_held` */
};

/* The fields before `peers` are always filled; later ones only when their
 * bit is set in field_mask, so callers built against an older, shorter
 * struct are never written past. */
typedef struct kvs_stats {
    uint64_t field_mask;
    uint64_t hits;   /* keys found by lookups */
    uint64_t misses; /* lookups' first missing key, once per lookup */
    uint64_t evictions;
    uint64_t blocks; /* catalog entries */
    uint64_t bytes;  /* arena bytes in use */
    uint64_t capacity_bytes;
    uint64_t zero_copy_blocks;
    uint64_t leased_blocks;
    uint64_t published;
    uint64_t
        fetched_bytes; /* copied into pools by kvs_fetch: locally, or from peers over the wire */
    uint64_t peers;    /* connections open now (KVS_STATS_FIELD_PEERS) */
    /* Bytes fetched by mapping a same-host holder's memory and copying it
     * (KVS_STATS_FIELD_SHM); the rest moved over the transport. */
    uint64_t shm_fetched_bytes;
    /* This context's kvs_put blocks that pool nodes stored (KVS_STATS_FIELD_PUTS):
     * read by the node with native RMA (pull), or sent by us (push: no RMA,
     * or the node's reads failed); and the connections whose puts fell back
     * from pull to push because the node's reads failed (each logged once). */
    uint64_t put_pulled_blocks;
    uint64_t put_pushed_blocks;
    uint64_t put_fallbacks;
    /* Of shm_fetched_bytes, those this context's copy helper threads copied
     * (KVS_STATS_FIELD_COPY; KVSHARE_COPY_THREADS): a copy of 256 KiB or
     * more is shared between the thread that waits for it and the helpers. */
    uint64_t shm_helper_bytes;
    /* Messages this context sent on same-host control channels
     * (KVS_STATS_FIELD_CTL): lookups, their replies and releases, and a
     * pull put's PUT and PUT_DONE, between processes on one host go over a
     * Unix socket beside the transport, which costs less per message; the
     * rest take the transport. */
    uint64_t ctl_messages;
    /* Lookups at same-host holders (KVS_STATS_FIELD_INDEX) that their
     * mapped block index answered, with no message to the holder and no
     * lease (KVSHARE_SHM_INDEX; docs/transport.md); and those that asked
     * the holder instead although it has an index (its region table
     * changed, a block it does not describe there, a prefix it may not
     * show whole, memory not mapped here). */
    uint64_t index_lookups;
    uint64_t index_asked;
    /* Blocks kvs_put did not offer to a pool node on this host because its
     * index showed the node held them already (KVS_STATS_FIELD_INDEX). */
    uint64_t index_put_held;
} kvs_stats_t;

/** Fills *stats (a consistent-enough snapshot; counters are relaxed). */
KVS_API kvs_status_t kvs_stats_query(kvs_ctx_h ctx, kvs_stats_t *stats);

#ifdef __cplusplus
}
#endif
#endif /* KVSHARE_H */
