/* SPDX-License-Identifier: Apache-2.0 */
/* kvindex.c - the exact-prefix index: a block table with per-block holders and per-pod lists;
 * readers (scores, lookups, stats) take no lock.
 *
 * One writer at a time (the writer mutex: the event thread in practice, uncontended), any
 * number of readers that never lock or wait:
 *  - Everything a reader follows is published with a release store and read with an acquire
 *    load: the slot table, the block array, holder arrays, the pod and model vectors, a
 *    model's pod view and the media names. A reader snapshots the block count first, so a
 *    block index it follows is always initialised in the array it reads.
 *  - Fields a reader reads and the writer changes in place (a block's hash, model, pod
 *    masks, hint, holder count and holders; a pod's degraded flag and pair count; counters)
 *    are single aligned words written and read with atomic (relaxed) accesses: a reader
 *    sees each word old or new, never torn.
 *  - Nothing a reader may hold is freed or reused while it reads: a replaced table, block
 *    array, holder array, pod/model vector or view is retired, and a freed block waits in
 *    limbo before its entry is reused, until a grace period has passed. Grace periods:
 *    readers count themselves in one of two counters (by the epoch's parity) of one of
 *    RD_SLOTS per-thread slots; the writer flips the epoch and frees what was retired
 *    before the flip once the old parity's counters are all zero. The writer never waits
 *    for readers: it checks at the end of each call.
 *  - Deletions leave tombstones (no backward shift), so a probe chain a reader walks never
 *    loses an entry that stays; the table is rebuilt (same size or twice) when live entries
 *    plus tombstones reach half of it.
 * A score may thus mix a write's before and after (one block's mask updated, the next not
 *  yet): a slightly stale index, never torn or freed memory, and never a block a pod did not
 * hold at some point. */
#include "kvindex_int.h"
#include "ixalloc_int.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define NO_BLOCK  UINT32_MAX
#define NO_HOLDER UINT32_MAX /* an unused holder entry */
#define NO_MODEL  UINT16_MAX /* a free block; models are numbered below it */
#define TOMB      UINT32_MAX /* a deleted table slot */
#define RD_SLOTS  16u

#define LD(p)     __atomic_load_n((p), __ATOMIC_RELAXED)
#define LDA(p)    __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define ST(p, v)  __atomic_store_n((p), (v), __ATOMIC_RELAXED)
#define STR(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)

/* Memory a reader may still hold, freed after a grace period. First member of each kind. */
typedef struct retired {
    struct retired *next;
} retired_t;

/* One (pod, medium) copy of a block. pos: where the block sits in the pod's list, so that
 * removing the copy is O(1) in the pod list and a pod's clear touches only its blocks.
 * Readers read pod_med only. */
typedef struct holder {
    uint32_t pod_med; /* pod << 8 | medium id; NO_HOLDER: unused */
    uint32_t pos;
} holder_t;

typedef struct hold_arr {
    retired_t r;
    uint32_t cap, pad;
    holder_t h[];
} hold_arr_t;

/* Pods of a model are numbered by slot in the order first seen. While a model has at most
 * 64 pods, every block keeps a bitmap of the slots holding it, so a score is a run of
 * ANDs instead of a walk over every holder. */
#define MASK_SLOTS 64u

typedef struct block {
    uint64_t hash;
    uint64_t mask;  /* slots (< 64) with a copy of this block */
    uint64_t slow;  /* slots whose best copy is not on the fastest tier (GPU) */
    uint16_t model; /* NO_MODEL: free (one.pos then links the free list or the limbo) */
    uint16_t n;     /* holders */
    /* The block stored right after this one in the last store that had both (a prompt's
     * next block, usually): a score tries it before the table. Only a hint: checked
     * against the key. */
    uint32_t next;
    holder_t one;     /* the holder while there is one (many == NULL) */
    hold_arr_t *many; /* the holders once there were two */
} block_t;
_Static_assert(sizeof(block_t) == 48, "a block entry stays 48 bytes (memory per pair)");

/* Blocks live in segments of SEG blocks that never move (growing copies no block and
 * retires nothing but the directory of segments). */
#define SEG_SHIFT 14u
#define SEG       (1u << SEG_SHIFT)

typedef struct bvec {
    retired_t r;
    uint32_t cap, nseg; /* directory slots, segments allocated */
    block_t *seg[];
} bvec_t;

typedef struct table {
    retired_t r;
    uint32_t mask, used; /* used: live + tombstones */
    uint32_t s[];        /* block index + 1; 0: empty; TOMB: deleted; linear probing */
} table_t;

typedef struct pod {
    char *name;
    uint32_t model;
    uint32_t slot; /* order among its model's pods */
    uint8_t degraded;
    uint64_t last_ms;
    uint32_t *blocks; /* block index per copy held (a block twice when on two media) */
    size_t n, cap;
    size_t evict_at;
} pod_t;

typedef struct pvec {
    retired_t r;
    uint32_t cap, pad;
    pod_t *p[];
} pvec_t;

/* A model's pods as readers see them, replaced whole (copy on write) when a pod joins. */
typedef struct mview {
    retired_t r;
    uint32_t npods;
    uint32_t slot_pod[MASK_SLOTS];
    /* Each slot's place among the model's first 64 pods in name order: a score sorts its
     * results by blocks, then name, with integer compares only. */
    uint8_t name_rank[MASK_SLOTS];
} mview_t;

typedef struct model {
    char *name;
    mview_t *view;
} model_t;

typedef struct mvec {
    retired_t r;
    uint32_t cap, pad;
    model_t *m[];
} mvec_t;

typedef struct rdslot {
    uint64_t cnt[2];
    char pad[48];
} rdslot_t;

struct kvs__idx {
    rdslot_t rd[RD_SLOTS];
    uint64_t epoch;
    pthread_mutex_t wlock;
    uint64_t max_pairs, pairs, nblocks, evicted, holder_bytes, list_bytes, ndegraded;
    bvec_t *bv;
    uint32_t blocks_len, free_head, limbo_pending, limbo_waiting;
    table_t *tab;
    pvec_t *pv;
    uint32_t npods;
    mvec_t *mv;
    uint32_t nmodels;
    char *media[KVS__IDX_MAX_MEDIA];
    uint32_t nmedia;
    retired_t *pending, *waiting;
};

/* ---- grace periods ---- */

static inline block_t *blk(const kvs__idx_t *idx, uint32_t bi);

static unsigned rd_next;
static __thread unsigned rd_mine; /* slot + 1; 0: none yet */

