/* SPDX-License-Identifier: Apache-2.0 */
/* ixredis_int.h - `kvshare index --redis`: the index shared between replicas through Redis.
 *
 * Every replica subscribes to every pod and keeps its own in-memory index (the fast path,
 * and the fallback when Redis is away). Redis holds the shared view:
 *   kvs:b:{<model>}@<hash hex> HASH pod -> tier bits of its copies (GPU 1, CPU 2, DISK 4,
 *                              KVSHARE_POOL 8, any other medium 128)
 *   kvs:p:{<model>}@<pod>      SET of the pod's block hashes (clear and snapshot in O(pod))
 *   kvs:P:{<model>}, kvs:m     SETs of pods per model, of models (the snapshot's roots)
 *   kvs:d:{<model>}            SET of degraded pods (they score zero)
 *   kvs:l:{<model>}@<pod>      the pod's writer lease: a replica id, PX lease_ms
 * {<model>} is a Redis Cluster hash tag: every key of a model lives in one slot, so each
 * script (which passes one of them in KEYS, for routing) touches one slot; kvs:m has a slot of
 * its own and is written by a command of its own. Redis Cluster (cluster = true): our own
 * client (hiredis 0.14 has none) learns the slot map with CLUSTER SLOTS (at the first command
 * and after a MOVED), sends each command to its slot's master (one connection per master and
 * thread, over TLS too), follows MOVED (map updated) and ASK (ASKING, then the command on the
 * named node) up to 5 hops; a pipelined write answered MOVED/ASK is lost like one refused with
 * NOSCRIPT: a new epoch makes the lease holder resync. Slot = CRC16-XMODEM mod 16384 of the
 * key's hash tag, as Redis computes it.
 * Exactly one replica writes each pod: the holder of its lease, renewed every lease_ms/3;
 * on taking a lease (first, after another replica died, or after a reconnect) the writer
 * replaces the pod's Redis state with its own (clear, then every copy). Writes are Lua
 * scripts, pipelined: one round trip per event batch. A score is one EVAL whose script
 * walks the prefix server-side (llm-d's Redis backend sends one HKEYS per block).
 * A new replica loads the snapshot (every model, pod and copy) into its index at start.
 *
 * Redis unreachable: calls fail fast (connect 500 ms, replies 1 s), are counted, and the
 * connection is retried at most once a second; nothing blocks longer (over TLS: connect
 * 500 ms, then the handshake 1 s). Model and pod names
 * never hold '@' (topics are kv@<pod>@<model>).
 *
 * Threads: kvs__ixr_score is thread-safe (one reader connection under a mutex). Writes go
 * through a writer (kvs__ixr_writer_create), one per writer thread (a shard's writer with
 * `--shards N`): each has its own connection, as a hiredis context is not thread-safe, and a
 * writer is used by one thread at a time. A pod lives in one shard, so within a replica one
 * writer handles it; across replicas its lease decides. kvs__ixr_snapshot runs before any
 * writer thread does (it borrows the reader connection). */
#ifndef KVS_IXREDIS_INT_H
#define KVS_IXREDIS_INT_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct kvs__ixr kvs__ixr_t;
typedef struct kvs__ixr_w kvs__ixr_w_t;

/* rediss://'s files (PEM), each NULL: from the environment (KVSHARE_REDIS_CA_FILE,
 * KVSHARE_REDIS_CERT_FILE, KVSHARE_REDIS_KEY_FILE); no CA file: the system store. */
typedef struct kvs__ixr_tls {
    const char *ca_file, *cert_file, *key_file;
} kvs__ixr_tls_t;

/* url: redis[s]://[[USER]:PASSWORD@]HOST[:PORT][/DB] (userinfo %-encoded) or unix:PATH;
 * without a password in the URL, KVSHARE_REDIS_PASSWORD (and KVSHARE_REDIS_USER) apply. Each
 * connect sends AUTH, SELECT and SCRIPT LOAD (scripts then go by EVALSHA, falling back to EVAL
 * on NOSCRIPT). rediss:// is TLS >= 1.2 with the server's certificate and name verified
 * (ixtls_int.h; tls may be NULL, it is read only for rediss://). cluster: the URL's host is a
 * Redis Cluster node to learn the others from (redis[s]://, no /DB). Does not connect yet. NULL
 * with why filled on a bad URL, an unreadable CA/certificate/key, or out of memory. */
kvs__ixr_t *kvs__ixr_create(const char *url, const char *replica_id, uint32_t lease_ms,
                            const kvs__ixr_tls_t *tls, bool cluster, char *why, size_t wl);
void kvs__ixr_destroy(kvs__ixr_t *r);

