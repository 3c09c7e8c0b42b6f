/* SPDX-License-Identifier: Apache-2.0 */
/* The shim's interval map of live device allocations: fixed arrays, lock-free reads. */
#include <sched.h>
#include <string.h>

#include "preload_int.h"

#define RLX memory_order_relaxed

void kvs__track_init(kvs_track_t *t, kvs_track_slot_t *slots, _Atomic uint32_t *order,
                     uint32_t *free_next, uint32_t cap)
{
    t->slots = slots;
    t->order = order;
    t->free_next = free_next;
    t->cap = cap;
    pthread_mutex_init(&t->lock, NULL);
    atomic_init(&t->seq, 0);
    kvs__track_reset(t);
}

void kvs__track_reset(kvs_track_t *t)
{
    /* A forked child may inherit the mutex locked by a thread that no
     * longer exists there; a fresh one is the only safe choice. */
    pthread_mutex_init(&t->lock, NULL);
    atomic_store_explicit(&t->count, 0, RLX);
    atomic_store_explicit(&t->start, t->cap / 2, RLX);
    atomic_store_explicit(&t->seq, (atomic_load_explicit(&t->seq, RLX) + 1u) & ~1u, RLX);
    for (uint32_t i = 0; i < t->cap; i++) {
        t->free_next[i] = i + 1 < t->cap ? i + 1 : KVS_TRACK_NONE;
        t->slots[i].region = NULL;
        atomic_store_explicit(&t->slots[i].len, 0, RLX);
    }
    t->free_head = t->cap > 0 ? 0 : KVS_TRACK_NONE;
}

static void kvs__track_write_begin(kvs_track_t *t)
{
    uint32_t s = atomic_load_explicit(&t->seq, RLX);
    atomic_store_explicit(&t->seq, s + 1, RLX);
    atomic_thread_fence(memory_order_release);
}

static void kvs__track_write_end(kvs_track_t *t)
{
    uint32_t s = atomic_load_explicit(&t->seq, RLX);
    atomic_store_explicit(&t->seq, s + 1, memory_order_release);
}

/* The slot at position @pos of the live window (pos < count). */
static inline uint32_t kvs__track_at(kvs_track_t *t, uint32_t start, uint32_t pos)
{
    uint32_t i = start + pos;
    return i < 2 * t->cap ? atomic_load_explicit(&t->order[i], RLX) : KVS_TRACK_NONE;
}

static inline void kvs__track_put(kvs_track_t *t, uint32_t start, uint32_t pos, uint32_t s)
{
    atomic_store_explicit(&t->order[start + pos], s, RLX);
}

/* First position in the window whose base is > addr (caller holds the lock
 * or validates with seq). */
static uint32_t kvs__track_upper(kvs_track_t *t, uint32_t start, uint32_t n, uintptr_t addr)
{
    uint32_t lo = 0, hi = n;

    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        uint32_t s = kvs__track_at(t, start, mid);
        uintptr_t b = s < t->cap ? atomic_load_explicit(&t->slots[s].base, RLX) : 0;
        if (b <= addr) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return lo;
}

static void kvs__track_fill(kvs_track_t *t, uint32_t s, kvs_track_entry_t *e)
{
    kvs_track_slot_t *slot = &t->slots[s];

    e->slot = s;
    e->gen = atomic_load_explicit(&slot->gen, RLX);
    e->base = atomic_load_explicit(&slot->base, RLX);
    e->len = atomic_load_explicit(&slot->len, RLX);
    e->flags = atomic_load_explicit(&slot->flags, RLX);
    e->handle = atomic_load_explicit(&slot->handle, RLX);
    e->region = NULL;
}

