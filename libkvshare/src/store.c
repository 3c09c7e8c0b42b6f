/* SPDX-License-Identifier: Apache-2.0 */
/* store.c - store entries, the host arenas (one per slot size), leases and watermark eviction. */
#include "catalog_int.h"
#include "index_int.h"
#include "pool_int.h"
#include "shm_int.h"
#include "util_int.h"

#include <errno.h>
#include <stdatomic.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#define INITIAL_SLOTS   1024u
#define INITIAL_ENTRIES 512u

kvs_status_t kvs__store_init(kvs__store_t *s, const kvs__config_t *cfg, const kvs__logger_t *log)
{
    kvs_status_t status;
    memset(s, 0, sizeof(*s));
    s->log = log;
    s->strategy = cfg->strategy;
    s->capacity_bytes = cfg->capacity_bytes;
    s->high_wm = cfg->high_watermark;
    s->low_wm = cfg->low_watermark;
    s->lease_timeout_ms = cfg->lease_timeout_ms;
    s->prefault = cfg->prefault;
    s->free_head = KVS_NO_ENTRY;
    s->next_serial = 1;

    status = kvs__catalog_init(s, INITIAL_SLOTS);
    if (status != KVS_OK)
        goto err;
    s->entries = kvs__calloc(INITIAL_ENTRIES, sizeof(*s->entries));
    if (s->entries == NULL) {
        status = KVS_ERR_NO_MEMORY;
        goto err_free_slots;
    }
    s->entries_cap = INITIAL_ENTRIES;
    /* Entries beyond `count` high-water are handed out in order; freed ones
     * go on the free list. */
    for (uint32_t i = 0; i < INITIAL_ENTRIES; i++)
        s->entries[i].next_free = (i + 1 < INITIAL_ENTRIES) ? i + 1 : KVS_NO_ENTRY;
    s->free_head = 0;
    if (pthread_rwlock_init(&s->lock, NULL) != 0) {
        status = KVS_ERR_NO_MEMORY;
        goto err_free_entries;
    }
    return KVS_OK;

err_free_entries:
    kvs__free(s->entries);
err_free_slots:
    kvs__free(s->slots);
err:
    return status;
}

static void arena_free(kvs__arena_t *a)
{
    kvs__shm_free(a->base);
    kvs__free(a->free);
    kvs__shm_free((void *)a->gen);
    memset(a, 0, sizeof(*a));
}

void kvs__store_arena_fini(kvs__store_t *s)
{
    for (uint32_t c = 0; c < s->narenas; c++)
        arena_free(&s->arenas[c]);
    kvs__free(s->cands);
    s->cands = NULL;
    s->cands_cap = 0;
    s->narenas = 0;
    s->arena_used_bytes = 0;
}

void kvs__store_fini(kvs__store_t *s)
{
    kvs__store_arena_fini(s);
    kvs__free(s->entries);
    kvs__free(s->slots);
    pthread_rwlock_destroy(&s->lock);
}

/* Commits @base's pages and writes each once, both ways blocks are later
 * written: by the kernel (a read of /dev/zero, as process_vm_readv writes a
 * direct-read put) and from user space (one byte a page, as memcpy and
 * UCX's copies write). On the paravirtualised VM measured, committing alone
 * (MADV_POPULATE_WRITE) left the first write of each page at 15-40 us, and a
 * page written from user space was still slow for the kernel's first write
 * into it, and the reverse: a process_vm_readv into committed pages ran at
 * 0.1-0.4 GB/s, into pages the kernel had written once at 3.3-3.6 GB/s. */
static void prefault_arena(void *base, size_t bytes)
{
#ifdef MADV_POPULATE_WRITE
    (void)madvise(base, bytes, MADV_POPULATE_WRITE);
#endif
    int z = open("/dev/zero", O_RDONLY | O_CLOEXEC);
    for (size_t off = 0; z >= 0 && off < bytes;) {
        size_t want = bytes - off < (8u << 20) ? bytes - off : (8u << 20);
        ssize_t r = read(z, (uint8_t *)base + off, want);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        off += (size_t)r;
    }
    if (z >= 0)
        close(z);
    for (size_t off = 0; off < bytes; off += 4096)
        ((volatile uint8_t *)base)[off] = 0;
}

