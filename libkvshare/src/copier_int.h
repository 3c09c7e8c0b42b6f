/* SPDX-License-Identifier: Apache-2.0 */
/* copier_int.h - helper threads that share a large memcpy with the thread that asked for it.
 *
 * A same-host fetch copies from the holder's mapping on the thread that waits
 * for it (peer.c, run_mapped_copy), one core's memcpy at most. One memcpy
 * stream does not fill a host's memory bandwidth (measured here: 14.5 GB/s
 * for one thread's shuffled 16 KiB copies, 21.5 with a helper woken per
 * 1 MiB job), so a job of KVS__COPIER_MIN_BYTES or more is split into
 * chunks that the caller and the helpers (KVSHARE_COPY_THREADS) claim in
 * turn. The caller never waits for a helper to wake: it copies what nobody
 * claimed, then waits only for chunks a helper is in the middle of.
 * One job at a time; a second caller meanwhile copies alone. */
#ifndef KVS_COPIER_INT_H
#define KVS_COPIER_INT_H

#include "kvs_int.h"
#include "util_int.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Below this a job is copied by the caller alone: waking a helper costs
 * more than it saves (a 2-core VM's wake-up is 10-20 us). */
#define KVS__COPIER_MIN_BYTES (256u * 1024u)
/* A job of this many bytes or more that lands in an engine's memory (a
 * same-host fetch) is stored around the caches (kvs__copy_stream): KV that
 * large goes on to a GPU or is read once, and memcpy's stores into memory
 * not in cache cost a read of every line first. */
#define KVS__COPIER_STREAM_MIN_BYTES (256u * 1024u)
/* What one claim takes: small enough that a late helper still gets work. */
#define KVS__COPIER_CHUNK       (64u * 1024u)
#define KVS__COPIER_MAX_THREADS 8
/* How long the caller watches for the last helper's chunk before it sleeps. */
#define KVS__COPIER_TAIL_SPIN_NS (50u * 1000u)

typedef struct kvs__copier kvs__copier_t;

/* Item @i of a job: @len bytes from @src to @dst. */
typedef void (*kvs__copier_item_fn)(void *arg, size_t i, void **dst, const void **src, size_t *len);

/* @threads helpers, running when it returns. *cp_p NULL (every copy on the
 * caller's thread) for 0, or when no thread would start (logged);
 * KVS_ERR_NO_MEMORY. */
kvs_status_t kvs__copier_new(unsigned threads, const kvs__logger_t *log, kvs__copier_t **cp_p);
/* Stops and joins the helpers (none in a forked child: they did not cross). */
void kvs__copier_free(kvs__copier_t *cp);

/* Copies the @n items; returns their bytes, of which *helped_p the helpers
 * copied (0: the caller copied all of them). Every byte is written when it
 * returns. @cp may be NULL. @stream: with kvs__copy_stream (stores around
 * the caches: for data nobody on this host reads back soon, see
 * KVS__COPIER_STREAM_MIN_BYTES), else memcpy. */
size_t kvs__copier_run(kvs__copier_t *cp, size_t n, kvs__copier_item_fn item, void *arg,
                       bool stream, size_t *helped_p);

/* The CPUs this process may use: its affinity mask, cut to its cgroup's CPU
 * quota rounded up (cgroup v2 cpu.max, else v1 cpu.cfs_quota_us over
 * cpu.cfs_period_us), the smallest from its own cgroup up to the root. Its
 * cgroup is the path @self_cgroup (NULL: /proc/self/cgroup) names under
 * @cgroup_root (NULL: /sys/fs/cgroup); where that path is not there (a
 * container sees its own cgroup mounted as the root), the root's own files
 * count. A pod with `limits.cpu: 1` on a 64-core node counts 1 here, where
 * sysconf counts 64: a helper there would only take turns with the caller.
 * At least 1; what cannot be read does not count. */
unsigned kvs__usable_cpus(const char *cgroup_root, const char *self_cgroup);

/* While @on, the copies this thread asks for of at most
 * KVS__COPIER_SOLO_MAX_BYTES run on it alone, no helper joining (it
 * returns the previous setting). For a thread that copies while a peer on
 * this host computes the answer it waits for: where the caller and the
 * helpers take every usable CPU, a helper takes the core that peer needs,
 * and the answer comes only after the copy (peer.c, wait_until). That
 * costs a round trip after the copy; going alone costs what the helper
 * would have saved. With a helper making a copy about 1.4x faster and a
 * round trip of 30-40 us (2-core VM), alone wins below about 3.5 round
 * trips of copying, 1.5-2 MiB: measured at 16 KiB, two batches of 1 MiB
 * in flight, 8.4-8.9 GB/s with the helper and 9.6-11.1 alone; `bench pool`
 * fetches of 10 MiB prompts, 7.3-8.5 GB/s with it and 5.5-6.9 alone. */
#define KVS__COPIER_SOLO_MAX_BYTES (2u << 20)
bool kvs__copier_solo(bool on);

/* Bytes helpers have copied since kvs__copier_new. */
uint64_t kvs__copier_helped(const kvs__copier_t *cp);

#endif