static unsigned rd_enter(kvs__idx_t *idx)
{
    if (rd_mine == 0)
        rd_mine = __atomic_fetch_add(&rd_next, 1, __ATOMIC_RELAXED) % RD_SLOTS + 1;
    unsigned s = rd_mine - 1;
    for (;;) {
        uint64_t e = __atomic_load_n(&idx->epoch, __ATOMIC_SEQ_CST);
        unsigned par = (unsigned)(e & 1u);
        __atomic_fetch_add(&idx->rd[s].cnt[par], 1, __ATOMIC_SEQ_CST);
        if (__atomic_load_n(&idx->epoch, __ATOMIC_SEQ_CST) == e)
            return s << 1 | par;
        /* The writer flipped in between: it may already have seen this parity drained. */
        __atomic_fetch_sub(&idx->rd[s].cnt[par], 1, __ATOMIC_RELEASE);
    }
}

static void rd_exit(kvs__idx_t *idx, unsigned tok)
{
    __atomic_fetch_sub(&idx->rd[tok >> 1].cnt[tok & 1u], 1, __ATOMIC_RELEASE);
}

static void retire(kvs__idx_t *idx, void *mem)
{
    retired_t *r = mem;
    r->next = idx->pending;
    idx->pending = r;
}

static void free_list(retired_t *r)
{
    while (r != NULL) {
        retired_t *n = r->next;
        free(r);
        r = n;
    }
}

static bool drained(kvs__idx_t *idx, unsigned par)
{
    for (unsigned s = 0; s < RD_SLOTS; s++)
        if (__atomic_load_n(&idx->rd[s].cnt[par], __ATOMIC_SEQ_CST) != 0)
            return false;
    return true;
}

/* What was retired before the last flip is freed once no reader of that parity is left;
 * then what was retired since waits for the next flip. Writer only; never waits. */
static void reclaim(kvs__idx_t *idx)
{
    for (int round = 0; round < 2; round++) {
        if (idx->waiting != NULL || idx->limbo_waiting != NO_BLOCK) {
            uint64_t e = __atomic_load_n(&idx->epoch, __ATOMIC_SEQ_CST);
            if (!drained(idx, (unsigned)((e - 1) & 1u)))
                return;
            free_list(idx->waiting);
            idx->waiting = NULL;
            while (idx->limbo_waiting != NO_BLOCK) { /* the entries may be reused now */
                uint32_t bi = idx->limbo_waiting;
                block_t *b = blk(idx, bi);
                idx->limbo_waiting = b->one.pos;
                b->one.pos = idx->free_head;
                idx->free_head = bi;
            }
        }
        if (idx->pending == NULL && idx->limbo_pending == NO_BLOCK)
            return;
        idx->waiting = idx->pending;
        idx->pending = NULL;
        idx->limbo_waiting = idx->limbo_pending;
        idx->limbo_pending = NO_BLOCK;
        __atomic_fetch_add(&idx->epoch, 1, __ATOMIC_SEQ_CST);
    }
}

static void wr_lock(kvs__idx_t *idx)
{
    pthread_mutex_lock(&idx->wlock);
}

static void wr_unlock(kvs__idx_t *idx)
{
    reclaim(idx);
    pthread_mutex_unlock(&idx->wlock);
}

/* ---- helpers ---- */

static inline uint32_t pm_pod(uint32_t pm)
{
    return pm >> 8;
}

static inline uint8_t pm_med(uint32_t pm)
{
    return (uint8_t)(pm & 0xffu);
}

static inline uint32_t slot_of(uint64_t hash, uint32_t model, uint32_t mask)
{
    uint64_t x = hash ^ ((uint64_t)model * 0x9e3779b97f4a7c15ull);
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    return (uint32_t)x & mask;
}

static char *dup_n(const char *s, size_t n)
{
    char *d = kvs__ix_malloc(n + 1);
    if (d != NULL) {
        memcpy(d, s, n);
        d[n] = '\0';
    }
    return d;
}

/* Writer-side accessors (the writer alone changes what they return). */
static inline block_t *blk(const kvs__idx_t *idx, uint32_t bi)
{
    return &idx->bv->seg[bi >> SEG_SHIFT][bi & (SEG - 1)];
}

static inline pod_t *pod_w(const kvs__idx_t *idx, uint32_t pod)
{
    return idx->pv->p[pod];
}

static inline holder_t *holders(block_t *b)
{
    return b->many != NULL ? b->many->h : &b->one;
}

static inline uint32_t holders_cap(const block_t *b)
{
    return b->many != NULL ? b->many->cap : 1;
}

static inline void hset(holder_t *h, holder_t v)
{
    ST(&h->pod_med, v.pod_med);
    h->pos = v.pos;
}

static table_t *table_new(uint32_t mask)
{
    table_t *t = kvs__ix_calloc(1, sizeof(*t) + ((size_t)mask + 1) * sizeof(uint32_t));
    if (t != NULL)
        t->mask = mask;
    return t;
}

static size_t table_bytes(const table_t *t)
{
    return sizeof(*t) + ((size_t)t->mask + 1) * sizeof(uint32_t);
}

static mview_t *view_new(const mview_t *from)
{
    mview_t *v = kvs__ix_malloc(sizeof(*v));
    if (v != NULL) {
        if (from != NULL)
            memcpy(v, from, sizeof(*v));
        else
            memset(v, 0, sizeof(*v));
    }
    return v;
}

kvs__idx_t *kvs__idx_create(uint64_t max_pairs)
{
    kvs__idx_t *idx = kvs__ix_calloc(1, sizeof(*idx));
    if (idx == NULL)
        return NULL;
    idx->max_pairs = max_pairs;
    idx->free_head = idx->limbo_pending = idx->limbo_waiting = NO_BLOCK;
    idx->epoch = 2;
    idx->tab = table_new(1023);
    /* Tier ranks: the first interned are the fastest. */
    static const char *const tiers[] = {"GPU", "CPU", "DISK"};
    bool ok = idx->tab != NULL;
    for (size_t i = 0; ok && i < sizeof(tiers) / sizeof(tiers[0]); i++)
        ok = (idx->media[idx->nmedia++] = dup_n(tiers[i], strlen(tiers[i]))) != NULL;
    if (!ok || pthread_mutex_init(&idx->wlock, NULL) != 0) {
        for (uint32_t i = 0; i < idx->nmedia; i++)
            free(idx->media[i]);
        free(idx->tab);
        free(idx);
        return NULL;
    }
    return idx;
}