kvs_status_t kvs__store_class_add(kvs__store_t *s, size_t slot_bytes, uint32_t *cls_p)
{
    if (slot_bytes == 0)
        return KVS_ERR_INVALID_PARAM;
    for (uint32_t c = 0; c < s->narenas; c++) {
        if (s->arenas[c].slot_bytes == slot_bytes) {
            *cls_p = c;
            return KVS_OK;
        }
    }
    if (s->narenas == KVS_SLOT_CLASSES_MAX) {
        kvs__error(s->log,
                   "blocks of %zu bytes need a slot class of their own, and %d sizes are "
                   "stored already; set KVSHARE_SLOT_BYTES to round sizes up to its multiples",
                   slot_bytes, KVS_SLOT_CLASSES_MAX);
        return KVS_ERR_NO_SPACE;
    }
    uint64_t nslots = s->capacity_bytes / slot_bytes;
    if (nslots == 0) {
        kvs__error(s->log, "capacity %llu bytes is smaller than one %zu-byte block",
                   (unsigned long long)s->capacity_bytes, slot_bytes);
        return KVS_ERR_NO_SPACE;
    }
    if (nslots > UINT32_MAX - 1)
        nslots = UINT32_MAX - 1;
    size_t bytes = (size_t)nslots * slot_bytes;
    /* Eviction may pick among every arena entry of every class at once. */
    size_t ncands = s->cands_cap + (size_t)nslots;
    uint32_t *fr = kvs__malloc((size_t)nslots * sizeof(*fr));
    /* Arena and generations in memfds: same-host readers map them (shm.c). */
    _Atomic uint64_t *gen = kvs__shm_alloc((size_t)nslots * sizeof(*gen), "arena-gen");
    kvs__evict_cand_t *cands = kvs__malloc(ncands * sizeof(*cands));
    if (fr == NULL || gen == NULL || cands == NULL)
        goto err_nomem;
    /* A memfd mapping (anonymous where memfds are refused): pages are
     * committed on first copy, so a large capacity costs nothing until used,
     * and each class may grow to all of it while the watermarks bound what
     * the classes hold together. */
    void *base = kvs__shm_alloc(bytes, "arena");
    if (base == NULL) {
        kvs__error(s->log, "mapping %zu bytes for a block arena failed", bytes);
        goto err_nomem;
    }
    /* kvs__shm_alloc asks for huge pages: every 4 KiB page is otherwise
     * faulted in by the first block written there, inside the transport
     * (10-15 us a page measured on this VM), and each is a TLB entry, on a
     * VM with shadow paging an exit when it goes cold. The arena is a
     * memfd, so what counts is the kernel's *shmem* setting, "never" by
     * default on Debian: said once, with the fix (util/thp.c has the
     * figures). */
    static atomic_flag thp_said = ATOMIC_FLAG_INIT;
    char thp[32];
    if (bytes >= (64u << 20) && kvs__shmem_thp_off(kvs__shmem_thp(thp, sizeof(thp))) &&
        !atomic_flag_test_and_set(&thp_said))
        kvs__warn(s->log,
                  "arena: the kernel gives memfds no huge pages (shmem_enabled: %s), so this "
                  "%zu MiB arena is 4 KiB pages and puts into it run several times slower "
                  "(on a VM, 3-5x measured); as root: echo advise > "
                  "/sys/kernel/mm/transparent_hugepage/shmem_enabled (docs/transport.md)",
                  thp, bytes >> 20);
    /* KVSHARE_PREFAULT=1 (a pool node started with KVSHARE_SLOT_BYTES makes
     * its arena at start): commit the memory now, so that no block ever
     * lands in a page not yet there. The arena is empty and unpublished:
     * writing the zeros it holds changes nothing a reader could see. */
    if (s->prefault)
        prefault_arena(base, bytes);
    /* Hand out low slot numbers first. */
    for (uint64_t i = 0; i < nslots; i++)
        fr[i] = (uint32_t)(nslots - 1 - i);
    kvs__free(s->cands);
    s->cands = cands;
    s->cands_cap = ncands;
    kvs__arena_t *a = &s->arenas[s->narenas];
    a->base = base;
    a->bytes = bytes;
    a->slot_bytes = slot_bytes;
    a->nslots = (uint32_t)nslots;
    a->used = 0;
    a->free = fr;
    a->nfree = (uint32_t)nslots;
    a->gen = gen;
    *cls_p = s->narenas++;
    kvs__info(s->log, "arena %u: %u slots of %zu bytes (%zu bytes)", *cls_p, a->nslots, slot_bytes,
              bytes);
    return KVS_OK;

err_nomem:
    kvs__free(fr);
    kvs__shm_free((void *)gen);
    kvs__free(cands);
    return KVS_ERR_NO_MEMORY;
}

