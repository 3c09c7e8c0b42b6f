/* SPDX-License-Identifier: Apache-2.0 */
/* kvindex_int.h - exact-prefix index of which pod holds which block, per model: pure, no I/O.
 *
 * Keys are the 64-bit block hashes of vLLM's KV events. A prompt's keys are vLLM's own
 * (kvs_hasher_chain with the same algorithm, seed, block size, LoRA name and cache salt;
 * see kvs_key_to_u64), so a LoRA prompt or a salted prompt matches only blocks stored
 * under the same LoRA or salt: vLLM folds both into every block's hash. Models are
 * separate key spaces.
 *
 * Concurrency: one writer at a time (changes take the index's writer mutex; in the daemon
 * the event thread, or with --shards N each shard's writer thread for that shard's index)
 * and any number of readers that take no lock and never wait: scores, lookups without
 * create, names, the degraded check, pair counts and stats. Published data is read with
 * acquire loads, words changed in place with atomic loads, and nothing a reader may hold is
 * freed or reused before a grace period (kvindex.c). A score may see a store or removal half
 * applied (slightly stale), never freed memory or a block a pod never held.
 * kvs__idx_pod_copies serialises with the writer.
 *
 * Memory: a 48 B block entry (first holder inline, the next-block hint) + 4 B per table
 * slot (live load 3/16..1/2) + 8 B per holder beyond the first (+ a 16 B array header) +
 * 4 B per (pod, block) in the pod's list; bounded by max_pairs. At the bound, a store
 * first evicts one pair from the pod that holds the most (its blocks in turn from a
 * rotating cursor, roughly oldest first); kvs__idx_age() clears pods idle for too long. */
#ifndef KVS_KVINDEX_INT_H
#define KVS_KVINDEX_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct kvs__idx kvs__idx_t;

#define KVS__IDX_MAX_PODS    (1u << 24)
#define KVS__IDX_MAX_MODELS  65535u
#define KVS__IDX_MAX_MEDIA   255u
#define KVS__IDX_MAX_HOLDERS 65535u /* pods holding one block: more are not recorded */

typedef struct kvs__idx_stats {
    uint64_t pairs;  /* (pod, block, medium) holders */
    uint64_t blocks; /* distinct (model, hash) */
    uint64_t pods;
    uint64_t degraded_pods;
    uint64_t models;
    uint64_t bytes;   /* memory held by the index's tables */
    uint64_t evicted; /* pairs dropped at the max_pairs bound */
} kvs__idx_stats_t;

typedef struct kvs__idx_score {
    uint32_t pod;
    const char *pod_name; /* valid while the index lives */
    uint32_t blocks;      /* longest consecutive cached prefix, in blocks */
    const char *medium;   /* the slowest tier along that prefix ("GPU" unless offloaded) */
} kvs__idx_score_t;

/* Creates an index holding at most max_pairs (pod, block) pairs (0: no bound). NULL on
 * out of memory. */
kvs__idx_t *kvs__idx_create(uint64_t max_pairs);
void kvs__idx_destroy(kvs__idx_t *idx);

/* The id of model `name` (len bytes), created when create is true. -1: unknown, or out of
 * memory or KVS__IDX_MAX_MODELS reached while creating. */
int64_t kvs__idx_model(kvs__idx_t *idx, const char *name, size_t len, bool create);
/* The id of pod `name` serving `model`, created when create is true (a pod publishing two
 * models is two pods here). -1: unknown / out of memory / too many pods. */
int64_t kvs__idx_pod(kvs__idx_t *idx, const char *name, size_t len, uint32_t model, bool create);
/* Name of the model of a pod id (valid while the index lives); NULL for an unknown id. */
const char *kvs__idx_pod_model_name(kvs__idx_t *idx, uint32_t pod);
/* Name of a pod id (valid while the index lives); NULL for an unknown id. */
const char *kvs__idx_pod_name(kvs__idx_t *idx, uint32_t pod);

/* Records that pod holds each of hashes on `medium` (NULL: "GPU"). now_ms stamps the pod
 * for ageing. 0, or -1 when out of memory (the pairs stored until then stay). */
int kvs__idx_store(kvs__idx_t *idx, uint32_t pod, const uint64_t *hashes, size_t n,
                   const char *medium, size_t medium_len, uint64_t now_ms);
/* Forgets pod's copies of hashes on `medium` (NULL: "GPU"); unknown ones are ignored. */
void kvs__idx_remove(kvs__idx_t *idx, uint32_t pod, const uint64_t *hashes, size_t n,
                     const char *medium, size_t medium_len, uint64_t now_ms);
/* Forgets every block of pod, in time proportional to that pod's blocks. */
void kvs__idx_clear_pod(kvs__idx_t *idx, uint32_t pod);
/* A degraded pod (its stream lost events it could not replay) scores zero. */
void kvs__idx_set_degraded(kvs__idx_t *idx, uint32_t pod, bool degraded);
bool kvs__idx_degraded(kvs__idx_t *idx, uint32_t pod);
/* Writes up to max of pod's copies (the block's hash, its medium's name, valid while the index
 * lives) and returns how many it holds (a sharing replica's resync: Redis). */
size_t kvs__idx_pod_copies(kvs__idx_t *idx, uint32_t pod, uint64_t *hashes, const char **media,
                           size_t max);
/* Copies (pod, block, medium) pod holds; 0 for an unknown pod. */
uint64_t kvs__idx_pod_pairs(kvs__idx_t *idx, uint32_t pod);
/* Stamps pod as heard from at now_ms. */
void kvs__idx_touch(kvs__idx_t *idx, uint32_t pod, uint64_t now_ms);
/* Clears the pods not heard from since now_ms - max_idle_ms; returns how many. */
size_t kvs__idx_age(kvs__idx_t *idx, uint64_t now_ms, uint64_t max_idle_ms);

/* Scores a prompt's keys (keys[0] is its first block) for model: for each pod holding
 * keys[0] and not degraded (and listed in only[], when only != NULL), its longest run of
 * consecutive keys from keys[0]. Writes up to max_out scores sorted by blocks (most first,
 * then by pod name) and returns how many pods matched (may exceed max_out), or -1 when out
 * of memory. */
long kvs__idx_score(kvs__idx_t *idx, uint32_t model, const uint64_t *keys, size_t n,
                    const uint32_t *only, size_t nonly, kvs__idx_score_t *out, size_t max_out);

void kvs__idx_get_stats(kvs__idx_t *idx, kvs__idx_stats_t *stats);

#endif