void kvs__idx_destroy(kvs__idx_t *idx)
{
    if (idx == NULL)
        return;
    for (uint32_t i = 0; i < idx->blocks_len; i++)
        free(blk(idx, i)->many); /* NULL for free blocks and single holders */
    for (uint32_t i = 0; idx->bv != NULL && i < idx->bv->nseg; i++)
        free(idx->bv->seg[i]);
    free(idx->bv);
    free(idx->tab);
    for (uint32_t i = 0; i < idx->npods; i++) {
        free(idx->pv->p[i]->name);
        free(idx->pv->p[i]->blocks);
        free(idx->pv->p[i]);
    }
    free(idx->pv);
    for (uint32_t i = 0; i < idx->nmodels; i++) {
        free(idx->mv->m[i]->name);
        free(idx->mv->m[i]->view);
        free(idx->mv->m[i]);
    }
    free(idx->mv);
    for (uint32_t i = 0; i < idx->nmedia; i++)
        free(idx->media[i]);
    free_list(idx->pending);
    free_list(idx->waiting);
    pthread_mutex_destroy(&idx->wlock);
    free(idx);
}

static bool name_is(const char *name, const char *s, size_t n)
{
    return strncmp(name, s, n) == 0 && name[n] == '\0';
}

/* Lookups run as readers (no lock): only a creation takes the writer mutex (and looks
 * again under it). */
static int64_t find_model(kvs__idx_t *idx, const char *name, size_t len)
{
    uint32_t n = LDA(&idx->nmodels);
    const mvec_t *mv = LDA(&idx->mv);
    for (uint32_t i = 0; i < n; i++)
        if (name_is(mv->m[i]->name, name, len))
            return i;
    return -1;
}

static int64_t find_pod(kvs__idx_t *idx, const char *name, size_t len, uint32_t model)
{
    uint32_t n = LDA(&idx->npods);
    const pvec_t *pv = LDA(&idx->pv);
    for (uint32_t i = 0; i < n; i++)
        if (pv->p[i]->model == model && name_is(pv->p[i]->name, name, len))
            return i;
    return -1;
}

int64_t kvs__idx_model(kvs__idx_t *idx, const char *name, size_t len, bool create)
{
    unsigned tok = rd_enter(idx);
    int64_t id = find_model(idx, name, len);
    rd_exit(idx, tok);
    if (id >= 0 || !create)
        return id;
    wr_lock(idx);
    model_t *md = NULL;
    if ((id = find_model(idx, name, len)) >= 0 || memchr(name, '\0', len) != NULL ||
        idx->nmodels >= KVS__IDX_MAX_MODELS)
        goto out;
    uint32_t n = idx->nmodels;
    if (idx->mv == NULL || n == idx->mv->cap) {
        uint32_t nc = n ? 2 * n : 8;
        mvec_t *nv = kvs__ix_malloc(sizeof(*nv) + nc * sizeof(model_t *));
        if (nv == NULL)
            goto out;
        nv->cap = nc;
        if (n > 0)
            memcpy(nv->m, idx->mv->m, n * sizeof(model_t *));
        if (idx->mv != NULL)
            retire(idx, idx->mv);
        STR(&idx->mv, nv);
    }
    if ((md = kvs__ix_calloc(1, sizeof(*md))) == NULL || (md->name = dup_n(name, len)) == NULL ||
        (md->view = view_new(NULL)) == NULL)
        goto out;
    idx->mv->m[n] = md;
    md = NULL;
    STR(&idx->nmodels, n + 1);
    id = n;
out:
    if (md != NULL) {
        free(md->name);
        free(md);
    }
    wr_unlock(idx);
    return id;
}

int64_t kvs__idx_pod(kvs__idx_t *idx, const char *name, size_t len, uint32_t model, bool create)
{
    unsigned tok = rd_enter(idx);
    int64_t id = find_pod(idx, name, len, model);
    rd_exit(idx, tok);
    if (id >= 0 || !create)
        return id;
    wr_lock(idx);
    pod_t *p = NULL;
    mview_t *nv = NULL;
    if ((id = find_pod(idx, name, len, model)) >= 0 || model >= idx->nmodels ||
        idx->npods >= KVS__IDX_MAX_PODS || memchr(name, '\0', len) != NULL)
        goto out;
    uint32_t n = idx->npods;
    if (idx->pv == NULL || n == idx->pv->cap) {
        uint32_t nc = n ? 2 * n : 16;
        pvec_t *pv = kvs__ix_malloc(sizeof(*pv) + nc * sizeof(pod_t *));
        if (pv == NULL)
            goto out;
        pv->cap = nc;
        if (n > 0)
            memcpy(pv->p, idx->pv->p, n * sizeof(pod_t *));
        if (idx->pv != NULL)
            retire(idx, idx->pv);
        STR(&idx->pv, pv);
    }
    model_t *md = idx->mv->m[model];
    if ((p = kvs__ix_calloc(1, sizeof(*p))) == NULL || (p->name = dup_n(name, len)) == NULL ||
        (nv = view_new(md->view)) == NULL)
        goto out;
    p->model = model;
    p->slot = nv->npods++;
    if (p->slot < MASK_SLOTS) {
        nv->slot_pod[p->slot] = n;
        /* Re-rank by name (a new pod is rare; at most 64 of them). */
        uint32_t ns = p->slot + 1;
        const char *nm[MASK_SLOTS];
        for (uint32_t a = 0; a < ns; a++)
            nm[a] = a == p->slot ? p->name : idx->pv->p[nv->slot_pod[a]]->name;
        for (uint32_t a = 0; a < ns; a++) {
            uint32_t r = 0;
            for (uint32_t b = 0; b < ns; b++)
                r += strcmp(nm[b], nm[a]) < 0;
            nv->name_rank[a] = (uint8_t)r;
        }
    }
    idx->pv->p[n] = p;
    p = NULL;
    STR(&idx->npods, n + 1);
    retire(idx, md->view);
    STR(&md->view, nv);
    nv = NULL;
    id = n;
out:
    if (p != NULL) {
        free(p->name);
        free(p);
    }
    free(nv);
    wr_unlock(idx);
    return id;
}

const char *kvs__idx_pod_model_name(kvs__idx_t *idx, uint32_t pod)
{
    unsigned tok = rd_enter(idx);
    const char *n = NULL;
    if (pod < LDA(&idx->npods)) {
        uint32_t m = LDA(&idx->pv)->p[pod]->model;
        n = LDA(&idx->mv)->m[m]->name;
    }
    rd_exit(idx, tok);
    return n;
}

const char *kvs__idx_pod_name(kvs__idx_t *idx, uint32_t pod)
{
    unsigned tok = rd_enter(idx);
    const char *n = pod < LDA(&idx->npods) ? LDA(&idx->pv)->p[pod]->name : NULL;
    rd_exit(idx, tok);
    return n;
}