void kvs__store_class_drop(kvs__store_t *s, uint32_t cls)
{
    /* Only the newest class, before it held a block: nothing refers to it.
     * The candidate array keeps its size; it is only ever too big. */
    if (cls + 1 != s->narenas || s->arenas[cls].used != 0)
        return;
    arena_free(&s->arenas[cls]);
    s->narenas--;
}

kvs_status_t kvs__store_arena_init(kvs__store_t *s, size_t slot_bytes)
{
    uint32_t cls;
    return kvs__store_class_add(s, slot_bytes, &cls);
}

bool kvs__entry_leased(const kvs__entry_t *e, uint64_t now_ms)
{
    /* A lease whose deadline passed no longer pins the block: its holder
     * may be gone. A late reader then sees the generation change. */
    return atomic_load_explicit(&e->leases, memory_order_acquire) > 0 &&
           atomic_load_explicit(&e->lease_deadline_ms, memory_order_relaxed) > now_ms;
}

kvs__entry_t *kvs__store_get(kvs__store_t *s, uint64_t layout_id, const kvs_key_t *key)
{
    uint32_t idx = kvs__catalog_find(s, kvs__catalog_hash(layout_id, key), layout_id, key);
    return idx == KVS_NO_ENTRY ? NULL : &s->entries[idx];
}

size_t kvs__store_find_prefix(kvs__store_t *s, uint64_t layout_id, const kvs_key_t *keys, size_t n,
                              kvs__ref_t *refs, uint64_t deadline_ms)
{
    /* Two-stage software pipeline: the slot for key i+2D is prefetched, the
     * entry for key i+D (found from its now-cached slot) is prefetched, and
     * key i is checked. Long chains thus overlap their cache misses instead
     * of paying one DRAM round trip per key. */
    enum { D = 8 };
    uint32_t cand[D];
    uint64_t hash[D];
    size_t hits = 0;

    pthread_rwlock_rdlock(&s->lock);
    uint64_t now = atomic_fetch_add_explicit(&s->clock, 1, memory_order_relaxed) + 1;
    size_t mask = s->nslots - 1;
    size_t pre = n < 2 * D ? n : 2 * D;
    for (size_t i = 0; i < pre; i++) {
        uint64_t h = kvs__catalog_hash(layout_id, &keys[i]);
        __builtin_prefetch(&s->slots[h & mask]);
        if (i < D)
            hash[i] = h;
    }
    for (size_t i = 0; i < D && i < n; i++) {
        cand[i] = s->slots[hash[i] & mask].idx1;
        if (cand[i] != 0)
            __builtin_prefetch(&s->entries[cand[i] - 1]);
    }
    for (size_t i = 0; i < n; i++) {
        size_t r = i % D;
        uint32_t idx;
        const kvs__slot_t *first = &s->slots[hash[r] & mask];
        if (first->idx1 != 0 && first->hash == hash[r] &&
            kvs__entry_matches(&s->entries[first->idx1 - 1], layout_id, &keys[i]))
            idx = first->idx1 - 1;
        else
            idx = kvs__catalog_find(s, hash[r], layout_id, &keys[i]);
        if (idx == KVS_NO_ENTRY)
            break;
        kvs__entry_t *e = &s->entries[idx];
        atomic_store_explicit(&e->atime, now, memory_order_relaxed);
        atomic_fetch_add_explicit(&e->freq, 1, memory_order_relaxed);
        if (refs != NULL) {
            atomic_fetch_add_explicit(&e->leases, 1, memory_order_acq_rel);
            uint64_t old = atomic_load_explicit(&e->lease_deadline_ms, memory_order_relaxed);
            while (old < deadline_ms && !atomic_compare_exchange_weak_explicit(
                                            &e->lease_deadline_ms, &old, deadline_ms,
                                            memory_order_relaxed, memory_order_relaxed))
                ;
            refs[i].idx = idx;
            refs[i].pad = 0;
            refs[i].serial = e->serial;
        }
        hits++;
        /* Refill this ring position with key i+D. */
        size_t nx = i + D;
        if (nx < n) {
            hash[r] = kvs__catalog_hash(layout_id, &keys[nx]);
            uint32_t c = s->slots[hash[r] & mask].idx1;
            if (c != 0)
                __builtin_prefetch(&s->entries[c - 1]);
            if (nx + D < n)
                __builtin_prefetch(&s->slots[kvs__catalog_hash(layout_id, &keys[nx + D]) & mask]);
        }
    }
    pthread_rwlock_unlock(&s->lock);

    atomic_fetch_add_explicit(&s->hits, hits, memory_order_relaxed);
    if (hits < n)
        atomic_fetch_add_explicit(&s->misses, 1, memory_order_relaxed);
    if (refs != NULL && hits > 0)
        atomic_fetch_add_explicit(&s->leased_blocks, hits, memory_order_relaxed);
    return hits;
}

