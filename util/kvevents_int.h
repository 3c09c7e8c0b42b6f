/* SPDX-License-Identifier: Apache-2.0 */
/* kvevents_int.h - the vLLM KV event codec (msgpack), pure: no I/O, no ZMQ.
 * Target kvs_kvevents (links msgpack-c): the index (connectors/index) decodes with it, the
 * pool node's publisher (`kvshare serve --events`) and the index bench encode with it.
 *
 * The wire format, as checked against vllm-project/vllm vllm/distributed/kv_events.py
 * (commit 0181ea3, read 2026-12-01):
 *   EventBatch   = [ts: float, events: list, data_parallel_rank: int|None]  (omit_defaults:
 *                  the rank may be absent)
 *   BlockStored  = block_hashes, parent_block_hash, token_ids, block_size, lora_id, medium,
 *                  lora_name, extra_keys=None, group_idx=None, kv_cache_spec_kind=None,
 *                  kv_cache_spec_sliding_window=None
 *   BlockRemoved = block_hashes, medium, group_idx=None
 *   AllBlocksCleared = (no fields)
 * msgspec `tag=True` puts the class name first: positional events (array_like, before
 * vLLM PR #42892) are [tag, fields...]; map events (after it) are {"type": tag, field: v}.
 * Fields with defaults may be absent in both (omit_defaults); unknown fields are ignored.
 * A block hash is an int (VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=1, the default) or bytes, of
 * which the last 8 read big-endian are the key (vllm/v1/core/kv_cache_utils.py
 * maybe_convert_block_hash; llm-d engineadapter/common.go getHashAsUint64 does the same). */
#ifndef KVS_KVEVENTS_INT_H
#define KVS_KVEVENTS_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum kvs__ev_type {
    KVS__EV_STORED = 1,
    KVS__EV_REMOVED = 2,
    KVS__EV_CLEARED = 3,
} kvs__ev_type_t;

/* A borrowed string: points into the decoder's buffer, not NUL-terminated. */
typedef struct kvs__ev_str {
    const char *ptr; /* NULL when absent or None */
    size_t len;
} kvs__ev_str_t;

typedef struct kvs__ev {
    kvs__ev_type_t type;
    const uint64_t *hashes; /* block_hashes, as the 64-bit keys vLLM's events mean */
    size_t nhashes;
    bool has_parent;
    uint64_t parent;
    const uint32_t *tokens; /* token_ids (BlockStored) */
    size_t ntokens;
    uint32_t block_size;  /* 0 when absent */
    kvs__ev_str_t medium; /* None/absent: GPU (vLLM's MEDIUM_GPU) */
    kvs__ev_str_t lora_name;
    size_t nextra_keys; /* entries of extra_keys (0 when absent/None) */
    /* What token mode needs of extra_keys (one tuple per block; vLLM puts the LoRA name in
     * every block's, then multimodal hashes, then the cache salt in the prompt's first
     * block only): salt is a string of extra_keys[0] other than lora_name; extra_other
     * says some block carries anything else (multimodal hashes, prompt embeds, a second
     * string), which token mode cannot recompute from a prompt. */
    kvs__ev_str_t salt;
    bool extra_other;
    bool has_group;
    int64_t group_idx;
    kvs__ev_str_t spec_kind; /* kv_cache_spec_kind */
} kvs__ev_t;

typedef struct kvs__ev_batch {
    double ts;
    bool has_dp_rank;
    int64_t dp_rank;
    const kvs__ev_t *events; /* valid until the next decode or kvs__ev_decoder_destroy */
    size_t nevents;
} kvs__ev_batch_t;

typedef struct kvs__ev_decoder kvs__ev_decoder_t;

/* Creates a decoder (reusable scratch; one thread at a time). NULL on out of memory. */
kvs__ev_decoder_t *kvs__ev_decoder_create(void);
void kvs__ev_decoder_destroy(kvs__ev_decoder_t *d);

/* Decodes one msgpack EventBatch. The whole batch is checked before anything is returned:
 * on success (0) *batch describes every event; on a malformed batch it returns -1 with a
 * short reason in why (never crashes, never reads past len). Unknown event tags are
 * skipped and counted in *skipped (may be NULL). */
int kvs__ev_decode(kvs__ev_decoder_t *d, const void *buf, size_t len, kvs__ev_batch_t *batch,
                   size_t *skipped, char *why, size_t why_len);

/* One event to encode (kvshare's own publishers: `kvshare serve --events`). */
typedef struct kvs__ev_out {
    kvs__ev_type_t type;
    const uint64_t *hashes; /* STORED / REMOVED */
    size_t nhashes;
    const char *medium; /* NULL: none (vLLM reads it as GPU) */
} kvs__ev_out_t;

/* Encodes the batch [ts, [events...], None] as vLLM does since its PR #42892 (each event a
 * map with its class name under "type"; BlockStored without tokens: a pool node does not
 * know them, block_size 0). On success (0) *buf (free() it) holds *len bytes; -1 when out
 * of memory. */
int kvs__ev_encode(const kvs__ev_out_t *evs, size_t n, double ts, char **buf, size_t *len);

/* The key an int or bytes hash stands for (bytes: the last 8, big-endian; fewer than 8
 * bytes are read as a big-endian number). Exposed for the tests. */
uint64_t kvs__ev_hash_from_bytes(const uint8_t *b, size_t n);

#endif