/* Medium id; -1 when the table is full or out of memory. Writer only. */
static int medium_id(kvs__idx_t *idx, const char *m, size_t len)
{
    if (m == NULL)
        return 0;
    for (uint32_t i = 0; i < idx->nmedia; i++)
        if (strlen(idx->media[i]) == len && strncasecmp(idx->media[i], m, len) == 0)
            return (int)i;
    if (idx->nmedia >= KVS__IDX_MAX_MEDIA || memchr(m, '\0', len) != NULL)
        return -1;
    char *d = dup_n(m, len);
    if (d == NULL)
        return -1;
    STR(&idx->media[idx->nmedia], d);
    STR(&idx->nmedia, idx->nmedia + 1);
    return (int)idx->nmedia - 1;
}

/* A medium's name for a reader (published before any holder names it). */
static const char *medium_name(kvs__idx_t *idx, uint8_t med)
{
    const char *n = LDA(&idx->media[med]);
    return n != NULL ? n : "GPU";
}

/* Writer's lookup. */
static uint32_t find_block(const kvs__idx_t *idx, uint32_t model, uint64_t hash)
{
    const table_t *t = idx->tab;
    for (uint32_t s = slot_of(hash, model, t->mask);; s = (s + 1) & t->mask) {
        uint32_t v = t->s[s];
        if (v == 0)
            return NO_BLOCK;
        if (v == TOMB)
            continue;
        const block_t *b = blk(idx, v - 1);
        if (b->hash == hash && b->model == model)
            return v - 1;
    }
}

/* Rebuilds the table without tombstones, twice as large when more than 3/8 would be live. */
static bool table_rebuild(kvs__idx_t *idx)
{
    table_t *old = idx->tab;
    uint32_t nmask =
        (idx->nblocks + 1) * 8 > ((uint64_t)old->mask + 1) * 3 ? 2 * old->mask + 1 : old->mask;
    table_t *nt = table_new(nmask);
    if (nt == NULL)
        return false;
    for (uint32_t s = 0; s <= old->mask; s++) {
        uint32_t v = old->s[s];
        if (v == 0 || v == TOMB)
            continue;
        const block_t *b = blk(idx, v - 1);
        uint32_t t = slot_of(b->hash, b->model, nmask);
        while (nt->s[t] != 0)
            t = (t + 1) & nmask;
        nt->s[t] = v;
        nt->used++;
    }
    STR(&idx->tab, nt);
    retire(idx, old);
    return true;
}

static uint32_t add_block(kvs__idx_t *idx, uint32_t model, uint64_t hash)
{
    if ((idx->tab->used + 1) * 2 > idx->tab->mask + 1 && !table_rebuild(idx))
        return NO_BLOCK;
    uint32_t bi;
    bool fresh = idx->free_head == NO_BLOCK;
    if (!fresh) {
        bi = idx->free_head;
        idx->free_head = blk(idx, bi)->one.pos;
    } else {
        bi = idx->blocks_len;
        uint32_t nseg = idx->bv != NULL ? idx->bv->nseg : 0;
        if (bi == nseg * SEG) {
            if (bi >= NO_BLOCK / 2)
                return NO_BLOCK;
            if (idx->bv == NULL || nseg == idx->bv->cap) {
                uint32_t nc = nseg ? 2 * nseg : 8;
                bvec_t *nb = kvs__ix_calloc(1, sizeof(*nb) + nc * sizeof(block_t *));
                if (nb == NULL)
                    return NO_BLOCK;
                nb->cap = nc;
                nb->nseg = nseg;
                if (nseg > 0)
                    memcpy(nb->seg, idx->bv->seg, nseg * sizeof(block_t *));
                if (idx->bv != NULL)
                    retire(idx, idx->bv);
                STR(&idx->bv, nb);
            }
            block_t *sg = kvs__ix_malloc(SEG * sizeof(block_t));
            if (sg == NULL)
                return NO_BLOCK;
            idx->bv->seg[nseg] = sg; /* readers reach it only below blocks_len */
            ST(&idx->bv->nseg, nseg + 1);
        }
    }
    block_t *b = blk(idx, bi);
    if (fresh) {
        memset(b, 0, sizeof(*b)); /* not yet visible to readers */
        b->one.pod_med = NO_HOLDER;
    }
    ST(&b->hash, hash);
    ST(&b->mask, 0);
    ST(&b->slow, 0);
    ST(&b->next, NO_BLOCK);
    ST(&b->n, 0);
    ST(&b->one.pod_med, NO_HOLDER);
    STR(&b->model, (uint16_t)model);
    if (fresh)
        STR(&idx->blocks_len, bi + 1);
    table_t *t = idx->tab;
    uint32_t s = slot_of(hash, model, t->mask);
    while (t->s[s] != 0 && t->s[s] != TOMB)
        s = (s + 1) & t->mask;
    if (t->s[s] == 0)
        t->used++;
    STR(&t->s[s], bi + 1);
    ST(&idx->nblocks, idx->nblocks + 1);
    return bi;
}

/* Frees an empty block: its slot becomes a tombstone; the entry waits in limbo for a grace
 * period before it is reused (a reader may still be reading it). */
static void free_block(kvs__idx_t *idx, uint32_t bi)
{
    block_t *b = blk(idx, bi);
    table_t *t = idx->tab;
    uint32_t s = slot_of(b->hash, b->model, t->mask);
    while (t->s[s] != bi + 1)
        s = (s + 1) & t->mask;
    ST(&t->s[s], TOMB);
    if (b->many != NULL) {
        ST(&idx->holder_bytes,
           idx->holder_bytes - (sizeof(hold_arr_t) + b->many->cap * sizeof(holder_t)));
        retire(idx, b->many);
        STR(&b->many, NULL);
    }
    ST(&b->model, NO_MODEL);
    ST(&b->mask, 0);
    ST(&b->slow, 0);
    ST(&b->n, 0);
    b->one.pos = idx->limbo_pending;
    idx->limbo_pending = bi;
    ST(&idx->nblocks, idx->nblocks - 1);
}

/* Recomputes pod's bits in block b's masks from its copies there. */
static void pod_bits(const kvs__idx_t *idx, block_t *b, uint32_t pod)
{
    uint32_t slot = pod_w(idx, pod)->slot;
    if (slot >= MASK_SLOTS)
        return;
    unsigned best = 256;
    const holder_t *h = holders(b);
    for (uint16_t i = 0; i < b->n; i++)
        if (pm_pod(h[i].pod_med) == pod && pm_med(h[i].pod_med) < best)
            best = pm_med(h[i].pod_med);
    uint64_t bit = 1ull << slot;
    ST(&b->mask, best < 256 ? b->mask | bit : b->mask & ~bit);
    ST(&b->slow, best < 256 && best > 0 ? b->slow | bit : b->slow & ~bit);
}

