/* SPDX-License-Identifier: Apache-2.0 */
/* tokkeys_int.h - token mode: the index's own block keys, chained from the events' token_ids.
 *
 * For engines whose block hashes cannot be reproduced outside the engine (vLLM's default
 * `sha256` pickles; NONE_HASH is random without PYTHONHASHSEED), the index keys blocks by
 * what it can recompute from a prompt: key_i = H(key_{i-1}, tokens of block i, LoRA name,
 * cache salt on the first block), with libkvshare's hasher (kvs_hasher_chain), the same
 * one /v1/score runs over the prompt. llm-d does the same since its #202.
 *
 * An event names its parent by the engine's hash, so each pod keeps a map engine hash ->
 * derived key (the full digest, to continue the chain). BlockRemoved and a tokenless
 * BlockStored (a copy to another medium) are resolved through the map. An event whose
 * parent is not in the map (lost, or stored before we joined) cannot be keyed: it is
 * skipped, as llm-d does. The map entries carry a count of the media holding them.
 *
 * Memory: 48 B per entry, table load <= 1/2; bounded by max_entries overall. Pure: no I/O;
 * one thread at a time (the daemon's event thread). */
#ifndef KVS_TOKKEYS_INT_H
#define KVS_TOKKEYS_INT_H

#include "kvevents_int.h"

#include <kvshare.h>
#include <stddef.h>
#include <stdint.h>

typedef struct kvs__tk kvs__tk_t;

typedef enum kvs__tk_result {
    KVS__TK_OK = 0,
    KVS__TK_ORPHAN = 1, /* parent_block_hash not in the pod's map: skipped */
    KVS__TK_SHAPE = 2,  /* token_ids are not block_size tokens per hash, or another block size */
    KVS__TK_EXTRA = 3,  /* extra keys a prompt cannot carry (multimodal, embeds): skipped */
    KVS__TK_FULL = 4,   /* max_entries reached: the blocks beyond it are skipped */
    KVS__TK_NO_MEMORY = -1,
} kvs__tk_result_t;

/* Creates the maps. hasher is borrowed (it must outlive the maps); block_size is the
 * index's (events of another block size are refused). NULL on out of memory. */
kvs__tk_t *kvs__tk_create(kvs_hasher_h hasher, uint32_t block_size, uint64_t max_entries);
void kvs__tk_destroy(kvs__tk_t *t);

/* Derives the keys of BlockStored event e of pod into out (room for e->nhashes) and maps
 * the engine's hashes to them; *nout gets how many were written (the first *nout of the
 * event's blocks, except for a tokenless event, whose known hashes are written in order). */
kvs__tk_result_t kvs__tk_stored(kvs__tk_t *t, uint32_t pod, const kvs__ev_t *e, uint64_t *out,
                                size_t *nout);
/* Resolves the engine hashes of a BlockRemoved into out (room for n) and drops one medium's
 * reference to each; unknown hashes are skipped. Returns how many were written. */
size_t kvs__tk_removed(kvs__tk_t *t, uint32_t pod, const uint64_t *hashes, size_t n, uint64_t *out);
/* Forgets pod's map, in time proportional to it. */
void kvs__tk_clear_pod(kvs__tk_t *t, uint32_t pod);
/* Entries held and bytes used by the maps. */
uint64_t kvs__tk_entries(const kvs__tk_t *t);
uint64_t kvs__tk_bytes(const kvs__tk_t *t);

#endif