void kvs__store_release(kvs__store_t *s, const kvs__ref_t *refs, size_t n)
{
    size_t released = 0;
    pthread_rwlock_rdlock(&s->lock);
    for (size_t i = 0; i < n; i++) {
        kvs__entry_t *e = &s->entries[refs[i].idx];
        /* A serial mismatch means the entry was force-unpublished or its
         * lease expired and it was evicted: nothing of ours is left. */
        if (e->serial == refs[i].serial) {
            uint32_t old = atomic_load_explicit(&e->leases, memory_order_relaxed);
            while (old > 0 && !atomic_compare_exchange_weak_explicit(&e->leases, &old, old - 1,
                                                                     memory_order_acq_rel,
                                                                     memory_order_relaxed))
                ;
        }
        released++;
    }
    pthread_rwlock_unlock(&s->lock);
    atomic_fetch_sub_explicit(&s->leased_blocks, released, memory_order_relaxed);
}

static int cand_cmp(const void *a, const void *b)
{
    uint64_t x = ((const kvs__evict_cand_t *)a)->score, y = ((const kvs__evict_cand_t *)b)->score;
    return (x > y) - (x < y);
}

static uint64_t evict_score(const kvs__store_t *s, const kvs__entry_t *e)
{
    uint64_t atime = atomic_load_explicit(&e->atime, memory_order_relaxed);
    if (s->strategy == KVS_STRATEGY_LRU)
        return atime;
    /* LFU: fewest uses first, the least recent among equals. */
    uint64_t f = atomic_load_explicit(&e->freq, memory_order_relaxed);
    if (f > 0xffffff)
        f = 0xffffff;
    return (f << 40) | (atime & ((1ull << 40) - 1));
}

/* Moves the @k lowest-scored of @n candidates to the front, in no order
 * (quickselect: Hoare partitions around a median of three). */
static void select_lowest(kvs__evict_cand_t *c, size_t n, size_t k)
{
    size_t lo = 0, hi = n; /* the k-th lowest lies in [lo, hi) */
    while (hi - lo > 16 && k > lo && k < hi) {
        size_t mid = lo + (hi - lo) / 2;
        uint64_t a = c[lo].score, b = c[mid].score, d = c[hi - 1].score;
        uint64_t pivot = a < b ? (b < d ? b : a < d ? d : a) : (a < d ? a : b < d ? d : b);
        size_t i = lo, j = hi - 1;
        for (;;) {
            while (c[i].score < pivot)
                i++;
            while (c[j].score > pivot)
                j--;
            if (i >= j)
                break;
            kvs__evict_cand_t t = c[i];
            c[i++] = c[j];
            c[j--] = t;
        }
        /* [lo, j] <= pivot <= [j + 1, hi) */
        if (k <= j)
            hi = j + 1;
        else
            lo = j + 1;
    }
    if (hi > lo)
        qsort(c + lo, hi - lo, sizeof(*c), cand_cmp);
}

