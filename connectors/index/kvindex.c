/* SPDX-License-Identifier: Apache-2.0 */
/* kvindex.c - the exact-prefix index: a block table with per-block holders and per-pod lists. */
#include "kvindex_int.h"
#include "ixalloc_int.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define NO_BLOCK UINT32_MAX

/* One (pod, medium) copy of a block. pos: where the block sits in the pod's list, so that
 * removing the copy is O(1) in the pod list and a pod's clear touches only its blocks. */
typedef struct holder {
    uint32_t pod_med; /* pod << 8 | medium id */
    uint32_t pos;
} holder_t;

/* Pods of a model are numbered by slot in the order first seen. While a model has at most
 * 64 pods, every block keeps a bitmap of the slots holding it, so a score is a run of
 * ANDs instead of a walk over every holder. */
#define MASK_SLOTS 64u

typedef struct block {
    uint64_t hash;
    uint64_t mask;   /* slots (< 64) with a copy of this block */
    uint64_t slow;   /* slots whose best copy is not on the fastest tier (GPU) */
    uint32_t model;  /* NO_BLOCK: free; h.one.pos then links the free list */
    uint16_t n, cap; /* cap 0: the one holder is inline */
    /* The block stored right after this one in the last store that had both (a prompt's
     * next block, usually): a score tries it before the table. Only a hint: checked
     * against the key, stale after a free. */
    uint32_t next;
    union {
        holder_t one;
        holder_t *many;
    } h;
} block_t;

typedef struct pod {
    char *name;
    uint32_t model;
    uint32_t slot; /* order among its model's pods */
    bool degraded;
    uint64_t last_ms;
    uint32_t *blocks; /* block index per copy held (a block twice when on two media) */
    size_t n, cap;
    size_t evict_at;
} pod_t;

struct kvs__idx {
    pthread_rwlock_t lock;
    uint64_t max_pairs, pairs, nblocks, evicted, holder_bytes;
    block_t *blocks;
    uint32_t blocks_len, blocks_cap, free_head;
    uint32_t *slots; /* block index + 1; 0 = empty; linear probing */
    uint32_t mask;
    pod_t *pods;
    uint32_t npods, pods_cap;
    struct model {
        char *name;
        uint32_t npods;
        uint32_t slot_pod[MASK_SLOTS];
        /* Each slot's place among the model's first 64 pods in name order: a score sorts
         * its results by blocks, then name, with integer compares only. */
        uint8_t name_rank[MASK_SLOTS];
    } * models;
    uint32_t nmodels, models_cap;
    char *media[KVS__IDX_MAX_MEDIA];
    uint32_t nmedia;
};

static inline uint32_t pm_pod(uint32_t pm)
{
    return pm >> 8;
}

static inline uint8_t pm_med(uint32_t pm)
{
    return (uint8_t)(pm & 0xffu);
}