kvs_status_t kvs__track_insert(kvs_track_t *t, uintptr_t base, size_t len, uint32_t flags,
                               uint64_t handle, kvs_track_entry_t *entry_p)
{
    kvs_status_t status = KVS_OK;
    uint32_t n, pos, s, start;
    kvs_track_slot_t *slot;

    if (len == 0 || base + len < base) {
        return KVS_ERR_INVALID_PARAM;
    }
    pthread_mutex_lock(&t->lock);
    n = atomic_load_explicit(&t->count, RLX);
    start = atomic_load_explicit(&t->start, RLX);
    pos = kvs__track_upper(t, start, n, base);
    if (pos > 0) {
        kvs_track_slot_t *prev = &t->slots[kvs__track_at(t, start, pos - 1)];
        if (atomic_load_explicit(&prev->base, RLX) + atomic_load_explicit(&prev->len, RLX) > base) {
            status = KVS_ERR_INVALID_PARAM;
            goto out_unlock;
        }
    }
    if (pos < n) {
        kvs_track_slot_t *next = &t->slots[kvs__track_at(t, start, pos)];
        if (atomic_load_explicit(&next->base, RLX) < base + len) {
            status = KVS_ERR_INVALID_PARAM;
            goto out_unlock;
        }
    }
    if (t->free_head == KVS_TRACK_NONE) {
        status = KVS_ERR_NO_SPACE;
        goto out_unlock;
    }
    s = t->free_head;
    t->free_head = t->free_next[s];
    slot = &t->slots[s];

    kvs__track_write_begin(t);
    atomic_store_explicit(&slot->base, base, RLX);
    atomic_store_explicit(&slot->len, len, RLX);
    atomic_store_explicit(&slot->flags, flags, RLX);
    atomic_store_explicit(&slot->handle, handle, RLX);
    atomic_store_explicit(&slot->gen, atomic_load_explicit(&slot->gen, RLX) + 1, RLX);
    atomic_store_explicit(&slot->copies_in, 0, RLX);
    atomic_store_explicit(&slot->bytes_in, 0, RLX);
    atomic_store_explicit(&slot->copies_out, 0, RLX);
    atomic_store_explicit(&slot->bytes_out, 0, RLX);
    slot->region = NULL;
    /* The window lives in an array twice the capacity, so it can grow on
     * whichever side needs fewer moves: appending and freeing oldest-first
     * (the common patterns) move nothing. */
    if ((pos < n - pos && start > 0) || start + n == 2 * t->cap) {
        for (uint32_t i = 0; i < pos; i++) {
            kvs__track_put(t, start - 1, i, kvs__track_at(t, start, i));
        }
        start--;
        atomic_store_explicit(&t->start, start, RLX);
    } else {
        for (uint32_t i = n; i > pos; i--) {
            kvs__track_put(t, start, i, kvs__track_at(t, start, i - 1));
        }
    }
    kvs__track_put(t, start, pos, s);
    atomic_store_explicit(&t->count, n + 1, RLX);
    kvs__track_write_end(t);
    kvs__track_fill(t, s, entry_p);
out_unlock:
    pthread_mutex_unlock(&t->lock);
    return status;
}

/* Removes window position @pos (lock held); fills *entry_p with what it was. */
static void kvs__track_remove_at(kvs_track_t *t, uint32_t n, uint32_t pos,
                                 kvs_track_entry_t *entry_p)
{
    uint32_t start = atomic_load_explicit(&t->start, RLX);
    uint32_t s = kvs__track_at(t, start, pos);

    kvs__track_fill(t, s, entry_p);
    entry_p->region = t->slots[s].region;
    kvs__track_write_begin(t);
    if (pos < n / 2) {
        for (uint32_t i = pos; i > 0; i--) {
            kvs__track_put(t, start, i, kvs__track_at(t, start, i - 1));
        }
        atomic_store_explicit(&t->start, start + 1, RLX);
    } else {
        for (uint32_t i = pos; i + 1 < n; i++) {
            kvs__track_put(t, start, i, kvs__track_at(t, start, i + 1));
        }
    }
    atomic_store_explicit(&t->count, n - 1, RLX);
    atomic_store_explicit(&t->slots[s].len, 0, RLX);
    kvs__track_write_end(t);
    t->slots[s].region = NULL;
    t->free_next[s] = t->free_head;
    t->free_head = s;
}

kvs_status_t kvs__track_remove(kvs_track_t *t, uintptr_t base, kvs_track_entry_t *entry_p)
{
    kvs_status_t status = KVS_ERR_NOT_FOUND;
    uint32_t n, pos, start;

    pthread_mutex_lock(&t->lock);
    n = atomic_load_explicit(&t->count, RLX);
    start = atomic_load_explicit(&t->start, RLX);
    pos = kvs__track_upper(t, start, n, base);
    if (pos > 0) {
        uint32_t s = kvs__track_at(t, start, pos - 1);
        if (atomic_load_explicit(&t->slots[s].base, RLX) == base) {
            kvs__track_remove_at(t, n, pos - 1, entry_p);
            status = KVS_OK;
        }
    }
    pthread_mutex_unlock(&t->lock);
    return status;
}