/* Evicts unleased arena entries of every class in strategy order until the
 * arenas hold at most @target bytes. Returns how many were evicted.
 * Exclusive lock held. */
static uint32_t evict_to(kvs__store_t *s, uint64_t target)
{
    if (s->arena_used_bytes <= target)
        return 0;
    uint64_t now_ms = kvs__now_ms();
    size_t nc = 0;
    for (uint32_t i = 0; i < s->entries_cap && nc < s->cands_cap; i++) {
        kvs__entry_t *e = &s->entries[i];
        if (e->serial == 0 || e->pool != NULL || kvs__entry_leased(e, now_ms))
            continue;
        s->cands[nc].score = evict_score(s, e);
        s->cands[nc].idx = i;
        s->cands[nc].pad = 0;
        nc++;
    }
    /* One pass per eviction batch (high - low): only the candidates the
     * batch can take are put in order, at most one per smallest slot of
     * the bytes to free (each frees at least that). Sorting every
     * candidate was 4-6% of the nodes' profile samples during `kvshare
     * bench pool --warm`'s puts (5600 slots a node, 10% evicted a batch),
     * on the thread the put waits for. */
    uint64_t min_slot = UINT64_MAX;
    for (uint32_t k = 0; k < s->narenas; k++)
        if (s->arenas[k].slot_bytes < min_slot)
            min_slot = s->arenas[k].slot_bytes;
    size_t want = min_slot == UINT64_MAX || min_slot == 0
                      ? nc
                      : (size_t)((s->arena_used_bytes - target + min_slot - 1) / min_slot);
    if (want < nc) {
        select_lowest(s->cands, nc, want);
        qsort(s->cands, want, sizeof(*s->cands), cand_cmp);
    } else {
        qsort(s->cands, nc, sizeof(*s->cands), cand_cmp);
    }
    size_t evicted = 0;
    for (; evicted < nc && s->arena_used_bytes > target; evicted++)
        kvs__store_remove(s, &s->entries[s->cands[evicted].idx]);
    atomic_fetch_add_explicit(&s->evictions, evicted, memory_order_relaxed);
    if (evicted > 0)
        kvs__debug(s->log, "evicted %zu blocks (%zu candidates), %llu of %llu bytes in use",
                   evicted, nc, (unsigned long long)s->arena_used_bytes,
                   (unsigned long long)s->capacity_bytes);
    return (uint32_t)evicted;
}

static kvs_status_t grow_entries(kvs__store_t *s)
{
    if (s->entries_cap >= UINT32_MAX / 2)
        return KVS_ERR_NO_SPACE;
    uint32_t ncap = s->entries_cap * 2;
    kvs__entry_t *ne = kvs__realloc(s->entries, (size_t)ncap * sizeof(*ne));
    if (ne == NULL)
        return KVS_ERR_NO_MEMORY;
    memset(&ne[s->entries_cap], 0, (size_t)(ncap - s->entries_cap) * sizeof(*ne));
    for (uint32_t i = s->entries_cap; i < ncap; i++)
        ne[i].next_free = (i + 1 < ncap) ? i + 1 : s->free_head;
    s->free_head = s->entries_cap;
    s->entries = ne;
    s->entries_cap = ncap;
    return KVS_OK;
}

/* Tells the observer, if any (exclusive lock held: the observer only queues). Every store
 * and removal passes through insert and remove, so the observer sees them all, whichever
 * path (publish, a peer's PUT, eviction) made them. */
static void emit(kvs__store_t *s, kvs_block_event_type_t type, const kvs__entry_t *e)
{
    if (s->event_fn == NULL)
        return;
    kvs_block_event_t ev = {.type = type, .layout_id = e->layout_id, .key = e->key};
    s->event_fn(s->event_arg, &ev);
}

/* Makes room for one more slot of @a, evicting down to the low watermark
 * when the high one would be passed. false: no slot can be had. */