/* Removes holder hi of block bi (a copy held by pod). */
static void remove_holder(kvs__idx_t *idx, uint32_t bi, uint16_t hi)
{
    block_t *b = blk(idx, bi);
    holder_t *h = holders(b);
    uint32_t pod = pm_pod(h[hi].pod_med), pos = h[hi].pos;
    uint16_t last = (uint16_t)(b->n - 1);
    if (hi != last)
        hset(&h[hi], h[last]);
    ST(&h[last].pod_med, NO_HOLDER);
    ST(&b->n, last);
    if (b->many != NULL && b->n == 1) { /* back to inline */
        hold_arr_t *a = b->many;
        hset(&b->one, a->h[0]);
        STR(&b->many, NULL);
        ST(&idx->holder_bytes,
           idx->holder_bytes - (sizeof(hold_arr_t) + a->cap * sizeof(holder_t)));
        retire(idx, a);
    }
    pod_t *p = pod_w(idx, pod);
    size_t lastp = p->n - 1;
    if (pos != lastp) {
        uint32_t moved = p->blocks[lastp];
        p->blocks[pos] = moved;
        block_t *mb = blk(idx, moved);
        holder_t *mh = holders(mb);
        for (uint16_t i = 0; i < mb->n; i++)
            if (pm_pod(mh[i].pod_med) == pod && mh[i].pos == lastp) {
                mh[i].pos = pos;
                break;
            }
    }
    ST(&p->n, lastp);
    if (p->evict_at > p->n)
        p->evict_at = 0;
    ST(&idx->pairs, idx->pairs - 1);
    if (b->n == 0)
        free_block(idx, bi);
    else
        pod_bits(idx, b, pod);
}

static int find_holder(block_t *b, uint32_t pod_med)
{
    holder_t *h = holders(b);
    for (uint16_t i = 0; i < b->n; i++)
        if (h[i].pod_med == pod_med)
            return i;
    return -1;
}

/* Drops the pair at pod p's list position pos. */
static void drop_pair(kvs__idx_t *idx, uint32_t pod, size_t pos)
{
    uint32_t bi = pod_w(idx, pod)->blocks[pos];
    block_t *b = blk(idx, bi);
    holder_t *h = holders(b);
    for (uint16_t i = 0; i < b->n; i++)
        if (pm_pod(h[i].pod_med) == pod && h[i].pos == pos) {
            remove_holder(idx, bi, i);
            return;
        }
}

static void evict_one(kvs__idx_t *idx)
{
    uint32_t big = 0;
    for (uint32_t i = 1; i < idx->npods; i++)
        if (pod_w(idx, i)->n > pod_w(idx, big)->n)
            big = i;
    pod_t *p = pod_w(idx, big);
    if (p->n == 0)
        return;
    if (p->evict_at >= p->n)
        p->evict_at = 0;
    drop_pair(idx, big, p->evict_at++);
    ST(&idx->evicted, idx->evicted + 1);
}

/* Stores one copy; *bi_p gets its block (NO_BLOCK when none was stored). */
static int store_one(kvs__idx_t *idx, uint32_t pod, uint8_t med, uint64_t hash, uint32_t *bi_p)
{
    pod_t *p = pod_w(idx, pod);
    uint32_t pm = pod << 8 | med;
    uint32_t bi = find_block(idx, p->model, hash);
    *bi_p = NO_BLOCK;
    if (bi != NO_BLOCK && find_holder(blk(idx, bi), pm) >= 0) {
        *bi_p = bi;
        return 0;
    }
    if (idx->max_pairs > 0 && idx->pairs >= idx->max_pairs) {
        evict_one(idx);
        bi = find_block(idx, p->model, hash); /* the eviction may have freed it */
    }
    if (p->n == p->cap) {
        size_t nc = p->cap ? 2 * p->cap : 64;
        uint32_t *nb = kvs__ix_realloc(p->blocks, nc * sizeof(*nb));
        if (nb == NULL)
            return -1;
        ST(&idx->list_bytes, idx->list_bytes + (nc - p->cap) * sizeof(*nb));
        p->blocks = nb;
        p->cap = nc;
    }
    bool fresh = bi == NO_BLOCK;
    if (fresh && (bi = add_block(idx, p->model, hash)) == NO_BLOCK)
        return -1;
    block_t *b = blk(idx, bi);
    *bi_p = bi;
    if (b->n == KVS__IDX_MAX_HOLDERS)
        return 0;
    holder_t nh = {.pod_med = pm, .pos = (uint32_t)p->n};
    if (b->n >= 1 && b->n >= holders_cap(b)) {
        uint32_t oc = holders_cap(b);
        uint32_t nc = b->many == NULL ? 4 : oc >= 32768 ? 65535 : 2 * oc;
        hold_arr_t *a = kvs__ix_malloc(sizeof(*a) + nc * sizeof(holder_t));
        if (a == NULL) {
            if (fresh)
                free_block(idx, bi);
            *bi_p = NO_BLOCK;
            return -1;
        }
        a->cap = nc;
        memcpy(a->h, holders(b), b->n * sizeof(holder_t));
        for (uint32_t i = b->n; i < nc; i++)
            a->h[i] = (holder_t){.pod_med = NO_HOLDER, .pos = 0};
        a->h[b->n] = nh; /* before the array is published */
        ST(&idx->holder_bytes, idx->holder_bytes + sizeof(*a) + nc * sizeof(holder_t));
        if (b->many != NULL) {
            ST(&idx->holder_bytes,
               idx->holder_bytes - (sizeof(*a) + b->many->cap * sizeof(holder_t)));
            retire(idx, b->many);
        }
        STR(&b->many, a);
    } else {
        hset(&holders(b)[b->n], nh);
    }
    STR(&b->n, b->n + 1);
    pod_bits(idx, b, pod);
    p->blocks[p->n] = bi;
    ST(&p->n, p->n + 1);
    ST(&idx->pairs, idx->pairs + 1);
    return 0;
}

