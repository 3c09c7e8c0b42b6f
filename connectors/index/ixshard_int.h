/* SPDX-License-Identifier: Apache-2.0 */
/* ixshard_int.h - sharding the index by model: which shard a model lives in, and the bounded
 * single-producer/single-consumer ring that carries a shard's event batches from the receive
 * thread to the shard's writer. Pure: no I/O (the daemon and the bench put their own items in).
 *
 * Why by model: a score names one model and never crosses models (LoRA and cache salt already
 * change the keys inside a model), so each shard is a complete index of its models and a score
 * reads one shard. Sharding by block key would scatter a prompt's consecutive blocks over
 * tables and lose the adjacent-entry walk that keeps a score cheap. */
#ifndef KVS_IXSHARD_INT_H
#define KVS_IXSHARD_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define KVS__SHARDS_MAX 64u

/* The shard of model `name` (len bytes) among nshards: FNV-1a of the name, stable across
 * processes and runs (the same model always lands in the same shard). */
unsigned kvs__shard_of(const char *name, size_t len, unsigned nshards);

typedef struct kvs__ring kvs__ring_t;

/* A ring of cap items (a power of two, >= 2) of item_size bytes each. NULL: out of memory or a
 * bad size. */
kvs__ring_t *kvs__ring_create(size_t cap, size_t item_size);
void kvs__ring_destroy(kvs__ring_t *r);

/* Producer: the next free slot, or NULL while the ring is full; kvs__ring_push() publishes
 * what was written there (release) and wakes a consumer sleeping in kvs__ring_wait(). */
void *kvs__ring_slot(kvs__ring_t *r);
void kvs__ring_push(kvs__ring_t *r);
/* Producer: waits (sleeping 50 us at a time, counted in full_waits) until a slot is free or
 * *stop becomes nonzero; NULL when stopped. */
void *kvs__ring_slot_wait(kvs__ring_t *r, const volatile int *stop);

/* Consumer: the oldest item, or NULL when empty; kvs__ring_pop() frees its slot. */
void *kvs__ring_peek(kvs__ring_t *r);
void kvs__ring_pop(kvs__ring_t *r);
/* Consumer: sleeps until an item is pushed, kvs__ring_wake() is called, or timeout_ms pass. */
void kvs__ring_wait(kvs__ring_t *r, unsigned timeout_ms);
/* Anyone: wakes the consumer (at shutdown). */
void kvs__ring_wake(kvs__ring_t *r);

/* Anyone (metrics): items queued now, the most ever queued, and how many times the producer
 * found the ring full and waited. Atomic reads. */
size_t kvs__ring_depth(const kvs__ring_t *r);
size_t kvs__ring_high_water(const kvs__ring_t *r);
uint64_t kvs__ring_full_waits(const kvs__ring_t *r);
size_t kvs__ring_cap(const kvs__ring_t *r);

#endif