static bool make_room(kvs__store_t *s, kvs__arena_t *a)
{
    /* Watermarks are fractions of the capacity in bytes, shared by all
     * classes: a new block of any size may push out older ones of another
     * size. */
    uint64_t high = (uint64_t)(s->high_wm * (double)s->capacity_bytes);
    if (high < a->slot_bytes)
        high = a->slot_bytes;
    if (s->arena_used_bytes + a->slot_bytes > high) {
        uint64_t low = (uint64_t)(s->low_wm * (double)s->capacity_bytes);
        evict_to(s, low < high - a->slot_bytes ? low : high - a->slot_bytes);
    }
    return a->nfree > 0 && s->arena_used_bytes + a->slot_bytes <= s->capacity_bytes;
}

uint32_t kvs__store_reserve(kvs__store_t *s, uint32_t cls, uint32_t n, uint32_t *slots)
{
    if (cls >= s->narenas)
        return 0;
    kvs__arena_t *a = &s->arenas[cls];
    uint32_t got = 0;
    while (got < n && make_room(s, a)) {
        slots[got++] = a->free[--a->nfree];
        a->used++;
        s->arena_used_bytes += a->slot_bytes;
    }
    return got;
}

void kvs__store_unreserve(kvs__store_t *s, uint32_t cls, const uint32_t *slots, uint32_t n)
{
    kvs__arena_t *a = &s->arenas[cls];
    for (uint32_t i = 0; i < n; i++) {
        /* Whatever landed there is never read: the generation moves on all
         * the same, as for any slot that is given back. */
        atomic_fetch_add_explicit(&a->gen[slots[i]], 1, memory_order_release);
        a->free[a->nfree++] = slots[i];
        a->used--;
        s->arena_used_bytes -= a->slot_bytes;
    }
}

/* Catalogs @key in the reserved @slot of class @cls (counted already). */
static kvs_status_t insert_entry(kvs__store_t *s, uint64_t layout_id, const kvs_key_t *key,
                                 struct kvs_pool *pool, uint32_t block, uint64_t gen,
                                 kvs__arena_t *a, uint32_t cls, kvs__entry_t **entry_p);

kvs_status_t kvs__store_insert_slot(kvs__store_t *s, uint64_t layout_id, const kvs_key_t *key,
                                    uint32_t cls, uint32_t slot, kvs__entry_t **entry_p)
{
    if (cls >= s->narenas || slot >= s->arenas[cls].nslots)
        return KVS_ERR_INVALID_PARAM;
    return insert_entry(s, layout_id, key, NULL, slot, 0, &s->arenas[cls], cls, entry_p);
}

kvs_status_t kvs__store_insert(kvs__store_t *s, uint64_t layout_id, const kvs_key_t *key,
                               struct kvs_pool *pool, uint32_t block, uint64_t gen,
                               kvs__entry_t **entry_p)
{
    if (pool != NULL)
        return insert_entry(s, layout_id, key, pool, block, gen, NULL, 0, entry_p);
    if (block >= s->narenas)
        return KVS_ERR_INVALID_PARAM;
    uint32_t slot;
    if (kvs__store_reserve(s, block, 1, &slot) != 1)
        return KVS_ERR_NO_SPACE;
    kvs_status_t status =
        insert_entry(s, layout_id, key, NULL, slot, 0, &s->arenas[block], block, entry_p);
    if (status != KVS_OK)
        kvs__store_unreserve(s, block, &slot, 1);
    return status;
}