int kvs__idx_store(kvs__idx_t *idx, uint32_t pod, const uint64_t *hashes, size_t n,
                   const char *medium, size_t medium_len, uint64_t now_ms)
{
    int rc = 0;
    wr_lock(idx);
    int med = pod < idx->npods ? medium_id(idx, medium, medium_len) : -1;
    if (med < 0) {
        rc = -1;
        goto out;
    }
    pod_w(idx, pod)->last_ms = now_ms;
    uint32_t prev = NO_BLOCK;
    for (size_t i = 0; i < n && rc == 0; i++) {
        uint32_t bi;
        rc = store_one(idx, pod, (uint8_t)med, hashes[i], &bi);
        /* An eviction inside store_one may have freed prev: it is only a hint's source. */
        if (prev != NO_BLOCK && bi != NO_BLOCK && blk(idx, prev)->model != NO_MODEL)
            ST(&blk(idx, prev)->next, bi);
        prev = bi;
    }
out:
    wr_unlock(idx);
    return rc;
}

void kvs__idx_remove(kvs__idx_t *idx, uint32_t pod, const uint64_t *hashes, size_t n,
                     const char *medium, size_t medium_len, uint64_t now_ms)
{
    wr_lock(idx);
    if (pod >= idx->npods)
        goto out;
    pod_w(idx, pod)->last_ms = now_ms;
    int med = medium_id(idx, medium, medium_len);
    if (med < 0)
        goto out;
    uint32_t pm = pod << 8 | (uint32_t)med;
    for (size_t i = 0; i < n; i++) {
        uint32_t bi = find_block(idx, pod_w(idx, pod)->model, hashes[i]);
        if (bi == NO_BLOCK)
            continue;
        int hi = find_holder(blk(idx, bi), pm);
        if (hi >= 0)
            remove_holder(idx, bi, (uint16_t)hi);
    }
out:
    wr_unlock(idx);
}

static void clear_locked(kvs__idx_t *idx, uint32_t pod)
{
    pod_t *p = pod_w(idx, pod);
    while (p->n > 0)
        drop_pair(idx, pod, p->n - 1); /* the last: nothing moves */
    p->evict_at = 0;
}

void kvs__idx_clear_pod(kvs__idx_t *idx, uint32_t pod)
{
    wr_lock(idx);
    if (pod < idx->npods)
        clear_locked(idx, pod);
    wr_unlock(idx);
}

void kvs__idx_set_degraded(kvs__idx_t *idx, uint32_t pod, bool degraded)
{
    wr_lock(idx);
    if (pod < idx->npods && pod_w(idx, pod)->degraded != degraded) {
        ST(&pod_w(idx, pod)->degraded, (uint8_t)degraded);
        ST(&idx->ndegraded, degraded ? idx->ndegraded + 1 : idx->ndegraded - 1);
    }
    wr_unlock(idx);
}

bool kvs__idx_degraded(kvs__idx_t *idx, uint32_t pod)
{
    unsigned tok = rd_enter(idx);
    bool d = pod < LDA(&idx->npods) && LD(&LDA(&idx->pv)->p[pod]->degraded);
    rd_exit(idx, tok);
    return d;
}

/* Reads writer-side lists (each copy's position): serialised with the writer. */
size_t kvs__idx_pod_copies(kvs__idx_t *idx, uint32_t pod, uint64_t *hashes, const char **media,
                           size_t max)
{
    wr_lock(idx);
    size_t n = pod < idx->npods ? pod_w(idx, pod)->n : 0;
    for (size_t i = 0; i < n && i < max; i++) {
        block_t *b = blk(idx, pod_w(idx, pod)->blocks[i]);
        const holder_t *h = holders(b);
        hashes[i] = b->hash;
        for (uint16_t k = 0; k < b->n; k++)
            if (pm_pod(h[k].pod_med) == pod && h[k].pos == i)
                media[i] = idx->media[pm_med(h[k].pod_med)];
    }
    wr_unlock(idx);
    return n;
}

uint64_t kvs__idx_pod_pairs(kvs__idx_t *idx, uint32_t pod)
{
    unsigned tok = rd_enter(idx);
    uint64_t n = pod < LDA(&idx->npods) ? LD(&LDA(&idx->pv)->p[pod]->n) : 0;
    rd_exit(idx, tok);
    return n;
}

void kvs__idx_touch(kvs__idx_t *idx, uint32_t pod, uint64_t now_ms)
{
    wr_lock(idx);
    if (pod < idx->npods)
        pod_w(idx, pod)->last_ms = now_ms;
    wr_unlock(idx);
}

size_t kvs__idx_age(kvs__idx_t *idx, uint64_t now_ms, uint64_t max_idle_ms)
{
    size_t cleared = 0;
    wr_lock(idx);
    for (uint32_t i = 0; i < idx->npods; i++) {
        pod_t *p = pod_w(idx, i);
        if (p->n > 0 && p->last_ms + max_idle_ms < now_ms) {
            clear_locked(idx, i);
            cleared++;
        }
    }
    wr_unlock(idx);
    return cleared;
}

/* ---- readers ---- */

/* What one score reads, loaded once: the block count first, so that every index below it is
 * initialised in the array loaded after it (a later array copies it). */
typedef struct rview {
    kvs__idx_t *idx;
    block_t *const *seg;
    uint32_t len;
    const table_t *t;
    const pvec_t *pv;
    uint32_t np;
} rview_t;

static void rview_load(kvs__idx_t *idx, rview_t *v)
{
    v->idx = idx;
    v->len = LDA(&idx->blocks_len);
    const bvec_t *bv = LDA(&idx->bv);
    v->seg = bv != NULL ? bv->seg : NULL;
    v->t = LDA(&idx->tab);
    v->np = LDA(&idx->npods);
    v->pv = LDA(&idx->pv);
}

static inline const block_t *rb(const rview_t *v, uint32_t c)
{
    return &v->seg[c >> SEG_SHIFT][c & (SEG - 1)];
}

/* keys[k]'s block as entry c, if it is (checked against the key: a hint may be stale). */
static inline bool is_block(const rview_t *v, uint32_t c, uint32_t model, uint64_t key)
{
    return c < v->len && LDA(&rb(v, c)->model) == model && LD(&rb(v, c)->hash) == key;
}

static uint32_t find_block_r(const rview_t *v, uint32_t model, uint64_t hash)
{
    const table_t *t = v->t;
    for (uint32_t s = slot_of(hash, model, t->mask);; s = (s + 1) & t->mask) {
        uint32_t x = LDA(&t->s[s]);
        if (x == 0)
            return NO_BLOCK;
        if (x != TOMB && is_block(v, x - 1, model, hash))
            return x - 1;
    }
}

/* A block's holders as a reader sees them: the array (or the inline one) and a count that
 * never reads past it. Unused entries read NO_HOLDER. */
static inline const holder_t *holders_r(const block_t *b, uint32_t *n)
{
    const hold_arr_t *a = LDA(&b->many);
    uint32_t c = LD(&b->n);
    if (a != NULL) {
        *n = c < a->cap ? c : a->cap;
        return a->h;
    }
    *n = c < 1 ? c : 1;
    return &b->one;
}

