/* SPDX-License-Identifier: Apache-2.0 */
/* Private declarations shared by the shim's files: env parsing and the tracking table. */
#ifndef KVS_PRELOAD_INT_H
#define KVS_PRELOAD_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "kvshare.h"

/* ---- environment parsing (env.c) ------------------------------------------ */
#define KVS_PRELOAD_KV_MIN_DEFAULT (64ull << 20)

/* Shim log levels; the names match KVSHARE_LOG's values. */
enum {
    KVS_PL_OFF = 0,
    KVS_PL_ERROR,
    KVS_PL_WARN,
    KVS_PL_INFO,
    KVS_PL_DEBUG,
    KVS_PL_TRACE,
};

/* 1/true/yes/on -> 1; 0/false/no/off/"" -> 0 (any case). Errors: CONFIG. */
kvs_status_t kvs__preload_parse_bool(const char *s, int *value_p);

/* Copies @tmpl to @out, replacing "%p" with @pid and "%%" with "%".
 * Errors: KVS_ERR_NO_SPACE (does not fit), KVS_ERR_CONFIG (another %x). */
kvs_status_t kvs__preload_expand_path(const char *tmpl, long pid, char *out, size_t out_len);

/* ---- tracking table (table.c) ---------------------------------------------- */
/*
 * An interval map of live device allocations, with no malloc: the caller
 * gives it fixed arrays. Writers serialise on a mutex; readers (the copy
 * hooks) take no lock: they read under a sequence counter and retry when a
 * writer ran meanwhile, so a copy never waits on an allocation.
 */
enum {
    KVS_TRACK_KV = 1u << 0,  /* a KV region */
    KVS_TRACK_VMM = 1u << 1, /* a cuMemMap mapping (handle is set) */
};

typedef struct kvs_track_slot {
    _Atomic uintptr_t base;
    _Atomic size_t len;
    _Atomic uint32_t flags;
    _Atomic uint32_t gen;
    _Atomic uint64_t handle;
    _Atomic uint64_t copies_in;
    _Atomic uint64_t bytes_in;
    _Atomic uint64_t copies_out;
    _Atomic uint64_t bytes_out;
    kvs_region_h region; /* written under the mutex only */
} kvs_track_slot_t;

typedef struct kvs_track {
    pthread_mutex_t lock;
    _Atomic uint32_t seq;   /* odd while a writer changes the table */
    _Atomic uint32_t count; /* live entries: order[start .. start+count) */
    _Atomic uint32_t start;
    uint32_t cap;
    uint32_t free_head; /* free slots chained through free_next[] */
    kvs_track_slot_t *slots;
    _Atomic uint32_t *order; /* 2*cap slot indices; the live window is sorted by base */
    uint32_t *free_next;
} kvs_track_t;

/* A copy of one entry, taken under the lock or a consistent read. */
typedef struct kvs_track_entry {
    uint32_t slot;
    uint32_t gen;
    uintptr_t base;
    size_t len;
    uint32_t flags;
    uint64_t handle;
    kvs_region_h region;
} kvs_track_entry_t;

#define KVS_TRACK_NONE UINT32_MAX

/* Sets up @t over caller-owned arrays: @slots and @free_next of @cap
 * elements, @order of 2 * @cap (zeroed or not). */
void kvs__track_init(kvs_track_t *t, kvs_track_slot_t *slots, _Atomic uint32_t *order,
                     uint32_t *free_next, uint32_t cap);

/* Empties @t without locking (for a forked child) and re-creates its mutex. */
void kvs__track_reset(kvs_track_t *t);

/* Adds [base, base+len). Errors: INVALID_PARAM (empty, wraps, overlaps a
 * live entry), NO_SPACE (full). On KVS_OK, *entry_p describes the new entry. */
kvs_status_t kvs__track_insert(kvs_track_t *t, uintptr_t base, size_t len, uint32_t flags,
                               uint64_t handle, kvs_track_entry_t *entry_p);

/* Removes the entry starting exactly at @base. Errors: NOT_FOUND. */
kvs_status_t kvs__track_remove(kvs_track_t *t, uintptr_t base, kvs_track_entry_t *entry_p);

/* Removes one entry overlapping [base, base+len). Errors: NOT_FOUND. */
kvs_status_t kvs__track_take_overlap(kvs_track_t *t, uintptr_t base, size_t len,
                                     kvs_track_entry_t *entry_p);

/* Takes the region handle of some entry that has one (clearing it there),
 * so a failing shim can deregister everything. Errors: NOT_FOUND. */
kvs_status_t kvs__track_take_region(kvs_track_t *t, kvs_region_h *region_p);

/* Lock-free: the entry holding @addr, or KVS_TRACK_NONE. Fills base, len,
 * flags, slot and gen (not region) of *entry_p when found. */
uint32_t kvs__track_find(kvs_track_t *t, uintptr_t addr, kvs_track_entry_t *entry_p);

/* Replaces the entry's region handle with @region if the entry is still
 * generation @gen and its handle is @expected. Returns 0 otherwise (the
 * entry was freed, or someone else took the handle): the caller keeps it. */
int kvs__track_swap_region(kvs_track_t *t, uint32_t slot, uint32_t gen, kvs_region_h expected,
                           kvs_region_h region);

/* Number of live entries. */
uint32_t kvs__track_count(kvs_track_t *t);

#endif /* KVS_PRELOAD_INT_H */