static kvs_status_t insert_entry(kvs__store_t *s, uint64_t layout_id, const kvs_key_t *key,
                                 struct kvs_pool *pool, uint32_t block, uint64_t gen,
                                 kvs__arena_t *a, uint32_t cls, kvs__entry_t **entry_p)
{
    kvs_status_t status;
    if (s->free_head == KVS_NO_ENTRY) {
        status = grow_entries(s);
        if (status != KVS_OK)
            return status;
    }
    uint32_t idx = s->free_head;
    status = kvs__catalog_add(s, kvs__catalog_hash(layout_id, key), idx);
    if (status != KVS_OK)
        return status;
    kvs__entry_t *e = &s->entries[idx];
    s->free_head = e->next_free;
    if (a != NULL) {
        e->cls = cls;
        gen = atomic_load_explicit(&a->gen[block], memory_order_relaxed);
    } else {
        e->cls = 0;
        s->zero_copy_count++;
    }
    e->key = *key;
    e->layout_id = layout_id;
    e->serial = s->next_serial++;
    e->pool = pool;
    e->block = block;
    e->next_free = KVS_NO_ENTRY;
    e->gen = gen;
    atomic_store_explicit(&e->leases, 0, memory_order_relaxed);
    atomic_store_explicit(&e->reads, 0, memory_order_relaxed);
    atomic_store_explicit(&e->readers, 0, memory_order_relaxed);
    atomic_store_explicit(&e->freq, 0, memory_order_relaxed);
    /* Insertion counts as an access, so LRU order among never-read blocks is
     * their insertion order. */
    atomic_store_explicit(&e->atime, atomic_fetch_add(&s->clock, 1) + 1, memory_order_relaxed);
    atomic_store_explicit(&e->lease_deadline_ms, 0, memory_order_relaxed);
    s->count++;
    atomic_fetch_add_explicit(&s->published, 1, memory_order_relaxed);
    emit(s, KVS_BLOCK_EVENT_STORED, e);
    *entry_p = e;
    return KVS_OK;
}

void kvs__store_index(kvs__store_t *s, const kvs__entry_t *e)
{
    if (s->index == NULL)
        return;
    kvs__index_seg_t segs[KVS_INDEX_SEGS];
    kvs__index_loc_t loc = {.block = e->block, .gen = e->gen};
    if (e->pool == NULL) {
        loc.addr = (uint64_t)(uintptr_t)kvs__arena_slot(s, e);
        loc.len = e->nbytes;
        loc.gen_addr = (uint64_t)(uintptr_t)kvs__arena_gen(s, e);
    } else {
        loc.pool = e->pool;
        loc.nsegs = e->pool->nsegs;
        for (size_t k = 0; k < e->pool->nsegs && k < KVS_INDEX_SEGS; k++) {
            const kvs_segment_t *sg = &e->pool->segs[k];
            segs[k] = (kvs__index_seg_t){.base = (uint64_t)(uintptr_t)sg->base,
                                         .stride = sg->block_stride,
                                         .bytes = sg->block_bytes};
        }
        loc.segs = segs;
        loc.gen_addr = (uint64_t)(uintptr_t)&e->pool->gen[e->block];
    }
    kvs__index_add(s->index, e->layout_id, &e->key, (uint32_t)(e - s->entries), e->serial, &loc);
}

void kvs__store_set_index(kvs__store_t *s, struct kvs__index *ix)
{
    s->index = ix;
    for (uint32_t i = 0; ix != NULL && i < s->entries_cap; i++)
        if (s->entries[i].serial != 0)
            kvs__store_index(s, &s->entries[i]);
}

void kvs__store_remove(kvs__store_t *s, kvs__entry_t *e)
{
    uint32_t idx = (uint32_t)(e - s->entries);
    /* Out of the index first: no mapped reader finds it from here on (one
     * that already did is told by the generation, which moves below or when
     * the pool's block is unpublished). */
    kvs__index_del(s->index, e->layout_id, &e->key);
    emit(s, KVS_BLOCK_EVENT_REMOVED, e);
    kvs__catalog_del(s, kvs__catalog_hash(e->layout_id, &e->key), idx);
    if (e->pool == NULL) {
        /* The slot's generation moves on, so a late reader of the old
         * contents is told, never handed the next block's data. */
        kvs__arena_t *a = &s->arenas[e->cls];
        atomic_fetch_add_explicit(&a->gen[e->block], 1, memory_order_release);
        a->free[a->nfree++] = e->block;
        a->used--;
        s->arena_used_bytes -= a->slot_bytes;
    } else {
        kvs__pool_forget_block(e->pool, e->block);
        s->zero_copy_count--;
    }
    e->serial = 0;
    e->pool = NULL;
    e->next_free = s->free_head;
    s->free_head = idx;
    s->count--;
}