/* Starts the loads of the keys ahead of k (slot, then block, then holders as each comes
 * closer): a long prompt is otherwise a chain of cache misses. */
static inline void prefetch_ahead(const rview_t *v, uint32_t model, const uint64_t *keys, size_t n,
                                  size_t k, bool want_holders)
{
    const table_t *t = v->t;
    if (k + 8 < n)
        __builtin_prefetch(&t->s[slot_of(keys[k + 8], model, t->mask)]);
    if (k + 4 < n) {
        uint32_t x = LD(&t->s[slot_of(keys[k + 4], model, t->mask)]);
        if (x != 0 && x != TOMB && x - 1 < v->len)
            __builtin_prefetch(rb(v, x - 1));
    }
    if (want_holders && k + 2 < n) {
        uint32_t ahead = find_block_r(v, model, keys[k + 2]);
        if (ahead != NO_BLOCK) {
            const hold_arr_t *a = LD(&rb(v, ahead)->many);
            if (a != NULL)
                __builtin_prefetch(a);
        }
    }
}

/* The slowest tier along pod's first `depth` blocks of keys (the rare path: only for pods
 * with some copy off the fastest tier). */
static uint8_t worst_tier(const rview_t *v, uint32_t model, const uint64_t *keys, uint32_t depth,
                          uint32_t pod)
{
    uint8_t worst = 0;
    for (uint32_t k = 0; k < depth; k++) {
        uint32_t bi = find_block_r(v, model, keys[k]);
        if (bi == NO_BLOCK)
            continue; /* removed since */
        uint32_t nh;
        const holder_t *h = holders_r(rb(v, bi), &nh);
        uint8_t best = 255;
        for (uint32_t i = 0; i < nh; i++) {
            uint32_t pm = LD(&h[i].pod_med);
            if (pm != NO_HOLDER && pm_pod(pm) == pod && pm_med(pm) < best)
                best = pm_med(pm);
        }
        if (best != 255 && best > worst)
            worst = best;
    }
    return worst;
}

/* keys[k]'s block, given keys[k-1]'s (prev, at *pp): the entry after prev first, then the
 * hint, then the table. *pp gets the block found (unchanged when none). Inlined: it is the
 * loop body of every score. */
static inline __attribute__((always_inline)) uint32_t next_block(const rview_t *v, uint32_t model,
                                                                 uint32_t prev, const block_t **pp,
                                                                 const uint64_t *keys, size_t n,
                                                                 size_t k, bool want_holders)
{
    if (prev != NO_BLOCK) {
        /* The entry after prev first: a prompt's blocks stored fresh by one store sit side
         * by side, and this address needs no load (within a segment), so the CPU runs
         * ahead of the walk instead of chasing hints one load at a time. */
        uint32_t c = prev + 1;
        if (c < v->len) {
            const block_t *cb = (c & (SEG - 1)) != 0 ? *pp + 1 : rb(v, c);
            if (LDA(&cb->model) == model && LD(&cb->hash) == keys[k]) {
                *pp = cb;
                return c;
            }
        }
        uint32_t h = LD(&(*pp)->next);
        if (h < v->len) {
            const block_t *hb = rb(v, h);
            if (LDA(&hb->model) == model && LD(&hb->hash) == keys[k]) {
                uint32_t hh = LD(&hb->next);
                if (hh < v->len)
                    __builtin_prefetch(rb(v, hh)); /* the step after */
                *pp = hb;
                return h;
            }
        }
    }
    prefetch_ahead(v, model, keys, n, k, want_holders);
    uint32_t bi = find_block_r(v, model, keys[k]);
    if (bi != NO_BLOCK)
        *pp = rb(v, bi);
    return bi;
}

/* Scoring for a model of at most 64 pods: ANDs of the blocks' slot masks. b0 is keys[0]'s
 * block. */
static long score_masked(const rview_t *v, const mview_t *md, uint32_t model, uint32_t b0,
                         const uint64_t *keys, size_t n, const uint32_t *only, size_t nonly,
                         kvs__idx_score_t *out, size_t max_out)
{
    uint64_t elig = 0;
    for (uint32_t s = 0; s < md->npods; s++) {
        uint32_t p = md->slot_pod[s];
        if (p < v->np && !LD(&v->pv->p[p]->degraded))
            elig |= 1ull << s;
    }
    if (only != NULL) {
        uint64_t want = 0;
        for (size_t i = 0; i < nonly; i++)
            if (only[i] < v->np && v->pv->p[only[i]]->model == model &&
                v->pv->p[only[i]]->slot < MASK_SLOTS)
                want |= 1ull << v->pv->p[only[i]]->slot;
        elig &= want;
    }
    /* Pods leave the walk in order of depth: appending each step's leavers (ordered by name
     * among themselves) builds the answer's order as a by-product, read back from the end. */
    uint32_t depth[MASK_SLOTS];
    uint8_t order[MASK_SLOTS];
    size_t m = 0;
    const block_t *pb = rb(v, b0);
    uint64_t live = LD(&pb->mask) & elig;
    uint64_t slow = live & LD(&pb->slow);
    size_t k = 1;
    uint32_t prev = b0;
    for (;; k++) {
        uint64_t next = 0;
        uint32_t bi = NO_BLOCK;
        if (k < n && live != 0) {
            bi = next_block(v, model, prev, &pb, keys, n, k, false);
            prev = bi;
            next = bi == NO_BLOCK ? 0 : live & LD(&pb->mask);
        }
        for (uint64_t dropped = live & ~next; dropped != 0; dropped &= dropped - 1) {
            uint32_t s = (uint32_t)__builtin_ctzll(dropped);
            depth[s] = (uint32_t)k;
            size_t j = m++; /* among this step's leavers, by name */
            for (; j > 0 && depth[order[j - 1]] == k &&
                   md->name_rank[order[j - 1]] > md->name_rank[s];
                 j--)
                order[j] = order[j - 1];
            order[j] = (uint8_t)s;
        }
        if (bi != NO_BLOCK)
            slow |= next & LD(&pb->slow);
        live = next;
        if (live == 0)
            break;
    }
    /* Deepest group first; within a group, name order. */
    size_t o = 0;
    for (size_t end = m; end > 0 && o < max_out;) {
        size_t start = end - 1;
        while (start > 0 && depth[order[start - 1]] == depth[order[end - 1]])
            start--;
        for (size_t i = start; i < end && o < max_out; i++) {
            uint32_t s = order[i];
            uint32_t pod = md->slot_pod[s];
            uint8_t tier = (slow >> s) & 1u ? worst_tier(v, model, keys, depth[s], pod) : 0;
            out[o++] = (kvs__idx_score_t){.pod = pod,
                                          .pod_name = v->pv->p[pod]->name,
                                          .blocks = depth[s],
                                          .medium = medium_name(v->idx, tier)};
        }
        end = start;
    }
    return (long)m;
}