static inline holder_t *holders(block_t *b)
{
    return b->cap == 0 ? &b->h.one : b->h.many;
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

kvs__idx_t *kvs__idx_create(uint64_t max_pairs)
{
    kvs__idx_t *idx = kvs__ix_calloc(1, sizeof(*idx));
    if (idx == NULL)
        return NULL;
    idx->max_pairs = max_pairs;
    idx->free_head = NO_BLOCK;
    idx->mask = 1023;
    idx->slots = kvs__ix_calloc((size_t)idx->mask + 1, sizeof(uint32_t));
    /* Tier ranks: the first interned are the fastest. */
    static const char *const tiers[] = {"GPU", "CPU", "DISK"};
    bool ok = idx->slots != NULL;
    for (size_t i = 0; ok && i < sizeof(tiers) / sizeof(tiers[0]); i++)
        ok = (idx->media[idx->nmedia++] = dup_n(tiers[i], strlen(tiers[i]))) != NULL;
    if (!ok || pthread_rwlock_init(&idx->lock, NULL) != 0) {
        for (uint32_t i = 0; i < idx->nmedia; i++)
            free(idx->media[i]);
        free(idx->slots);
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
        if (idx->blocks[i].model != NO_BLOCK && idx->blocks[i].cap > 0)
            free(idx->blocks[i].h.many);
    free(idx->blocks);
    free(idx->slots);
    for (uint32_t i = 0; i < idx->npods; i++) {
        free(idx->pods[i].name);
        free(idx->pods[i].blocks);
    }
    free(idx->pods);
    for (uint32_t i = 0; i < idx->nmodels; i++)
        free(idx->models[i].name);
    free(idx->models);
    for (uint32_t i = 0; i < idx->nmedia; i++)
        free(idx->media[i]);
    pthread_rwlock_destroy(&idx->lock);
    free(idx);
}

static bool name_is(const char *name, const char *s, size_t n)
{
    return strncmp(name, s, n) == 0 && name[n] == '\0';
}

static int64_t find_model(const kvs__idx_t *idx, const char *name, size_t len)
{
    for (uint32_t i = 0; i < idx->nmodels; i++)
        if (name_is(idx->models[i].name, name, len))
            return i;
    return -1;
}

static int64_t find_pod(const kvs__idx_t *idx, const char *name, size_t len, uint32_t model)
{
    for (uint32_t i = 0; i < idx->npods; i++)
        if (idx->pods[i].model == model && name_is(idx->pods[i].name, name, len))
            return i;
    return -1;
}

/* Lookups take the read lock, so HTTP readers resolving names do not wait on each other;
 * only a creation takes the write lock (and looks again under it). */
int64_t kvs__idx_model(kvs__idx_t *idx, const char *name, size_t len, bool create)
{
    pthread_rwlock_rdlock(&idx->lock);
    int64_t id = find_model(idx, name, len);
    pthread_rwlock_unlock(&idx->lock);
    if (id >= 0 || !create)
        return id;
    pthread_rwlock_wrlock(&idx->lock);
    if ((id = find_model(idx, name, len)) >= 0 || memchr(name, '\0', len) != NULL)
        goto out;
    if (idx->nmodels == idx->models_cap) {
        uint32_t nc = idx->models_cap ? 2 * idx->models_cap : 8;
        struct model *nm = kvs__ix_realloc(idx->models, nc * sizeof(*nm));
        if (nm == NULL)
            goto out;
        idx->models = nm;
        idx->models_cap = nc;
    }
    memset(&idx->models[idx->nmodels], 0, sizeof(idx->models[0]));
    if ((idx->models[idx->nmodels].name = dup_n(name, len)) == NULL)
        goto out;
    id = idx->nmodels++;
out:
    pthread_rwlock_unlock(&idx->lock);
    return id;
}

int64_t kvs__idx_pod(kvs__idx_t *idx, const char *name, size_t len, uint32_t model, bool create)
{
    pthread_rwlock_rdlock(&idx->lock);
    int64_t id = find_pod(idx, name, len, model);
    pthread_rwlock_unlock(&idx->lock);
    if (id >= 0 || !create)
        return id;
    pthread_rwlock_wrlock(&idx->lock);
    if ((id = find_pod(idx, name, len, model)) >= 0 || model >= idx->nmodels ||
        idx->npods >= KVS__IDX_MAX_PODS || memchr(name, '\0', len) != NULL)
        goto out;
    if (idx->npods == idx->pods_cap) {
        uint32_t nc = idx->pods_cap ? 2 * idx->pods_cap : 16;
        pod_t *np = kvs__ix_realloc(idx->pods, nc * sizeof(*np));
        if (np == NULL)
            goto out;
        idx->pods = np;
        idx->pods_cap = nc;
    }
    pod_t *p = &idx->pods[idx->npods];
    memset(p, 0, sizeof(*p));
    if ((p->name = dup_n(name, len)) == NULL)
        goto out;
    p->model = model;
    p->slot = idx->models[model].npods++;
    id = idx->npods++;
    if (p->slot < MASK_SLOTS) {
        struct model *md = &idx->models[model];
        md->slot_pod[p->slot] = (uint32_t)id;
        /* Re-rank by name (a new pod is rare; at most 64 of them). */
        uint32_t ns = p->slot + 1;
        for (uint32_t a = 0; a < ns; a++) {
            uint32_t r = 0;
            for (uint32_t b = 0; b < ns; b++)
                r += strcmp(idx->pods[md->slot_pod[b]].name, idx->pods[md->slot_pod[a]].name) < 0;
            md->name_rank[a] = (uint8_t)r;
        }
    }
out:
    pthread_rwlock_unlock(&idx->lock);
    return id;
}

const char *kvs__idx_pod_model_name(kvs__idx_t *idx, uint32_t pod)
{
    pthread_rwlock_rdlock(&idx->lock);
    const char *n = pod < idx->npods ? idx->models[idx->pods[pod].model].name : NULL;
    pthread_rwlock_unlock(&idx->lock);
    return n;
}

const char *kvs__idx_pod_name(kvs__idx_t *idx, uint32_t pod)
{
    pthread_rwlock_rdlock(&idx->lock);
    const char *n = pod < idx->npods ? idx->pods[pod].name : NULL;
    pthread_rwlock_unlock(&idx->lock);
    return n;
}

/* Medium id; -1 when the table is full or out of memory. Called with the write lock. */
static int medium_id(kvs__idx_t *idx, const char *m, size_t len)
{
    if (m == NULL)
        return 0;
    for (uint32_t i = 0; i < idx->nmedia; i++)
        if (strlen(idx->media[i]) == len && strncasecmp(idx->media[i], m, len) == 0)
            return (int)i;
    if (idx->nmedia >= KVS__IDX_MAX_MEDIA || memchr(m, '\0', len) != NULL)
        return -1;
    if ((idx->media[idx->nmedia] = dup_n(m, len)) == NULL)
        return -1;
    return (int)idx->nmedia++;
}

static uint32_t find_block(const kvs__idx_t *idx, uint32_t model, uint64_t hash)
{
    for (uint32_t s = slot_of(hash, model, idx->mask);; s = (s + 1) & idx->mask) {
        uint32_t v = idx->slots[s];
        if (v == 0)
            return NO_BLOCK;
        const block_t *b = &idx->blocks[v - 1];
        if (b->hash == hash && b->model == model)
            return v - 1;
    }
}

static bool table_grow(kvs__idx_t *idx)
{
    uint32_t nmask = 2 * idx->mask + 1;
    uint32_t *ns = kvs__ix_calloc((size_t)nmask + 1, sizeof(uint32_t));
    if (ns == NULL)
        return false;
    for (uint32_t s = 0; s <= idx->mask; s++) {
        uint32_t v = idx->slots[s];
        if (v == 0)
            continue;
        const block_t *b = &idx->blocks[v - 1];
        uint32_t t = slot_of(b->hash, b->model, nmask);
        while (ns[t] != 0)
            t = (t + 1) & nmask;
        ns[t] = v;
    }
    free(idx->slots);
    idx->slots = ns;
    idx->mask = nmask;
    return true;
}

static uint32_t add_block(kvs__idx_t *idx, uint32_t model, uint64_t hash)
{
    if ((idx->nblocks + 1) * 2 > (uint64_t)idx->mask + 1 && !table_grow(idx))
        return NO_BLOCK;
    uint32_t bi;
    if (idx->free_head != NO_BLOCK) {
        bi = idx->free_head;
        idx->free_head = idx->blocks[bi].h.one.pos;
    } else {
        if (idx->blocks_len == idx->blocks_cap) {
            if (idx->blocks_cap >= NO_BLOCK / 2)
                return NO_BLOCK;
            uint32_t nc = idx->blocks_cap ? 2 * idx->blocks_cap : 1024;
            block_t *nb = kvs__ix_realloc(idx->blocks, (size_t)nc * sizeof(*nb));
            if (nb == NULL)
                return NO_BLOCK;
            idx->blocks = nb;
            idx->blocks_cap = nc;
        }
        bi = idx->blocks_len++;
    }
    block_t *b = &idx->blocks[bi];
    memset(b, 0, sizeof(*b));
    b->hash = hash;
    b->model = model;
    b->next = NO_BLOCK;
    uint32_t s = slot_of(hash, model, idx->mask);
    while (idx->slots[s] != 0)
        s = (s + 1) & idx->mask;
    idx->slots[s] = bi + 1;
    idx->nblocks++;
    return bi;
}

/* Frees an empty block: backward-shift deletion keeps every probe chain unbroken. */
static void free_block(kvs__idx_t *idx, uint32_t bi)
{
    block_t *b = &idx->blocks[bi];
    uint32_t s = slot_of(b->hash, b->model, idx->mask);
    while (idx->slots[s] != bi + 1)
        s = (s + 1) & idx->mask;
    uint32_t hole = s;
    for (uint32_t j = (hole + 1) & idx->mask; idx->slots[j] != 0; j = (j + 1) & idx->mask) {
        const block_t *o = &idx->blocks[idx->slots[j] - 1];
        uint32_t home = slot_of(o->hash, o->model, idx->mask);
        /* Move j into the hole unless its home lies cyclically in (hole, j]. */
        bool stays = hole <= j ? (home > hole && home <= j) : (home > hole || home <= j);
        if (!stays) {
            idx->slots[hole] = idx->slots[j];
            hole = j;
        }
    }
    idx->slots[hole] = 0;
    if (b->cap > 0) {
        free(b->h.many);
        idx->holder_bytes -= (uint64_t)b->cap * sizeof(holder_t);
    }
    b->model = NO_BLOCK;
    b->n = b->cap = 0;
    b->h.one.pos = idx->free_head;
    idx->free_head = bi;
    idx->nblocks--;
}

/* Recomputes pod's bits in block b's masks from its copies there. */
static void pod_bits(const kvs__idx_t *idx, block_t *b, uint32_t pod)
{
    uint32_t slot = idx->pods[pod].slot;
    if (slot >= MASK_SLOTS)
        return;
    unsigned best = 256;
    const holder_t *h = holders(b);
    for (uint16_t i = 0; i < b->n; i++)
        if (pm_pod(h[i].pod_med) == pod && pm_med(h[i].pod_med) < best)
            best = pm_med(h[i].pod_med);
    uint64_t bit = 1ull << slot;
    b->mask = best < 256 ? b->mask | bit : b->mask & ~bit;
    b->slow = best < 256 && best > 0 ? b->slow | bit : b->slow & ~bit;
}

/* Removes holder hi of block bi (a copy held by pod). */
static void remove_holder(kvs__idx_t *idx, uint32_t bi, uint16_t hi)
{
    block_t *b = &idx->blocks[bi];
    holder_t *h = holders(b);
    uint32_t pod = pm_pod(h[hi].pod_med), pos = h[hi].pos;
    h[hi] = h[b->n - 1];
    b->n--;
    if (b->cap > 0 && b->n <= 1) { /* back to inline */
        holder_t keep = h[0];
        free(b->h.many);
        idx->holder_bytes -= (uint64_t)b->cap * sizeof(holder_t);
        b->cap = 0;
        b->h.one = keep;
    }
    pod_t *p = &idx->pods[pod];
    size_t last = p->n - 1;
    if (pos != last) {
        uint32_t moved = p->blocks[last];
        p->blocks[pos] = moved;
        block_t *mb = &idx->blocks[moved];
        holder_t *mh = holders(mb);
        for (uint16_t i = 0; i < mb->n; i++)
            if (pm_pod(mh[i].pod_med) == pod && mh[i].pos == last) {
                mh[i].pos = pos;
                break;
            }
    }
    p->n--;
    if (p->evict_at > p->n)
        p->evict_at = 0;
    idx->pairs--;
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
    uint32_t bi = idx->pods[pod].blocks[pos];
    block_t *b = &idx->blocks[bi];
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
        if (idx->pods[i].n > idx->pods[big].n)
            big = i;
    pod_t *p = &idx->pods[big];
    if (p->n == 0)
        return;
    if (p->evict_at >= p->n)
        p->evict_at = 0;
    drop_pair(idx, big, p->evict_at++);
    idx->evicted++;
}

/* Stores one copy; *bi_p gets its block (NO_BLOCK when none was stored). */
static int store_one(kvs__idx_t *idx, uint32_t pod, uint8_t med, uint64_t hash, uint32_t *bi_p)
{
    pod_t *p = &idx->pods[pod];
    uint32_t pm = pod << 8 | med;
    uint32_t bi = find_block(idx, p->model, hash);
    *bi_p = NO_BLOCK;
    if (bi != NO_BLOCK && find_holder(&idx->blocks[bi], pm) >= 0) {
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
        p->blocks = nb;
        p->cap = nc;
    }
    bool fresh = bi == NO_BLOCK;
    if (fresh && (bi = add_block(idx, p->model, hash)) == NO_BLOCK)
        return -1;
    block_t *b = &idx->blocks[bi];
    *bi_p = bi;
    if (b->n == KVS__IDX_MAX_HOLDERS)
        return 0;
    if (b->n >= 1 && b->n >= b->cap) {
        uint16_t nc = b->cap ? (uint16_t)(b->cap >= 32768 ? 65535 : 2 * b->cap) : 4;
        holder_t *nh = b->cap ? kvs__ix_realloc(b->h.many, nc * sizeof(*nh))
                              : kvs__ix_malloc(nc * sizeof(*nh));
        if (nh == NULL) {
            if (fresh)
                free_block(idx, bi);
            *bi_p = NO_BLOCK;
            return -1;
        }
        if (b->cap == 0)
            nh[0] = b->h.one;
        idx->holder_bytes += (uint64_t)(nc - b->cap) * sizeof(holder_t);
        b->h.many = nh;
        b->cap = nc;
    }
    holders(b)[b->n++] = (holder_t){.pod_med = pm, .pos = (uint32_t)p->n};
    pod_bits(idx, b, pod);
    p->blocks[p->n++] = bi;
    idx->pairs++;
    return 0;
}

int kvs__idx_store(kvs__idx_t *idx, uint32_t pod, const uint64_t *hashes, size_t n,
                   const char *medium, size_t medium_len, uint64_t now_ms)
{
    int rc = 0;
    pthread_rwlock_wrlock(&idx->lock);
    int med = pod < idx->npods ? medium_id(idx, medium, medium_len) : -1;
    if (med < 0) {
        rc = -1;
        goto out;
    }
    idx->pods[pod].last_ms = now_ms;
    uint32_t prev = NO_BLOCK;
    for (size_t i = 0; i < n && rc == 0; i++) {
        uint32_t bi;
        rc = store_one(idx, pod, (uint8_t)med, hashes[i], &bi);
        /* An eviction inside store_one may have freed prev: it is only a hint's source. */
        if (prev != NO_BLOCK && bi != NO_BLOCK && idx->blocks[prev].model != NO_BLOCK)
            idx->blocks[prev].next = bi;
        prev = bi;
    }
out:
    pthread_rwlock_unlock(&idx->lock);
    return rc;
}

void kvs__idx_remove(kvs__idx_t *idx, uint32_t pod, const uint64_t *hashes, size_t n,
                     const char *medium, size_t medium_len, uint64_t now_ms)
{
    pthread_rwlock_wrlock(&idx->lock);
    if (pod >= idx->npods)
        goto out;
    idx->pods[pod].last_ms = now_ms;
    int med = medium_id(idx, medium, medium_len);
    if (med < 0)
        goto out;
    uint32_t pm = pod << 8 | (uint32_t)med;
    for (size_t i = 0; i < n; i++) {
        uint32_t bi = find_block(idx, idx->pods[pod].model, hashes[i]);
        if (bi == NO_BLOCK)
            continue;
        int hi = find_holder(&idx->blocks[bi], pm);
        if (hi >= 0)
            remove_holder(idx, bi, (uint16_t)hi);
    }
out:
    pthread_rwlock_unlock(&idx->lock);
}

void kvs__idx_clear_pod(kvs__idx_t *idx, uint32_t pod)
{
    pthread_rwlock_wrlock(&idx->lock);
    if (pod < idx->npods) {
        pod_t *p = &idx->pods[pod];
        while (p->n > 0)
            drop_pair(idx, pod, p->n - 1); /* the last: nothing moves */
        p->evict_at = 0;
    }
    pthread_rwlock_unlock(&idx->lock);
}

void kvs__idx_set_degraded(kvs__idx_t *idx, uint32_t pod, bool degraded)
{
    pthread_rwlock_wrlock(&idx->lock);
    if (pod < idx->npods)
        idx->pods[pod].degraded = degraded;
    pthread_rwlock_unlock(&idx->lock);
}

bool kvs__idx_degraded(kvs__idx_t *idx, uint32_t pod)
{
    pthread_rwlock_rdlock(&idx->lock);
    bool d = pod < idx->npods && idx->pods[pod].degraded;
    pthread_rwlock_unlock(&idx->lock);
    return d;
}

size_t kvs__idx_pod_copies(kvs__idx_t *idx, uint32_t pod, uint64_t *hashes, const char **media,
                           size_t max)
{
    pthread_rwlock_rdlock(&idx->lock);
    size_t n = pod < idx->npods ? idx->pods[pod].n : 0;
    for (size_t i = 0; i < n && i < max; i++) {
        block_t *b = &idx->blocks[idx->pods[pod].blocks[i]];
        const holder_t *h = holders(b);
        hashes[i] = b->hash;
        for (uint16_t k = 0; k < b->n; k++)
            if (pm_pod(h[k].pod_med) == pod && h[k].pos == i)
                media[i] = idx->media[pm_med(h[k].pod_med)];
    }
    pthread_rwlock_unlock(&idx->lock);
    return n;
}

uint64_t kvs__idx_pod_pairs(kvs__idx_t *idx, uint32_t pod)
{
    pthread_rwlock_rdlock(&idx->lock);
    uint64_t n = pod < idx->npods ? idx->pods[pod].n : 0;
    pthread_rwlock_unlock(&idx->lock);
    return n;
}

void kvs__idx_touch(kvs__idx_t *idx, uint32_t pod, uint64_t now_ms)
{
    pthread_rwlock_wrlock(&idx->lock);
    if (pod < idx->npods)
        idx->pods[pod].last_ms = now_ms;
    pthread_rwlock_unlock(&idx->lock);
}

size_t kvs__idx_age(kvs__idx_t *idx, uint64_t now_ms, uint64_t max_idle_ms)
{
    size_t cleared = 0;
    pthread_rwlock_wrlock(&idx->lock);
    for (uint32_t i = 0; i < idx->npods; i++) {
        pod_t *p = &idx->pods[i];
        if (p->n > 0 && p->last_ms + max_idle_ms < now_ms) {
            while (p->n > 0)
                drop_pair(idx, i, p->n - 1);
            cleared++;
        }
    }
    pthread_rwlock_unlock(&idx->lock);
    return cleared;
}

static int cmp_score(const void *a, const void *b)
{
    const kvs__idx_score_t *x = a, *y = b;
    if (x->blocks != y->blocks)
        return x->blocks > y->blocks ? -1 : 1;
    return strcmp(x->pod_name, y->pod_name);
}

/* Starts the loads of the keys ahead of k (slot, then block, then holders as each comes
 * closer): a long prompt is otherwise a chain of cache misses. */
static inline void prefetch_ahead(const kvs__idx_t *idx, uint32_t model, const uint64_t *keys,
                                  size_t n, size_t k, bool want_holders)
{
    if (k + 8 < n)
        __builtin_prefetch(&idx->slots[slot_of(keys[k + 8], model, idx->mask)]);
    if (k + 4 < n) {
        uint32_t v = idx->slots[slot_of(keys[k + 4], model, idx->mask)];
        if (v != 0)
            __builtin_prefetch(&idx->blocks[v - 1]);
    }
    if (want_holders && k + 2 < n) {
        uint32_t ahead = find_block(idx, model, keys[k + 2]);
        if (ahead != NO_BLOCK && idx->blocks[ahead].cap > 0)
            __builtin_prefetch(idx->blocks[ahead].h.many);
    }
}

/* The slowest tier along pod's first `depth` blocks of keys (the rare path: only for pods
 * with some copy off the fastest tier). */
static uint8_t worst_tier(kvs__idx_t *idx, uint32_t model, const uint64_t *keys, uint32_t depth,
                          uint32_t pod)
{
    uint8_t worst = 0;
    for (uint32_t k = 0; k < depth; k++) {
        block_t *b = &idx->blocks[find_block(idx, model, keys[k])];
        const holder_t *h = holders(b);
        uint8_t best = 255;
        for (uint16_t i = 0; i < b->n; i++)
            if (pm_pod(h[i].pod_med) == pod && pm_med(h[i].pod_med) < best)
                best = pm_med(h[i].pod_med);
        if (best > worst)
            worst = best;
    }
    return worst;
}

static int cmp_score(const void *a, const void *b);

/* keys[k]'s block, given keys[k-1]'s (prev): the hint first, then the table. */
static inline uint32_t next_block(const kvs__idx_t *idx, uint32_t model, uint32_t prev,
                                  const uint64_t *keys, size_t n, size_t k, bool want_holders)
{
    if (prev != NO_BLOCK) {
        /* The entry after prev first: a prompt's blocks stored fresh by one store sit side
         * by side, and this address needs no load, so the CPU runs ahead of the walk
         * instead of chasing hints one load at a time. */
        uint32_t c = prev + 1;
        if (c < idx->blocks_len && idx->blocks[c].hash == keys[k] && idx->blocks[c].model == model)
            return c;
        uint32_t h = idx->blocks[prev].next;
        if (h < idx->blocks_len && idx->blocks[h].hash == keys[k] &&
            idx->blocks[h].model == model) {
            uint32_t hh = idx->blocks[h].next;
            if (hh < idx->blocks_len)
                __builtin_prefetch(&idx->blocks[hh]); /* the step after */
            return h;
        }
    }
    prefetch_ahead(idx, model, keys, n, k, want_holders);
    return find_block(idx, model, keys[k]);
}

/* Scoring for a model of at most 64 pods: ANDs of the blocks' slot masks. Called with the
 * read lock; b0 is keys[0]'s block. */
static long score_masked(kvs__idx_t *idx, uint32_t model, uint32_t b0, const uint64_t *keys,
                         size_t n, const uint32_t *only, size_t nonly, kvs__idx_score_t *out,
                         size_t max_out)
{
    const struct model *md = &idx->models[model];
    uint64_t elig = 0;
    for (uint32_t s = 0; s < md->npods; s++)
        if (!idx->pods[md->slot_pod[s]].degraded)
            elig |= 1ull << s;
    if (only != NULL) {
        uint64_t want = 0;
        for (size_t i = 0; i < nonly; i++)
            if (only[i] < idx->npods && idx->pods[only[i]].model == model)
                want |= 1ull << idx->pods[only[i]].slot;
        elig &= want;
    }
    /* Pods leave the walk in order of depth: appending each step's leavers (ordered by name
     * among themselves) builds the answer's order as a by-product, read back from the end. */
    uint32_t depth[MASK_SLOTS];
    uint8_t order[MASK_SLOTS];
    size_t m = 0;
    uint64_t live = idx->blocks[b0].mask & elig;
    uint64_t slow = live & idx->blocks[b0].slow;
    size_t k = 1;
    uint32_t prev = b0;
    for (;; k++) {
        uint64_t next = 0;
        uint32_t bi = NO_BLOCK;
        if (k < n && live != 0) {
            bi = next_block(idx, model, prev, keys, n, k, false);
            prev = bi;
            next = bi == NO_BLOCK ? 0 : live & idx->blocks[bi].mask;
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
            slow |= next & idx->blocks[bi].slow;
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
            uint8_t tier = (slow >> s) & 1u ? worst_tier(idx, model, keys, depth[s], pod) : 0;
            out[o++] = (kvs__idx_score_t){.pod = pod,
                                          .pod_name = idx->pods[pod].name,
                                          .blocks = depth[s],
                                          .medium = idx->media[tier]};
        }
        end = start;
    }
    return (long)m;
}

long kvs__idx_score(kvs__idx_t *idx, uint32_t model, const uint64_t *keys, size_t n,
                    const uint32_t *only, size_t nonly, kvs__idx_score_t *out, size_t max_out)
{
    long matched = 0;
    pthread_rwlock_rdlock(&idx->lock);
    uint32_t np = idx->npods;
    uint32_t b0 = n > 0 && model < idx->nmodels ? find_block(idx, model, keys[0]) : NO_BLOCK;
    if (b0 == NO_BLOCK || np == 0)
        goto out;
    if (idx->models[model].npods <= MASK_SLOTS) {
        matched = score_masked(idx, model, b0, keys, n, only, nonly, out, max_out);
        goto out;
    }
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
    block_t *b = &idx->blocks[b0];
    holder_t *h = holders(b);
    for (uint16_t i = 0; i < b->n; i++) {
        uint32_t p = pm_pod(h[i].pod_med);
        uint8_t m = pm_med(h[i].pod_med);
        if (idx->pods[p].degraded || depth[p] == UINT32_MAX)
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
    for (size_t k = 1; k < n && nlive > 0; k++) {
        uint32_t bi = next_block(idx, model, prev, keys, n, k, true);
        if (bi == NO_BLOCK)
            break;
        prev = bi;
        b = &idx->blocks[bi];
        h = holders(b);
        uint32_t want = (uint32_t)k;
        for (uint16_t i = 0; i < b->n; i++) {
            uint32_t p = pm_pod(h[i].pod_med);
            uint8_t m = pm_med(h[i].pod_med);
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
                                    .pod_name = idx->pods[p].name,
                                    .blocks = depth[p],
                                    .medium = idx->media[worst[p]]};
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
out:
    pthread_rwlock_unlock(&idx->lock);
    return matched;
}

void kvs__idx_get_stats(kvs__idx_t *idx, kvs__idx_stats_t *s)
{
    pthread_rwlock_rdlock(&idx->lock);
    memset(s, 0, sizeof(*s));
    s->pairs = idx->pairs;
    s->blocks = idx->nblocks;
    s->pods = idx->npods;
    s->models = idx->nmodels;
    s->evicted = idx->evicted;
    uint64_t bytes = (uint64_t)idx->blocks_cap * sizeof(block_t) +
                     ((uint64_t)idx->mask + 1) * sizeof(uint32_t) + idx->holder_bytes;
    for (uint32_t i = 0; i < idx->npods; i++) {
        bytes += idx->pods[i].cap * sizeof(uint32_t);
        s->degraded_pods += idx->pods[i].degraded;
    }
    s->bytes = bytes;
    pthread_rwlock_unlock(&idx->lock);
}