/* A writer of r with its own connection (made on first use); r must outlive it. NULL: out
 * of memory. The caller owns it; destroy accepts NULL. */
kvs__ixr_w_t *kvs__ixr_writer_create(kvs__ixr_t *r);
void kvs__ixr_writer_destroy(kvs__ixr_w_t *w);

/* Takes or renews pod's lease: 2 taken now, 1 renewed, 0 another replica holds it, -1 Redis
 * unreachable. *epoch_p gets the writer connection's number (it changes on a reconnect,
 * after which writes may have been lost: resync). */
int kvs__ixr_lease(kvs__ixr_w_t *w, const char *model, const char *pod, uint64_t *epoch_p);
/* Queued writes of one pod (sent by kvs__ixr_flush). */
void kvs__ixr_store(kvs__ixr_w_t *w, const char *model, const char *pod, const uint64_t *hashes,
                    size_t n, const char *medium);
void kvs__ixr_remove(kvs__ixr_w_t *w, const char *model, const char *pod, const uint64_t *hashes,
                     size_t n, const char *medium);
void kvs__ixr_clear(kvs__ixr_w_t *w, const char *model, const char *pod);
void kvs__ixr_set_degraded(kvs__ixr_w_t *w, const char *model, const char *pod, bool degraded);
/* Sends the queued writes, reads their replies. 0, or -1 (counted; lost writes). */
int kvs__ixr_flush(kvs__ixr_w_t *w);

/* Loads the snapshot: pod_cb once per pod (before its copies), copy_cb per copy. 0, or -1
 * when Redis is unreachable or answers nonsense. */
int kvs__ixr_snapshot(kvs__ixr_t *r,
                      void (*pod_cb)(void *arg, const char *model, const char *pod, bool degraded),
                      void (*copy_cb)(void *arg, const char *model, const char *pod, uint64_t hash,
                                      const char *medium),
                      void *arg);

typedef struct kvs__ixr_score {
    char pod[256];
    uint32_t blocks;
    const char *medium; /* the slowest tier along the prefix (a static name) */
} kvs__ixr_score_t;

/* Scores keys (a prompt's blocks in order) from Redis in one round trip: each pod's longest
 * prefix, degraded pods excluded, only those in only[] when nonly > 0. Writes up to max_out,
 * sorted by blocks then name; returns how many pods matched, or -1 (Redis unreachable or a
 * bad answer; counted). Thread-safe (one reader connection under a mutex). */
long kvs__ixr_score(kvs__ixr_t *r, const char *model, const uint64_t *keys, size_t n,
                    const char *const *only, size_t nonly, kvs__ixr_score_t *out, size_t max_out);

/* Failed round trips so far (any thread). */
unsigned long long kvs__ixr_errors(const kvs__ixr_t *r);
/* Cluster redirects so far (MOVED and ASK followed, writes lost to a moving slot). */
unsigned long long kvs__ixr_redirects(const kvs__ixr_t *r);

/* The Redis Cluster slot of key (len bytes): CRC16-XMODEM of its hash tag (the bytes between
 * the first '{' and the next '}', when not empty) or of the whole key, mod 16384. Pure. */
unsigned kvs__ixr_key_slot(const char *key, size_t len);

/* ---- the cluster reply parsers on their own, no network (tests/fuzz/fuzz_redis.c) ---- */
struct redisReply;

/* Reads a CLUSTER SLOTS reply (a hiredis reply tree, as from the network) into map (16384
 * entries: slot -> node index of r's reader connections, -1 unserved) with the same code
 * the client runs; the nodes it names are added to r (a cluster r). false with why filled
 * when it is not [[start, end, [host, port, ...], ...], ...] or serves no slot. */
bool kvs__ixr_parse_slots_reply(kvs__ixr_t *r, const struct redisReply *rep, int16_t *map,
                                char *why, size_t wl);
/* Interprets a MOVED/ASK error reply ("MOVED SLOT HOST:PORT") received for slot: the node
 * index it names (added to r), -1 with why filled when malformed, about another slot, or
 * slot >= 16384; -2 when rep is not a MOVED or ASK error. */
int kvs__ixr_parse_redirect(kvs__ixr_t *r, const struct redisReply *rep, unsigned slot, char *why,
                            size_t wl);
/* hiredis's reply reader as our connections use it: arrays over 2^24 elements are refused
 * (hiredis 0.14 would allocate their table from the header alone). NULL: out of memory. */
struct redisReader *kvs__ixr_reader_create(void);
/* Node i of r's reader connections: its host and port; false when there is no such node. */
bool kvs__ixr_node_addr(const kvs__ixr_t *r, int i, const char **host, int *port);

#endif