kvs_status_t kvs__track_take_overlap(kvs_track_t *t, uintptr_t base, size_t len,
                                     kvs_track_entry_t *entry_p)
{
    kvs_status_t status = KVS_ERR_NOT_FOUND;
    uintptr_t end = base + len < base ? UINTPTR_MAX : base + len;
    uint32_t n, pos, start;

    pthread_mutex_lock(&t->lock);
    n = atomic_load_explicit(&t->count, RLX);
    start = atomic_load_explicit(&t->start, RLX);
    /* The candidate is the last entry starting before base (it may reach
     * into the range) or the first starting inside it. */
    pos = kvs__track_upper(t, start, n, base);
    if (pos > 0) {
        kvs_track_slot_t *prev = &t->slots[kvs__track_at(t, start, pos - 1)];
        if (atomic_load_explicit(&prev->base, RLX) + atomic_load_explicit(&prev->len, RLX) > base) {
            kvs__track_remove_at(t, n, pos - 1, entry_p);
            status = KVS_OK;
            goto out_unlock;
        }
    }
    if (pos < n) {
        kvs_track_slot_t *next = &t->slots[kvs__track_at(t, start, pos)];
        if (atomic_load_explicit(&next->base, RLX) < end) {
            kvs__track_remove_at(t, n, pos, entry_p);
            status = KVS_OK;
        }
    }
out_unlock:
    pthread_mutex_unlock(&t->lock);
    return status;
}

kvs_status_t kvs__track_take_region(kvs_track_t *t, kvs_region_h *region_p)
{
    kvs_status_t status = KVS_ERR_NOT_FOUND;
    uint32_t n, start;

    pthread_mutex_lock(&t->lock);
    n = atomic_load_explicit(&t->count, RLX);
    start = atomic_load_explicit(&t->start, RLX);
    for (uint32_t i = 0; i < n; i++) {
        kvs_track_slot_t *slot = &t->slots[kvs__track_at(t, start, i)];
        if (slot->region != NULL) {
            *region_p = slot->region;
            slot->region = NULL;
            status = KVS_OK;
            break;
        }
    }
    pthread_mutex_unlock(&t->lock);
    return status;
}

uint32_t kvs__track_find(kvs_track_t *t, uintptr_t addr, kvs_track_entry_t *entry_p)
{
    for (unsigned spins = 0;; spins++) {
        uint32_t s1 = atomic_load_explicit(&t->seq, memory_order_acquire);
        uint32_t n, pos, start, s = KVS_TRACK_NONE;
        uintptr_t base = 0;
        size_t len = 0;

        if (s1 & 1u) {
            /* A writer is mid-change (a few stores); let it run if it was
             * preempted rather than burn our time slice. */
            if ((spins & 63u) == 63u) {
                sched_yield();
            }
            continue;
        }
        n = atomic_load_explicit(&t->count, RLX);
        start = atomic_load_explicit(&t->start, RLX);
        if (n > t->cap || start > t->cap * 2 - n) {
            continue; /* torn by a writer; the seq check would fail anyway */
        }
        pos = kvs__track_upper(t, start, n, addr);
        if (pos > 0) {
            s = kvs__track_at(t, start, pos - 1);
            if (s < t->cap) {
                base = atomic_load_explicit(&t->slots[s].base, RLX);
                len = atomic_load_explicit(&t->slots[s].len, RLX);
                entry_p->flags = atomic_load_explicit(&t->slots[s].flags, RLX);
                entry_p->gen = atomic_load_explicit(&t->slots[s].gen, RLX);
            } else {
                s = KVS_TRACK_NONE;
            }
        }
        atomic_thread_fence(memory_order_acquire);
        if (atomic_load_explicit(&t->seq, RLX) != s1) {
            continue;
        }
        if (s == KVS_TRACK_NONE || addr - base >= len) {
            return KVS_TRACK_NONE;
        }
        entry_p->slot = s;
        entry_p->base = base;
        entry_p->len = len;
        entry_p->handle = 0;
        entry_p->region = NULL;
        return s;
    }
}

int kvs__track_swap_region(kvs_track_t *t, uint32_t slot, uint32_t gen, kvs_region_h expected,
                           kvs_region_h region)
{
    int ok = 0;

    pthread_mutex_lock(&t->lock);
    if (slot < t->cap && atomic_load_explicit(&t->slots[slot].gen, RLX) == gen &&
        atomic_load_explicit(&t->slots[slot].len, RLX) != 0 && t->slots[slot].region == expected) {
        t->slots[slot].region = region;
        ok = 1;
    }
    pthread_mutex_unlock(&t->lock);
    return ok;
}

uint32_t kvs__track_count(kvs_track_t *t)
{
    return atomic_load_explicit(&t->count, RLX);
}