static int cmp_score(const void *a, const void *b)
{
    const kvs__idx_score_t *x = a, *y = b;
    if (x->blocks != y->blocks)
        return x->blocks > y->blocks ? -1 : 1;
    return strcmp(x->pod_name, y->pod_name);
}

/* Scoring for a model of more than 64 pods: a walk over each block's holders. */
static long score_walk(const rview_t *v, uint32_t model, uint32_t b0, const uint64_t *keys,
                       size_t n, const uint32_t *only, size_t nonly, kvs__idx_score_t *out,
                       size_t max_out)
{
    uint32_t np = v->np;
    long matched;
    /* Per pod: depth (blocks matched so far; 0 = not a candidate), the best tier of its
     * copies in the current block, the slowest tier along the prefix; ~0u marks a pod
     * excluded by `only`. */
    uint32_t *depth = kvs__ix_calloc(np, sizeof(uint32_t));
    uint8_t *cur = kvs__ix_malloc(np), *worst = kvs__ix_malloc(np);
    uint32_t *cand = kvs__ix_malloc(np * sizeof(uint32_t));
    uint32_t *live = kvs__ix_malloc(np * sizeof(uint32_t));
    if (depth == NULL || cur == NULL || worst == NULL || cand == NULL || live == NULL) {
        matched = -1;
        goto done;
    }
    if (only != NULL) {
        for (uint32_t i = 0; i < np; i++)
            depth[i] = UINT32_MAX;
        for (size_t i = 0; i < nonly; i++)
            if (only[i] < np)
                depth[only[i]] = 0;
    }
    size_t ncand = 0, nlive;
    uint32_t nh;
    const holder_t *h = holders_r(rb(v, b0), &nh);
    for (uint32_t i = 0; i < nh; i++) {
        uint32_t pm = LD(&h[i].pod_med);
        uint32_t p = pm_pod(pm);
        uint8_t m = pm_med(pm);
        /* (pods newer than this score's view, and unused entries, are skipped) */
        if (pm == NO_HOLDER || p >= np || LD(&v->pv->p[p]->degraded) || depth[p] == UINT32_MAX)
            continue;
        if (depth[p] == 0) {
            depth[p] = 1;
            cur[p] = m;
            cand[ncand++] = p;
        } else if (m < cur[p]) {
            cur[p] = m;
        }
    }
    for (size_t i = 0; i < ncand; i++) {
        worst[cand[i]] = cur[cand[i]];
        live[i] = cand[i];
    }
    nlive = ncand;
    uint32_t prev = b0;
    const block_t *pb = rb(v, b0);
    for (size_t k = 1; k < n && nlive > 0; k++) {
        uint32_t bi = next_block(v, model, prev, &pb, keys, n, k, true);
        if (bi == NO_BLOCK)
            break;
        prev = bi;
        h = holders_r(pb, &nh);
        uint32_t want = (uint32_t)k;
        for (uint32_t i = 0; i < nh; i++) {
            uint32_t pm = LD(&h[i].pod_med);
            uint32_t p = pm_pod(pm);
            uint8_t m = pm_med(pm);
            if (pm == NO_HOLDER || p >= np)
                continue;
            if (depth[p] == want) {
                depth[p] = want + 1;
                cur[p] = m;
            } else if (depth[p] == want + 1 && m < cur[p]) {
                cur[p] = m;
            }
        }
        size_t j = 0;
        for (size_t i = 0; i < nlive; i++) {
            uint32_t p = live[i];
            if (depth[p] == want + 1) {
                if (cur[p] > worst[p])
                    worst[p] = cur[p];
                live[j++] = p;
            }
        }
        nlive = j;
    }
    matched = (long)ncand;
    kvs__idx_score_t *all = kvs__ix_malloc((ncand ? ncand : 1) * sizeof(*all));
    if (all == NULL) {
        matched = -1;
        goto done;
    }
    for (size_t i = 0; i < ncand; i++) {
        uint32_t p = cand[i];
        all[i] = (kvs__idx_score_t){.pod = p,
                                    .pod_name = v->pv->p[p]->name,
                                    .blocks = depth[p],
                                    .medium = medium_name(v->idx, worst[p])};
    }
    qsort(all, ncand, sizeof(*all), cmp_score);
    memcpy(out, all, (ncand < max_out ? ncand : max_out) * sizeof(*all));
    free(all);
done:
    free(depth);
    free(cur);
    free(worst);
    free(cand);
    free(live);
    return matched;
}

long kvs__idx_score(kvs__idx_t *idx, uint32_t model, const uint64_t *keys, size_t n,
                    const uint32_t *only, size_t nonly, kvs__idx_score_t *out, size_t max_out)
{
    long matched = 0;
    unsigned tok = rd_enter(idx);
    rview_t v;
    rview_load(idx, &v);
    if (n == 0 || v.np == 0 || model >= LDA(&idx->nmodels))
        goto out;
    uint32_t b0 = find_block_r(&v, model, keys[0]);
    if (b0 == NO_BLOCK)
        goto out;
    const mview_t *md = LDA(&LDA(&idx->mv)->m[model]->view);
    if (md->npods <= MASK_SLOTS)
        matched = score_masked(&v, md, model, b0, keys, n, only, nonly, out, max_out);
    else
        matched = score_walk(&v, model, b0, keys, n, only, nonly, out, max_out);
out:
    rd_exit(idx, tok);
    return matched;
}

void kvs__idx_get_stats(kvs__idx_t *idx, kvs__idx_stats_t *s)
{
    unsigned tok = rd_enter(idx);
    memset(s, 0, sizeof(*s));
    s->pairs = LD(&idx->pairs);
    s->blocks = LD(&idx->nblocks);
    s->pods = LDA(&idx->npods);
    s->models = LDA(&idx->nmodels);
    s->evicted = LD(&idx->evicted);
    s->degraded_pods = LD(&idx->ndegraded);
    const bvec_t *bv = LDA(&idx->bv);
    s->bytes = (bv != NULL ? sizeof(*bv) + bv->cap * sizeof(block_t *) +
                                 (uint64_t)LD(&bv->nseg) * SEG * sizeof(block_t)
                           : 0) +
               table_bytes(LDA(&idx->tab)) + LD(&idx->holder_bytes) + LD(&idx->list_bytes);
    rd_exit(idx, tok);
}
