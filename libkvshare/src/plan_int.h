/* SPDX-License-Identifier: Apache-2.0 */
/* plan_int.h - views of one model's KV and the pure planner that copies between two of them.
 *
 * A view is what one TP rank holds of a model (kvs_layout_t, validated and
 * with the defaults filled in). A block of a view is a byte string: the
 * concatenation of its segments, which is, for layer l and kv (0 = K,
 * 1 = V), the plane (2*l + kv) of P = block_tokens * heads * head_dim *
 * elem bytes, laid out NHD (token, head, dim) or HND (head, token, dim).
 *
 * The planner turns (holder view, reader view, key index) into copies
 * (holder byte offset, reader byte offset, length), coalesced, and a fetch
 * (kvs__xfer_t) into per-block holder ranges to bring into staging and the
 * copies that permute staging into the reader's blocks. No I/O, no
 * transport: the same code serves the GET path, the AM push path and the
 * unit tests. */
#ifndef KVS_PLAN_INT_H
#define KVS_PLAN_INT_H

#include "kvs_int.h"

typedef struct kvs__view {
    uint64_t model; /* kvs_model_id() */
    uint32_t dtype;
    uint32_t elem; /* bytes per element */
    uint32_t num_layers;
    uint32_t total_heads;
    uint32_t heads; /* in this rank's tensors */
    uint32_t head_dim;
    uint32_t tp_rank, tp_size;
    uint32_t block_tokens, key_tokens;
    uint32_t kv_layout, kv_order;
} kvs__view_t;

/* The view's wire form (HELLO_ACK): model u64 then the 12 u32 above. */
#define KVS_VIEW_WIRE_LEN (8u + 12u * 4u)

/* Validates @l and fills @v (defaults applied). INVALID_PARAM when bad. */
kvs_status_t kvs__view_from_layout(const kvs_layout_t *l, kvs__view_t *v);
/* Checks a view's own consistency (e.g. one from the network): geometry
 * non-zero and bounded, heads split as kvs_layout_t says. Not the model. */
bool kvs__view_valid(const kvs__view_t *v);
bool kvs__view_same(const kvs__view_t *a, const kvs__view_t *b);
/* The first global head of the view's rank and how many it holds. */
void kvs__view_heads(const kvs__view_t *v, uint32_t *first_p, uint32_t *count_p);
/* Bytes of one plane (one layer's K or V of one block) and of one block. */
uint64_t kvs__view_plane_bytes(const kvs__view_t *v);
uint64_t kvs__view_block_bytes(const kvs__view_t *v);
/* Can blocks move between the two views through a plan? Same model and key
 * size; on false writes why into @why. */
bool kvs__view_compatible(const kvs__view_t *src, const kvs__view_t *dst, char *why,
                          size_t why_len);
/* The reader's own heads (0-based within @dst) that @src has. */
void kvs__view_overlap(const kvs__view_t *src, const kvs__view_t *dst, uint32_t *first_p,
                       uint32_t *count_p);
void kvs__view_encode(const kvs__view_t *v, uint8_t out[KVS_VIEW_WIRE_LEN]);
void kvs__view_decode(const uint8_t in[KVS_VIEW_WIRE_LEN], kvs__view_t *v);

typedef struct kvs__copy {
    uint64_t src; /* byte offset in the holder's block (or in staging) */
    uint64_t dst; /* byte offset in the reader's block */
    uint64_t len;
} kvs__copy_t;

typedef struct kvs__plan {
    kvs__copy_t *copies;
    size_t n, cap;
    uint64_t bytes; /* sum of lengths */
} kvs__plan_t;

void kvs__plan_init(kvs__plan_t *p);
void kvs__plan_free(kvs__plan_t *p);
/* Appends to @p the copies that bring key @key_index (the hit's index in
 * its chain) from the holder's block (@src view) into the reader's block
 * (@dst view): every head the two share, every layer, K and V, in reader
 * order, runs coalesced within a plane. NO_MEMORY, or INVALID_PARAM when
 * the views are not compatible. */
kvs_status_t kvs__plan_key(const kvs__view_t *src, const kvs__view_t *dst, uint64_t key_index,
                           kvs__plan_t *p);

/* A range of a holder's block to bring over. */
typedef struct kvs__range {
    uint32_t off, len;
} kvs__range_t;

/* One class of blocks of a fetch that share a plan (key index modulo the
 * phases of both block sizes). */
typedef struct kvs__xset {
    kvs__range_t *ranges; /* holder ranges, ascending, within one plane each */
    uint64_t *at;         /* each range's offset within the block's staging */
    size_t nranges;
    kvs__copy_t *copies; /* src: offset in this set's staging */
    size_t ncopies;
    uint64_t bytes; /* staging bytes per block = sum of range lengths */
    /* Runs long enough to land in place (GET path): src is the holder's
     * offset, dst the reader's; they bypass staging. */
    kvs__copy_t *direct;
    size_t ndirect;
    uint64_t direct_bytes;
} kvs__xset_t;

/* Copies at least this long are read straight into the reader's block on
 * the GET path (a staged copy costs a memcpy; a short direct one a GET). */
#define KVS_PLAN_DIRECT_MIN 4096u

#define KVS_PLAN_MAX_SETS 64u

typedef struct kvs__xfer {
    kvs__xset_t *sets;
    size_t nsets;
    uint16_t *set_of;   /* per block of the fetch */
    uint64_t *stage_at; /* per block: its staging offset */
    uint64_t stage_bytes;
    uint64_t direct_bytes; /* over all blocks */
    size_t count;
} kvs__xfer_t;

/* Plans a fetch of hits first .. first+count-1. Copies of @direct_min
 * bytes or more go to each set's direct list (UINT64_MAX: none, as the AM
 * path needs: everything it receives lands in staging). NO_MEMORY,
 * INVALID_PARAM (incompatible views), UNSUPPORTED (more than
 * KVS_PLAN_MAX_SETS classes). */
kvs_status_t kvs__xfer_build(const kvs__view_t *src, const kvs__view_t *dst, size_t first,
                             size_t count, uint64_t direct_min, kvs__xfer_t **x_p);
void kvs__xfer_free(kvs__xfer_t *x);
/* Where holder byte @off of block @i lands in staging; UINT64_MAX unless
 * [off, off+len) is exactly one of the block's ranges (its index to *range_p). */
uint64_t kvs__xfer_stage_of(const kvs__xfer_t *x, size_t i, uint64_t off, uint64_t len,
                            size_t *range_p);
/* Permutes block @i's staging (the fetch's staging at @staging) into
 * @block_id of the reader's segments. LAYOUT_MISMATCH if a copy would
 * cross a segment (the pool's segments do not cut whole planes). */
/* Where bytes [off, off+len) of block @block_id of the reader's blocks are
 * (@segs: the pool's segments, whose concatenation is a block); NULL when
 * they cross a segment or run past the block. */
uint8_t *kvs__xfer_dst_at(const kvs_segment_t *segs, size_t nsegs, uint32_t block_id, uint64_t off,
                          uint64_t len);
kvs_status_t kvs__xfer_apply(const kvs__xfer_t *x, size_t i, const uint8_t *staging,
                             const kvs_segment_t *segs, size_t nsegs, uint32_t block_id);

#endif
